"""Property tests: random shapes, strides, dtypes, methods and axes against the reference."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnorm
from cnorm import _reference as R

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DIMS = st.sampled_from([1, 2, 3, 5, 7, 13, 16, 17])


def _tol(dtype):
    return dict(rtol=3e-4, atol=3e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)


@st.composite
def arrays(draw, min_ndim=2, max_ndim=4):
    """A float array with a random shape and a random memory layout (a view of a bigger one)."""
    ndim = draw(st.integers(min_ndim, max_ndim))
    shape = tuple(draw(DIMS) for _ in range(ndim))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    layout = draw(st.sampled_from(["C", "F", "step", "reversed", "transposed"]))
    offset = draw(st.sampled_from([0.0, 3.0, 1e3]))
    if layout == "step":
        base = rng.standard_normal(tuple(2 * s for s in shape)) + offset
        x = base[tuple(slice(None, None, 2) for _ in shape)]
    elif layout == "reversed":
        x = (rng.standard_normal(shape) + offset)[::-1]
    elif layout == "transposed":
        x = (rng.standard_normal(shape[::-1]) + offset).T
    else:
        x = np.asarray(rng.standard_normal(shape) + offset, order=layout)
    return x.astype(dtype, copy=False) if x.dtype != dtype else x, rng


@SETTINGS
@given(data=arrays(), axis=st.integers(-4, 3), method=st.sampled_from(["two_pass", "welford"]),
       affine=st.booleans())
def test_batch_norm_matches_reference(data, axis, method, affine):
    x, rng = data
    axis = axis % x.ndim
    c = x.shape[axis]
    n = x.size // c
    if n < 2:
        return
    w = rng.standard_normal(c).astype(x.dtype) if affine else None
    b = rng.standard_normal(c).astype(x.dtype) if affine else None
    x0 = x.copy()
    fwd = cnorm.batch_norm_forward(x, w, b, axis=axis, method=method)
    y, mean, var, invstd = R.batch_norm_train(x, w, b, axis=axis)
    np.testing.assert_allclose(fwd.y, y, **_tol(x.dtype))
    np.testing.assert_allclose(fwd.mean, mean, **_tol(x.dtype))
    np.testing.assert_allclose(fwd.invstd, invstd, **_tol(x.dtype))
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    for training in (True, False):
        got = cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, training=training, axis=axis)
        ref = R.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, training=training, axis=axis)
        scale = max(1.0, float(np.abs(ref[0]).max()))
        np.testing.assert_allclose(got.dx / scale, ref[0] / scale, **_tol(x.dtype))
        for g, r in zip(got[1:], ref[1:]):
            np.testing.assert_allclose(g, r, rtol=_tol(x.dtype)["rtol"],
                                       atol=_tol(x.dtype)["atol"] * max(1.0, np.abs(r).max()))
    rm, rv = rng.standard_normal(c).astype(x.dtype), rng.uniform(0.5, 2, c).astype(x.dtype)
    np.testing.assert_allclose(cnorm.batch_norm(x, w, b, rm, rv, axis=axis),
                               R.batch_norm_infer(x, rm, rv, w, b, axis=axis), **_tol(x.dtype))
    assert np.array_equal(x, x0)


@SETTINGS
@given(data=arrays(), k=st.integers(1, 3), method=st.sampled_from(["two_pass", "welford"]),
       with_w=st.booleans(), with_b=st.booleans())
def test_layer_norm_matches_reference(data, k, method, with_w, with_b):
    x, rng = data
    k = min(k, x.ndim)
    shape = x.shape[x.ndim - k:]
    w = rng.standard_normal(shape).astype(x.dtype) if with_w else None
    b = rng.standard_normal(shape).astype(x.dtype) if with_b else None
    x0 = x.copy()
    fwd = cnorm.layer_norm_forward(x, shape, w, b, method=method)
    y, mean, rstd = R.layer_norm(x, shape, w, b)
    np.testing.assert_allclose(fwd.y, y, **_tol(x.dtype))
    np.testing.assert_allclose(fwd.mean, mean, **_tol(x.dtype))
    np.testing.assert_allclose(fwd.rstd, rstd, **_tol(x.dtype))
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    got = cnorm.layer_norm_backward(dy, x, fwd.mean, fwd.rstd, w)
    ref = R.layer_norm_backward(dy, x, fwd.mean, fwd.rstd, w)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=_tol(x.dtype)["rtol"],
                                   atol=_tol(x.dtype)["atol"] * max(1.0, np.abs(r).max()))
    assert np.array_equal(x, x0)


def test_property_strategy_produces_every_layout():
    # guard against a strategy that silently stops covering a layout
    layouts = set()

    @settings(max_examples=80, deadline=None, derandomize=True)
    @given(data=arrays())
    def probe(data):
        x, _ = data
        layouts.add("C" if x.flags.c_contiguous else "F" if x.flags.f_contiguous else "other")

    probe()
    assert layouts == {"C", "F", "other"}, layouts
