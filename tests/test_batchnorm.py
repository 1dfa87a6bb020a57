"""Correctness of cnorm's batch normalization against the float64 reference.

The kernels have several paths, picked from the (N, C, M) view of x (M is the
product of the dimensions after the channel axis):

* "planar" when M >= 16, "rows" otherwise (NC, channels-last, small M);
* in "planar", whole channels per thread, or -- with few channels for the
  threads (C < 4 * nt and C % nt != 0) -- fixed CHUNK-sized (4096) pieces of
  each channel computed in parallel and merged in order;
* in "rows", column tiles of 1024 columns and row groups of 65536 // tile
  rows, with two-pass row blocks of 4096 // columns rows.

A call uses more than one thread only from 2 * 32768 elements on, so the
cases that must take a multi-threaded path set the thread count explicitly.
"""

import math

import numpy as np
import pytest

import cnorm
from cnorm import _reference as R
from conftest import assert_close, channel_data, count_calls, threads

DTYPES = [np.float32, np.float64]
METHODS = [None, "two_pass", "welford"]

# (id, shape, axis, threads)
LAYOUTS = [
    ("NC", (16, 5), 1, 2),
    ("NC-col-tiles", (70, 1100), 1, 2),       # rows: 2 column tiles, 2 row groups
    ("NC-row-blocks", (3000, 3), 1, 2),       # rows: several two-pass row blocks
    ("NC-row-groups", (30000, 3), 1, 2),      # rows: 2 row groups on 2 threads
    ("NCL-rows", (6, 4, 3), 1, 2),            # rows with M = 3
    ("NCL", (4, 3, 37), 1, 2),
    ("NCHW", (3, 4, 9, 11), 1, 2),
    ("NCHW-8x8", (2, 3, 8, 8), 1, 2),         # planar, M = 64
    ("NCDHW", (2, 3, 4, 5, 6), 1, 2),
    ("NHWC", (4, 5, 6, 7), -1, 2),
    ("axis2", (3, 4, 5, 6), 2, 2),
    ("axis-2", (3, 4, 5, 6), -2, 2),
    ("long-channel", (2, 3, 5000), 1, 1),     # count 10000 > CHUNK, one thread
    ("few-C1", (2, 1, 40000), 1, 2),          # few-channels path, 20 chunks
    ("few-C3", (4, 3, 6000), 1, 2),           # few-channels path
    ("few-C5", (4, 5, 4000), 1, 2),           # few-channels path
    ("few-C3-3threads", (8, 3, 4500), 1, 3),  # C % 3 == 0: whole channels, 3 threads
]
LAYOUT_IDS = [lay[0] for lay in LAYOUTS]


def pick(*names):
    """The LAYOUTS entries of the given ids, as pytest params."""
    found = [pytest.param(*lay, id=lay[0]) for lay in LAYOUTS if lay[0] in names]
    assert len(found) == len(names)
    return found


def nchan(shape, axis):
    return shape[axis % len(shape)]


def per_channel_shape(shape, axis):
    b = [1] * len(shape)
    b[axis % len(shape)] = shape[axis % len(shape)]
    return b


def params(rng, c, dtype):
    w = rng.uniform(0.5, 2.0, c).astype(dtype) * rng.choice([-1, 1], c).astype(dtype)
    b = rng.uniform(-1, 1, c).astype(dtype)
    rm = rng.uniform(-1, 1, c).astype(dtype)
    rv = rng.uniform(0.5, 2.0, c).astype(dtype)
    return w, b, rm, rv


def channel_index(shape, axis, k):
    idx = [slice(None)] * len(shape)
    idx[axis % len(shape)] = k
    return tuple(idx)


# ---------------------------------------------------------------------------
# Training forward
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt", LAYOUTS, ids=LAYOUT_IDS)
def test_train_forward(rng, name, shape, axis, nt, dtype, method):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    eps = 1e-3
    with threads(nt):
        fwd = cnorm.batch_norm_forward(x, w, b, rm, rv, momentum=0.1, eps=eps, axis=axis,
                                       method=method)
        y2 = cnorm.batch_norm(x, w, b, training=True, eps=eps, axis=axis, method=method)
    y_ref, mean_ref, var_ref, invstd_ref = R.batch_norm_train(x, w, b, eps=eps, axis=axis)
    for arr, shp in ((fwd.y, shape), (fwd.mean, (c,)), (fwd.invstd, (c,))):
        assert arr.dtype == dtype and arr.shape == shp
    assert_close(fwd.y, y_ref, dtype, err_msg="y")
    assert_close(fwd.mean, mean_ref, dtype, err_msg="mean")
    assert_close(fwd.invstd, invstd_ref, dtype, err_msg="invstd")
    n = x.size // c
    rm_ref, rv_ref = R.running_stats_update(rm0, rv0, mean_ref, var_ref, n, 0.1)
    assert_close(rm, rm_ref, dtype, err_msg="running_mean")
    assert_close(rv, rv_ref, dtype, err_msg="running_var")
    # batch_norm(training=True) runs the same kernel: the same bits
    assert y2.dtype == dtype
    assert np.array_equal(y2, fwd.y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", [
    "none", "weight-only", "bias-only", "arrays", "lists", "float64-arrays", "int-list-weight",
    "strided-arrays",
])
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1),
                                             ("NHWC", (4, 5, 6, 7), -1)])
def test_weight_bias_variants(rng, name, shape, axis, variant, dtype):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w64 = rng.uniform(0.5, 2.0, c)
    b64 = rng.uniform(-1, 1, c)
    if variant == "none":
        w, b, wr, br = None, None, None, None
    elif variant == "weight-only":
        w, b = w64.astype(dtype), None
        wr, br = w, None
    elif variant == "bias-only":
        w, b = None, b64.astype(dtype)
        wr, br = None, b
    elif variant == "arrays":
        w, b = w64.astype(dtype), b64.astype(dtype)
        wr, br = w, b
    elif variant == "lists":
        w, b = w64.astype(dtype).tolist(), b64.astype(dtype).tolist()
        wr, br = np.array(w, dtype=dtype), np.array(b, dtype=dtype)
    elif variant == "float64-arrays":
        # cast to x's dtype (float32 x: rounded to float32 first)
        w, b = w64, b64
        wr, br = w64.astype(dtype), b64.astype(dtype)
    elif variant == "int-list-weight":
        w, b = list(range(1, c + 1)), [int(v) for v in rng.integers(-3, 3, c)]
        wr, br = np.array(w, dtype=dtype), np.array(b, dtype=dtype)
    else:  # strided views
        w = np.repeat(w64.astype(dtype), 2)[::2]
        b = np.repeat(b64.astype(dtype), 3)[::3]
        wr, br = np.ascontiguousarray(w), np.ascontiguousarray(b)
    w_copy = None if w is None else np.array(w, copy=True)
    b_copy = None if b is None else np.array(b, copy=True)

    fwd = cnorm.batch_norm_forward(x, w, b, axis=axis)
    y_ref, mean_ref, _, invstd_ref = R.batch_norm_train(x, wr, br, axis=axis)
    assert fwd.y.dtype == dtype
    assert_close(fwd.y, y_ref, dtype)
    assert_close(fwd.mean, mean_ref, dtype)
    assert_close(fwd.invstd, invstd_ref, dtype)
    # the cast is the one of x's dtype: same bits as with pre-cast arrays
    assert np.array_equal(fwd.y, cnorm.batch_norm_forward(x, wr, br, axis=axis).y)

    rm, rv = rng.uniform(-1, 1, c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    y = cnorm.batch_norm(x, w, b, rm, rv, axis=axis)
    assert_close(y, R.batch_norm_infer(x, rm, rv, wr, br, axis=axis), dtype)
    assert np.array_equal(y, cnorm.batch_norm(x, wr, br, rm, rv, axis=axis))
    if w is not None:
        assert np.array_equal(np.asarray(w), w_copy)
    if b is not None:
        assert np.array_equal(np.asarray(b), b_copy)


@pytest.mark.parametrize("momentum", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("name,shape,axis,nt",
                         pick("NC", "NCHW", "NHWC", "few-C3", "NC-row-groups"))
def test_running_stats_several_steps(rng, name, shape, axis, nt, method, dtype, momentum):
    c = nchan(shape, axis)
    n = math.prod(shape) // c
    _, _, rm, rv = params(rng, c, dtype)
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    rm_start, rv_start = rm.copy(), rv.copy()
    for step in range(3):
        x = channel_data(rng, shape, axis, dtype)
        with threads(nt):
            out = cnorm.batch_norm(x, None, None, rm, rv, training=True, momentum=momentum,
                                   axis=axis, method=method)
        _, mean, var, _ = R.batch_norm_train(x, axis=axis)
        assert_close(out, R.batch_norm_train(x, axis=axis)[0], dtype)
        rm_ref, rv_ref = R.running_stats_update(rm_ref, rv_ref, mean, var, n, momentum)
        assert rm.dtype == dtype and rv.dtype == dtype
        assert_close(rm, rm_ref, dtype, err_msg=f"running_mean, step {step}")
        assert_close(rv, rv_ref, dtype, err_msg=f"running_var, step {step}")
        if momentum == 0.0:
            assert np.array_equal(rm, rm_start) and np.array_equal(rv, rv_start)
        if momentum == 1.0:
            fwd = cnorm.batch_norm_forward(x, axis=axis, method=method)
            assert np.array_equal(rm, fwd.mean)


def test_running_stats_strided_views_training(rng):
    """Running statistics are 'writeable arrays of x's dtype': a strided view qualifies,
    and must be updated element by element, leaving the rest of its base alone."""
    x = channel_data(rng, (8, 3, 5), 1, np.float64)
    base_m = np.full(6, 0.5)
    base_v = np.full(6, 2.0)
    rm, rv = base_m[::2], base_v[::2]
    cnorm.batch_norm(x, running_mean=rm, running_var=rv, training=True, momentum=0.25)
    _, mean, var, _ = R.batch_norm_train(x)
    rm_ref, rv_ref = R.running_stats_update(np.full(3, 0.5), np.full(3, 2.0), mean, var, 40, 0.25)
    assert np.array_equal(base_m[1::2], np.full(3, 0.5)), \
        f"running_mean: elements outside the view changed, base is {base_m}"
    assert np.array_equal(base_v[1::2], np.full(3, 2.0)), \
        f"running_var: elements outside the view changed, base is {base_v}"
    assert_close(rm, rm_ref, np.float64)
    assert_close(rv, rv_ref, np.float64)


# ---------------------------------------------------------------------------
# Inference forward
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt", LAYOUTS, ids=LAYOUT_IDS)
def test_inference(rng, name, shape, axis, nt, dtype, weighted):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    if not weighted:
        w = b = None
    rm0, rv0 = rm.copy(), rv.copy()
    with threads(nt):
        y = cnorm.batch_norm(x, w, b, rm, rv, training=False, eps=1e-4, axis=axis)
    assert y.dtype == dtype and y.shape == shape
    assert_close(y, R.batch_norm_infer(x, rm, rv, w, b, eps=1e-4, axis=axis), dtype)
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt", pick("NC", "NCL-rows", "NCHW", "NHWC"))
def test_inference_fast_path_matches_general_path(rng, monkeypatch, name, shape, axis, nt, dtype):
    """batch_norm's fast path (the common inference call) gives the general path's bits,
    and every other spelling of the same call takes the general path."""
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    calls = count_calls(monkeypatch, cnorm.batchnorm)
    other = np.float64 if dtype == np.float32 else ">f8"
    with threads(nt):
        fast = cnorm.batch_norm(x, w, b, rm, rv, axis=axis)
        plain = cnorm.batch_norm(x, None, None, rm, rv, axis=axis, eps=1e-3)
        assert not calls, "the common inference call should take the fast path"
        variants = {
            "out": lambda: cnorm.batch_norm(x, w, b, rm, rv, axis=axis, out=np.empty_like(x)),
            "method": lambda: cnorm.batch_norm(x, w, b, rm, rv, axis=axis, method="two_pass"),
            "np.int64-axis": lambda: cnorm.batch_norm(x, w, b, rm, rv, axis=np.int64(axis)),
            "np.float64-eps": lambda: cnorm.batch_norm(x, w, b, rm, rv, axis=axis,
                                                        eps=np.float64(1e-5)),
            "np.bool-training": lambda: cnorm.batch_norm(x, w, b, rm, rv, axis=axis,
                                                          training=np.False_),
            "fortran-x": lambda: cnorm.batch_norm(np.asfortranarray(x), w, b, rm, rv, axis=axis),
            "list-params": lambda: cnorm.batch_norm(x, w.tolist(), b.tolist(), rm.tolist(),
                                                     rv.tolist(), axis=axis),
            "strided-params": lambda: cnorm.batch_norm(
                x, np.repeat(w, 2)[::2], b, rm, np.repeat(rv, 2)[::2], axis=axis),
            "other-dtype-stats": lambda: cnorm.batch_norm(x, w, b, rm.astype(other),
                                                           rv.astype(other), axis=axis),
        }
        for label, call in variants.items():
            n = len(calls)
            y = call()
            assert len(calls) == n + 1, f"{label} should take the general path"
            np.testing.assert_array_equal(y, fast, err_msg=label)
        calls.clear()
        np.testing.assert_array_equal(
            plain, cnorm.batch_norm(x, None, None, rm, rv, axis=axis, eps=1e-3, relu=np.False_))
        assert calls
    assert fast.flags.c_contiguous and fast.dtype == dtype and fast.shape == shape
    assert_close(fast, R.batch_norm_infer(x, rm, rv, w, b, axis=axis), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stats_kind", ["float32", "float64", "int", "list"])
def test_inference_running_stats_other_types(rng, dtype, stats_kind):
    shape, axis = (3, 4, 9, 11), 1
    x = channel_data(rng, shape, axis, dtype)
    if stats_kind == "int":
        rm, rv = np.array([1, -2, 0, 3]), np.array([1, 2, 3, 4])
    else:
        rm, rv = rng.uniform(-1, 1, 4), rng.uniform(0.5, 2, 4)
        if stats_kind == "float32":
            rm, rv = rm.astype(np.float32), rv.astype(np.float32)
        elif stats_kind == "list":
            rm, rv = rm.tolist(), rv.tolist()
    rm_copy, rv_copy = np.array(rm, copy=True), np.array(rv, copy=True)
    y = cnorm.batch_norm(x, None, None, rm, rv, axis=axis)
    # the statistics are cast to x's dtype
    rmc, rvc = np.asarray(rm).astype(dtype), np.asarray(rv).astype(dtype)
    assert y.dtype == dtype
    assert_close(y, R.batch_norm_infer(x, rmc, rvc, axis=axis), dtype)
    assert np.array_equal(y, cnorm.batch_norm(x, None, None, rmc, rvc, axis=axis))
    assert np.array_equal(np.asarray(rm), rm_copy) and np.array_equal(np.asarray(rv), rv_copy)


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt",
                         pick("NC", "NCL-rows", "NCHW", "NHWC", "few-C3", "NC-row-groups"))
def test_relu(rng, name, shape, axis, nt, dtype, training):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    with threads(nt):
        y = cnorm.batch_norm(x, w, b, rm.copy(), rv.copy(), training=training, axis=axis,
                             relu=True)
        y_plain = cnorm.batch_norm(x, w, b, rm.copy(), rv.copy(), training=training, axis=axis)
    if training:
        ref = R.batch_norm_train(x, w, b, axis=axis)[0]
    else:
        ref = R.batch_norm_infer(x, rm, rv, w, b, axis=axis)
    assert y.dtype == dtype
    assert (y >= 0).all()
    assert (y == 0).any() and (y > 0).any()
    assert_close(y, np.maximum(ref, 0), dtype)
    assert np.array_equal(y, np.maximum(y_plain, 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1),
                                             ("NHWC", (4, 5, 6, 7), -1)])
def test_relu_keeps_nan(rng, name, shape, axis, dtype):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    b[:] = -100.0  # every finite value would be clamped to 0
    pos = tuple(s // 2 for s in shape)
    x[pos] = np.nan
    y = cnorm.batch_norm(x, w, b, rm, rv, training=False, axis=axis, relu=True)
    assert np.isnan(y[pos])
    assert np.isnan(y).sum() == 1
    assert (y[~np.isnan(y)] == 0).all()
    # training: the channel holding the NaN is NaN throughout, even with relu
    y = cnorm.batch_norm(x, w, b, training=True, axis=axis, relu=True)
    k = pos[axis % len(shape)]
    assert np.isnan(y[channel_index(shape, axis, k)]).all()
    assert np.isnan(y).sum() == x.size // c


# ---------------------------------------------------------------------------
# Memory layouts of the inputs
# ---------------------------------------------------------------------------

def _views(rng, dtype):
    """(id, x view, axis): inputs with strides that are not C-contiguous."""
    base = channel_data(rng, (4, 3, 10, 37), 1, dtype)
    nhwc = channel_data(rng, (4, 10, 37, 3), -1, dtype)
    big = channel_data(rng, (6, 5, 4, 3), 1, dtype)
    return [
        ("step-slice", base[:, :, :, ::2], 1),
        ("step-slice-rows", base[:, :, 0, ::3], 1),
        ("reversed", base[::-1], 1),
        ("reversed-last", base[..., ::-1], 1),
        ("fortran", np.asfortranarray(base), 1),
        ("transposed-nhwc", nhwc.transpose(0, 3, 1, 2), 1),         # channels-last memory
        ("transposed-nc", np.ascontiguousarray(base[:, :, 0, 0].T).T, 1),
        ("transposed-axis-last", big.transpose(0, 2, 3, 1), -1),
        ("channel-slice", base[:, ::2], 1),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("view_id", [v[0] for v in _views(np.random.default_rng(0), np.float64)])
def test_noncontiguous_inputs(rng, view_id, dtype):
    x, axis = {v[0]: (v[1], v[2]) for v in _views(rng, dtype)}[view_id]
    assert not x.flags.c_contiguous
    xc = np.ascontiguousarray(x)
    x_copy = x.copy()
    c = nchan(x.shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    rm1, rv1, rm2, rv2 = rm.copy(), rv.copy(), rm.copy(), rv.copy()

    f1 = cnorm.batch_norm_forward(x, w, b, rm1, rv1, axis=axis)
    f2 = cnorm.batch_norm_forward(xc, w, b, rm2, rv2, axis=axis)
    for a1, a2 in zip(f1, f2):
        assert np.array_equal(a1, a2)
    assert np.array_equal(rm1, rm2) and np.array_equal(rv1, rv2)
    assert f1.y.flags.c_contiguous
    assert_close(f1.y, R.batch_norm_train(x, w, b, axis=axis)[0], dtype)

    y1 = cnorm.batch_norm(x, w, b, rm, rv, axis=axis, relu=True)
    y2 = cnorm.batch_norm(xc, w, b, rm, rv, axis=axis, relu=True)
    assert np.array_equal(y1, y2)

    # backward with non-contiguous dy and x
    dy_base = rng.standard_normal(x.shape[::-1]).astype(dtype)
    dy = dy_base.T  # Fortran-ordered view
    for training in (True, False):
        g1 = cnorm.batch_norm_backward(dy, x, f1.mean, f1.invstd, w, training=training, axis=axis)
        g2 = cnorm.batch_norm_backward(np.ascontiguousarray(dy), xc, f1.mean, f1.invstd, w,
                                       training=training, axis=axis)
        for a1, a2 in zip(g1, g2):
            assert np.array_equal(a1, a2)
    assert np.array_equal(x, x_copy)


# ---------------------------------------------------------------------------
# out=
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["train", "infer", "forward"])
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1),
                                             ("NHWC", (4, 5, 6, 7), -1)])
def test_out_argument(rng, name, shape, axis, mode, dtype):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)

    def call(xx, out=None):
        if mode == "train":
            return cnorm.batch_norm(xx, w, b, training=True, axis=axis, out=out)
        if mode == "infer":
            return cnorm.batch_norm(xx, w, b, rm, rv, training=False, axis=axis, out=out)
        return cnorm.batch_norm_forward(xx, w, b, axis=axis, out=out).y

    expected = call(x)
    # C-contiguous out
    out = np.full(shape, 7.0, dtype=dtype)
    res = call(x, out)
    assert res is out
    assert np.array_equal(out, expected)
    # non-contiguous out: a strided view of a bigger array
    big = np.full(shape[:-1] + (2 * shape[-1],), -3.0, dtype=dtype)
    view = big[..., 1::2]
    res = call(x, view)
    assert res is view
    assert np.array_equal(view, expected)
    assert (big[..., 0::2] == -3.0).all()
    # Fortran-ordered out
    fout = np.asfortranarray(np.zeros(shape, dtype=dtype))
    assert call(x, fout) is fout and np.array_equal(fout, expected)
    # in place: out=x
    xi = x.copy()
    res = call(xi, xi)
    assert res is xi
    assert np.array_equal(xi, expected)
    # in place on a non-contiguous x
    big = np.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
    xv = big[..., ::2]
    xv[...] = x
    res = call(xv, xv)
    assert res is xv
    assert np.array_equal(xv, expected)
    assert (big[..., 1::2] == 0).all()


def test_forward_out_stats_unchanged_by_inplace(rng):
    x = channel_data(rng, (4, 3, 37), 1, np.float32)
    ref = cnorm.batch_norm_forward(x.copy())
    res = cnorm.batch_norm_forward(x, out=x)
    assert res.y is x
    assert np.array_equal(res.mean, ref.mean) and np.array_equal(res.invstd, ref.invstd)
    assert np.array_equal(x, ref.y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1),
                                             ("NHWC", (4, 5, 6, 7), -1)])
def test_backward_out_argument(rng, name, shape, axis, training, dtype):
    x = channel_data(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = nchan(shape, axis)
    w = params(rng, c, dtype)[0]
    fwd = cnorm.batch_norm_forward(x, w, axis=axis)
    expected = cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, training=training,
                                         axis=axis)

    def check(res, out):
        assert res.dx is out
        assert np.array_equal(out, expected.dx)
        assert np.array_equal(res.dweight, expected.dweight)
        assert np.array_equal(res.dbias, expected.dbias)

    out = np.empty(shape, dtype=dtype)
    check(cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, training=training,
                                    axis=axis, out=out), out)
    big = np.full(shape[:-1] + (3 * shape[-1],), 5.0, dtype=dtype)
    view = big[..., ::3]
    check(cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, training=training,
                                    axis=axis, out=view), view)
    assert (big[..., 1::3] == 5.0).all() and (big[..., 2::3] == 5.0).all()
    dyi = dy.copy()
    check(cnorm.batch_norm_backward(dyi, x, fwd.mean, fwd.invstd, w, training=training,
                                    axis=axis, out=dyi), dyi)
    xi = x.copy()
    check(cnorm.batch_norm_backward(dy, xi, fwd.mean, fwd.invstd, w, training=training,
                                    axis=axis, out=xi), xi)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_large_paths(rng, dtype):
    """out=x on the multi-threaded paths (few channels, row groups, whole channels)."""
    for shape, axis in [((4, 3, 6000), 1), ((30000, 3), 1), ((16, 8, 32, 32), 1)]:
        x = channel_data(rng, shape, axis, dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        with threads(2):
            exp = cnorm.batch_norm_forward(x, axis=axis)
            g_exp = cnorm.batch_norm_backward(dy, x, exp.mean, exp.invstd, axis=axis)
            dyi = dy.copy()
            g = cnorm.batch_norm_backward(dyi, x, exp.mean, exp.invstd, axis=axis, out=dyi)
            assert g.dx is dyi and np.array_equal(dyi, g_exp.dx)
            xi = x.copy()
            res = cnorm.batch_norm_forward(xi, axis=axis, out=xi)
            assert res.y is xi and np.array_equal(xi, exp.y)


# ---------------------------------------------------------------------------
# Results are new arrays; inputs are left alone
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1),
                                             ("NHWC", (4, 5, 6, 7), -1)])
def test_results_are_new_and_inputs_unmodified(rng, name, shape, axis, dtype):
    for x in (channel_data(rng, shape, axis, dtype),
              np.asfortranarray(channel_data(rng, shape, axis, dtype))):
        c = nchan(shape, axis)
        w, b, rm, rv = params(rng, c, dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        copies = [a.copy() for a in (x, w, b, dy)]
        y_inf = cnorm.batch_norm(x, w, b, rm, rv, axis=axis)
        y_tr = cnorm.batch_norm(x, w, b, training=True, axis=axis)
        fwd = cnorm.batch_norm_forward(x, w, b, axis=axis)
        grads = cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, axis=axis)
        grads_inf = cnorm.batch_norm_backward(dy, x, rm, rv, w, training=False, axis=axis)
        for res in (y_inf, y_tr, fwd.y, grads.dx, grads_inf.dx):
            assert type(res) is np.ndarray
            assert res.dtype == dtype and res.shape == shape
            assert res.flags.c_contiguous and res.flags.owndata and res.flags.writeable
            for inp in (x, w, b, dy):
                assert not np.shares_memory(res, inp)
        for res in (fwd.mean, fwd.invstd, grads.dweight, grads.dbias):
            assert res.dtype == dtype and res.shape == (c,)
        for a, a_copy in zip((x, w, b, dy), copies):
            assert np.array_equal(a, a_copy)


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
def test_nested_lists(rng, training):
    x = channel_data(rng, (5, 3, 4), 1, np.float64)
    xl = x.tolist()
    # running statistics may be lists in inference only (training updates them in place)
    rm, rv = ([0.1, -0.2, 0.3], [1.0, 2.0, 0.5]) if not training else (None, None)
    y = cnorm.batch_norm(xl, [1.0, 2.0, 3.0], (0.5, 0.0, -0.5), rm, rv, training=training)
    assert type(y) is np.ndarray and y.dtype == np.float64 and y.shape == (5, 3, 4)
    rma, rva = (None, None) if training else (np.array(rm), np.array(rv))
    y_arr = cnorm.batch_norm(x, np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, -0.5]), rma, rva,
                             training=training)
    assert np.array_equal(y, y_arr)
    if training:
        fwd = cnorm.batch_norm_forward(xl)
        ref = R.batch_norm_train(x)
        assert_close(fwd.y, ref[0], np.float64)
        g = cnorm.batch_norm_backward(np.ones_like(x).tolist(), xl, fwd.mean.tolist(),
                                      fwd.invstd.tolist())
        assert_close(g.dx, R.batch_norm_backward(np.ones_like(x), x, fwd.mean, fwd.invstd)[0],
                     np.float64)
    # a nested list of float32 scalars stays float32
    x32 = [[np.float32(1.5), np.float32(2.0)], [np.float32(-1.0), np.float32(4.0)]]
    assert cnorm.batch_norm(x32, training=True).dtype == np.float32


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt", LAYOUTS, ids=LAYOUT_IDS)
def test_backward(rng, name, shape, axis, nt, dtype, training, weighted):
    x = channel_data(rng, shape, axis, dtype)
    dy = channel_data(rng, shape, axis, dtype, offset=0.5)
    c = nchan(shape, axis)
    w, _, rm, rv = params(rng, c, dtype)
    if not weighted:
        w = None
    if training:
        fwd = cnorm.batch_norm_forward(x, w, axis=axis)
        mean, invstd = fwd.mean, fwd.invstd
    else:
        mean, invstd = rm, (1.0 / np.sqrt(rv.astype(np.float64) + 1e-5)).astype(dtype)
    with threads(nt):
        g = cnorm.batch_norm_backward(dy, x, mean, invstd, w, training=training, axis=axis)
    dx_ref, dw_ref, db_ref = R.batch_norm_backward(dy, x, mean, invstd, w, training=training,
                                                   axis=axis)
    assert g.dx.dtype == dtype and g.dx.shape == shape
    assert g.dweight.dtype == dtype and g.dweight.shape == (c,)
    assert g.dbias.dtype == dtype and g.dbias.shape == (c,)
    assert_close(g.dx, dx_ref, dtype, err_msg="dx")
    assert_close(g.dweight, dw_ref, dtype, err_msg="dweight")
    assert_close(g.dbias, db_ref, dtype, err_msg="dbias")


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1)])
def test_backward_dy_float64_cast_for_float32_x(rng, name, shape, axis, training):
    x = channel_data(rng, shape, axis, np.float32)
    dy = rng.standard_normal(shape)
    dy_copy = dy.copy()
    fwd = cnorm.batch_norm_forward(x, axis=axis)
    g = cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, training=training, axis=axis)
    g32 = cnorm.batch_norm_backward(dy.astype(np.float32), x, fwd.mean, fwd.invstd,
                                    training=training, axis=axis)
    assert g.dx.dtype == np.float32 and g.dweight.dtype == np.float32
    for a1, a2 in zip(g, g32):
        assert np.array_equal(a1, a2)
    assert np.array_equal(dy, dy_copy)
    # float64 mean/invstd/weight are cast too
    g64s = cnorm.batch_norm_backward(dy, x, fwd.mean.astype(np.float64),
                                     fwd.invstd.astype(np.float64), training=training, axis=axis)
    for a1, a2 in zip(g, g64s):
        assert np.array_equal(a1, a2)


def _fd_check(loss, arr, analytic, h=1e-6):
    num = np.empty(arr.shape)
    flat = arr.reshape(-1)
    for i in range(flat.size):
        v = flat[i]
        flat[i] = v + h
        lp = loss()
        flat[i] = v - h
        lm = loss()
        flat[i] = v
        num.reshape(-1)[i] = (lp - lm) / (2 * h)
    np.testing.assert_allclose(analytic, num, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("axis", [1, -1])
def test_backward_finite_differences(rng, training, axis):
    shape = (3, 2, 4)
    x = rng.standard_normal(shape) * 1.5 + 0.5
    c = nchan(shape, axis)
    w = rng.uniform(0.5, 2.0, c)
    b = rng.uniform(-1, 1, c)
    rm = rng.uniform(-1, 1, c)
    rv = rng.uniform(0.5, 2, c)
    G = rng.standard_normal(shape)
    eps = 1e-5

    def loss():
        y = cnorm.batch_norm(x, w, b, rm, rv, training=training, eps=eps, axis=axis)
        return float(np.sum(y * G))

    if training:
        fwd = cnorm.batch_norm_forward(x, w, b, eps=eps, axis=axis)
        mean, invstd = fwd.mean, fwd.invstd
    else:
        mean, invstd = rm, 1.0 / np.sqrt(rv + eps)
    g = cnorm.batch_norm_backward(G, x, mean, invstd, w, training=training, axis=axis)
    _fd_check(loss, x, g.dx)
    _fd_check(loss, w, g.dweight)
    _fd_check(loss, b, g.dbias)


# ---------------------------------------------------------------------------
# Accuracy on ill-conditioned float32 data
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("offset", [1e4, 3e5])
@pytest.mark.parametrize("name,shape,axis", [
    ("NCHW", (64, 3, 32, 32), 1), ("NHWC", (64, 32, 32, 3), -1), ("NC", (65536, 3), 1),
])
def test_accuracy_ill_conditioned_float32(rng, name, shape, axis, offset, method):
    c = nchan(shape, axis)
    bshape = per_channel_shape(shape, axis)
    mu = (offset * rng.uniform(0.9, 1.1, c)).reshape(bshape)
    x = (rng.standard_normal(shape) * 1e-2 + mu).astype(np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    with threads(2):
        fwd = cnorm.batch_norm_forward(x, None, None, rm, rv, momentum=1.0, eps=0.0, axis=axis,
                                       method=method)
    xl = np.moveaxis(x, axis, -1).reshape(-1, c)
    n = xl.shape[0]
    for k in range(c):
        exact_mean, exact_var = R.exact_mean_var(xl[:, k].astype(np.float64))
        assert exact_var > 0
        var = float(fwd.invstd[k]) ** -2
        assert abs(var - exact_var) <= 1e-6 * exact_var, (k, var, exact_var)
        run_var = float(rv[k]) * (n - 1) / n
        assert abs(run_var - exact_var) <= 1e-6 * exact_var, (k, run_var, exact_var)
        assert abs(float(fwd.mean[k]) - exact_mean) <= 1.2e-7 * abs(exact_mean)
        assert float(rm[k]) == float(fwd.mean[k])
    y_ref = R.batch_norm_train(x, eps=0.0, axis=axis)[0]
    assert_close(fwd.y, y_ref, np.float32)


# ---------------------------------------------------------------------------
# Special values
# ---------------------------------------------------------------------------

CONSTANT_VALUES = {
    np.float32: [0.1, -3.7, 10000.3],
    # values whose float64 sums are inexact: the kernels centre each block on its
    # first value, so a constant channel still has mean == value and M2 == 0
    np.float64: [0.1, 1 / 3, math.pi, -7.25, 1024.5],
}


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt",
                         pick("NC", "NC-row-groups", "NCHW", "NHWC", "long-channel", "few-C3"))
def test_constant_channel(rng, name, shape, axis, nt, dtype, method, with_bias):
    c = nchan(shape, axis)
    w, b, _, _ = params(rng, c, dtype)
    if not with_bias:
        b = None
    for value in CONSTANT_VALUES[dtype]:
        x = channel_data(rng, shape, axis, dtype)
        k = c // 2
        x[channel_index(shape, axis, k)] = value
        with threads(nt):
            fwd = cnorm.batch_norm_forward(x, w, b, axis=axis, method=method)
        yk = fwd.y[channel_index(shape, axis, k)]
        expected = b[k] if b is not None else 0.0
        assert (yk == expected).all(), (value, np.abs(yk - expected).max())
        assert fwd.mean[k] == dtype(value)
        assert_close(fwd.invstd[k], 1 / math.sqrt(1e-5), dtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt,k", [
    ("NC", (16, 5), 1, 2, 2),
    ("NCL", (4, 3, 37), 1, 2, 1),
    ("NCHW-8x8", (2, 3, 8, 8), 1, 2, 0),
    ("NHWC", (4, 5, 6, 7), -1, 2, 4),
    ("few-C3", (4, 3, 6000), 1, 2, 1),
], ids=["NC", "NCL", "NCHW-8x8", "NHWC", "few-C3"])
def test_nonfinite_channel(rng, name, shape, axis, nt, k, dtype, method, bad):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    pos = [s // 3 for s in shape]
    pos[axis % len(shape)] = k
    x[tuple(pos)] = bad
    assert not np.isfinite(x).all()
    rm_bad, rv_bad = rm.copy(), rv.copy()
    with threads(nt):
        fwd = cnorm.batch_norm_forward(x, w, b, rm_bad, rv_bad, axis=axis, method=method)
    assert np.isnan(fwd.y[channel_index(shape, axis, k)]).all()
    assert np.isnan(fwd.invstd[k])
    assert not np.isfinite(fwd.mean[k])
    assert not np.isfinite(rm_bad[k]) and not np.isfinite(rv_bad[k])

    keep = [j for j in range(c) if j != k]
    x_good = np.delete(x, k, axis=axis % x.ndim)
    rm_good, rv_good = rm[keep].copy(), rv[keep].copy()
    with threads(nt):
        ref = cnorm.batch_norm_forward(x_good, w[keep], b[keep], rm_good, rv_good, axis=axis,
                                       method=method)
    assert np.isfinite(ref.y).all()
    assert np.array_equal(np.delete(fwd.y, k, axis=axis % x.ndim), ref.y)
    assert np.array_equal(fwd.mean[keep], ref.mean)
    assert np.array_equal(fwd.invstd[keep], ref.invstd)
    assert np.array_equal(rm_bad[keep], rm_good) and np.array_equal(rv_bad[keep], rv_good)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_inference(dtype):
    for shape, axis in [((0, 3, 4), 1), ((0, 3), 1), ((0, 4, 3), -1)]:
        c = nchan(shape, axis)
        x = np.empty(shape, dtype=dtype)
        y = cnorm.batch_norm(x, None, None, np.zeros(c), np.ones(c), axis=axis)
        assert y.shape == shape and y.dtype == dtype
        out = np.empty(shape, dtype=dtype)
        assert cnorm.batch_norm(x, np.ones(c), np.zeros(c), np.zeros(c), np.ones(c),
                                axis=axis, out=out, relu=True) is out
        g = cnorm.batch_norm_backward(x, x, np.zeros(c), np.ones(c), training=False, axis=axis)
        assert g.dx.shape == shape and g.dx.dtype == dtype
        assert np.array_equal(g.dweight, np.zeros(c)) and np.array_equal(g.dbias, np.zeros(c))


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_channels(dtype):
    x = np.empty((4, 0, 5), dtype=dtype)
    rm, rv = np.empty(0, dtype), np.empty(0, dtype)
    y = cnorm.batch_norm(x, training=True)
    assert y.shape == (4, 0, 5) and y.dtype == dtype
    fwd = cnorm.batch_norm_forward(x, np.empty(0), [], rm, rv)
    assert fwd.y.shape == (4, 0, 5)
    assert fwd.mean.shape == (0,) and fwd.invstd.shape == (0,) and fwd.mean.dtype == dtype
    y = cnorm.batch_norm(x, None, None, rm, rv, training=False)
    assert y.shape == (4, 0, 5) and y.dtype == dtype
    g = cnorm.batch_norm_backward(x, x, fwd.mean, fwd.invstd)
    assert g.dx.shape == (4, 0, 5) and g.dweight.shape == (0,) and g.dbias.shape == (0,)
    x = np.empty((6, 0), dtype=dtype)
    assert cnorm.batch_norm(x, training=True, axis=-1).shape == (6, 0)


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------

def test_thread_count_controls():
    assert isinstance(cnorm.openmp_enabled(), bool)
    n0 = cnorm.get_num_threads()
    assert isinstance(n0, int) and n0 >= 1
    cnorm.set_num_threads(3)
    assert cnorm.get_num_threads() == 3
    cnorm.set_num_threads(np.int64(2))
    assert cnorm.get_num_threads() == 2
    with threads(5):
        assert cnorm.get_num_threads() == 5
    assert cnorm.get_num_threads() == 2


DETERMINISM_SHAPES = [
    ("few-C3", (8, 3, 64, 64), 1),
    ("whole-C64", (16, 64, 32, 32), 1),
    ("NC-cl", (4096, 64), -1),
    ("planar-M49", (64, 512, 7, 7), 1),
    ("few-C1", (2, 1, 40000), 1),
    ("rows-groups", (30000, 3), 1),
    ("NHWC", (16, 32, 32, 24), -1),
]


@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis", DETERMINISM_SHAPES,
                         ids=[s[0] for s in DETERMINISM_SHAPES])
def test_thread_count_does_not_change_results(rng, name, shape, axis, dtype, method):
    x = channel_data(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = nchan(shape, axis)
    w, b, rm0, rv0 = params(rng, c, dtype)
    results = {}
    for nt in (1, 2, 3, 4):
        rm, rv = rm0.copy(), rv0.copy()
        with threads(nt):
            fwd = cnorm.batch_norm_forward(x, w, b, rm, rv, axis=axis, method=method)
            g = cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, axis=axis)
            gi = cnorm.batch_norm_backward(dy, x, rm, rv, w, training=False, axis=axis)
            yi = cnorm.batch_norm(x, w, b, rm, rv, axis=axis, relu=True)
        results[nt] = [a.tobytes() for a in (*fwd, rm, rv, *g, gi.dx, yi)]
    names = ["y", "mean", "invstd", "running_mean", "running_var", "dx", "dweight", "dbias",
             "dx-infer", "y-infer"]
    for nt in (2, 3, 4):
        for nm, a1, a2 in zip(names, results[1], results[nt]):
            assert a1 == a2, f"{nm} differs between 1 and {nt} threads"
    # and the results are right
    assert_close(np.frombuffer(results[1][1], dtype=dtype), R.batch_norm_train(x, axis=axis)[1],
                 dtype)


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

TORCH_LAYOUTS = [("NC", (16, 5)), ("NCL", (4, 3, 37)), ("NCHW", (3, 4, 9, 11)),
                 ("NCHW-8x8", (2, 3, 8, 8)), ("NCDHW", (2, 3, 4, 5, 6)), ("few-C3", (4, 3, 6000))]


@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape", TORCH_LAYOUTS, ids=[t[0] for t in TORCH_LAYOUTS])
def test_against_torch(rng, name, shape, dtype, weighted):
    torch = pytest.importorskip("torch")
    x = channel_data(rng, shape, 1, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    w, b, rm, rv = params(rng, c, dtype)
    if not weighted:
        w = b = None
    momentum, eps = 0.2, 1e-4
    T = torch.from_numpy
    tw = None if w is None else T(w.copy())
    tb = None if b is None else T(b.copy())
    trm, trv = T(rm.copy()), T(rv.copy())
    ty, tmean, tinvstd = torch.ops.aten.native_batch_norm(T(x.copy()), tw, tb, trm, trv, True,
                                                          momentum, eps)
    rm1, rv1 = rm.copy(), rv.copy()
    with threads(2):
        fwd = cnorm.batch_norm_forward(x, w, b, rm1, rv1, momentum=momentum, eps=eps)
    assert_close(fwd.y, ty.numpy(), dtype, err_msg="y")
    assert_close(fwd.mean, tmean.numpy(), dtype, err_msg="mean")
    assert_close(fwd.invstd, tinvstd.numpy(), dtype, err_msg="invstd")
    assert_close(rm1, trm.numpy(), dtype, err_msg="running_mean")
    assert_close(rv1, trv.numpy(), dtype, err_msg="running_var")

    # inference with the updated running statistics
    ty_inf = torch.ops.aten.native_batch_norm(T(x.copy()), tw, tb, trm, trv, False, momentum,
                                              eps)[0]
    y_inf = cnorm.batch_norm(x, w, b, rm1, rv1, eps=eps)
    assert_close(y_inf, ty_inf.numpy(), dtype, err_msg="y inference")

    # backward, training and inference
    mask = [True, w is not None, w is not None]
    tdx, tdw, tdb = torch.ops.aten.native_batch_norm_backward(
        T(dy.copy()), T(x.copy()), tw, trm, trv, tmean, tinvstd, True, eps, mask)
    g = cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w)
    assert_close(g.dx, tdx.numpy(), dtype, err_msg="dx")
    if w is not None:
        assert_close(g.dweight, tdw.numpy(), dtype, err_msg="dweight")
        assert_close(g.dbias, tdb.numpy(), dtype, err_msg="dbias")
    tdx, tdw, tdb = torch.ops.aten.native_batch_norm_backward(
        T(dy.copy()), T(x.copy()), tw, trm, trv, None, None, False, eps, mask)
    invstd_inf = (1.0 / np.sqrt(rv1.astype(np.float64) + eps)).astype(dtype)
    g = cnorm.batch_norm_backward(dy, x, rm1, invstd_inf, w, training=False)
    assert_close(g.dx, tdx.numpy(), dtype, err_msg="dx inference")
    if w is not None:
        assert_close(g.dweight, tdw.numpy(), dtype, err_msg="dweight inference")
        assert_close(g.dbias, tdb.numpy(), dtype, err_msg="dbias inference")


@pytest.mark.parametrize("shape,axis,expected", [
    ((4, 3, 16, 8), 1, "two_pass"),     # runs of 128 values (Welford's upper end until 3d6f36a)
    ((4, 3, 127), 1, "two_pass"),
    ((6, 5, 7, 7), 1, "two_pass"),
    ((4, 3, 16), 1, "two_pass"),        # the shortest runs of the planar kernels
    ((64, 3, 15), 1, "two_pass"),       # and the longest of the row-major ones
    ((64, 3), 1, "two_pass"),
    ((4, 16, 8, 3), -1, "two_pass"),    # channels-last: runs of 1
], ids=["run128", "run127", "run49", "run16", "run15", "NC", "channels-last"])
def test_method_none_is_the_documented_choice(rng, shape, axis, expected):
    # The two methods round differently in float64 (float32 statistics round
    # both to the same values), so method=None must match one of them bit for
    # bit; the data are far from zero so that they surely differ.
    x = rng.standard_normal(shape) + 3.0
    other = "welford" if expected == "two_pass" else "two_pass"
    got = cnorm.batch_norm_forward(x, axis=axis)
    want = cnorm.batch_norm_forward(x, axis=axis, method=expected)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b, err_msg=expected)
    alt = cnorm.batch_norm_forward(x, axis=axis, method=other)
    assert not all(np.array_equal(a, b) for a, b in zip(got[1:], alt[1:]))
