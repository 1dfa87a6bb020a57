"""float16 and bfloat16 data, for every op of the contract table (tests/test_contract.py).

The promise: values are converted exactly on load, arithmetic is as for
float32 (statistics in float64), and each output is rounded once, to nearest
even, on store.  So y and dx are within one unit in the last place of x's
dtype of the float64 reference computed on the upcast values, give or take
the float32 arithmetic of the final formula (a few float32 roundings of its
terms, which matter only where the terms cancel); statistics are float32 and
keep float32's tolerance; dweight and dbias are float32.  bfloat16 needs
ml_dtypes: those cases skip without it.
"""

import math

import numpy as np
import pytest

import cnorm
from conftest import count_general, threads
from test_contract import OPS, _affine, _data

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:      # pragma: no cover - ml_dtypes is in the test extras
    ml_dtypes = None
    BF16 = None

F32_TOL = 2e-5        # the contract's float32 tolerance, for statistics and parameter grads
F32_TERMS = 1e-6      # float32 arithmetic of the output formula, relative to its terms

HALF = [pytest.param(np.dtype(np.float16), id="float16"),
        pytest.param("bfloat16", id="bfloat16",
                     marks=pytest.mark.skipif(BF16 is None, reason="needs ml_dtypes"))]
CASES = [pytest.param(op, shape, layout, nt, id=f"{op.name}-{cid}")
         for op in OPS for cid, shape, layout, nt in op.cases]


def _dt(dt):
    return BF16 if dt == "bfloat16" else dt


def ulp(dt, v):
    """The spacing of dtype dt at each |v| (v rounded to dt first)."""
    a = np.abs(np.asarray(v, np.float64)).astype(dt)
    bits = a.view(np.uint16)
    up = (bits + np.uint16(1)).view(dt)   # the next representable magnitude
    return up.astype(np.float64) - a.astype(np.float64)


def assert_rounded_once(got, want, dt, what, terms=None):
    """got (of dtype dt) is want rounded to dt, within one ulp of dt, plus float32
    arithmetic on terms of magnitude `terms` (default: want's largest)."""
    assert got.dtype == dt, (what, got.dtype)
    want = np.asarray(want, np.float64)
    g = got.astype(np.float64)
    finite = np.isfinite(want)
    assert np.array_equal(np.isnan(g), np.isnan(want)), f"{what}: NaN placement"
    scale = terms if terms is not None else (float(np.abs(want[finite]).max())
                                             if finite.any() else 1.0)
    err = np.abs(g - want)[finite]
    tol = ulp(dt, want)[finite] + F32_TERMS * scale
    bad = err > tol
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} values off by more than an "
                           f"ulp, worst {err[bad].max()} (tolerance {tol[bad].min()})")


def assert_f32_close(got, want, what, scale=1.0):
    assert got.dtype == np.float32, (what, got.dtype)
    want = np.asarray(want, np.float64)
    finite = want[np.isfinite(want)]
    scale = max(scale, float(np.abs(finite).max())) if finite.size else scale
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=F32_TOL, atol=F32_TOL * scale,
                               err_msg=what)


def _up(p):
    return {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in p.items()}


@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("op,shape,layout,nt", CASES)
def test_forward_and_backward_round_the_reference_once(rng, op, shape, layout, nt, dt):
    dt = _dt(dt)
    x = _data(rng, shape, np.float32).astype(dt)
    xu = x.astype(np.float64)                      # the values the kernels see
    p = op.params(rng, x, layout, np.float32)
    before = x.copy()
    with threads(nt):
        for which in op.affine:
            pa = _affine(p, which)
            want = op.ref_forward(xu, layout, _up(pa))
            for method in op.methods:
                what = f"{op.name} {dt} {which} method={method}"
                got = op.forward(x, layout, pa, method)
                assert_rounded_once(got[0], want[0], dt, f"{what} y")
                for g, w, nm in zip(got[1:], want[1:], got._fields[1:]):
                    assert_f32_close(g, w, f"{what} {nm}")
                plain = op.call(x, layout, pa, m=method)
                assert plain.tobytes() == got[0].tobytes(), f"{what}: plain function"
        stats = got[1:]
        for weighted in (True, False):
            pw = p if weighted else _affine(p, "none")
            dy = rng.standard_normal(shape).astype(dt)
            grads = op.backward(dy, x, stats, layout, pw)
            want = op.ref_backward(dy.astype(np.float64), xu, [s.astype(np.float64) for s in stats],
                                   layout, _up(pw))
            terms = (np.abs(dy.astype(np.float64)).max() * np.abs(stats[-1]).max()
                     * (np.abs(pw["w"]).max() if weighted else 1.0))
            what = f"{op.name} {dt} backward weighted={weighted}"
            assert_rounded_once(grads[0], want[0], dt, f"{what} dx", terms=terms)
            for g, w, nm in zip(grads[1:], want[1:], grads._fields[1:]):
                assert_f32_close(g, w, f"{what} {nm}")
    assert x.tobytes() == before.tobytes(), "x was modified"


def _cast(a, dt):
    """a (float32) rounded once to dt, as NumPy's (or ml_dtypes') cast rounds: to nearest
    even."""
    with np.errstate(over="ignore"):
        return a.astype(dt)


@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("op,shape,layout,nt", CASES)
def test_half_results_are_the_float32_results_rounded_once(rng, op, shape, layout, nt, dt):
    """The kernels load half values exactly and compute as for float32: every output is,
    bit for bit, the float32 kernel's on the upcast values, rounded once to x's dtype
    (statistics and parameter gradients, float32, are the float32 kernel's own)."""
    dt = _dt(dt)
    x = _data(rng, shape, np.float32).astype(dt)
    x32 = x.astype(np.float32)
    p = op.params(rng, x, layout, np.float32)
    dy = rng.standard_normal(shape).astype(dt)
    with threads(nt):
        for act in (None, "relu", "silu"):
            got = op.call(x, layout, p, act)
            assert got.tobytes() == _cast(op.call(x32, layout, p, act), dt).tobytes(), act
        for method in op.kernels:
            got = op.forward(x, layout, p, method)
            want = op.forward(x32, layout, p, method)
            assert got[0].tobytes() == _cast(want[0], dt).tobytes(), f"y, method={method}"
            for g, w, nm in zip(got[1:], want[1:], got._fields[1:]):
                assert g.dtype == np.float32 and g.tobytes() == w.tobytes(), nm
        grads = op.backward(dy, x, got[1:], layout, p)
        want = op.backward(dy.astype(np.float32), x32, got[1:], layout, p)
        assert grads[0].tobytes() == _cast(want[0], dt).tobytes(), "dx"
        for g, w, nm in zip(grads[1:], want[1:], grads._fields[1:]):
            assert g.dtype == np.float32 and g.tobytes() == w.tobytes(), nm


@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_parameters_of_x_dtype_are_those_values_as_float32(rng, op, dt):
    """weight and bias may be x's dtype: the same bits as their values given as float32."""
    dt = _dt(dt)
    _, shape, layout, _ = op.cases[0]
    x = _data(rng, shape, np.float32).astype(dt)
    p = op.params(rng, x, layout, np.float32)
    ph = {k: v.astype(dt) for k, v in p.items()}
    pf = {k: v.astype(np.float32) for k, v in ph.items()}
    assert op.call(x, layout, ph).tobytes() == op.call(x, layout, pf).tobytes()


@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("op,shape,layout,nt", [c for c in CASES if c.values[3] > 1])
def test_half_results_do_not_depend_on_the_thread_count(rng, op, shape, layout, nt, dt):
    dt = _dt(dt)
    x = _data(rng, shape, np.float32).astype(dt)
    p = op.params(rng, x, layout, np.float32)
    dy = rng.standard_normal(shape).astype(dt)
    runs = []
    for n in (1, 2, 3):
        with threads(n):
            fwd = op.forward(x, layout, p)
            runs.append([a.tobytes() for a in fwd]
                        + [a.tobytes() for a in op.backward(dy, x, fwd[1:], layout, p)])
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("dt", HALF)
def test_non_finite_values_and_overflow(dt):
    """NaN stays NaN (in its row); a result too large for the dtype is inf, as a cast
    gives; a constant row normalises to 0."""
    dt = _dt(dt)
    x = np.ones((4, 64), np.float32)
    x[1] = np.arange(64)
    x[2, 5] = np.nan
    x = x.astype(dt)
    big = np.float32(3e38) if dt == BF16 else np.float32(6e4)   # overflows dt times xhat
    y = cnorm.layer_norm(x, 64, np.full(64, big, np.float32))
    assert y.dtype == dt
    assert np.isnan(y[2].astype(np.float32)).all() and not np.isnan(y[[0, 1, 3]].astype(
        np.float32)).any()
    assert (y[0].astype(np.float32) == 0).all()
    y1 = y[1].astype(np.float32)
    assert np.isinf(y1[0]) and y1[0] < 0 and np.isinf(y1[-1]) and y1[-1] > 0
    want = cnorm.layer_norm(x.astype(np.float32), 64, np.full(64, big, np.float32))
    assert y.tobytes() == _cast(want, dt).tobytes()   # one rounding of the float32 result


@pytest.mark.parametrize("dt", HALF)
def test_statistics_are_exact_to_float32_far_from_zero(dt):
    """|mean| >> std: the statistics of the upcast values within 1e-6 relative of an exact
    fsum reference, both methods (values a float16 / bfloat16 can hold exactly)."""
    dt = _dt(dt)
    rng = np.random.default_rng(5)
    step = 2.0 ** (1 if dt == np.float16 else 8)   # the dtype's spacing at the offset
    offset = 1024.0 * step
    x = (offset + step * rng.integers(-60, 60, (8, 4096))).astype(dt)
    xu = x.astype(np.float64)
    for method in ("two_pass", "welford"):
        _, mean, rstd = cnorm.layer_norm_forward(x, 4096, eps=0.0, method=method)
        for r in range(8):
            m = math.fsum(xu[r]) / 4096
            var = math.fsum((v - m) ** 2 for v in xu[r]) / 4096
            assert abs(mean[r] - m) <= 1e-7 * abs(m)
            assert abs(rstd[r] ** -2 - var) <= 1e-6 * var


def test_running_statistics_of_half_data_are_float32_and_updated_in_place(rng):
    x = _data(rng, (6, 5, 7, 3), np.float32).astype(np.float16)
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    y = cnorm.batch_norm(x, None, None, rm, rv, training=True, momentum=0.5)
    assert y.dtype == np.float16
    xu = x.astype(np.float64)
    mean = xu.mean(axis=(0, 2, 3))
    var = xu.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(rm, 0.5 * mean, rtol=1e-6)
    np.testing.assert_allclose(rv, 0.5 + 0.5 * var, rtol=1e-6)
    with pytest.raises(TypeError, match="running_mean"):
        cnorm.batch_norm(x, None, None, rm.astype(np.float16), rv, training=True)


@pytest.mark.parametrize("dt", HALF)
def test_rms_norm_default_eps_is_float32_epsilon(rng, dt):
    dt = _dt(dt)
    x = (1e-3 * rng.standard_normal((3, 16))).astype(dt)
    got = cnorm.rms_norm(x, 16)
    want = cnorm.rms_norm(x, 16, eps=float(np.finfo(np.float32).eps))
    assert got.tobytes() == want.tobytes()
    assert got.tobytes() != cnorm.rms_norm(x, 16, eps=1e-3).tobytes()


@pytest.mark.parametrize("dt", HALF)
def test_half_layers(rng, dt):
    """A half-precision layer keeps float32 parameters and buffers, normalises and
    returns x's dtype, and takes a state_dict of its own dtype or of float32."""
    dt = _dt(dt)
    name = "bfloat16" if dt == BF16 else "float16"
    layers = [(cnorm.BatchNorm(5, dtype=name), (6, 5, 4, 3)),
              (cnorm.LayerNorm(12, dtype=dt), (4, 12)),
              (cnorm.GroupNorm(2, 4, dtype=dt), (3, 4, 5)),
              (cnorm.InstanceNorm(4, affine=True, track_running_stats=True, dtype=dt), (3, 4, 5)),
              (cnorm.RMSNorm(12, dtype=dt), (4, 12))]
    for layer, shape in layers:
        sd = layer.state_dict()
        assert all(v.dtype in (np.float32, np.int64) for v in sd.values()), type(layer)
        layer.load_state_dict({k: (v.astype(dt) if v.dtype == np.float32 else v)
                               for k, v in sd.items()})
        assert all(getattr(layer, k).dtype == np.float32 for k in sd if k != "num_batches_tracked")
        x = _data(rng, shape, np.float32)
        y = layer(x)
        assert y.dtype == dt
        dx = layer.backward(np.ones(shape, np.float32))
        assert dx.dtype == dt
        if layer.weight is not None:
            assert layer.weight_grad.dtype == np.float32


def test_bfloat16_needs_ml_dtypes_only_when_used():
    """cnorm imports without ml_dtypes; a float16 call does not import it."""
    import subprocess
    import sys
    code = ("import sys, numpy as np; sys.modules['ml_dtypes'] = None; import cnorm; "
            "y = cnorm.layer_norm(np.ones((2, 4), np.float16), 4); assert y.dtype == np.float16; "
            "import cnorm._checks as c; assert c.bfloat16() is None; "
            "cnorm.LayerNorm(4, dtype='float16')\n"
            "try:\n    cnorm.LayerNorm(4, dtype='bfloat16')\nexcept TypeError as e:\n"
            "    assert 'bfloat16' in str(e)\nelse:\n    raise AssertionError('no error')")
    subprocess.run([sys.executable, "-c", code], check=True)


def _torch_half(torch, a):
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


@pytest.mark.parametrize("dt", HALF)
def test_half_results_match_torch_in_the_same_dtype(rng, dt):
    """torch's CPU kernels in float16 and bfloat16 (computing in float32 and rounding):
    the same results to an ulp of the dtype.  Skips without torch."""
    torch = pytest.importorskip("torch")
    dt = _dt(dt)
    F = torch.nn.functional
    x = _data(rng, (4, 32, 6, 5), np.float32).astype(dt)
    # parameters that the dtype holds exactly, as torch's half modules have them
    w = rng.uniform(0.5, 2, 32).astype(dt).astype(np.float32)
    b = rng.uniform(-1, 1, 32).astype(dt).astype(np.float32)
    tx = _torch_half(torch, x)
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    th = {"w": tw.to(tx.dtype), "b": tb.to(tx.dtype)}
    rows = x.reshape(-1, 30)
    trows = _torch_half(torch, rows)
    w30, b30 = w[:30].copy(), b[:30].copy()
    cases = [
        (cnorm.batch_norm(x, w, b, training=True),
         F.batch_norm(tx, None, None, tw, tb, True, 0.1, 1e-5)),
        (cnorm.group_norm(x, 8, w, b), F.group_norm(tx, 8, th["w"], th["b"], 1e-5)),
        # (not instance norm: torch 2.13's float16 instance_norm was off by up to 1758 ulps
        # from the upcast reference on this data, where cnorm's is within half an ulp)
        (cnorm.layer_norm(rows, 30, w30, b30),
         F.layer_norm(trows, (30,), torch.from_numpy(w30).to(tx.dtype),
                      torch.from_numpy(b30).to(tx.dtype), 1e-5)),
        (cnorm.rms_norm(rows, 30, w30, eps=1e-6),
         F.rms_norm(trows, (30,), torch.from_numpy(w30).to(tx.dtype), 1e-6)),
    ]
    for i, (got, want) in enumerate(cases):
        want = want.float().numpy()
        assert got.dtype == dt
        # each within an ulp of the exact result (torch may round an intermediate)
        tol = 2 * ulp(dt, want) + F32_TERMS * np.abs(want).max()
        assert (np.abs(got.astype(np.float64) - want) <= tol).all(), i


@pytest.mark.parametrize("dt", HALF)
def test_fast_paths_take_half_data_with_float32_parameters(rng, monkeypatch, dt):
    """layer_norm's and rms_norm's fast paths (batch-1 latency) take float16 and bfloat16
    x with float32 parameters, and give the general path's bits."""
    from conftest import count_calls
    dt = _dt(dt)
    x = _data(rng, (3, 768), np.float32).astype(dt)
    w = rng.uniform(0.5, 2, 768).astype(np.float32)
    b = rng.uniform(-1, 1, 768).astype(np.float32)
    for module, fast, general in [
            (cnorm.layernorm, lambda: cnorm.layer_norm(x, 768, w, b),
             lambda: cnorm.layer_norm(x, 768, w, b, out=np.asfortranarray(np.empty_like(x)))),
            (cnorm.rmsnorm, lambda: cnorm.rms_norm(x, 768, w),
             lambda: cnorm.rms_norm(x, 768, w, out=np.asfortranarray(np.empty_like(x))))]:
        calls = count_calls(monkeypatch, module)
        y = fast()
        assert not calls, f"{module.__name__}: the fast path was not taken"
        assert y.dtype == dt and y.tobytes() == general().tobytes()
        assert calls


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("dt", HALF)
def test_fast_paths_take_parameters_of_x_dtype(rng, monkeypatch, dt, nt):
    """A model shipped in float16 or bfloat16 has its weights in that dtype too: the C fast
    paths of every row op (forward, forward with statistics, backward, the fused adds) and
    of batch norm (training, inference, backward) take such weights and biases, widened
    exactly as the general path widens them, and give the general path's bits.  bfloat16
    is taken from its first call on, and eps=None keeps each op's own rule."""
    import cnorm.addnorm
    import cnorm.batchnorm
    import cnorm.layernorm
    import cnorm.rmsnorm
    dt = _dt(dt)
    h, c = 96, 6
    x = _data(rng, (5, h), np.float32).astype(dt)
    res = rng.standard_normal((5, h)).astype(dt)
    dy = rng.standard_normal((5, h)).astype(dt)
    w = rng.uniform(0.5, 2, h).astype(dt)
    b = rng.uniform(-1, 1, h).astype(dt)
    xb = _data(rng, (4, c, 3, 5), np.float32).astype(dt)
    dyb = rng.standard_normal(xb.shape).astype(dt)
    wb = rng.uniform(0.5, 2, c).astype(dt)
    bb = rng.uniform(-1, 1, c).astype(dt)
    rm = rng.standard_normal(c).astype(np.float32)
    rv = rng.uniform(0.5, 2, c).astype(np.float32)
    cnorm.layer_norm(x, h, w, b)       # bfloat16: the first call tells the C paths its type
    general = count_general(monkeypatch, cnorm.layernorm, cnorm.rmsnorm, cnorm.addnorm,
                            cnorm.batchnorm)
    with threads(nt):
        lf = cnorm.layer_norm_forward(x, h, w, b)
        rf = cnorm.rms_norm_forward(x, h, w)
        rm_f, rv_f = rm.copy(), rv.copy()
        fast = {
            "layer_norm": cnorm.layer_norm(x, h, w, b),
            "layer_norm_forward": lf,
            "layer_norm_backward": cnorm.layer_norm_backward(dy, x, lf.mean, lf.rstd, w),
            "rms_norm": cnorm.rms_norm(x, h, w),
            "rms_norm_forward": rf,
            "rms_norm_backward": cnorm.rms_norm_backward(dy, x, rf.rstd, w),
            "add_layer_norm": cnorm.add_layer_norm(x, res, h, w, b),
            "add_rms_norm": cnorm.add_rms_norm(x, res, h, w),
            "batch_norm training": cnorm.batch_norm(xb, wb, bb, rm_f, rv_f, training=True),
            "running statistics": (rm_f, rv_f),
            "batch_norm inference": cnorm.batch_norm(xb, wb, bb, rm, rv),
            "batch_norm_backward": cnorm.batch_norm_backward(dyb, xb, rm, 1 / np.sqrt(rv), wb),
        }
        assert not general, "the common calls with half-precision parameters should be fast"
        rm_g, rv_g = rm.copy(), rv.copy()
        slow = {     # the same calls spelled so that the general path takes them
            "layer_norm": cnorm.layer_norm(x, (h,), w, b),
            "layer_norm_forward": cnorm.layer_norm_forward(x, (h,), w, b),
            "layer_norm_backward": cnorm.layer_norm_backward(dy, x, lf.mean.tolist(), lf.rstd,
                                                             w),
            "rms_norm": cnorm.rms_norm(x, (h,), w),
            "rms_norm_forward": cnorm.rms_norm_forward(x, (h,), w),
            "rms_norm_backward": cnorm.rms_norm_backward(dy, x, rf.rstd.tolist(), w),
            "add_layer_norm": cnorm.add_layer_norm(x, res, (h,), w, b),
            "add_rms_norm": cnorm.add_rms_norm(x, res, (h,), w),
            "batch_norm training": cnorm.batch_norm(xb, wb, bb, rm_g, rv_g, training=True,
                                                    method="two_pass"),
            "running statistics": (rm_g, rv_g),
            "batch_norm inference": cnorm.batch_norm(xb, wb, bb, rm, rv, method="two_pass"),
            "batch_norm_backward": cnorm.batch_norm_backward(np.asfortranarray(dyb), xb, rm,
                                                             1 / np.sqrt(rv), wb),
        }
        assert len(general) >= len(slow)
    for key, got in fast.items():
        got = got if isinstance(got, tuple) else (got,)
        want = slow[key] if isinstance(slow[key], tuple) else (slow[key],)
        assert len(got) == len(want), key
        for g, s in zip(got, want):
            assert (g is None) == (s is None), key
            if g is not None:
                assert g.dtype == s.dtype and g.shape == s.shape, key
                assert g.tobytes() == s.tobytes(), key
    # the outputs are in x's dtype, the statistics and parameter gradients in float32
    assert fast["layer_norm"].dtype == fast["add_rms_norm"].h.dtype == dt
    assert lf.mean.dtype == rf.rstd.dtype == fast["layer_norm_backward"].dweight.dtype
    assert lf.mean.dtype == np.float32
    # eps=None: float32's epsilon for RMS norm (as torch), an error for layer norm
    np.testing.assert_array_equal(
        cnorm.rms_norm(x, h, w, eps=None).view(np.uint16),
        cnorm.rms_norm(x, h, w, eps=float(np.finfo(np.float32).eps)).view(np.uint16))
    for call in (lambda: cnorm.layer_norm(x, h, w, b, eps=None),
                 lambda: cnorm.add_layer_norm(x, res, h, w, b, eps=None)):
        with pytest.raises(TypeError, match="eps"):
            call()
    if dt == BF16:
        # a float16 weight for bfloat16 x is neither x's dtype nor float32: the general
        # path takes it, and converts it as any other array-like
        w16 = w.astype(np.float32).astype(np.float16)
        assert cnorm.layer_norm(x, h, w16, b).tobytes() == \
            cnorm.layer_norm(x, (h,), w16.astype(np.float32), b).tobytes()
