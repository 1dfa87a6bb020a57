"""Layer normalization: what is specific to it.

The contract every op shares (forward and backward against the reference
for every normalized_shape, dtype, method, affine variant and stride pattern,
out= buffers and in-place calls, thread counts, streaming stores,
array-likes, casts, eps, activations, non-finite and constant rows, finite
differences) is checked in tests/test_contract.py, over the cases of
OP["layer_norm"] (those of the kernel paths below among them).  Left here:
layer_norm's fast path, the cap on dweight/dbias row blocks, float32
accuracy on ill-conditioned rows, empty inputs, the streaming threshold, and
PyTorch.

The Python layer presents x to the kernels as a C-contiguous (R, H) matrix: one
row per sample, H the number of normalised elements.  The kernel paths:

* rows are spread over threads when R * H >= 2 * 32768 (so the cases that must
  run multi-threaded set the thread count explicitly);
* a row's statistics are computed in blocks of CHUNK = 4096 elements, merged in
  order (H > 4096: several blocks per row);
* outputs are written with streaming stores when the bytes moved exceed the
  last-level cache (tests/test_contract.py forces both ways);
* backward sums dweight and dbias over row blocks of at least 65536 elements
  (at most 64 blocks), merged in order;
* layer_norm has a fast path for the common call (C-contiguous float ndarray, int
  normalized_shape, ready weight/bias, float eps, no method, no out); every
  other call goes the general way.  Both must give the same bits.
"""

import numpy as np
import pytest

import cnorm
import cnorm._dispatch
import cnorm.layernorm
from cnorm import _reference as R
from conftest import assert_close, count_calls, count_general, threads

DTYPES = [np.float32, np.float64]
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


def assert_same(actual, expected, what=""):
    """Bitwise equality (NaNs in the same places), same dtype and shape."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.tobytes() == expected.tobytes(), \
        f"{what}: differs in {np.count_nonzero(actual != expected)} places"


# ---------------------------------------------------------------------------
# The fast path of layer_norm and the general path give the same bits
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES + ["float16"])
@pytest.mark.parametrize("shape,nt", [((16, 768), 1), ((512, 768), 2), ((2, 5, 37), 1),
                                      ((0, 8), 1)],
                         ids=["16x768", "512x768-2threads", "2x5x37", "empty"])
def test_forward_and_backward_fast_paths_match_general_path(rng, monkeypatch, shape, nt, dtype):
    """layer_norm_forward, layer_norm_backward, rms_norm_forward and rms_norm_backward take
    a fast path for the common call (out= a plain buffer, or dy itself, included) and give
    the general path's bits; other spellings of the call take the general path."""
    import cnorm.rmsnorm
    dtype = np.dtype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    h = shape[-1]
    x = row_data(rng, shape, h, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0.5, 2, h).astype(pdt)
    b = rng.uniform(-1, 1, h).astype(pdt)
    general = count_general(monkeypatch, cnorm.layernorm, cnorm.rmsnorm)
    with threads(nt):
        f = cnorm.layer_norm_forward(x, h, w, b)
        g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
        r = cnorm.rms_norm_forward(x, h, w)
        rg = cnorm.rms_norm_backward(dy, x, r.rstd, w)
        buf, into = np.empty_like(x), dy.copy()
        f_out = cnorm.layer_norm_forward(x, h, w, b, out=buf)
        g_in = cnorm.layer_norm_backward(into, x, f.mean, f.rstd, w, out=into)
        assert f_out.y is buf and g_in.dx is into
        assert not general, "the common calls should take the fast paths"
        slow = {
            "ln forward": (f, cnorm.layer_norm_forward(x, (h,), w.tolist(), b)),
            "ln forward out=": (f_out, f),
            "ln backward": (g, cnorm.layer_norm_backward(dy, x, f.mean.tolist(), f.rstd, w)),
            "ln backward out=dy": (g_in, g),
            "rms forward": (r, cnorm.rms_norm_forward(x, (h,), w.tolist())),
            "rms backward": (rg, cnorm.rms_norm_backward(dy, x, r.rstd.tolist(), w)),
        }
        assert len(general) == 4
    for label, (fast, slower) in slow.items():
        for a, c in zip(fast, slower):
            assert_same(a, c, label)
    if x.size:      # against the reference (float16: within an ulp of it)
        want = R.layer_norm(x.astype(np.float64), h, w, b)[0]
        if dtype == np.float16:
            np.testing.assert_allclose(f.y.astype(np.float64), want, rtol=2 ** -10,
                                       atol=2 ** -10 * np.abs(want).max())
        else:
            assert_close(f.y, want, dtype)


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
        buf, inplace = np.empty_like(x), x.copy()
        assert cnorm.layer_norm(x, h, w, b, out=buf) is buf
        assert cnorm.layer_norm(inplace, h, w, b, out=inplace) is inplace
        assert not calls, "out= a plain buffer, or x itself, should take the fast path"
        variants = {
            "fortran-out": lambda: cnorm.layer_norm(x, h, w, b,
                                                    out=np.asfortranarray(np.empty_like(x))),
            "view-of-x-out": lambda: (lambda xc: cnorm.layer_norm(xc, h, w, b, out=xc[...]))(
                x.copy()),
            "tuple": lambda: cnorm.layer_norm(x, (h,), w, b),
            "np.int64": lambda: cnorm.layer_norm(x, np.int64(h), w, b),
            "eps-np.float64": lambda: cnorm.layer_norm(x, h, w, b, eps=np.float64(1e-5)),
            "method-two_pass": lambda: cnorm.layer_norm(x, h, w, b, method="two_pass"),
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
    assert_same(buf, fast, "out=")
    assert_same(inplace, fast, "out=x")
    for key, y in results.items():
        assert_same(y, fast, key)
    assert_close(fast, R.layer_norm(x, h, w, b)[0], dtype)


# ---------------------------------------------------------------------------
# Backward: dweight and dbias in at most 64 row blocks
# ---------------------------------------------------------------------------

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


@pytest.mark.parametrize("dtype", DTYPES + ["float16"])
@pytest.mark.parametrize("h", [3, 5, 64, 128, 129])
@pytest.mark.parametrize("op", ["layer", "rms"])
def test_backward_rows_in_pairs_give_each_rows_bits(rng, dtype, h, op):
    """Rows go backward two at a time (one pass for both rows' sums, dw and db read
    and written once a pair); every row's dx must keep the bits of that row alone
    (R = 1 takes the one-row path), and dweight stays the reference's.  Odd R also
    leaves a row for the one-row path inside the call."""
    for rows in (4, 9, 14, 23):
        x = row_data(rng, (rows, h), h, dtype)
        dy = rng.standard_normal((rows, h)).astype(dtype)
        w = params(rng, h, dtype)[0]
        if op == "layer":
            f = cnorm.layer_norm_forward(x, h, w)
            stats = (f.mean, f.rstd)
            back = cnorm.layer_norm_backward
            ref = R.layer_norm_backward(dy, x, f.mean, f.rstd, w)
        else:
            f = cnorm.rms_norm_forward(x, h, w)
            stats = (f.rstd,)
            back = cnorm.rms_norm_backward
            ref = R.rms_norm_backward(dy, x, f.rstd, w)
        with threads(1):
            whole = back(dy, x, *stats, w)
            for r in range(rows):
                one = back(dy[r:r + 1], x[r:r + 1], *(s[r:r + 1] for s in stats), w)
                assert_same(whole.dx[r:r + 1], one.dx, f"dx of row {r} of {rows}")
        if dtype != "float16":   # (float16 against the reference: tests/test_contract.py)
            assert_close(whole.dx, ref[0], dtype, err_msg="dx")
            assert_close(whole.dweight, ref[1], dtype, err_msg="dweight")


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
# Empty inputs
# ---------------------------------------------------------------------------

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
# The streaming threshold
# ---------------------------------------------------------------------------

def test_cache_size_comes_from_sysfs_then_sysconf(monkeypatch, tmp_path):
    """The streaming threshold is a quarter of the per-core LLC (the whole LLC for
    batch-norm inference, which reads its input once): sysfs's largest data cache, else
    sysconf; CNORM_STREAM_BYTES overrides both."""
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
    assert cnorm._dispatch._stream_threshold(1) == 32 << 20
    monkeypatch.setattr(cnorm._dispatch.glob, "glob", lambda pattern: [])
    assert cnorm._dispatch._cache_bytes() == cnorm._openmp.llc_bytes()
    monkeypatch.setenv("CNORM_STREAM_BYTES", "12345")
    assert cnorm._dispatch._stream_threshold() == 12345
    assert cnorm._dispatch._stream_threshold(1) == 12345


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
