"""Batch normalization: what is specific to it.

The contract every op shares (training forward and backward against the
reference for every layout, dtype, method, affine variant and stride pattern,
out= buffers, thread counts, streaming stores, array-likes, casts, eps,
activations, non-finite and constant channels, finite differences) is
checked in tests/test_contract.py, over the cases of OP["batch_norm"]; this
file takes its layouts from there too.  Left here: running statistics,
inference (the fixed-statistics forward, its fast path and its backward),
method=None's choice, float32 accuracy on ill-conditioned data, empty and
zero-channel inputs, and PyTorch.

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
from test_contract import OP, _stream
from test_half import assert_rounded_once

DTYPES = [np.float32, np.float64]
METHODS = [None, "two_pass", "welford"]

# (id, shape, axis, threads): the batch-norm cases of the contract, one per kernel path
LAYOUTS = OP["batch_norm"].cases
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


def infer_invstd(rv, dtype, eps=1e-5):
    return (1.0 / np.sqrt(rv.astype(np.float64) + eps)).astype(dtype)


# ---------------------------------------------------------------------------
# Running statistics
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt", LAYOUTS, ids=LAYOUT_IDS)
def test_training_updates_the_running_statistics(rng, name, shape, axis, nt, dtype, method):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    rm2, rv2 = rm.copy(), rv.copy()
    with threads(nt):
        fwd = cnorm.batch_norm_forward(x, w, b, rm, rv, momentum=0.1, axis=axis, method=method)
        y = cnorm.batch_norm(x, w, b, rm2, rv2, training=True, momentum=0.1, axis=axis,
                             method=method)
    _, mean_ref, var_ref, _ = R.batch_norm_train(x, w, b, axis=axis)
    n = x.size // c
    rm_ref, rv_ref = R.running_stats_update(rm0, rv0, mean_ref, var_ref, n, 0.1)
    assert rm.dtype == dtype and rv.dtype == dtype
    assert_close(rm, rm_ref, dtype, err_msg="running_mean")
    assert_close(rv, rv_ref, dtype, err_msg="running_var")
    # batch_norm(training=True) runs the same kernel: the same bits, the same update
    assert np.array_equal(y, fwd.y)
    assert np.array_equal(rm2, rm) and np.array_equal(rv2, rv)


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
        buf, inplace = np.empty_like(x), x.copy()
        assert cnorm.batch_norm(x, w, b, rm, rv, axis=axis, out=buf) is buf
        assert cnorm.batch_norm(inplace, w, b, rm, rv, axis=axis, out=inplace) is inplace
        assert not calls, "the common inference call, out= included, should take the fast path"
        np.testing.assert_array_equal(buf, fast)
        np.testing.assert_array_equal(inplace, fast)
        variants = {
            "fortran-out": lambda: cnorm.batch_norm(x, w, b, rm, rv, axis=axis,
                                                    out=np.asfortranarray(np.empty_like(x))),
            "view-of-x-out": lambda: (lambda xc: cnorm.batch_norm(xc, w, b, rm, rv, axis=axis,
                                                                  out=xc[...]))(x.copy()),
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
@pytest.mark.parametrize("name,shape,axis,nt", pick("NC", "NCL-rows", "NCHW", "NHWC"))
def test_training_and_backward_fast_paths_match_general_path(rng, monkeypatch, name, shape,
                                                             axis, nt, dtype):
    """The common training call (batch_norm(training=True), batch_norm_forward) and the
    common backward call take the fast path and give the general path's bits, running
    statistics included; every other spelling takes the general path."""
    x = channel_data(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    calls = count_calls(monkeypatch, cnorm.batchnorm)
    with threads(nt):
        rm_f, rv_f = rm.copy(), rv.copy()
        fast = cnorm.batch_norm(x, w, b, rm_f, rv_f, training=True, axis=axis)
        fwd = cnorm.batch_norm_forward(x, w, b, axis=axis)
        none = cnorm.batch_norm(x, training=True, axis=axis)
        grads = cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, axis=axis)
        frozen = cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, axis=axis,
                                           training=False)
        assert not calls, "the common calls should take the fast paths"
        rm_g, rv_g = rm.copy(), rv.copy()
        general = cnorm.batch_norm(x, w, b, rm_g, rv_g, training=np.True_, axis=axis)
        assert len(calls) == 1
        np.testing.assert_array_equal(general, fast)
        np.testing.assert_array_equal(rm_g, rm_f)
        np.testing.assert_array_equal(rv_g, rv_f)
        calls.clear()
        buf, inplace = np.empty_like(x), x.copy()
        got = cnorm.batch_norm_forward(x, w, b, axis=axis, out=buf)
        assert got.y is buf
        got_inplace = cnorm.batch_norm_forward(inplace, w, b, axis=axis, out=inplace)
        assert got_inplace.y is inplace
        rm_o, rv_o = rm.copy(), rv.copy()
        buf2 = np.empty_like(x)
        assert cnorm.batch_norm(x, w, b, rm_o, rv_o, training=True, axis=axis, out=buf2) is buf2
        assert not calls, "the common calls with out= should take the fast paths"
        for g, f in [*zip(got, fwd), *zip(got_inplace, fwd), (buf2, fast), (rm_o, rm_f),
                     (rv_o, rv_f)]:
            np.testing.assert_array_equal(g, f)
        variants = {
            "method": lambda: cnorm.batch_norm_forward(x, w, b, axis=axis, method="two_pass"),
            "fortran-out": lambda: cnorm.batch_norm_forward(
                x, w, b, axis=axis, out=np.asfortranarray(np.empty_like(x))),
            "list-weight": lambda: cnorm.batch_norm_forward(x, w.tolist(), b, axis=axis),
            "np.int64-axis": lambda: cnorm.batch_norm_forward(x, w, b, axis=np.int64(axis)),
            "fortran-x": lambda: cnorm.batch_norm_forward(np.asfortranarray(x), w, b, axis=axis),
        }
        for label, call in variants.items():
            n = len(calls)
            got = call()
            assert len(calls) == n + 1, f"{label} should take the general path"
            for g, f in zip(got, fwd):
                np.testing.assert_array_equal(g, f, err_msg=label)
        readonly = rm.copy()
        readonly.flags.writeable = False
        with pytest.raises(ValueError, match="running_mean"):
            cnorm.batch_norm(x, w, b, readonly, rv.copy(), training=True, axis=axis)
        dx_buf, dy_inplace = np.empty_like(x), dy.copy()
        assert cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, axis=axis,
                                         out=dx_buf).dx is dx_buf
        into_dy = cnorm.batch_norm_backward(dy_inplace, x, fwd.mean, fwd.invstd, w, axis=axis,
                                            out=dy_inplace)
        assert into_dy.dx is dy_inplace
        for label, g in {"out": (dx_buf, *grads[1:]), "out-dy": into_dy,
                         "list-dy": cnorm.batch_norm_backward(dy.tolist(), x, fwd.mean,
                                                              fwd.invstd, w, axis=axis),
                         "fortran-dy": cnorm.batch_norm_backward(np.asfortranarray(dy), x,
                                                                 fwd.mean, fwd.invstd, w,
                                                                 axis=axis)}.items():
            for a, f in zip(g, grads):
                np.testing.assert_array_equal(a, f, err_msg=label)
    ref = R.batch_norm_train(x, w, b, axis=axis)
    assert_close(fast, ref[0], dtype)
    assert_close(none, R.batch_norm_train(x, axis=axis)[0], dtype)
    rdx = R.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, axis=axis)
    assert_close(grads.dx, rdx[0], dtype)
    assert_close(frozen.dx, R.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w,
                                                  training=False, axis=axis)[0], dtype)


@pytest.mark.parametrize("name,shape,axis,nt", pick("NC", "NCL-rows", "NCHW", "NHWC"))
def test_float16_common_calls_take_the_fast_paths(rng, monkeypatch, name, shape, axis, nt):
    """float16 x with float32 parameters and statistics is a common call too: training,
    inference and backward take the fast paths and give the general path's bits."""
    x = channel_data(rng, shape, axis, np.float16)
    dy = rng.standard_normal(shape).astype(np.float16)
    w, b, rm, rv = params(rng, nchan(shape, axis), np.float32)
    calls = count_calls(monkeypatch, cnorm.batchnorm)
    with threads(nt):
        rm_f, rv_f = rm.copy(), rv.copy()
        fast = cnorm.batch_norm(x, w, b, rm_f, rv_f, training=True, axis=axis)
        fwd = cnorm.batch_norm_forward(x, w, b, axis=axis)
        infer = cnorm.batch_norm(x, w, b, rm, rv, axis=axis)
        grads = cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, axis=axis)
        assert not calls, "the common float16 calls should take the fast paths"
        rm_g, rv_g = rm.copy(), rv.copy()
        general = cnorm.batch_norm(x, w, b, rm_g, rv_g, training=True, axis=axis,
                                   method="two_pass")
        gfwd = cnorm.batch_norm_forward(x, w, b, axis=axis, method="two_pass")
        ginfer = cnorm.batch_norm(x, w, b, rm, rv, axis=axis, method="two_pass")
        # float16 weights are taken too, converted to float32: the general path
        half_w = cnorm.batch_norm_forward(x, w.astype(np.float16).astype(np.float32), b,
                                          axis=axis)
        assert len(calls) == 3
        ggrads = cnorm.batch_norm_backward(np.asfortranarray(dy), x, fwd.mean, fwd.invstd, w,
                                           axis=axis)
    for g, f in [(general, fast), (rm_g, rm_f), (rv_g, rv_f), *zip(gfwd, fwd),
                 (ginfer, infer), *zip(ggrads, grads)]:
        np.testing.assert_array_equal(g, f)
    assert fast.dtype == infer.dtype == grads.dx.dtype == np.float16
    assert fwd.mean.dtype == grads.dweight.dtype == np.float32
    assert half_w.y.dtype == np.float16
    ref = R.batch_norm_train(x.astype(np.float64), w, b, axis=axis)
    assert_rounded_once(fast, ref[0], np.float16, "float16 training")



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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", [
    "none", "weight-only", "bias-only", "lists", "float64-arrays", "int-list-weight",
    "strided-arrays",
])
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1),
                                             ("NHWC", (4, 5, 6, 7), -1)])
def test_inference_weight_bias_variants(rng, name, shape, axis, variant, dtype):
    """Inference casts weight and bias as training does (tests/test_contract.py)."""
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w64 = rng.uniform(0.5, 2.0, c)
    b64 = rng.uniform(-1, 1, c)
    w, b = {
        "none": (None, None),
        "weight-only": (w64.astype(dtype), None),
        "bias-only": (None, b64.astype(dtype)),
        "lists": (w64.astype(dtype).tolist(), b64.astype(dtype).tolist()),
        "float64-arrays": (w64, b64),
        "int-list-weight": (list(range(1, c + 1)), [int(v) for v in rng.integers(-3, 3, c)]),
        "strided-arrays": (np.repeat(w64.astype(dtype), 2)[::2],
                           np.repeat(b64.astype(dtype), 3)[::3]),
    }[variant]
    wr = None if w is None else np.asarray(w).astype(dtype)
    br = None if b is None else np.asarray(b).astype(dtype)
    copies = [None if v is None else np.array(v, copy=True) for v in (w, b)]
    rm, rv = rng.uniform(-1, 1, c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    y = cnorm.batch_norm(x, w, b, rm, rv, axis=axis)
    assert y.dtype == dtype
    assert_close(y, R.batch_norm_infer(x, rm, rv, wr, br, axis=axis), dtype)
    assert np.array_equal(y, cnorm.batch_norm(x, wr, br, rm, rv, axis=axis))
    for v, v_copy in zip((w, b), copies):
        if v is not None:
            assert np.array_equal(np.asarray(v), v_copy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt",
                         pick("NC-16", "NCL-rows", "NCHW-prime", "NHWC-7", "few-C3",
                              "NC-row-groups"))
def test_inference_relu(rng, name, shape, axis, nt, dtype):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    with threads(nt):
        y = cnorm.batch_norm(x, w, b, rm, rv, axis=axis, relu=True)
        y_plain = cnorm.batch_norm(x, w, b, rm, rv, axis=axis)
        assert np.array_equal(y, cnorm.batch_norm(x, w, b, rm, rv, axis=axis,
                                                  activation="relu"))
    ref = R.batch_norm_infer(x, rm, rv, w, b, axis=axis)
    assert y.dtype == dtype
    assert (y >= 0).all()
    assert (y == 0).any() and (y > 0).any()
    assert_close(y, np.maximum(ref, 0), dtype)
    assert np.array_equal(y, np.maximum(y_plain, 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1),
                                             ("NHWC", (4, 5, 6, 7), -1)])
def test_inference_relu_keeps_nan(rng, name, shape, axis, dtype):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    b[:] = -100.0  # every finite value would be clamped to 0
    pos = tuple(s // 2 for s in shape)
    x[pos] = np.nan
    y = cnorm.batch_norm(x, w, b, rm, rv, training=False, axis=axis, relu=True)
    # fixed statistics: only the NaN itself is NaN
    assert np.isnan(y[pos])
    assert np.isnan(y).sum() == 1
    assert (y[~np.isnan(y)] == 0).all()


# ---------------------------------------------------------------------------
# Memory layouts of the inputs, out=, results: inference and running statistics
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
        ("fortran", np.asfortranarray(base), 1),
        ("transposed-nhwc", nhwc.transpose(0, 3, 1, 2), 1),         # channels-last memory
        ("transposed-nc", np.ascontiguousarray(base[:, :, 0, 0].T).T, 1),
        ("transposed-axis-last", big.transpose(0, 2, 3, 1), -1),
        ("channel-slice", base[:, ::2], 1),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("view_id", [v[0] for v in _views(np.random.default_rng(0), np.float64)])
def test_noncontiguous_inputs_inference_and_running_stats(rng, view_id, dtype):
    x, axis = {v[0]: (v[1], v[2]) for v in _views(rng, dtype)}[view_id]
    assert not x.flags.c_contiguous
    xc = np.ascontiguousarray(x)
    x_copy = x.copy()
    c = nchan(x.shape, axis)
    w, b, rm, rv = params(rng, c, dtype)
    rm1, rv1, rm2, rv2 = rm.copy(), rv.copy(), rm.copy(), rv.copy()
    cnorm.batch_norm_forward(x, w, b, rm1, rv1, axis=axis)
    cnorm.batch_norm_forward(xc, w, b, rm2, rv2, axis=axis)
    assert np.array_equal(rm1, rm2) and np.array_equal(rv1, rv2)

    y1 = cnorm.batch_norm(x, w, b, rm, rv, axis=axis, relu=True)
    y2 = cnorm.batch_norm(xc, w, b, rm, rv, axis=axis, relu=True)
    assert np.array_equal(y1, y2) and y1.flags.c_contiguous
    assert_close(y1, np.maximum(R.batch_norm_infer(x, rm, rv, w, b, axis=axis), 0), dtype)

    # inference backward with non-contiguous dy and x
    dy = rng.standard_normal(x.shape[::-1]).astype(dtype).T  # Fortran-ordered view
    invstd = infer_invstd(rv, dtype)
    g1 = cnorm.batch_norm_backward(dy, x, rm, invstd, w, training=False, axis=axis)
    g2 = cnorm.batch_norm_backward(np.ascontiguousarray(dy), xc, rm, invstd, w, training=False,
                                   axis=axis)
    for a1, a2 in zip(g1, g2):
        assert np.array_equal(a1, a2)
    assert np.array_equal(x, x_copy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1),
                                             ("NHWC", (4, 5, 6, 7), -1)])
def test_inference_out_argument(rng, name, shape, axis, dtype):
    x = channel_data(rng, shape, axis, dtype)
    c = nchan(shape, axis)
    w, b, rm, rv = params(rng, c, dtype)

    def call(xx, out=None):
        return cnorm.batch_norm(xx, w, b, rm, rv, training=False, axis=axis, out=out)

    expected = call(x)
    out = np.full(shape, 7.0, dtype=dtype)
    assert call(x, out) is out and np.array_equal(out, expected)
    big = np.full(shape[:-1] + (2 * shape[-1],), -3.0, dtype=dtype)
    view = big[..., 1::2]
    assert call(x, view) is view and np.array_equal(view, expected)
    assert (big[..., 0::2] == -3.0).all()
    fout = np.asfortranarray(np.zeros(shape, dtype=dtype))
    assert call(x, fout) is fout and np.array_equal(fout, expected)
    xi = x.copy()
    assert call(xi, xi) is xi and np.array_equal(xi, expected)
    big = np.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
    xv = big[..., ::2]
    xv[...] = x
    assert call(xv, xv) is xv and np.array_equal(xv, expected)
    assert (big[..., 1::2] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1),
                                             ("NHWC", (4, 5, 6, 7), -1)])
def test_inference_backward_out_argument(rng, name, shape, axis, dtype):
    x = channel_data(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = nchan(shape, axis)
    w, _, rm, rv = params(rng, c, dtype)
    invstd = infer_invstd(rv, dtype)
    expected = cnorm.batch_norm_backward(dy, x, rm, invstd, w, training=False, axis=axis)

    def check(dd, xx, out):
        res = cnorm.batch_norm_backward(dd, xx, rm, invstd, w, training=False, axis=axis,
                                        out=out)
        assert res.dx is out
        for a1, a2 in zip(res, expected):
            assert np.array_equal(a1, a2)

    check(dy, x, np.empty(shape, dtype=dtype))
    big = np.full(shape[:-1] + (3 * shape[-1],), 5.0, dtype=dtype)
    check(dy, x, big[..., ::3])
    assert (big[..., 1::3] == 5.0).all() and (big[..., 2::3] == 5.0).all()
    dyi = dy.copy()
    check(dyi, x, dyi)
    xi = x.copy()
    check(dy, xi, xi)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1),
                                             ("NHWC", (4, 5, 6, 7), -1)])
def test_inference_results_are_new_and_inputs_unmodified(rng, name, shape, axis, dtype):
    for x in (channel_data(rng, shape, axis, dtype),
              np.asfortranarray(channel_data(rng, shape, axis, dtype))):
        c = nchan(shape, axis)
        w, b, rm, rv = params(rng, c, dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        inputs = (x, w, b, rm, rv, dy)
        copies = [a.copy() for a in inputs]
        y = cnorm.batch_norm(x, w, b, rm, rv, axis=axis)
        g = cnorm.batch_norm_backward(dy, x, rm, rv, w, training=False, axis=axis)
        for res in (y, g.dx):
            assert type(res) is np.ndarray
            assert res.dtype == dtype and res.shape == shape
            assert res.flags.c_contiguous and res.flags.owndata and res.flags.writeable
            for inp in inputs:
                assert not np.shares_memory(res, inp)
        for res in (g.dweight, g.dbias):
            assert res.dtype == dtype and res.shape == (c,)
        for a, a_copy in zip(inputs, copies):
            assert np.array_equal(a, a_copy)


def test_inference_nested_lists(rng):
    """Running statistics may be lists in inference (training updates them in place)."""
    x = channel_data(rng, (5, 3, 4), 1, np.float64)
    rm, rv = [0.1, -0.2, 0.3], [1.0, 2.0, 0.5]
    y = cnorm.batch_norm(x.tolist(), [1.0, 2.0, 3.0], (0.5, 0.0, -0.5), rm, rv)
    assert type(y) is np.ndarray and y.dtype == np.float64 and y.shape == (5, 3, 4)
    y_arr = cnorm.batch_norm(x, np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, -0.5]),
                             np.array(rm), np.array(rv))
    assert np.array_equal(y, y_arr)
    g = cnorm.batch_norm_backward(np.ones_like(x).tolist(), x.tolist(), rm, rv, training=False)
    g_arr = cnorm.batch_norm_backward(np.ones_like(x), x, np.array(rm), np.array(rv),
                                      training=False)
    for a1, a2 in zip(g, g_arr):
        assert np.array_equal(a1, a2)


# ---------------------------------------------------------------------------
# Inference backward (the training backward is in tests/test_contract.py)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt", LAYOUTS, ids=LAYOUT_IDS)
def test_inference_backward(rng, name, shape, axis, nt, dtype, weighted):
    x = channel_data(rng, shape, axis, dtype)
    dy = channel_data(rng, shape, axis, dtype, offset=0.5)
    c = nchan(shape, axis)
    w, _, rm, rv = params(rng, c, dtype)
    if not weighted:
        w = None
    invstd = infer_invstd(rv, dtype)
    with threads(nt):
        g = cnorm.batch_norm_backward(dy, x, rm, invstd, w, training=False, axis=axis)
    dx_ref, dw_ref, db_ref = R.batch_norm_backward(dy, x, rm, invstd, w, training=False,
                                                   axis=axis)
    assert g.dx.dtype == dtype and g.dx.shape == shape
    assert g.dweight.dtype == dtype and g.dweight.shape == (c,)
    assert g.dbias.dtype == dtype and g.dbias.shape == (c,)
    assert_close(g.dx, dx_ref, dtype, err_msg="dx")
    assert_close(g.dweight, dw_ref, dtype, err_msg="dweight")
    assert_close(g.dbias, db_ref, dtype, err_msg="dbias")


@pytest.mark.parametrize("name,shape,axis", [("NC", (16, 5), 1), ("NCHW", (3, 4, 9, 11), 1)])
def test_inference_backward_casts_dy_and_statistics(rng, name, shape, axis):
    x = channel_data(rng, shape, axis, np.float32)
    c = nchan(shape, axis)
    _, _, rm, rv = params(rng, c, np.float32)
    invstd = infer_invstd(rv, np.float32)
    dy = rng.standard_normal(shape)
    dy_copy = dy.copy()
    g = cnorm.batch_norm_backward(dy, x, rm, invstd, training=False, axis=axis)
    g32 = cnorm.batch_norm_backward(dy.astype(np.float32), x, rm, invstd, training=False,
                                    axis=axis)
    assert g.dx.dtype == np.float32 and g.dweight.dtype == np.float32
    for a1, a2 in zip(g, g32):
        assert np.array_equal(a1, a2)
    assert np.array_equal(dy, dy_copy)
    g64s = cnorm.batch_norm_backward(dy, x, rm.astype(np.float64), invstd.astype(np.float64),
                                     training=False, axis=axis)
    for a1, a2 in zip(g, g64s):
        assert np.array_equal(a1, a2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("rows,cols", [(5463, 3), (1029, 64), (703, 100), (257, 256), (50, 64)])
@pytest.mark.parametrize("nt", [1, 2])
def test_short_rows_in_spans_give_each_rows_bits(rng, dtype, rows, cols, nt):
    """The row-major output passes of at least 16384 elements take short rows several at
    a time, with the coefficients repeated (cols = 3, 64, 100 and 256 make spans of 170,
    8, 5 and 2 rows; each row count leaves rows over, and the larger ones use both
    threads); (50, 64) is too small for spans.  Every row
    must get the bits a call on that row alone gives (which goes one row at a time),
    in inference and in inference backward."""
    pdt = np.float32 if dtype == np.float16 else dtype
    x = (rng.standard_normal((rows, cols)) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(cols)).astype(pdt)
    b = (0.1 * rng.standard_normal(cols)).astype(pdt)
    rm = (0.2 * rng.standard_normal(cols)).astype(pdt)
    rv = (0.5 + rng.random(cols)).astype(pdt)
    invstd = (1 / np.sqrt(rv.astype(np.float64) + 1e-5)).astype(pdt)
    with threads(nt):
        y = cnorm.batch_norm(x, w, b, rm, rv, axis=-1)
        g = cnorm.batch_norm_backward(dy, x, rm, invstd, w, training=False, axis=-1)
    y1 = np.concatenate([cnorm.batch_norm(x[i:i + 1], w, b, rm, rv, axis=-1)
                         for i in range(rows)])
    dx1 = np.concatenate([cnorm.batch_norm_backward(dy[i:i + 1], x[i:i + 1], rm, invstd, w,
                                                    training=False, axis=-1).dx
                          for i in range(rows)])
    assert y.tobytes() == y1.tobytes()
    assert g.dx.tobytes() == dx1.tobytes()
    ref = R.batch_norm_infer(x, rm, rv, w, b, axis=-1)
    if dtype == np.float16:
        assert_rounded_once(y, ref, dtype, "y")
    else:
        assert_close(y, ref, dtype, err_msg="y")


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

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt", pick("NCL-prime", "NCHW-prime", "few-C3"))
def test_nonfinite_channel_reaches_only_its_running_statistics(rng, name, shape, axis, nt,
                                                               dtype):
    """NaN and inf propagate into the running statistics of their channel, as in PyTorch;
    the other channels' are those of a batch without the channel."""
    c = nchan(shape, axis)
    k = c // 2
    for bad in (np.nan, np.inf, -np.inf):
        for method in ("two_pass", "welford"):
            x = channel_data(rng, shape, axis, dtype)
            w, b, rm, rv = params(rng, c, dtype)
            pos = [s // 3 for s in shape]
            pos[axis % len(shape)] = k
            x[tuple(pos)] = bad
            rm_bad, rv_bad = rm.copy(), rv.copy()
            keep = [j for j in range(c) if j != k]
            rm_good, rv_good = rm[keep].copy(), rv[keep].copy()
            with threads(nt):
                cnorm.batch_norm_forward(x, w, b, rm_bad, rv_bad, axis=axis, method=method)
                cnorm.batch_norm_forward(np.delete(x, k, axis=axis % x.ndim), w[keep], b[keep],
                                         rm_good, rv_good, axis=axis, method=method)
            what = (bad, method)
            assert not np.isfinite(rm_bad[k]) and not np.isfinite(rv_bad[k]), what
            assert np.array_equal(rm_bad[keep], rm_good), what
            assert np.array_equal(rv_bad[keep], rv_good), what


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis", DETERMINISM_SHAPES,
                         ids=[s[0] for s in DETERMINISM_SHAPES])
def test_thread_count_does_not_change_running_stats_or_inference(rng, name, shape, axis, dtype):
    """The training forward and backward are checked for every op in tests/test_contract.py;
    here the running statistics (both methods), the inference forward and its backward."""
    x = channel_data(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = nchan(shape, axis)
    w, b, rm0, rv0 = params(rng, c, dtype)
    invstd = infer_invstd(rv0, dtype)
    results = {}
    for nt in (1, 2, 3, 4):
        out = []
        with threads(nt):
            for method in ("two_pass", "welford"):
                rm, rv = rm0.copy(), rv0.copy()
                cnorm.batch_norm_forward(x, w, b, rm, rv, axis=axis, method=method)
                out += [rm, rv]
            gi = cnorm.batch_norm_backward(dy, x, rm0, invstd, w, training=False, axis=axis)
            yi = cnorm.batch_norm(x, w, b, rm0, rv0, axis=axis, relu=True)
        results[nt] = [a.tobytes() for a in (*out, *gi, yi)]
    names = ["running_mean two_pass", "running_var two_pass", "running_mean welford",
             "running_var welford", "dx-infer", "dweight-infer", "dbias-infer", "y-infer"]
    for nt in (2, 3, 4):
        for nm, a1, a2 in zip(names, results[1], results[nt]):
            assert a1 == a2, f"{nm} differs between 1 and {nt} threads"


STREAM_BN = [("NC", (16, 5), 1, 1), ("NC-col-tiles", (70, 1100), 1, 2),
             ("NC-row-groups", (30000, 3), 1, 2), ("NCHW", (3, 4, 9, 11), 1, 1),
             ("NHWC", (4, 5, 6, 7), -1, 1), ("few-C3", (4, 3, 6000), 1, 2),
             ("planar-big", (4, 8, 3000), 1, 2), ("NCL-rows", (6, 4, 3), 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt", STREAM_BN, ids=[s[0] for s in STREAM_BN])
def test_streaming_stores_give_the_same_running_stats_and_inference(rng, monkeypatch, name, shape,
                                                                    axis, nt, dtype):
    x = channel_data(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = nchan(shape, axis)
    w, b, rm0, rv0 = params(rng, c, dtype)
    invstd = infer_invstd(rv0, dtype)

    def run():
        res = {}
        with threads(nt):
            for method in ("two_pass", "welford"):
                rm, rv = rm0.copy(), rv0.copy()
                cnorm.batch_norm_forward(x, w, b, rm, rv, axis=axis, method=method)
                res.update({f"{method} rm": rm, f"{method} rv": rv})
            res["infer"] = cnorm.batch_norm(x, w, b, rm0, rv0, axis=axis)
            res["infer relu"] = cnorm.batch_norm(x, w, b, rm0, rv0, axis=axis, relu=True)
            buf = np.full(x.size + 1, 3.0, dtype)
            res["infer offset-out"] = cnorm.batch_norm(x, w, b, rm0, rv0, axis=axis,
                                                       out=buf[1:].reshape(shape))
            assert buf[0] == 3.0
            g = cnorm.batch_norm_backward(dy, x, rm0, invstd, w, training=False, axis=axis)
            res.update({"dx": g.dx, "dweight": g.dweight, "dbias": g.dbias})
            buf = np.full(x.size + 1, 3.0, dtype)
            res["dx offset-out"] = cnorm.batch_norm_backward(
                dy, x, rm0, invstd, w, training=False, axis=axis, out=buf[1:].reshape(shape)).dx
            assert buf[0] == 3.0
        return res

    _stream(monkeypatch, False)
    plain = run()
    _stream(monkeypatch, True)
    streamed = run()
    assert plain.keys() == streamed.keys()
    for key in plain:
        assert streamed[key].tobytes() == plain[key].tobytes(), key
    assert_close(plain["infer"], R.batch_norm_infer(x, rm0, rv0, w, b, axis=axis), dtype)


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


# ---------------------------------------------------------------------------
# Which calls stream: inference by the whole LLC, training by a quarter of it
# ---------------------------------------------------------------------------

class _Recorder:
    """Stands in for the kernel module: records the streaming argument (or threshold)
    of the inference and training calls, and forwards every call."""

    def __init__(self, real):
        self.real = real
        self.seen = []

    def __getattr__(self, name):
        f = getattr(self.real, name)
        where = {"bn_infer": -1, "bn_train": -1, "bn_infer_fast": 8, "bn_train_fast": 9}
        if name not in where:
            return f

        def recording(*args):
            self.seen.append((name, args[where[name]]))
            return f(*args)
        return recording


def test_inference_streams_past_the_llc_and_training_past_a_quarter(rng, monkeypatch):
    rec = _Recorder(cnorm.batchnorm._kernels)
    monkeypatch.setattr(cnorm.batchnorm, "_kernels", rec)
    monkeypatch.setattr(cnorm._dispatch, "STREAM_BYTES", 1000)
    monkeypatch.setattr(cnorm._dispatch, "ONE_PASS_STREAM_BYTES", 4000)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    for n, infer_streams in ((100, False), (200, True)):     # 2400 and 4800 bytes moved
        x = rng.standard_normal((n, 3)).astype(np.float32)
        rec.seen.clear()
        cnorm.batch_norm(x, w, b, rm, rv)                            # fast path
        cnorm.batch_norm(x, w, b, rm, rv, eps=np.float32(1e-5))      # general path
        cnorm.batch_norm(x, w, b, training=True)
        cnorm.batch_norm(x, w, b, training=True, eps=np.float32(1e-5))
        # (the general calls try the fast path first, which declines them)
        assert rec.seen == [("bn_infer_fast", 4000)] * 2 + [("bn_infer", infer_streams)] \
            + [("bn_train_fast", 1000)] * 2 + [("bn_train", True)], rec.seen
