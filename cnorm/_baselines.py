"""Plain vectorised NumPy versions of cnorm's operations, for benchmarks.

This is the code a NumPy user would write without cnorm, working in the
input's dtype.  The benchmark command and the pytest-benchmark suite both
time these; keep every NumPy baseline here and nowhere else.
"""

import numpy as np


def _other_axes(ndim, axis):
    return tuple(a for a in range(ndim) if a != axis % ndim)


def _per_channel(v, ndim, axis):
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


def batch_norm_train(x, weight, bias, eps=1e-5, axis=1):
    axes = _other_axes(x.ndim, axis)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    return (x - mean) * invstd * _per_channel(weight, x.ndim, axis) + _per_channel(bias, x.ndim, axis)


def batch_norm_infer(x, weight, bias, running_mean, running_var, eps=1e-5, axis=1):
    scale = weight / np.sqrt(running_var + eps)
    return ((x - _per_channel(running_mean, x.ndim, axis)) * _per_channel(scale, x.ndim, axis)
            + _per_channel(bias, x.ndim, axis))


def batch_norm_backward(dy, x, mean, invstd, weight, axis=1):
    axes = _other_axes(x.ndim, axis)
    n = x.size // x.shape[axis]
    xhat = (x - _per_channel(mean, x.ndim, axis)) * _per_channel(invstd, x.ndim, axis)
    dbias = dy.sum(axis=axes)
    dweight = (dy * xhat).sum(axis=axes)
    k = _per_channel(weight * invstd / n, x.ndim, axis)
    dx = k * (n * dy - _per_channel(dbias, x.ndim, axis) - xhat * _per_channel(dweight, x.ndim, axis))
    return dx, dweight, dbias


def layer_norm(x, normalized_shape, weight, bias, eps=1e-5):
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def layer_norm_backward(dy, x, mean, rstd, weight):
    k = x.ndim - mean.ndim
    axes = tuple(range(x.ndim - k, x.ndim))
    m = mean.reshape(mean.shape + (1,) * k)
    r = rstd.reshape(rstd.shape + (1,) * k)
    h = np.prod(x.shape[x.ndim - k:])
    xhat = (x - m) * r
    g = dy * weight
    dx = r / h * (h * g - g.sum(axis=axes, keepdims=True)
                  - xhat * (g * xhat).sum(axis=axes, keepdims=True))
    lead = tuple(range(x.ndim - k))
    return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


def _groups(x, num_groups, axis):
    """x as (N, G, C/G, S) with the channels moved to axis 1 (a view or a copy)."""
    xm = np.moveaxis(x, axis, 1)
    n, c = xm.shape[:2]
    return xm.reshape(n, num_groups, c // num_groups, -1), xm.shape


def group_norm(x, num_groups, weight, bias, eps=1e-5, axis=1, silu=False):
    v, moved = _groups(x, num_groups, axis)
    mean = v.mean(axis=(2, 3), keepdims=True)
    var = v.var(axis=(2, 3), keepdims=True)
    g, cg = v.shape[1:3]
    y = ((v - mean) / np.sqrt(var + eps) * weight.reshape(1, g, cg, 1)
         + bias.reshape(1, g, cg, 1)).reshape(moved)
    if silu:
        y = y / (1 + np.exp(-y))
    return np.moveaxis(y, 1, axis)


def group_norm_backward(dy, x, mean, rstd, weight, axis=1):
    g = mean.shape[1]
    v, moved = _groups(x, g, axis)
    gv, _ = _groups(dy, g, axis)
    cg, s = v.shape[2:]
    xhat = (v - mean[:, :, None, None]) * rstd[:, :, None, None]
    gw = gv * weight.reshape(1, g, cg, 1)
    m = cg * s
    dx = rstd[:, :, None, None] / m * (m * gw - gw.sum(axis=(2, 3), keepdims=True)
                                       - xhat * (gw * xhat).sum(axis=(2, 3), keepdims=True))
    return (np.moveaxis(dx.reshape(moved), 1, axis), (gv * xhat).sum(axis=(0, 3)).reshape(-1),
            gv.sum(axis=(0, 3)).reshape(-1))


def instance_norm(x, eps=1e-5, axis=1):
    return group_norm(x, x.shape[axis], np.ones(x.shape[axis], x.dtype),
                      np.zeros(x.shape[axis], x.dtype), eps, axis)


def rms_norm(x, weight, eps):
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * weight


def rms_norm_backward(dy, x, rstd, weight):
    r = rstd[..., None]
    xhat = x * r
    g = dy * weight
    dx = r * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    lead = tuple(range(x.ndim - 1))
    return dx, (dy * xhat).sum(axis=lead)
