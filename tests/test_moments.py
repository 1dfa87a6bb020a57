"""cnorm.moments and cnorm.Moments: statistics over any axes, and their merge."""

import itertools
import math

import numpy as np
import pytest

import cnorm
from cnorm import _reference as ref
from cnorm.stats import _runs, reduced_axes

from conftest import threads

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:      # pragma: no cover - ml_dtypes is in the test extras
    BF16 = None

METHODS = ["two_pass", "welford"]
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16),
          pytest.param(BF16, id="bfloat16",
                       marks=pytest.mark.skipif(BF16 is None, reason="needs ml_dtypes"))]
SHAPES = [(7,), (5, 6), (3, 4, 5), (2, 3, 4, 5), (2, 1, 17, 3), (3, 1), (1, 40)]


def all_axes(ndim):
    """None, every single axis, negative spellings, and every tuple of axes."""
    out = [None, -1]
    for k in range(1, ndim + 1):
        out.extend(itertools.combinations(range(ndim), k))
    return out


def check_against_reference(x, axis, m, rtol=1e-12):
    count, mean, m2 = ref.moments(x, axis)
    assert type(m) is cnorm.Moments
    assert m.count == count and type(m.count) is int
    assert m.mean.dtype == np.float64 and m.m2.dtype == np.float64
    assert m.mean.shape == mean.shape and m.m2.shape == m2.shape
    scale = np.maximum(np.abs(mean), 1.0)
    np.testing.assert_allclose(m.mean, mean, rtol=0, atol=0) if count == 1 else \
        np.testing.assert_array_less(np.abs(m.mean - mean), rtol * scale + 1e-300)
    np.testing.assert_allclose(m.m2, m2, rtol=1e-10, atol=1e-12 * float(np.max(m2, initial=1)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_axis_set_matches_reference(shape, dtype, method, rng):
    x = (rng.standard_normal(shape) * 3 + 50).astype(dtype)
    for axis in all_axes(len(shape)):
        check_against_reference(x, axis, cnorm.moments(x, axis, method=method))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_dtypes_use_the_upcast_values(dtype, rng):
    x = (rng.standard_normal((6, 70, 5)) * 2 - 3).astype(dtype)
    for axis in [None, 0, 1, 2, (0, 2), (0, 1), (1, 2)]:
        m = cnorm.moments(x, axis)
        check_against_reference(x.astype(np.float64), axis, m)


@pytest.mark.parametrize("pattern,shape,axis", [
    ("R", (1000,), None), ("KR", (40, 50), 1), ("RK", (50, 40), 0),
    ("RKR", (6, 7, 20), (0, 2)), ("RKR", (6, 7, 3), (0, 2)), ("KRK", (5, 30, 8), 1),
    ("KRKR", (3, 4, 5, 6), (1, 3)), ("RKRK", (3, 4, 5, 6), (0, 2)),
])
def test_each_geometry(pattern, shape, axis, rng):
    x = rng.standard_normal(shape) + 7
    assert "".join("R" if r else "K" for r, _ in _runs(shape, reduced_axes(axis, len(shape)))) \
        == pattern
    for method in METHODS:
        check_against_reference(x, axis, cnorm.moments(x, axis, method=method))


def test_strided_transposed_and_array_likes(rng):
    base = rng.standard_normal((8, 9, 10))
    for x in (base[::2, :, ::3], base.transpose(2, 0, 1), np.asfortranarray(base),
              base[:, 3], base.astype(">f8")):
        for axis in (None, 0, (0, 2) if x.ndim == 3 else 1, -1):
            check_against_reference(x, axis, cnorm.moments(x, axis))
    m = cnorm.moments([[1.0, 2.0], [3.0, 5.0]], axis=0)
    np.testing.assert_array_equal(m.mean, [2.0, 3.5])
    np.testing.assert_array_equal(m.m2, [2.0, 4.5])


def test_zero_dimensional_and_empty():
    m = cnorm.moments(np.float32(2.5))
    assert m.count == 1 and m.mean.shape == () and float(m.mean) == 2.5 and float(m.m2) == 0.0
    m = cnorm.moments(np.empty((0, 3)), axis=0)
    assert m.count == 0 and m.mean.shape == (3,)
    assert np.isnan(m.mean).all() and (m.m2 == 0).all() and np.isnan(m.var()).all()
    m = cnorm.moments(np.empty((4, 0)), axis=0)
    assert m.count == 4 and m.mean.shape == (0,) and m.m2.shape == (0,)
    m = cnorm.moments(np.ones((3, 1, 2)), axis=1)      # reduced axes of length 1 only
    assert m.count == 1 and m.mean.shape == (3, 2) and (m.mean == 1).all() and (m.m2 == 0).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ratio", [1e0, 1e4, 1e6, 3e7])
def test_float32_accuracy_to_3e7_every_geometry(ratio, method):
    """The norms' promise: variance within 1e-6 relative of an exact fsum reference for
    |mean| / std up to 3e7, and the mean to float64 rounding of the data's mean."""
    rng = np.random.default_rng(int(ratio))
    sd = 1e-2
    x = (ratio * sd + sd * rng.standard_normal((8, 3, 20, 24))).astype(np.float32)
    for axis in [None, (0, 2, 3), (0, 1, 2), (2, 3), (1, 2), (0, 2)]:
        m = cnorm.moments(x, axis, method=method)
        kept = [i for i in range(4) if axis is not None and i not in axis]
        xt = np.moveaxis(x, kept, list(range(len(kept)))).reshape(m.mean.size, -1)
        for i, row in enumerate(xt):
            mean, var = ref.exact_mean_var(row)
            got = m.var().ravel()[i]
            # (float32 spacing at 3e5 is 0.03: a short row may hold one value)
            assert (got == 0 if var == 0 else abs(got / var - 1) <= 1e-6), (axis, i)
            assert abs(m.mean.ravel()[i] - mean) <= 1e-6 * math.sqrt(var)


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2)])
def test_constant_data_has_zero_m2(axis):
    x = np.full((30, 40, 20), 1234.5678, dtype=np.float32)
    for method in METHODS:
        m = cnorm.moments(x, axis, method=method)
        assert (m.m2 == 0).all() and (m.mean == np.float64(np.float32(1234.5678))).all()


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2), 2])
def test_same_bits_for_any_thread_count(axis, rng):
    x = (rng.standard_normal((64, 100, 60)) + 3).astype(np.float32)
    with threads(1):
        one = cnorm.moments(x, axis)
    for n in (2, 3):
        with threads(n):
            other = cnorm.moments(x, axis)
        np.testing.assert_array_equal(other.mean, one.mean)
        np.testing.assert_array_equal(other.m2, one.m2)


def test_nan_stays_in_its_entry(rng):
    x = rng.standard_normal((50, 6))
    x[7, 2] = np.nan
    x[9, 4] = np.inf
    m = cnorm.moments(x, axis=0)
    assert np.isnan(m.mean[2]) and np.isnan(m.m2[2]) and np.isnan(m.m2[4])
    keep = [0, 1, 3, 5]
    check_against_reference(x[:, keep], 0, cnorm.Moments(m.count, m.mean[keep], m.m2[keep]))


def test_var_std_and_ddof(rng):
    x = rng.standard_normal((20, 3))
    m = cnorm.moments(x, axis=0)
    np.testing.assert_allclose(m.var(), x.var(axis=0), rtol=1e-13)
    np.testing.assert_allclose(m.var(ddof=1), x.var(axis=0, ddof=1), rtol=1e-13)
    np.testing.assert_allclose(m.std(ddof=1), x.std(axis=0, ddof=1), rtol=1e-13)
    assert np.isnan(m.var(ddof=20)).all() and np.isnan(m.std(ddof=25)).all()
    with pytest.raises(TypeError, match="ddof"):
        m.var(ddof="1")


def random_split(rng, n, k):
    cuts = np.sort(rng.integers(0, n + 1, size=k - 1))
    return [slice(a, b) for a, b in zip([0, *cuts], [*cuts, n])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merge_of_any_split_gives_the_whole(dtype, rng):
    x = (rng.standard_normal((1000, 7)) * 1e-2 + 1e4).astype(dtype)
    whole = cnorm.moments(x, axis=0)
    for k in (1, 2, 5, 17):
        pieces = random_split(rng, x.shape[0], k) + [slice(0, 0)]     # and an empty piece
        parts = [cnorm.moments(x[s], axis=0) for s in pieces]
        merged = cnorm.Moments.merge(parts)
        assert merged.count == 1000
        np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-14)
        np.testing.assert_allclose(merged.var(), whole.var(), rtol=1e-6 if dtype == np.float32
                                   else 1e-9)
        again = cnorm.Moments.merge(parts)
        np.testing.assert_array_equal(again.mean, merged.mean)
        np.testing.assert_array_equal(again.m2, merged.m2)
    # a split over the kept axes' complement in two dimensions
    parts = [cnorm.moments(x[s, None], axis=(0, 1)) for s in random_split(rng, 1000, 4)]
    np.testing.assert_allclose(cnorm.Moments.merge(parts).var(), whole.var(), rtol=1e-6)


def test_merge_accuracy_far_from_zero(rng):
    # |mean| / std = 3e7 in float32: the merge keeps the promise
    x = (3e5 + 1e-2 * rng.standard_normal(20000)).astype(np.float32)
    parts = [cnorm.moments(x[s]) for s in random_split(rng, x.size, 9)]
    _, var = ref.exact_mean_var(x)
    assert abs(float(cnorm.Moments.merge(parts).var()) / var - 1) <= 1e-6


def test_merge_edge_cases_and_errors():
    a = cnorm.moments(np.arange(6.0).reshape(3, 2), axis=0)
    empty = cnorm.moments(np.empty((0, 2)), axis=0)
    for merged in (cnorm.Moments.merge([empty, a, empty]), cnorm.Moments.merge(iter([a]))):
        assert merged.count == 3
        np.testing.assert_array_equal(merged.mean, a.mean)
        np.testing.assert_array_equal(merged.m2, a.m2)
    assert cnorm.Moments.merge([empty]).count == 0
    with pytest.raises(ValueError, match="at least one"):
        cnorm.Moments.merge([])
    with pytest.raises(TypeError, match="single Moments"):
        cnorm.Moments.merge(a)
    with pytest.raises(TypeError, match="iterable of Moments"):
        cnorm.Moments.merge(3)
    with pytest.raises(TypeError, match=r"parts\[1\] must be a Moments"):
        cnorm.Moments.merge([a, (3, 1.0, 0.0)])
    b = cnorm.moments(np.arange(6.0).reshape(2, 3), axis=0)
    with pytest.raises(ValueError, match=r"parts\[1\] has shape \(3,\)"):
        cnorm.Moments.merge([a, b])


@pytest.mark.parametrize("bad,exc,match", [
    (dict(x=np.arange(6).reshape(2, 3)), TypeError, "x must have dtype"),
    (dict(x="abc"), TypeError, "x must"),
    (dict(axis=2), ValueError, "axis 2 is out of range"),
    (dict(axis=(0, -2)), ValueError, "repeats axis 0"),
    (dict(axis=1.0), TypeError, "axis must be an int"),
    (dict(axis=[0]), TypeError, "axis must be an int"),
    (dict(method="fast"), ValueError, "method must be"),
])
def test_errors_change_nothing(bad, exc, match):
    x = np.arange(6.0).reshape(2, 3)
    before = x.copy()
    kw = dict(x=x, axis=0, method=None)
    kw.update(bad)
    with pytest.raises(exc, match=match):
        cnorm.moments(kw.pop("x"), **kw)
    np.testing.assert_array_equal(x, before)


def test_input_is_not_modified(rng):
    x = rng.standard_normal((40, 30)).astype(np.float32)
    before = x.copy()
    cnorm.moments(x, 0)
    cnorm.moments(x.T, 0)
    np.testing.assert_array_equal(x, before)
