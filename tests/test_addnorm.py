"""add_layer_norm and add_rms_norm: h = x + residual, then the norm of h, in one pass."""

import numpy as np
import pytest

import cnorm
from cnorm import _reference as R
from conftest import threads

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:      # pragma: no cover - ml_dtypes is in the test extras
    BF16 = None

DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16),
          pytest.param("bfloat16", marks=pytest.mark.skipif(BF16 is None, reason="ml_dtypes"))]
SHAPES = [((5, 7, 24), 24, 1), ((3, 4, 6, 10), (6, 10), 1), ((1, 4096), 4096, 1),
          ((37,), 37, 1), ((7, 10000), 10000, 2), ((600, 128), 128, 2), ((100, 768), 768, 2),
          ((0, 16), 16, 1)]
OPS = {
    "layer": (lambda x, r, ns, w, b, **k: cnorm.add_layer_norm(x, r, ns, w, b, **k),
              lambda h, ns, w, b: cnorm.layer_norm(h, ns, w, b)),
    "rms": (lambda x, r, ns, w, b, **k: cnorm.add_rms_norm(x, r, ns, w, **k),
            lambda h, ns, w, b: cnorm.rms_norm(h, ns, w)),
}


def _dt(dt):
    return BF16 if dt == "bfloat16" else dt


def _inputs(rng, shape, ns, dt):
    x = (3 + 2 * rng.standard_normal(shape)).astype(dt)
    r = rng.standard_normal(shape).astype(dt)
    ns_t = (ns,) if np.ndim(ns) == 0 else tuple(ns)
    w = rng.uniform(0.5, 2, ns_t).astype(np.float32 if dt.itemsize < 4 else dt)
    b = rng.uniform(-1, 1, ns_t).astype(w.dtype)
    return x, r, w, b


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape,ns,nt", SHAPES)
def test_fused_is_the_add_then_the_norm(rng, op, dt, shape, ns, nt):
    """h is x + residual as NumPy adds in x's dtype (one rounding), and y is, bit for bit,
    the unfused norm of that h; the inputs are left alone."""
    dt = _dt(dt)
    fused, unfused = OPS[op]
    x, r, w, b = _inputs(rng, shape, ns, dt)
    x0, r0 = x.copy(), r.copy()
    with threads(nt):
        for weighted in (True, False):
            ww, bb = (w, b) if weighted else (None, None)
            got = fused(x, r, ns, ww, bb)
            assert type(got) is cnorm.AddNormOutput
            y, h = got
            assert h.dtype == dt and y.dtype == dt and h.shape == x.shape == y.shape
            assert h.tobytes() == (x + r).tobytes()
            assert y.tobytes() == unfused(h, ns, ww, bb).tobytes()
    assert x.tobytes() == x0.tobytes() and r.tobytes() == r0.tobytes()


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_against_the_reference(rng, dt):
    x, r, w, b = _inputs(rng, (9, 300), 300, np.dtype(dt))
    hw = x.astype(np.float64) + r.astype(np.float64)
    tol = 2e-5 if dt == np.float32 else 1e-11
    y, h = cnorm.add_layer_norm(x, r, 300, w, b)
    np.testing.assert_allclose(y, R.layer_norm(h.astype(np.float64), (300,), w, b)[0], atol=tol,
                               rtol=tol)
    np.testing.assert_allclose(h, hw, rtol=np.finfo(dt).eps)
    y, h = cnorm.add_rms_norm(x, r, 300, w, eps=1e-6)
    np.testing.assert_allclose(y, R.rms_norm(h.astype(np.float64), (300,), w, eps=1e-6)[0],
                               atol=tol, rtol=tol)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dt", [np.dtype(np.float32), np.dtype(np.float16)])
def test_in_place_and_out_buffers(rng, op, dt):
    """out=x and residual_out=residual (a decode loop), the other way round, one of
    them, and non-contiguous buffers, all give the bits of new arrays."""
    fused = OPS[op][0]
    x, r, w, b = _inputs(rng, (16, 64), 64, dt)
    y0, h0 = fused(x, r, 64, w, b)
    for out_is, hout_is in [("x", "r"), ("r", "x"), ("x", None), (None, "r"), ("new", "new")]:
        xx, rr = x.copy(), r.copy()
        pick = {"x": xx, "r": rr, None: None, "new": None}
        out = np.empty_like(x) if out_is == "new" else pick[out_is]
        hout = np.empty_like(x) if hout_is == "new" else pick[hout_is]
        y, h = fused(xx, rr, 64, w, b, out=out, residual_out=hout)
        if out is not None:
            assert y is out
        if hout is not None:
            assert h is hout
        assert y.tobytes() == y0.tobytes() and h.tobytes() == h0.tobytes(), (out_is, hout_is)
    # strided inputs and outputs
    big = np.zeros((16, 128), dt)
    xs, rs = big[:, ::2], np.zeros((16, 128), dt)[:, 1::2]
    xs[...] = x
    rs[...] = r
    outs, houts = np.zeros((32, 64), dt)[::2], np.zeros((16, 64), dt).T.copy().T
    y, h = fused(xs, rs, 64, w, b, out=outs, residual_out=houts)
    assert y is outs and h is houts
    assert np.array_equal(y, y0) and np.array_equal(h, h0)


def test_results_do_not_depend_on_the_thread_count(rng):
    x, r, w, b = _inputs(rng, (300, 1000), 1000, np.dtype(np.float32))
    runs = []
    for n in (1, 2, 3, 4):
        with threads(n):
            runs.append([a.tobytes() for a in cnorm.add_layer_norm(x, r, 1000, w, b)
                         + cnorm.add_rms_norm(x, r, 1000, w)])
    assert all(run == runs[0] for run in runs[1:])


def test_statistics_are_those_of_h_as_stored():
    """float16: x + residual rounds; the norm is of the rounded h, not of the exact sum."""
    x = np.full((1, 8), 2049.0, np.float32)
    x[0, ::2] = 2047.0
    xh = x.astype(np.float16)                       # 2048 and 2048: float16 rounds both
    r = np.full((1, 8), 0.5, np.float16)
    y, h = cnorm.add_layer_norm(xh, r, 8)
    assert (h == np.float16(2048)).all()            # 2048.5 rounds to 2048
    assert (y == 0).all()                           # a constant h normalises to 0


def _snapshot(*arrays):
    return [a.copy() for a in arrays]


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, r, o: cnorm.add_layer_norm(x, r.astype(np.float64), 8), TypeError, "residual"),
    (lambda x, r, o: cnorm.add_rms_norm(x, r[:, :4], 4), ValueError, "residual"),
    (lambda x, r, o: cnorm.add_layer_norm(x, r, 4), ValueError, "normalized_shape"),
    (lambda x, r, o: cnorm.add_layer_norm(x, "abc", 8), TypeError, "residual"),
    (lambda x, r, o: cnorm.add_layer_norm(x.astype(np.int32), r, 8), TypeError, "x"),
    (lambda x, r, o: cnorm.add_layer_norm(x, r, 8, np.ones(4)), ValueError, "weight"),
    (lambda x, r, o: cnorm.add_rms_norm(x, r, 8, eps=-1.0), ValueError, "eps"),
    (lambda x, r, o: cnorm.add_layer_norm(x, r, 8, out=o, residual_out=o), ValueError,
     "share memory"),
    (lambda x, r, o: cnorm.add_layer_norm(x, r, 8, out=x, residual_out=x), ValueError,
     "share memory"),
    (lambda x, r, o: cnorm.add_layer_norm(x, r, 8, out=o.astype(np.float64)), ValueError, "out"),
    (lambda x, r, o: cnorm.add_layer_norm(x, r, 8, residual_out=o[:2]), ValueError,
     "residual_out"),
    (lambda x, r, o: cnorm.add_rms_norm(x[:, 1:], r[:, 1:], 7, residual_out=x[:, :7]),
     ValueError, "overlaps"),
    (lambda x, r, o: cnorm.add_layer_norm(x, r, 8, out=[[0.0] * 8] * 4), TypeError, "out"),
])
def test_errors_name_the_argument_and_change_nothing(rng, call, exc, match):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    r = rng.standard_normal((4, 8)).astype(np.float32)
    o = np.zeros((4, 8), np.float32)
    before = _snapshot(x, r, o)
    with pytest.raises(exc, match=match):
        call(x, r, o)
    assert all(a.tobytes() == b.tobytes() for a, b in zip((x, r, o), before))


def test_layers_take_a_residual(rng):
    """LayerNorm(x, residual) and RMSNorm(x, residual) return (y, h), as the functions
    do, and their backward is the norm's backward at h."""
    x, r, w, b = _inputs(rng, (6, 32), 32, np.dtype(np.float32))
    dy = rng.standard_normal((6, 32)).astype(np.float32)
    ln = cnorm.LayerNorm(32)
    ln.weight[...] = w
    ln.bias[...] = b
    y, h = ln(x, residual=r)
    want = cnorm.add_layer_norm(x, r, 32, w, b)
    assert y.tobytes() == want.y.tobytes() and h.tobytes() == want.h.tobytes()
    f = cnorm.layer_norm_forward(h, 32, w, b)
    g = cnorm.layer_norm_backward(dy, h, f.mean, f.rstd, w)
    assert ln.backward(dy).tobytes() == g.dx.tobytes()
    assert ln.weight_grad.tobytes() == g.dweight.tobytes()
    rn = cnorm.RMSNorm(32, eps=1e-6)
    rn.weight[...] = w
    y, h = rn(x, r)
    want = cnorm.add_rms_norm(x, r, 32, w, eps=1e-6)
    assert y.tobytes() == want.y.tobytes() and h.tobytes() == want.h.tobytes()
    f = cnorm.rms_norm_forward(h, 32, w, eps=1e-6)
    assert rn.backward(dy).tobytes() == cnorm.rms_norm_backward(dy, h, f.rstd, w).dx.tobytes()
    assert ln(x).tobytes() == cnorm.layer_norm(x, 32, w, b).tobytes()   # no residual: y alone
    with pytest.raises(ValueError, match="residual"):
        ln(x, residual=r[:3])


def _ort_skip(op, x, r, w, b, eps):
    """ONNX Runtime's contrib op (com.microsoft) SkipLayerNormalization or
    SkipSimplifiedLayerNormalization on x (3-d), returning (y, h)."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    hp, tp = onnx.helper, onnx.TensorProto
    names = ["x", "r", "w"] + (["b"] if b is not None else [])
    node = hp.make_node(op, names, ["y", "", "", "h"], domain="com.microsoft", epsilon=eps)
    vi = [hp.make_tensor_value_info(n, tp.FLOAT, list(a.shape))
          for n, a in zip(names, [x, r, w, b])]
    graph = hp.make_graph([node], op, vi, [hp.make_tensor_value_info("y", tp.FLOAT, None),
                                           hp.make_tensor_value_info("h", tp.FLOAT, None)])
    model = hp.make_model(graph, opset_imports=[hp.make_opsetid("", 17),
                                                hp.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = dict(zip(names, [x, r, w, b]))
    return sess.run(None, feeds)


def test_matches_onnx_runtime_skip_normalizations(rng):
    """ORT's fused ops, which pipelines use for this: the same h exactly, and y to
    float32 rounding."""
    x, r, w, b = _inputs(rng, (2, 16, 768), 768, np.dtype(np.float32))
    y, h = _ort_skip("SkipLayerNormalization", x, r, w, b, 1e-5)
    got = cnorm.add_layer_norm(x, r, 768, w, b, eps=1e-5)
    assert np.array_equal(got.h, h)
    np.testing.assert_allclose(got.y, y, rtol=1e-5, atol=1e-5)
    y, h = _ort_skip("SkipSimplifiedLayerNormalization", x, r, w, None, 1e-6)
    got = cnorm.add_rms_norm(x, r, 768, w, eps=1e-6)
    assert np.array_equal(got.h, h)
    np.testing.assert_allclose(got.y, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dt", DTYPES)
def test_fast_path_gives_the_general_path_bits(rng, monkeypatch, op, dt):
    """The common call (batch-1 decode) skips the general checks: the same bits as the
    general path (out= given), which it must not call."""
    from conftest import count_calls
    dt = _dt(dt)
    fused = OPS[op][0]
    x, r, w, b = _inputs(rng, (1, 4096), 4096, dt)
    calls = count_calls(monkeypatch, cnorm.addnorm, "add_forward")
    y, h = fused(x, r, 4096, w, b)
    assert not calls, "the common call should take the fast path"
    y2, h2 = fused(x, r, 4096, w, b, out=np.empty_like(x), residual_out=np.empty_like(x))
    assert calls
    assert y.tobytes() == y2.tobytes() and h.tobytes() == h2.tobytes()
    # the calls the fast path leaves to the general one still work and still check
    assert fused(x, r, (4096,), w, b).y.tobytes() == y.tobytes()
    with pytest.raises(ValueError, match="eps"):
        cnorm.add_layer_norm(x, r, 4096, eps=-1.0)
    with pytest.raises(TypeError, match="residual"):
        fused(x, r.astype(np.float64) if dt != np.float64 else r.astype(np.float32), 4096, w, b)


def test_new_results_are_separate_c_contiguous_halves_of_one_block(rng):
    x, r, w, b = _inputs(rng, (4, 64), 64, np.dtype(np.float32))
    y, h = cnorm.add_layer_norm(x, r, 64, w, b)
    assert y.flags.c_contiguous and h.flags.c_contiguous and y.flags.writeable
    assert y.base is h.base and not np.shares_memory(y, h)
    assert not np.shares_memory(y, x) and not np.shares_memory(h, r)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape,ns", [((5, 7, 24), 24), ((9, 300), 300), ((3, 4096), 4096),
                                      ((4, 1000), 1000), ((2, 5000), 5000), ((6, 37), 37),
                                      ((64, 768), 768)])
def test_streamed_calls_give_the_same_bits(rng, monkeypatch, op, dt, shape, ns):
    """Large calls stream y and h, and rebuild h's tiles from x and the residual instead
    of reading h back: the bits of the in-cache path, every dtype and row length (rows
    over CHUNK keep the in-cache path), far-from-zero float64 data (the second pass)
    included, into buffers at any offset."""
    import cnorm._dispatch
    dt = _dt(dt)
    fused = OPS[op][0]
    x, r, w, b = _inputs(rng, shape, ns, dt)
    if dt == np.float64:
        x = x + 1e9                              # one_pass_ok refuses: the second pass runs
    monkeypatch.setattr(cnorm._dispatch, "STREAM_BYTES", 1 << 62)
    y0, h0 = fused(x, r, ns, w, b)
    monkeypatch.setattr(cnorm._dispatch, "STREAM_BYTES", 0)
    for offset in (0, 1, 3):
        ybuf = np.zeros(x.size + 4, dt)[offset:offset + x.size].reshape(x.shape)
        hbuf = np.zeros(x.size + 4, dt)[4 - offset:4 - offset + x.size].reshape(x.shape)
        y, h = fused(x, r, ns, w, b, out=ybuf, residual_out=hbuf)
        assert h.tobytes() == h0.tobytes() and y.tobytes() == y0.tobytes(), offset
    with threads(2):
        y, h = fused(x, r, ns, w, b)
    assert h.tobytes() == h0.tobytes() and y.tobytes() == y0.tobytes()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dt", [np.dtype(np.float32), np.dtype(np.float64)])
def test_streamed_in_place_calls(rng, monkeypatch, op, dt):
    """Streamed calls in place (residual_out=residual, out=x, and crossed): the bits of
    the in-cache path; h overwriting an input must not feed the output pass."""
    import cnorm._dispatch
    fused = OPS[op][0]
    x, r, w, b = _inputs(rng, (16, 768), 768, dt)
    monkeypatch.setattr(cnorm._dispatch, "STREAM_BYTES", 1 << 62)
    y0, h0 = fused(x, r, 768, w, b)
    monkeypatch.setattr(cnorm._dispatch, "STREAM_BYTES", 0)
    for out_is, hout_is in [("x", "r"), ("r", "x"), ("x", None), (None, "r"), (None, "x")]:
        xx, rr = x.copy(), r.copy()
        pick = {"x": xx, "r": rr, None: None}
        y, h = fused(xx, rr, 768, w, b, out=pick[out_is], residual_out=pick[hout_is])
        assert y.tobytes() == y0.tobytes() and h.tobytes() == h0.tobytes(), (out_is, hout_is)
