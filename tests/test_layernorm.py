"""Correctness of cnorm's layer normalization against the float64 reference.

The Python layer presents x to the kernels as a C-contiguous (R, H) matrix: one
row per sample, H the number of normalised elements.  The kernel paths:

* rows are spread over threads when R * H >= 2 * 32768 (so the cases that must
  run multi-threaded set the thread count explicitly);
* a row's statistics are computed in blocks of CHUNK = 4096 elements, merged in
  order (H > 4096: several blocks per row);
* outputs are written with streaming stores when the bytes moved exceed the
  last-level cache (forced here by setting cnorm._dispatch.STREAM_BYTES to 0);
* backward sums dweight and dbias over row blocks of at least 65536 elements
  (at most 64 blocks), merged in order;
* layer_norm has a fast path for the common call (C-contiguous float ndarray, int
  normalized_shape, ready weight/bias, float eps, no method, no out); every
  other call goes the general way.  Both must give the same bits.
"""

import math

import numpy as np
import pytest

import cnorm
import cnorm._dispatch
import cnorm.layernorm
from cnorm import _reference as R
from conftest import assert_close, channel_data, count_calls, threads

DTYPES = [np.float32, np.float64]
METHODS = [None, "two_pass", "welford"]
AFFINE = ["none", "weight", "bias", "both"]


def as_shape(normalized_shape):
    """normalized_shape as a tuple."""
    return (normalized_shape,) if np.ndim(normalized_shape) == 0 else tuple(normalized_shape)


def lead_shape(shape, normalized_shape):
    return tuple(shape[:len(shape) - len(as_shape(normalized_shape))])


def row_data(rng, shape, normalized_shape, dtype=np.float64, offset=2.0, spread=1.5):
    """Random data whose samples (rows) have different means and standard deviations."""
    shape = tuple(shape)
    lead = lead_shape(shape, normalized_shape)
    bshape = lead + (1,) * (len(shape) - len(lead))
    mu = rng.uniform(-offset, offset, size=lead).reshape(bshape)
    sd = rng.uniform(1.0 / spread, spread, size=lead).reshape(bshape)
    return (rng.standard_normal(shape) * sd + mu).astype(dtype)


def params(rng, normalized_shape, dtype):
    """weight (with both signs) and bias of the normalised shape."""
    ns = as_shape(normalized_shape)
    w = (rng.uniform(0.5, 2.0, ns) * rng.choice([-1.0, 1.0], ns)).astype(dtype)
    b = rng.uniform(-1.0, 1.0, ns).astype(dtype)
    return w, b


def affine(rng, normalized_shape, dtype, which):
    w, b = params(rng, normalized_shape, dtype)
    return (w if which in ("weight", "both") else None,
            b if which in ("bias", "both") else None)


def strided_copy(a):
    """The values of a in a non-contiguous view (every other element of a buffer)."""
    v = np.stack([a, a], axis=-1)[..., 0]
    assert a.size < 2 or not v.flags.c_contiguous
    return v


def assert_same(actual, expected, what=""):
    """Bitwise equality (NaNs in the same places), same dtype and shape."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.tobytes() == expected.tobytes(), \
        f"{what}: differs in {np.count_nonzero(actual != expected)} places"


# ---------------------------------------------------------------------------
# Forward against the reference
# ---------------------------------------------------------------------------

# (id, shape, normalized_shape, threads)
LAYOUTS = [
    ("1d", (37,), 37, 1),
    ("2d-int", (16, 5), 5, 1),
    ("2d-tuple", (16, 5), (5,), 1),
    ("2d-H1", (7, 1), 1, 1),
    ("2d-whole", (6, 9), (6, 9), 1),          # one sample: mean and rstd are 0-d
    ("3d-int", (4, 3, 37), 37, 1),
    ("3d-two", (4, 3, 37), (3, 37), 1),
    ("4d-one", (3, 4, 9, 11), (11,), 1),
    ("4d-two", (3, 4, 9, 11), (9, 11), 1),
    ("4d-three", (3, 4, 9, 11), (4, 9, 11), 1),
    ("multi-chunk", (7, 10000), 10000, 2),    # 3 statistics blocks per row, 2 threads
    ("multi-chunk-3d", (2, 4, 2500), (4, 2500), 1),
    ("threads", (600, 128), 128, 2),          # R * H = 76800: 2 threads
    ("threads-4d", (5, 40, 4, 100), (4, 100), 2),
]
LAYOUT_IDS = [lay[0] for lay in LAYOUTS]


def pick(*names):
    found = [pytest.param(*lay, id=lay[0]) for lay in LAYOUTS if lay[0] in names]
    assert len(found) == len(names)
    return found


@pytest.mark.parametrize("which", AFFINE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,ns,nt", LAYOUTS, ids=LAYOUT_IDS)
def test_forward(rng, name, shape, ns, nt, dtype, which):
    x = row_data(rng, shape, ns, dtype)
    w, b = affine(rng, ns, dtype, which)
    lead = lead_shape(shape, ns)
    y_ref, mean_ref, rstd_ref = R.layer_norm(x, ns, w, b)
    for method in METHODS:
        with threads(nt):
            fwd = cnorm.layer_norm_forward(x, ns, w, b, method=method)
            y = cnorm.layer_norm(x, ns, w, b, method=method)
        for arr, shp, nm in ((fwd.y, shape, "y"), (fwd.mean, lead, "mean"),
                             (fwd.rstd, lead, "rstd"), (y, shape, "layer_norm y")):
            assert type(arr) is np.ndarray, (method, nm)
            assert arr.dtype == dtype and arr.shape == shp, (method, nm, arr.dtype, arr.shape)
        assert isinstance(fwd, cnorm.LayerNormOutput)
        assert_close(fwd.y, y_ref, dtype, err_msg=f"y, method={method}")
        assert_close(fwd.mean, mean_ref, dtype, err_msg=f"mean, method={method}")
        assert_close(fwd.rstd, rstd_ref, dtype, err_msg=f"rstd, method={method}")
        # layer_norm runs the same kernel: the same bits
        assert_same(y, fwd.y, f"layer_norm vs layer_norm_forward, method={method}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [0.0, 0, 1e-3, 0.5, 2, np.float32(1e-2)],
                         ids=["0.0", "int0", "1e-3", "0.5", "int2", "np.float32"])
def test_eps_values(rng, eps, dtype):
    shape, ns = (8, 3, 20), (3, 20)
    x = row_data(rng, shape, ns, dtype)
    w, b = params(rng, ns, dtype)
    y_ref, mean_ref, rstd_ref = R.layer_norm(x, ns, w, b, eps=float(eps))
    for method in METHODS:
        fwd = cnorm.layer_norm_forward(x, ns, w, b, eps=eps, method=method)
        assert_close(fwd.y, y_ref, dtype, err_msg=f"y, method={method}")
        assert_close(fwd.mean, mean_ref, dtype, err_msg=f"mean, method={method}")
        assert_close(fwd.rstd, rstd_ref, dtype, err_msg=f"rstd, method={method}")
        assert_same(cnorm.layer_norm(x, ns, w, b, eps=eps, method=method), fwd.y, str(method))
    # the fast path (int normalized_shape, no method) agrees
    x2, w2, b2 = x.reshape(24, 20), w[0].copy(), b[0].copy()
    f2 = cnorm.layer_norm_forward(x2, (20,), w2, b2, eps=eps)
    assert_same(cnorm.layer_norm(x2, 20, w2, b2, eps=eps), f2.y, "fast path")
    assert_close(f2.y, R.layer_norm(x2, 20, w2, b2, eps=float(eps))[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", [
    "lists", "tuples", "float64-arrays", "float32-arrays", "int-list-weight", "strided-arrays",
    "fortran-arrays", "weight-list-only", "bias-float64-only",
])
@pytest.mark.parametrize("shape,ns", [((16, 5), 5), ((4, 3, 7), (3, 7))],
                         ids=["2d-int", "3d-tuple"])
def test_weight_bias_variants(rng, shape, ns, variant, dtype):
    x = row_data(rng, shape, ns, dtype)
    nshape = as_shape(ns)
    w64 = rng.uniform(0.5, 2.0, nshape)
    b64 = rng.uniform(-1, 1, nshape)
    if variant == "lists":
        w, b = w64.tolist(), b64.tolist()
    elif variant == "tuples":
        w, b = tuple(w64.astype(dtype).tolist()), tuple(b64.astype(dtype).tolist())
        if len(nshape) > 1:
            w = tuple(tuple(r) for r in w64.tolist())
            b = tuple(tuple(r) for r in b64.tolist())
    elif variant == "float64-arrays":      # float32 x: rounded to float32 first
        w, b = w64, b64
    elif variant == "float32-arrays":      # float64 x: widened exactly
        w, b = w64.astype(np.float32), b64.astype(np.float32)
    elif variant == "int-list-weight":
        w = rng.integers(-3, 4, nshape).tolist()
        b = rng.integers(-3, 4, nshape).tolist()
    elif variant == "strided-arrays":
        w = np.repeat(w64.astype(dtype), 2, axis=-1)[..., ::2]
        b = np.repeat(b64.astype(dtype), 3, axis=-1)[..., ::3]
    elif variant == "fortran-arrays":
        w, b = np.asfortranarray(w64.astype(dtype)), np.asfortranarray(b64.astype(dtype))
    elif variant == "weight-list-only":
        w, b = w64.tolist(), None
    else:
        w, b = None, b64
    wr = None if w is None else np.asarray(w).astype(dtype)
    br = None if b is None else np.asarray(b).astype(dtype)
    w_copy = None if w is None else np.array(w, copy=True)
    b_copy = None if b is None else np.array(b, copy=True)

    fwd = cnorm.layer_norm_forward(x, ns, w, b)
    y_ref, mean_ref, rstd_ref = R.layer_norm(x, ns, wr, br)
    assert fwd.y.dtype == dtype
    assert_close(fwd.y, y_ref, dtype)
    assert_close(fwd.mean, mean_ref, dtype)
    assert_close(fwd.rstd, rstd_ref, dtype)
    # the cast is to x's dtype: the same bits as with pre-cast arrays
    ref = cnorm.layer_norm_forward(x, ns, wr, br)
    for a1, a2, nm in zip(fwd, ref, ("y", "mean", "rstd")):
        assert_same(a1, a2, nm)
    assert_same(cnorm.layer_norm(x, ns, w, b), ref.y, "layer_norm")
    if w is not None:
        assert np.array_equal(np.asarray(w), w_copy)
    if b is not None:
        assert np.array_equal(np.asarray(b), b_copy)

    # backward casts weight the same way
    dy = rng.standard_normal(shape).astype(dtype)
    g1 = cnorm.layer_norm_backward(dy, x, fwd.mean, fwd.rstd, w)
    g2 = cnorm.layer_norm_backward(dy, x, fwd.mean, fwd.rstd, wr)
    for a1, a2, nm in zip(g1, g2, ("dx", "dweight", "dbias")):
        assert_same(a1, a2, nm)


# ---------------------------------------------------------------------------
# The fast path of layer_norm and the general path give the same bits
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["none", "weight", "both"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,nt", [((16, 768), 1), ((512, 768), 2), ((3, 10000), 1),
                                      ((2, 5, 37), 1)],
                         ids=["16x768", "512x768-2threads", "3x10000", "2x5x37"])
def test_fast_path_matches_general_path(rng, monkeypatch, shape, nt, dtype, which):
    h = shape[-1]
    x = row_data(rng, shape, h, dtype)
    w, b = affine(rng, h, dtype, which)
    calls = count_calls(monkeypatch, cnorm.layernorm)

    def other(v):
        """v of another dtype that holds the same values: float64 for float32 x, and
        float64 of non-native byte order for float64 x."""
        if v is None:
            return None
        return v.astype(np.float64) if dtype == np.float32 else v.astype(">f8")

    with threads(nt):
        fast = cnorm.layer_norm(x, h, w, b)
        assert not calls, "the common call should take the fast path"
        fast_eps = cnorm.layer_norm(x, h, w, b, eps=1e-5)
        assert not calls
        variants = {
            "tuple": lambda: cnorm.layer_norm(x, (h,), w, b),
            "np.int64": lambda: cnorm.layer_norm(x, np.int64(h), w, b),
            "eps-np.float64": lambda: cnorm.layer_norm(x, h, w, b, eps=np.float64(1e-5)),
            "method-two_pass": lambda: cnorm.layer_norm(x, h, w, b, method="two_pass"),
            "out": lambda: cnorm.layer_norm(x, h, w, b, out=np.empty_like(x)),
            "forward": lambda: cnorm.layer_norm_forward(x, h, w, b).y,
            "fortran-x": lambda: cnorm.layer_norm(np.asfortranarray(x), h, w, b),
        }
        if dtype == np.float64:
            variants["float-list-x"] = lambda: cnorm.layer_norm(x.tolist(), h, w, b)
        if w is not None:
            variants.update({
                "list-params": lambda: cnorm.layer_norm(
                    x, h, w.tolist(), None if b is None else b.tolist()),
                "strided-params": lambda: cnorm.layer_norm(
                    x, h, np.repeat(w, 2)[::2], None if b is None else np.repeat(b, 2)[::2]),
                "other-dtype-params": lambda: cnorm.layer_norm(x, h, other(w), other(b)),
            })
        results = {}
        for key, fn in variants.items():
            before = len(calls)
            results[key] = fn()
            assert len(calls) == before + 1, f"{key} should take the general path"
    assert_same(fast_eps, fast, "eps=1e-5 given")
    for key, y in results.items():
        assert_same(y, fast, key)
    assert_close(fast, R.layer_norm(x, h, w, b)[0], dtype)


# ---------------------------------------------------------------------------
# Memory layouts, out=, in place, array-likes
# ---------------------------------------------------------------------------

def _views(rng, dtype):
    """(id, x view, normalized_shape, threads): x that is not C-contiguous."""
    base = row_data(rng, (6, 8, 40), 40, dtype)
    b2 = row_data(rng, (40, 12), 12, dtype)
    big = row_data(rng, (600, 256), 256, dtype)
    return [
        ("step-last", base[:, :, ::2], 20, 1),
        ("step-rows", base[::2], (8, 40), 1),
        ("step-two-dims", base[:, ::2, 1::3], (4, 13), 1),
        ("reversed-rows", base[::-1], 40, 1),
        ("reversed-last", base[..., ::-1], 40, 1),
        ("reversed-all", base[::-1, ::-1, ::-1], (8, 40), 1),
        ("fortran", np.asfortranarray(base), 40, 1),
        ("fortran-tuple", np.asfortranarray(base), (8, 40), 1),
        ("transposed-3d", base.transpose(1, 0, 2), 40, 1),
        ("transposed-2d", b2.T, 40, 1),
        ("transposed-lead", base.transpose(2, 0, 1), (6, 8), 1),
        ("big-step", big[:, ::2], 128, 2),
        ("big-transposed", np.ascontiguousarray(big.T).T, 256, 2),
    ]


VIEW_IDS = [v[0] for v in _views(np.random.default_rng(0), np.float64)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("view_id", VIEW_IDS)
def test_noncontiguous_inputs(rng, view_id, dtype):
    _, x, ns, nt = {v[0]: v for v in _views(rng, dtype)}[view_id]
    assert not x.flags.c_contiguous
    xc = np.ascontiguousarray(x)
    x_copy = x.copy()
    w, b = params(rng, ns, dtype)
    with threads(nt):
        f1 = cnorm.layer_norm_forward(x, ns, w, b)
        f2 = cnorm.layer_norm_forward(xc, ns, w, b)
        for a1, a2, nm in zip(f1, f2, ("y", "mean", "rstd")):
            assert_same(a1, a2, nm)
            assert a1.flags.c_contiguous
        assert_same(cnorm.layer_norm(x, ns, w, b), f1.y, "layer_norm")
        assert_same(cnorm.layer_norm(x, ns), cnorm.layer_norm(xc, ns), "layer_norm, no affine")
        for method in ("two_pass", "welford"):
            assert_same(cnorm.layer_norm(x, ns, method=method),
                        cnorm.layer_norm(xc, ns, method=method), method)
        # backward with non-contiguous dy and x
        dy = rng.standard_normal(x.shape[::-1]).astype(dtype).T   # Fortran-ordered view
        g1 = cnorm.layer_norm_backward(dy, x, f1.mean, f1.rstd, w)
        g2 = cnorm.layer_norm_backward(np.ascontiguousarray(dy), xc, f1.mean, f1.rstd, w)
        for a1, a2, nm in zip(g1, g2, ("dx", "dweight", "dbias")):
            assert_same(a1, a2, nm)
            assert a1.flags.c_contiguous
        # non-contiguous mean/rstd/weight
        g3 = cnorm.layer_norm_backward(dy, x, strided_copy(f1.mean), strided_copy(f1.rstd),
                                       strided_copy(w))
        for a1, a2, nm in zip(g3, g2, ("dx", "dweight", "dbias")):
            assert_same(a1, a2, nm)
    assert_close(f1.y, R.layer_norm(x, ns, w, b)[0], dtype)
    assert np.array_equal(x, x_copy)


OUT_LAYOUTS = [("2d", (16, 5), 5, 1), ("4d-two", (3, 4, 9, 11), (9, 11), 1),
               ("multi-chunk", (7, 10000), 10000, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn", ["layer_norm", "forward"])
@pytest.mark.parametrize("name,shape,ns,nt", OUT_LAYOUTS, ids=[o[0] for o in OUT_LAYOUTS])
def test_out_argument(rng, name, shape, ns, nt, fn, dtype):
    x = row_data(rng, shape, ns, dtype)
    w, b = params(rng, ns, dtype)

    def call(xx, out=None):
        if fn == "layer_norm":
            return cnorm.layer_norm(xx, ns, w, b, out=out), None
        f = cnorm.layer_norm_forward(xx, ns, w, b, out=out)
        return f.y, f[1:]

    with threads(nt):
        expected, stats = call(x)

        def check(res, target, what):
            y, st = res
            assert y is target, what
            assert_same(target, expected, what)
            if stats is not None:
                assert_same(st[0], stats[0], what + " mean")
                assert_same(st[1], stats[1], what + " rstd")

        # C-contiguous out
        out = np.full(shape, 7.0, dtype=dtype)
        check(call(x, out), out, "C-contiguous out")
        # C-contiguous out that starts one element into a buffer (not 16-byte aligned)
        buf = np.full(x.size + 1, 5.0, dtype=dtype)
        out = buf[1:].reshape(shape)
        assert out.flags.c_contiguous
        check(call(x, out), out, "offset out")
        assert buf[0] == 5.0
        # non-contiguous out: a strided view of a bigger array
        big = np.full(shape[:-1] + (2 * shape[-1],), -3.0, dtype=dtype)
        view = big[..., 1::2]
        check(call(x, view), view, "strided out")
        assert (big[..., 0::2] == -3.0).all()
        # Fortran-ordered out
        fout = np.asfortranarray(np.zeros(shape, dtype=dtype))
        check(call(x, fout), fout, "Fortran out")
        # in place: out=x
        xi = x.copy()
        check(call(xi, xi), xi, "out=x")
        # in place on a non-contiguous x
        big = np.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
        xv = big[..., ::2]
        xv[...] = x
        check(call(xv, xv), xv, "out=x, strided")
        assert (big[..., 1::2] == 0).all()
        # in place on a reversed view
        xr = x[::-1].copy()[::-1]
        check(call(xr, xr), xr, "out=x, reversed")


BACKWARD_LAYOUTS = [("2d", (16, 5), 5, 1), ("3d-two", (4, 3, 37), (3, 37), 1),
                    ("multi-block", (600, 128), 128, 2)]


@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,ns,nt", BACKWARD_LAYOUTS,
                         ids=[o[0] for o in BACKWARD_LAYOUTS])
def test_backward_out_argument(rng, name, shape, ns, nt, dtype, weighted):
    x = row_data(rng, shape, ns, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = params(rng, ns, dtype)[0] if weighted else None
    f = cnorm.layer_norm_forward(x, ns, w)
    with threads(nt):
        g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
        for what, out, base in [
            ("C-contiguous", np.full(shape, 7.0, dtype), None),
            ("offset", np.full(x.size + 1, 5.0, dtype)[1:].reshape(shape), None),
            ("strided", None, np.full(shape[:-1] + (2 * shape[-1],), -3.0, dtype)),
            ("Fortran", np.asfortranarray(np.zeros(shape, dtype)), None),
        ]:
            if base is not None:
                out = base[..., 1::2]
            res = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w, out=out)
            assert res.dx is out, what
            for a1, a2, nm in zip(res, g, ("dx", "dweight", "dbias")):
                assert_same(a1, a2, f"{what} out: {nm}")
            if base is not None:
                assert (base[..., 0::2] == -3.0).all()


@pytest.mark.parametrize("target", ["dy", "x", "dy-strided", "x-strided"])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,ns,nt", BACKWARD_LAYOUTS,
                         ids=[o[0] for o in BACKWARD_LAYOUTS])
def test_backward_in_place(rng, name, shape, ns, nt, dtype, weighted, target):
    """out=dy and out=x are documented as allowed: dx, dweight and dbias must be the
    ones computed into a separate buffer."""
    x = row_data(rng, shape, ns, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = params(rng, ns, dtype)[0] if weighted else None
    f = cnorm.layer_norm_forward(x, ns, w)
    with threads(nt):
        g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
        if target.endswith("strided"):
            holder = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
            xx, dd = x, dy
            if target.startswith("x"):
                xx = holder[..., ::2]
                xx[...] = x
                buf = xx
            else:
                dd = holder[..., ::2]
                dd[...] = dy
                buf = dd
        else:
            xx, dd = x.copy(), dy.copy()
            buf = xx if target == "x" else dd
        res = cnorm.layer_norm_backward(dd, xx, f.mean, f.rstd, w, out=buf)
    assert res.dx is buf
    for a1, a2, nm in zip(res, g, ("dx", "dweight", "dbias")):
        assert_same(a1, a2, f"out={target}: {nm}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,ns,nt", pick("2d-int", "4d-two", "multi-chunk", "threads"))
def test_inputs_not_modified_and_outputs_new(rng, name, shape, ns, nt, dtype):
    x = row_data(rng, shape, ns, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = params(rng, ns, dtype)
    copies = [a.copy() for a in (x, dy, w, b)]
    with threads(nt):
        y = cnorm.layer_norm(x, ns, w, b)
        f = cnorm.layer_norm_forward(x, ns, w, b, method="welford")
        mean_copy, rstd_copy = f.mean.copy(), f.rstd.copy()
        g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
    for a, c, nm in zip((x, dy, w, b, f.mean, f.rstd), copies + [mean_copy, rstd_copy],
                        ("x", "dy", "weight", "bias", "mean", "rstd")):
        assert_same(a, c, f"{nm} was modified")
    outputs = {"layer_norm y": y, "y": f.y, "mean": f.mean, "rstd": f.rstd, "dx": g.dx,
               "dweight": g.dweight, "dbias": g.dbias}
    inputs = {"x": x, "dy": dy, "weight": w, "bias": b}
    for nm, o in outputs.items():
        assert type(o) is np.ndarray, nm
        assert o.dtype == dtype, nm
        assert o.flags.c_contiguous and o.flags.writeable, nm
        for inm, i in inputs.items():
            assert not np.shares_memory(o, i), f"{nm} shares memory with {inm}"
    for n1, o1 in outputs.items():
        for n2, o2 in outputs.items():
            if n1 < n2 and o1.size and o2.size:
                assert not np.shares_memory(o1, o2), (n1, n2)
    assert g.dweight.shape == as_shape(ns) and g.dbias.shape == as_shape(ns)


def test_readonly_inputs_accepted(rng):
    x = row_data(rng, (6, 3, 5), (3, 5), np.float32)
    w, b = params(rng, (3, 5), np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    expected = cnorm.layer_norm_forward(x, (3, 5), w, b)
    g_expected = cnorm.layer_norm_backward(dy, x, expected.mean, expected.rstd, w)
    for a in (x, w, b, dy, expected.mean, expected.rstd):
        a.flags.writeable = False
    f = cnorm.layer_norm_forward(x, (3, 5), w, b)
    g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
    for a1, a2 in zip((*f, *g), (*expected, *g_expected)):
        assert_same(a1, a2)
    xf = x.reshape(6, 15)
    assert_same(cnorm.layer_norm(xf, 15, w.reshape(15), b.reshape(15)),
                expected.y.reshape(6, 15))


@pytest.mark.parametrize("ns", [3, (3,), (2, 3)], ids=["int", "tuple", "tuple2"])
def test_array_likes(rng, ns):
    x = row_data(rng, (4, 2, 3), ns, np.float64)
    dy = rng.standard_normal(x.shape)
    w, b = params(rng, ns, np.float64)
    xl, dyl, wl, bl = x.tolist(), dy.tolist(), w.tolist(), b.tolist()
    y = cnorm.layer_norm(xl, ns, wl, bl)
    assert type(y) is np.ndarray and y.dtype == np.float64 and y.shape == x.shape
    assert_same(y, cnorm.layer_norm(x, ns, w, b))
    f = cnorm.layer_norm_forward(xl, ns, wl, bl)
    fa = cnorm.layer_norm_forward(x, ns, w, b)
    for a1, a2 in zip(f, fa):
        assert_same(a1, a2)
    g = cnorm.layer_norm_backward(dyl, xl, fa.mean.tolist(), fa.rstd.tolist(), wl)
    ga = cnorm.layer_norm_backward(dy, x, fa.mean, fa.rstd, w)
    for a1, a2 in zip(g, ga):
        assert_same(a1, a2)
    # float32 data given as a non-native byte order array is accepted and converted
    xs = x.astype(np.float32).astype(">f4")
    assert_same(cnorm.layer_norm(xs, ns), cnorm.layer_norm(x.astype(np.float32), ns))


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

BWD_LAYOUTS = [
    ("1d", (37,), 37, 1),
    ("2d", (16, 5), 5, 1),
    ("2d-H1", (7, 1), 1, 1),
    ("3d-two", (4, 3, 37), (3, 37), 1),
    ("4d-three", (3, 4, 9, 11), (4, 9, 11), 1),
    ("one-row", (1, 50), 50, 1),
    ("multi-block", (600, 128), 128, 2),        # 2 row blocks of dweight/dbias partials
    ("multi-chunk", (16, 10000), 10000, 2),     # 3 row blocks of 7 rows
    ("H16-2-blocks", (8000, 16), 16, 2),        # 4096 rows a block: 2 blocks
    ("H1-2-blocks", (70000, 1), 1, 2),          # 65536 rows a block: 2 blocks
]


@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,ns,nt", BWD_LAYOUTS, ids=[b[0] for b in BWD_LAYOUTS])
def test_backward(rng, name, shape, ns, nt, dtype, weighted):
    x = row_data(rng, shape, ns, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = params(rng, ns, dtype)[0] if weighted else None
    with threads(nt):
        f = cnorm.layer_norm_forward(x, ns, w, eps=1e-3)
        g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
    assert isinstance(g, cnorm.LayerNormGrads)
    dx_ref, dw_ref, db_ref = R.layer_norm_backward(dy, x, f.mean, f.rstd, w)
    nshape = as_shape(ns)
    assert g.dx.dtype == dtype and g.dx.shape == shape
    assert g.dweight.dtype == dtype and g.dweight.shape == nshape
    assert g.dbias.dtype == dtype and g.dbias.shape == nshape
    assert_close(g.dx, dx_ref, dtype, err_msg="dx")
    assert_close(g.dweight, dw_ref, dtype, err_msg="dweight")
    assert_close(g.dbias, db_ref, dtype, err_msg="dbias")
    # weight=None is weight of ones
    if not weighted:
        g1 = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, np.ones(nshape, dtype))
        for a1, a2, nm in zip(g, g1, ("dx", "dweight", "dbias")):
            assert_close(a1, a2, dtype, err_msg=nm)


def test_backward_64_blocks(rng):
    """R = 66000 rows of H = 64: 1024 rows a block would make 65 blocks, so the blocks
    grow to 1032 rows and there are 64 of them (the last shorter)."""
    shape, dtype = (66000, 64), np.float32
    x = row_data(rng, shape, 64, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = params(rng, 64, dtype)[0]
    f = cnorm.layer_norm_forward(x, 64, w)
    results = []
    for nt in (1, 2, 3):
        with threads(nt):
            g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
        results.append(g)
    for nt, gn in zip((2, 3), results[1:]):
        for a1, a2, nm in zip(results[0], gn, ("dx", "dweight", "dbias")):
            assert_same(a2, a1, f"{nm}, {nt} threads vs 1")
    dx_ref, dw_ref, db_ref = R.layer_norm_backward(dy, x, f.mean, f.rstd, w)
    g = results[0]
    assert_close(g.dx, dx_ref, dtype, err_msg="dx")
    assert_close(g.dweight, dw_ref, dtype, err_msg="dweight")
    assert_close(g.dbias, db_ref, dtype, err_msg="dbias")


@pytest.mark.parametrize("name,shape,ns", [("2d", (16, 5), 5), ("3d-two", (4, 3, 37), (3, 37))])
def test_backward_dy_float64_cast_for_float32_x(rng, name, shape, ns):
    x = row_data(rng, shape, ns, np.float32)
    dy = rng.standard_normal(shape)
    dy_copy = dy.copy()
    w = params(rng, ns, np.float64)[0]
    f = cnorm.layer_norm_forward(x, ns, w)
    g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
    g32 = cnorm.layer_norm_backward(dy.astype(np.float32), x, f.mean, f.rstd,
                                    w.astype(np.float32))
    assert g.dx.dtype == np.float32 and g.dweight.dtype == np.float32
    assert g.dbias.dtype == np.float32
    for a1, a2, nm in zip(g, g32, ("dx", "dweight", "dbias")):
        assert_same(a1, a2, nm)
    assert np.array_equal(dy, dy_copy)
    # float64 mean/rstd are cast too
    g64s = cnorm.layer_norm_backward(dy, x, f.mean.astype(np.float64),
                                     f.rstd.astype(np.float64), w)
    for a1, a2, nm in zip(g64s, g32, ("dx", "dweight", "dbias")):
        assert_same(a1, a2, nm)
    # float32 dy for float64 x is widened
    x64 = x.astype(np.float64)
    f64 = cnorm.layer_norm_forward(x64, ns, w)
    d32 = dy.astype(np.float32)
    ga = cnorm.layer_norm_backward(d32, x64, f64.mean, f64.rstd, w)
    gb = cnorm.layer_norm_backward(d32.astype(np.float64), x64, f64.mean, f64.rstd, w)
    for a1, a2, nm in zip(ga, gb, ("dx", "dweight", "dbias")):
        assert_same(a1, a2, nm)


def _fd_check(loss, arr, analytic, h=1e-6, what=""):
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
    np.testing.assert_allclose(analytic, num, rtol=1e-5, atol=1e-6, err_msg=what)


@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("shape,ns", [((3, 4), 4), ((3, 4), (4,)), ((2, 3, 4), (3, 4))],
                         ids=["3x4-int", "3x4-tuple", "2x3x4"])
def test_backward_finite_differences(rng, shape, ns, weighted):
    x = rng.standard_normal(shape) * 1.5 + 0.5
    nshape = as_shape(ns)
    # without weight, the gradients with respect to weight and bias are those at
    # weight = 1 and bias = 0
    w = rng.uniform(0.5, 2.0, nshape) if weighted else np.ones(nshape)
    b = rng.uniform(-1, 1, nshape) if weighted else np.zeros(nshape)
    G = rng.standard_normal(shape)
    eps = 1e-5

    def loss():
        if weighted:
            y = cnorm.layer_norm(x, ns, w, b, eps=eps)
        else:
            y = cnorm.layer_norm(x, ns, eps=eps) * w + b
        return math.fsum((y * G).ravel())

    fwd = cnorm.layer_norm_forward(x, ns, w if weighted else None, b if weighted else None,
                                   eps=eps)
    g = cnorm.layer_norm_backward(G, x, fwd.mean, fwd.rstd, w if weighted else None)
    _fd_check(loss, x, g.dx, what="dx")
    _fd_check(loss, w, g.dweight, what="dweight")
    _fd_check(loss, b, g.dbias, what="dbias")


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------

DETERMINISM_SHAPES = [("4096x128", (4096, 128)), ("512x768", (512, 768)),
                      ("16x10000", (16, 10000)), ("64x8x128", (64, 8, 128))]


@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape", DETERMINISM_SHAPES,
                         ids=[s[0] for s in DETERMINISM_SHAPES])
def test_thread_count_does_not_change_results(rng, name, shape, dtype, method):
    ns = shape[-1] if len(shape) == 2 else shape[1:]
    x = row_data(rng, shape, ns, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = params(rng, ns, dtype)
    results = {}
    for nt in (1, 2, 3, 4):
        with threads(nt):
            f = cnorm.layer_norm_forward(x, ns, w, b, method=method)
            y = cnorm.layer_norm(x, ns, w, b, method=method)
            g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
            g0 = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd)
        results[nt] = [a.tobytes() for a in (*f, y, *g, *g0)]
    names = ["y", "mean", "rstd", "layer_norm y", "dx", "dweight", "dbias",
             "dx (no weight)", "dweight (no weight)", "dbias (no weight)"]
    for nt in (2, 3, 4):
        for nm, a1, a2 in zip(names, results[1], results[nt]):
            assert a1 == a2, f"{nm} differs between 1 and {nt} threads"
    # and the results are right
    y_ref, mean_ref, rstd_ref = R.layer_norm(x, ns, w, b)
    assert_close(f.y, y_ref, dtype, err_msg="y")
    assert_close(f.mean, mean_ref, dtype, err_msg="mean")
    assert_close(f.rstd, rstd_ref, dtype, err_msg="rstd")
    dx_ref, dw_ref, db_ref = R.layer_norm_backward(dy, x, f.mean, f.rstd, w)
    assert_close(g.dx, dx_ref, dtype, err_msg="dx")
    assert_close(g.dweight, dw_ref, dtype, err_msg="dweight")
    assert_close(g.dbias, db_ref, dtype, err_msg="dbias")


# ---------------------------------------------------------------------------
# Accuracy on ill-conditioned float32 rows
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("offset", [1e4, 3e5])       # offset / sd = 1e6 and 3e7
@pytest.mark.parametrize("rows,h", [(96, 768), (8, 10000)], ids=["H768", "H10000"])
def test_accuracy_ill_conditioned_float32(rng, rows, h, offset, method):
    mu = offset * rng.uniform(0.9, 1.1, (rows, 1))
    x = (rng.standard_normal((rows, h)) * 1e-2 + mu).astype(np.float32)
    with threads(2):
        fwd = cnorm.layer_norm_forward(x, h, eps=0.0, method=method)
    for r in range(rows):
        exact_mean, exact_var = R.exact_mean_var(x[r].astype(np.float64))
        assert exact_var > 0
        var = float(fwd.rstd[r]) ** -2
        assert abs(var - exact_var) <= 1e-6 * exact_var, (r, var, exact_var)
        assert abs(float(fwd.mean[r]) - exact_mean) <= 1.2e-7 * abs(exact_mean), \
            (r, float(fwd.mean[r]), exact_mean)
    y_ref = R.layer_norm(x, h, eps=0.0)[0]
    assert_close(fwd.y, y_ref, np.float32)


# ---------------------------------------------------------------------------
# Special values
# ---------------------------------------------------------------------------

CONSTANT_VALUES = [0.0, 0.1, 1 / 3, 1e4 + 0.3, -3.7, math.pi]


@pytest.mark.parametrize("which", AFFINE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,h,nt", [(6, 768, 1), (100, 768, 2), (8, 10000, 2), (5, 37, 1)],
                         ids=["6x768", "100x768", "8x10000", "5x37"])
def test_constant_row(rng, rows, h, nt, dtype, which):
    w, b = affine(rng, h, dtype, which)
    expected = b if b is not None else np.zeros(h, dtype)
    for method in METHODS:
        for value in CONSTANT_VALUES:
            x = row_data(rng, (rows, h), h, dtype)
            k = rows // 2
            x[k] = value
            with threads(nt):
                fwd = cnorm.layer_norm_forward(x, h, w, b, method=method)
                y = cnorm.layer_norm(x, h, w, b, method=method)
            what = (method, value)
            assert (fwd.y[k] == expected).all(), (what, np.abs(fwd.y[k] - expected).max())
            assert (y[k] == expected).all(), (what, np.abs(y[k] - expected).max())
            assert fwd.mean[k] == dtype(value), (what, fwd.mean[k])
            assert_close(fwd.rstd[k], 1 / math.sqrt(1e-5), dtype, err_msg=str(what))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,ns,nt,k", [
    ("2d", (16, 5), 5, 1, 3),
    ("3d-two", (4, 3, 37), (3, 37), 1, 2),
    ("4d-lead2", (2, 3, 4, 5), (4, 5), 1, 4),
    ("multi-chunk", (8, 10000), 10000, 2, 5),
    ("threads", (600, 128), 128, 2, 300),
], ids=["2d", "3d-two", "4d-lead2", "multi-chunk", "threads"])
def test_nonfinite_row(rng, name, shape, ns, nt, k, dtype, bad):
    x = row_data(rng, shape, ns, dtype)
    w, b = params(rng, ns, dtype)
    nshape = as_shape(ns)
    xr = x.reshape((-1,) + nshape)            # a view: rows of x
    pos = tuple(s // 3 for s in nshape)
    xr[(k,) + pos] = bad
    assert not np.isfinite(x).all()
    x_good = np.delete(xr, k, axis=0)
    for method in ("two_pass", "welford"):
        with threads(nt):
            fwd = cnorm.layer_norm_forward(x, ns, w, b, method=method)
            y = cnorm.layer_norm(x, ns, w, b, method=method)
            ref = cnorm.layer_norm_forward(x_good, nshape, w, b, method=method)
        assert_same(y, fwd.y, f"{method}: layer_norm vs layer_norm_forward")
        yr = fwd.y.reshape((-1,) + nshape)
        mr, rr = fwd.mean.reshape(-1), fwd.rstd.reshape(-1)
        assert not np.isfinite(yr[k]).any(), \
            f"{method}: the row with a non-finite value has finite outputs"
        assert not np.isfinite(mr[k]), (method, mr[k])
        assert not np.isfinite(rr[k]), (method, rr[k])
        assert np.isfinite(ref.y).all()
        assert_same(np.delete(yr, k, axis=0), ref.y, f"{method}: y of the other rows")
        assert_same(np.delete(mr, k), ref.mean, f"{method}: mean of the other rows")
        assert_same(np.delete(rr, k), ref.rstd, f"{method}: rstd of the other rows")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,ns", [((0, 5), 5), ((0, 5), (5,)), ((0, 3, 4), (3, 4)),
                                      ((2, 0, 5), 5), ((0, 7), 7)],
                         ids=["0x5-int", "0x5-tuple", "0x3x4", "2x0x5", "0x7"])
def test_zero_rows(rng, shape, ns, dtype):
    nshape = as_shape(ns)
    lead = lead_shape(shape, ns)
    x = np.empty(shape, dtype=dtype)
    w, b = params(rng, ns, dtype)
    y = cnorm.layer_norm(x, ns)
    assert y.shape == shape and y.dtype == dtype
    y = cnorm.layer_norm(x, ns, w, b, method="welford")
    assert y.shape == shape and y.dtype == dtype
    f = cnorm.layer_norm_forward(x, ns, w, b)
    assert f.y.shape == shape and f.y.dtype == dtype
    assert f.mean.shape == lead and f.rstd.shape == lead
    assert f.mean.dtype == dtype and f.rstd.dtype == dtype
    out = np.empty(shape, dtype=dtype)
    assert cnorm.layer_norm(x, ns, w, b, out=out) is out
    for weight in (None, w):
        g = cnorm.layer_norm_backward(x, x, f.mean, f.rstd, weight)
        assert g.dx.shape == shape and g.dx.dtype == dtype
        assert g.dweight.shape == nshape and g.dbias.shape == nshape
        assert g.dweight.dtype == dtype and g.dbias.dtype == dtype
        assert np.array_equal(g.dweight, np.zeros(nshape))
        assert np.array_equal(g.dbias, np.zeros(nshape))
        # the zeros are +0.0
        assert not np.signbit(g.dweight).any() and not np.signbit(g.dbias).any()


# ---------------------------------------------------------------------------
# Streaming stores give the same bits as ordinary stores
# ---------------------------------------------------------------------------

def _stream_off(monkeypatch):
    monkeypatch.setattr(cnorm._dispatch, "STREAM_BYTES", 1 << 62)
    assert not cnorm._dispatch.stream_stores(1 << 40)


def _stream_on(monkeypatch):
    monkeypatch.setattr(cnorm._dispatch, "STREAM_BYTES", 0)
    assert cnorm._dispatch.stream_stores(1)


def test_cache_size_comes_from_sysfs_then_sysconf(monkeypatch, tmp_path):
    """The streaming threshold is a quarter of the per-core LLC: sysfs's largest data
    cache, else sysconf; CNORM_STREAM_BYTES overrides it."""
    for i, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"),
                                             (2, "Unified", "512K"), (3, "Unified", "32768K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    real_glob = cnorm._dispatch.glob.glob
    monkeypatch.setattr(cnorm._dispatch.glob, "glob", lambda pattern: real_glob(str(tmp_path / "index*")))
    assert cnorm._dispatch._cache_bytes() == 32 << 20
    assert cnorm._dispatch._stream_threshold() == 8 << 20
    monkeypatch.setattr(cnorm._dispatch.glob, "glob", lambda pattern: [])
    assert cnorm._dispatch._cache_bytes() == cnorm._openmp.llc_bytes()
    monkeypatch.setenv("CNORM_STREAM_BYTES", "12345")
    assert cnorm._dispatch._stream_threshold() == 12345


def test_stream_stores_is_the_dispatch_function():
    """The patching in the streaming tests reaches the operations."""
    import cnorm.batchnorm
    assert cnorm.layernorm.stream_stores is cnorm._dispatch.stream_stores
    assert cnorm.batchnorm.stream_stores is cnorm._dispatch.stream_stores


STREAM_LN = [("5x37", (5, 37), 37, 1), ("6x2500", (6, 2500), 2500, 1),
             ("3x10000", (3, 10000), 10000, 1), ("600x128", (600, 128), 128, 2),
             ("4x3x37", (4, 3, 37), (3, 37), 1), ("7x10000", (7, 10000), 10000, 2),
             ("9x1024", (9, 1024), 1024, 1)]


@pytest.mark.parametrize("which", ["none", "weight", "both"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,ns,nt", STREAM_LN, ids=[s[0] for s in STREAM_LN])
def test_layer_norm_streaming_matches(rng, monkeypatch, name, shape, ns, nt, dtype, which):
    x = row_data(rng, shape, ns, dtype)
    w, b = affine(rng, ns, dtype, which)
    dy = rng.standard_normal(shape).astype(dtype)

    def run():
        res = {}
        for method in (None, "welford"):
            res.update({f"{method} {k}": v for k, v in run_method(method).items()})
        return res

    def run_method(method):
        res = {}
        with threads(nt):
            f = cnorm.layer_norm_forward(x, ns, w, b, method=method)
            res.update(y=f.y, mean=f.mean, rstd=f.rstd)
            res["layer_norm"] = cnorm.layer_norm(x, ns, w, b, method=method)
            buf = np.full(x.size + 1, 3.0, dtype)
            res["offset-out"] = cnorm.layer_norm(x, ns, w, b, method=method,
                                                 out=buf[1:].reshape(shape))
            assert buf[0] == 3.0
            big = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
            res["strided-out"] = cnorm.layer_norm(x, ns, w, b, method=method,
                                                  out=big[..., ::2]).copy()
            assert (big[..., 1::2] == 0).all()
            xi = x.copy()
            res["in-place"] = cnorm.layer_norm(xi, ns, w, b, method=method, out=xi)
            # backward writes dx with streaming stores too
            g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
            res.update(dx=g.dx, dweight=g.dweight, dbias=g.dbias)
            buf = np.full(x.size + 1, 3.0, dtype)
            res["dx offset-out"] = cnorm.layer_norm_backward(
                dy, x, f.mean, f.rstd, w, out=buf[1:].reshape(shape)).dx
            assert buf[0] == 3.0
            dyi = dy.copy()
            res["dx in-place"] = cnorm.layer_norm_backward(dyi, x, f.mean, f.rstd, w, out=dyi).dx
        return res

    _stream_off(monkeypatch)
    plain = run()
    _stream_on(monkeypatch)
    streamed = run()
    assert plain.keys() == streamed.keys()
    for key in plain:
        assert_same(streamed[key], plain[key], key)
    assert_close(plain["None y"], R.layer_norm(x, ns, w, b)[0], dtype)
    ref = R.layer_norm_backward(dy, x, plain["None mean"], plain["None rstd"], w)
    assert_close(plain["None dx"], ref[0], dtype)


STREAM_BN = [("NC", (16, 5), 1, 1), ("NC-col-tiles", (70, 1100), 1, 2),
             ("NC-row-groups", (30000, 3), 1, 2), ("NCHW", (3, 4, 9, 11), 1, 1),
             ("NHWC", (4, 5, 6, 7), -1, 1), ("few-C3", (4, 3, 6000), 1, 2),
             ("planar-big", (4, 8, 3000), 1, 2), ("NCL-rows", (6, 4, 3), 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,axis,nt", STREAM_BN, ids=[s[0] for s in STREAM_BN])
def test_batch_norm_streaming_matches(rng, monkeypatch, name, shape, axis, nt, dtype):
    x = channel_data(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis % len(shape)]
    w = rng.uniform(0.5, 2.0, c).astype(dtype) * rng.choice([-1, 1], c).astype(dtype)
    b = rng.uniform(-1, 1, c).astype(dtype)
    rm0 = rng.uniform(-1, 1, c).astype(dtype)
    rv0 = rng.uniform(0.5, 2.0, c).astype(dtype)

    def run():
        res = {}
        with threads(nt):
            for method in ("two_pass", "welford"):
                rm, rv = rm0.copy(), rv0.copy()
                f = cnorm.batch_norm_forward(x, w, b, rm, rv, axis=axis, method=method)
                res.update({f"{method} y": f.y, f"{method} mean": f.mean,
                            f"{method} invstd": f.invstd, f"{method} rm": rm,
                            f"{method} rv": rv})
                res[f"{method} train relu"] = cnorm.batch_norm(x, w, b, training=True,
                                                               axis=axis, method=method,
                                                               relu=True)
            res["infer"] = cnorm.batch_norm(x, w, b, rm0, rv0, axis=axis)
            res["infer relu"] = cnorm.batch_norm(x, w, b, rm0, rv0, axis=axis, relu=True)
            buf = np.full(x.size + 1, 3.0, dtype)
            res["infer offset-out"] = cnorm.batch_norm(x, w, b, rm0, rv0, axis=axis,
                                                       out=buf[1:].reshape(shape))
            buf = np.full(x.size + 1, 3.0, dtype)
            res["train offset-out"] = cnorm.batch_norm(x, w, b, training=True, axis=axis,
                                                       out=buf[1:].reshape(shape))
            f = cnorm.batch_norm_forward(x, w, b, axis=axis)
            for training in (True, False):
                g = cnorm.batch_norm_backward(dy, x, f.mean, f.invstd, w, training=training,
                                              axis=axis)
                res.update({f"{training} dx": g.dx, f"{training} dweight": g.dweight,
                            f"{training} dbias": g.dbias})
                buf = np.full(x.size + 1, 3.0, dtype)
                res[f"{training} dx offset-out"] = cnorm.batch_norm_backward(
                    dy, x, f.mean, f.invstd, w, training=training, axis=axis,
                    out=buf[1:].reshape(shape)).dx
        return res

    _stream_off(monkeypatch)
    plain = run()
    _stream_on(monkeypatch)
    streamed = run()
    assert plain.keys() == streamed.keys()
    for key in plain:
        assert_same(streamed[key], plain[key], key)
    assert_close(plain["two_pass y"], R.batch_norm_train(x, w, b, axis=axis)[0], dtype)


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

TORCH_LAYOUTS = [("2d", (16, 5), (5,)), ("3d-two", (4, 3, 37), (3, 37)),
                 ("4d-three", (3, 4, 9, 11), (4, 9, 11)), ("768", (8, 768), (768,)),
                 ("10000", (4, 10000), (10000,)), ("1d", (37,), (37,))]


@pytest.mark.parametrize("which", AFFINE)
@pytest.mark.parametrize("name,shape,ns", TORCH_LAYOUTS, ids=[t[0] for t in TORCH_LAYOUTS])
def test_against_torch(rng, name, shape, ns, which):
    torch = pytest.importorskip("torch")
    dtype = np.float64
    x = row_data(rng, shape, ns, dtype)
    dy = rng.standard_normal(shape)
    w, b = affine(rng, ns, dtype, which)
    eps = 1e-4
    lead = lead_shape(shape, ns)
    T = torch.from_numpy

    def t(v):
        return None if v is None else T(v.copy())

    ty_f = torch.nn.functional.layer_norm(T(x.copy()), list(ns), t(w), t(b), eps)
    ty, tmean, trstd = torch.ops.aten.native_layer_norm(T(x.copy()), list(ns), t(w), t(b), eps)
    y = cnorm.layer_norm(x, ns, w, b, eps=eps)
    fwd = cnorm.layer_norm_forward(x, ns, w, b, eps=eps)
    assert_close(y, ty_f.numpy(), dtype, err_msg="y vs F.layer_norm")
    assert_close(fwd.y, ty.numpy(), dtype, err_msg="y")
    assert_close(fwd.mean, tmean.numpy().reshape(lead), dtype, err_msg="mean")
    assert_close(fwd.rstd, trstd.numpy().reshape(lead), dtype, err_msg="rstd")

    # torch computes dweight and dbias only with a weight and a bias: ones and zeros
    # give the gradients of the parameter-free case
    tw = t(w) if w is not None else torch.ones(ns, dtype=torch.float64)
    tb = t(b) if b is not None else torch.zeros(ns, dtype=torch.float64)
    tdx, tdw, tdb = torch.ops.aten.native_layer_norm_backward(
        T(dy.copy()), T(x.copy()), list(ns), tmean, trstd, tw, tb, [True, True, True])
    g = cnorm.layer_norm_backward(dy, x, fwd.mean, fwd.rstd, w)
    assert_close(g.dx, tdx.numpy(), dtype, err_msg="dx")
    assert_close(g.dweight, tdw.numpy(), dtype, err_msg="dweight")
    assert_close(g.dbias, tdb.numpy(), dtype, err_msg="dbias")

    # and autograd through F.layer_norm agrees
    tx = T(x.copy()).requires_grad_(True)
    tw2 = tw.clone().requires_grad_(True)
    tb2 = tb.clone().requires_grad_(True)
    torch.nn.functional.layer_norm(tx, list(ns), tw2, tb2, eps).backward(T(dy.copy()))
    assert_close(g.dx, tx.grad.numpy(), dtype, err_msg="dx autograd")
    assert_close(g.dweight, tw2.grad.numpy(), dtype, err_msg="dweight autograd")
    assert_close(g.dbias, tb2.grad.numpy(), dtype, err_msg="dbias autograd")
