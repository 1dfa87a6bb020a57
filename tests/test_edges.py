"""Documented behaviour at the edges that other files do not pin down."""

import math

import numpy as np
import pytest

import cnorm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ["two_pass", "welford"])
def test_eps_zero_constant_channel_gives_inf_invstd_and_nan_output(dtype, method):
    x = np.full((4, 3, 5), 2.5, dtype=dtype)
    x[:, 1] = np.arange(20, dtype=dtype).reshape(4, 5)   # one normal channel
    f = cnorm.batch_norm_forward(x, eps=0.0, method=method)
    assert np.isinf(f.invstd[0]) and np.isinf(f.invstd[2])
    assert np.isnan(f.y[:, 0]).all() and np.isnan(f.y[:, 2]).all()
    assert np.isfinite(f.y[:, 1]).all()
    l = cnorm.layer_norm_forward(x.reshape(12, 5), 5, eps=0.0, method=method)
    for i in range(12):
        row_const = (i % 3) != 1
        assert np.isinf(l.rstd[i]) == row_const
        assert np.isnan(l.y[i]).all() == row_const


@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_denormal_inputs(dtype, method):
    # Data spread over the whole subnormal range: a kernel that flushed subnormals to zero
    # (DAZ/FTZ) would get the mean, the variance or the outputs wrong.  The outputs are of
    # order 1 (float32) or far above the subnormal grid (float64), so they are checked to a
    # relative tolerance.  float32's variance (~1e-77) is kept in float64 and, with eps of the
    # same order, decides invstd; float64's variance underflows to 0 in any float64 arithmetic,
    # so there invstd is 1/sqrt(eps) and the outputs carry the check.
    from cnorm import _reference as R
    tiny = np.finfo(dtype).smallest_subnormal
    normal = np.finfo(dtype).smallest_normal
    eps = 1e-77 if dtype == np.float32 else 1e-5
    rng = np.random.default_rng(0)
    x = (rng.integers(1, int(normal / tiny), size=(64, 3, 8)) * np.float64(tiny)).astype(dtype)
    assert (x < normal).all() and (x > 0).all()
    f = cnorm.batch_norm_forward(x, eps=eps, method=method)
    y, mean, var, invstd = R.batch_norm_train(x, eps=eps)
    if dtype == np.float32:
        assert (var > eps / 10).all()            # the variance matters to invstd
    np.testing.assert_allclose(f.mean, mean, rtol=1e-6, atol=4 * tiny)  # the subnormal grid
    np.testing.assert_allclose(f.invstd, invstd, rtol=1e-6)
    scale = np.abs(y).max()
    assert scale > 1e6 * tiny
    np.testing.assert_allclose(f.y, y, rtol=1e-5, atol=1e-6 * scale)
    l = cnorm.layer_norm_forward(x.reshape(192, 8), 8, eps=eps, method=method)
    y, mean, rstd = R.layer_norm(x.reshape(192, 8), 8, eps=eps)
    np.testing.assert_allclose(l.mean, mean, rtol=1e-6, atol=4 * tiny)
    np.testing.assert_allclose(l.rstd, rstd, rtol=1e-6)
    np.testing.assert_allclose(l.y, y, rtol=1e-5, atol=1e-6 * np.abs(y).max())


@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("ratio", [1e0, 1e2, 1e4, 1e6, 3e7])
def test_float32_variance_accuracy_from_offset_over_sd_1_to_3e7(ratio, method):
    # offset/sd from 1 to 3e7: the variance stays within 1e-6 of an exact fsum reference,
    # for batch norm (NCHW and channels-last) and layer norm
    from cnorm._reference import exact_mean_var
    rng = np.random.default_rng(int(ratio))
    sd = 1e-2
    x = (ratio * sd + sd * rng.standard_normal((16, 3, 32, 32))).astype(np.float32)
    f = cnorm.batch_norm_forward(x, eps=0.0, method=method)
    for c in range(3):
        _, var = exact_mean_var(x[:, c])
        assert abs(float(f.invstd[c]) ** -2 / var - 1) <= 1e-6
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    f = cnorm.batch_norm_forward(xl, eps=0.0, method=method, axis=-1)
    for c in range(3):
        _, var = exact_mean_var(xl[..., c])
        assert abs(float(f.invstd[c]) ** -2 / var - 1) <= 1e-6
    rows = x.reshape(48, 1024)
    l = cnorm.layer_norm_forward(rows, 1024, eps=0.0, method=method)
    for r in range(48):
        _, var = exact_mean_var(rows[r])
        assert abs(float(l.rstd[r]) ** -2 / var - 1) <= 1e-6



@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("ratio", [1e0, 1e4, 3e7])
def test_float32_group_and_instance_variance_accuracy_to_3e7(ratio, method):
    # the same promise for group norm (rows and channels-last columns) and instance norm,
    # and RMS norm's mean of squares (no cancellation, but the same float64 sums)
    from cnorm._reference import exact_mean_var
    rng = np.random.default_rng(int(ratio) + 7)
    sd = 1e-2
    x = (ratio * sd + sd * rng.standard_normal((3, 8, 24, 24))).astype(np.float32)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    for f, groups in [(cnorm.group_norm_forward(x, 2, eps=0.0, method=method), 2),
                      (cnorm.group_norm_forward(xl, 2, eps=0.0, method=method, axis=-1), 2),
                      (cnorm.instance_norm_forward(x, eps=0.0, method=method), 8),
                      (cnorm.instance_norm_forward(xl, eps=0.0, method=method, axis=-1), 8)]:
        per = 8 // groups
        for n in range(3):
            for g in range(groups):
                _, var = exact_mean_var(x[n, g * per:(g + 1) * per])
                assert abs(float(f.rstd[n, g]) ** -2 / var - 1) <= 1e-6
    rows = x.reshape(24, 576)
    r = cnorm.rms_norm_forward(rows, 576, eps=0.0)
    for i in range(24):
        ms = math.fsum(np.asarray(rows[i], np.float64) ** 2) / 576
        assert abs(float(r.rstd[i]) ** -2 / ms - 1) <= 1e-6

def test_float64_two_pass_second_pass_when_first_value_is_far_out():
    # Two-pass sums each block centred on its first value and keeps that one-pass
    # M2 only when its cancellation is mild; here the first value sits ~1000 sd
    # from the rest, the one-pass M2 would lose ~1e-11 relative, and the second
    # pass must bring it back to float64 rounding (checked against fsum).
    from cnorm._reference import exact_mean_var
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((6, 4096))
    rows[:, 0] = 1e3
    l = cnorm.layer_norm_forward(rows, 4096, eps=0.0, method="two_pass")
    for r in range(6):
        _, var = exact_mean_var(rows[r])
        assert abs(float(l.rstd[r]) ** -2 / var - 1) <= 1e-13, r
    x = np.ascontiguousarray(rows.reshape(6, 1, 4096).transpose(1, 0, 2))   # one channel, N=1
    f = cnorm.batch_norm_forward(x[:, :1], eps=0.0, method="two_pass")
    _, var = exact_mean_var(rows[0])
    assert abs(float(f.invstd[0]) ** -2 / var - 1) <= 1e-13
    # (N, C) data goes through the column kernels, which decide column by column
    cols = np.ascontiguousarray(rows.T)
    cols[:, 3] = rng.standard_normal(4096)               # a column that needs no second pass
    f = cnorm.batch_norm_forward(cols, eps=0.0, method="two_pass")
    for c in range(6):
        _, var = exact_mean_var(cols[:, c])
        assert abs(float(f.invstd[c]) ** -2 / var - 1) <= 1e-13, c


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("axis", [1, -1])
def test_groups_of_no_values_have_nan_statistics_and_keep_running_ones(dtype, axis):
    # An empty spatial shape: N * G groups, each of no values.  Their statistics are NaN
    # (as np.mean of nothing and cnorm.moments give), never whatever the memory held;
    # running statistics are left as they were, as torch leaves them.
    shape = (2, 4, 0) if axis == 1 else (2, 0, 4)
    x = np.ones(shape, dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    for f in (cnorm.group_norm_forward(x, 2, axis=axis), cnorm.instance_norm_forward(x, axis=axis)):
        assert f.y.shape == shape and f.y.dtype == dtype
        assert f.mean.dtype == pdt and f.mean.shape == f.rstd.shape == (2, f.mean.shape[1])
        assert np.isnan(f.mean).all() and np.isnan(f.rstd).all()
    rm, rv = np.full(4, 0.5, pdt), np.full(4, 2.0, pdt)
    y = cnorm.instance_norm(x, None, None, rm, rv, axis=axis)
    assert y.shape == shape
    assert (rm == 0.5).all() and (rv == 2.0).all()
    f = cnorm.group_norm_forward(x, 2, axis=axis)
    g = cnorm.group_norm_backward(x, x, f.mean, f.rstd, np.ones(4, pdt), axis=axis)
    assert g.dx.shape == shape and (g.dweight == 0).all() and (g.dbias == 0).all()
