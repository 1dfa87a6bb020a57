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
