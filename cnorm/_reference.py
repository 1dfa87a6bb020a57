"""Pure-NumPy reference implementations of cnorm's operations.

Everything here is written for clarity, not speed, and computes in float64
whatever the input dtype.  The test-suite uses these functions as its oracle,
and they double as the documentation of the maths:

Batch normalization (per channel ``c``, over every other axis)::

    mean_c   = mean(x[..., c, ...])
    var_c    = mean((x - mean_c) ** 2)            # biased
    invstd_c = 1 / sqrt(var_c + eps)
    y        = (x - mean_c) * invstd_c * weight_c + bias_c

Layer normalization (per sample, over the trailing ``k`` dimensions) uses the
same formulas with the roles of the axes swapped.  Group normalization takes
them per (sample, group of channels), instance normalization per (sample,
channel), and RMS normalization divides by ``sqrt(mean(x ** 2) + eps)``
without centring.  An activation (ReLU or SiLU) applies to y.

The functions return float64 arrays; callers compare them with cnorm's
results using a tolerance suited to the input dtype.
"""

import math

import numpy as np

__all__ = [
    "batch_norm_train",
    "batch_norm_infer",
    "batch_norm_backward",
    "running_stats_update",
    "layer_norm",
    "layer_norm_backward",
    "exact_mean_var",
    "moments",
    "activation",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "rms_norm",
    "rms_norm_backward",
]


def _channel_last(x, axis):
    """Move the channel axis of ``x`` to the end, in float64."""
    return np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)


def _per_channel(v, c, default):
    if v is None:
        return np.full(c, default, dtype=np.float64)
    return np.asarray(v, dtype=np.float64).reshape(c)


def batch_norm_train(x, weight=None, bias=None, eps=1e-5, axis=1):
    """Training-mode batch norm.  Returns ``(y, mean, var, invstd)``.

    ``mean``, ``var`` (biased) and ``invstd`` have shape ``(C,)``.
    """
    xl = _channel_last(x, axis)
    c = xl.shape[-1]
    flat = xl.reshape(-1, c)
    mean = flat.mean(axis=0)
    var = ((flat - mean) ** 2).mean(axis=0)
    invstd = 1.0 / np.sqrt(var + eps)
    w = _per_channel(weight, c, 1.0)
    b = _per_channel(bias, c, 0.0)
    y = (xl - mean) * invstd * w + b
    return np.moveaxis(y, -1, axis), mean, var, invstd


def batch_norm_infer(x, running_mean, running_var, weight=None, bias=None, eps=1e-5, axis=1):
    """Inference-mode batch norm with fixed statistics."""
    xl = _channel_last(x, axis)
    c = xl.shape[-1]
    mean = _per_channel(running_mean, c, 0.0)
    invstd = 1.0 / np.sqrt(_per_channel(running_var, c, 1.0) + eps)
    w = _per_channel(weight, c, 1.0)
    b = _per_channel(bias, c, 0.0)
    return np.moveaxis((xl - mean) * invstd * w + b, -1, axis)


def running_stats_update(running_mean, running_var, mean, var, n, momentum):
    """PyTorch's running-statistics update; ``var`` is the biased batch variance.

    Returns the new ``(running_mean, running_var)`` in float64.
    """
    rm = np.asarray(running_mean, dtype=np.float64)
    rv = np.asarray(running_var, dtype=np.float64)
    new_mean = (1.0 - momentum) * rm + momentum * np.asarray(mean, dtype=np.float64)
    new_var = (1.0 - momentum) * rv + momentum * np.asarray(var, dtype=np.float64) * n / (n - 1)
    return new_mean, new_var


def batch_norm_backward(dy, x, mean, invstd, weight=None, training=True, axis=1):
    """Gradients of batch norm.  Returns ``(dx, dweight, dbias)``.

    With ``training=True`` the statistics are those of the batch and the
    gradient flows through them; with ``training=False`` they are constants.
    """
    xl = _channel_last(x, axis)
    gl = _channel_last(dy, axis)
    c = xl.shape[-1]
    mean = _per_channel(mean, c, 0.0)
    invstd = _per_channel(invstd, c, 1.0)
    w = _per_channel(weight, c, 1.0)
    xhat = (xl - mean) * invstd
    axes = tuple(range(xl.ndim - 1))
    dbias = gl.sum(axis=axes)
    dweight = (gl * xhat).sum(axis=axes)
    if training:
        n = xl.size // c if c else 0
        dx = w * invstd / n * (n * gl - dbias - xhat * dweight)
    else:
        dx = gl * w * invstd
    return np.moveaxis(dx, -1, axis), dweight, dbias


def _rows(x, k):
    x = np.asarray(x, dtype=np.float64)
    lead = x.shape[: x.ndim - k]
    return x.reshape(int(np.prod(lead, dtype=np.int64)), -1), lead


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer norm over the trailing ``len(normalized_shape)`` dimensions.

    Returns ``(y, mean, rstd)``; ``mean`` and ``rstd`` have the leading shape.
    """
    shape = (normalized_shape,) if np.ndim(normalized_shape) == 0 else tuple(normalized_shape)
    rows, lead = _rows(x, len(shape))
    mean = rows.mean(axis=1, keepdims=True)
    var = ((rows - mean) ** 2).mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (rows - mean) * rstd
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float64).reshape(-1)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64).reshape(-1)
    return y.reshape(np.shape(x)), mean.reshape(lead), rstd.reshape(lead)


def layer_norm_backward(dy, x, mean, rstd, weight=None):
    """Gradients of layer norm.  Returns ``(dx, dweight, dbias)``."""
    k = np.ndim(x) - np.ndim(mean)
    rows, _ = _rows(x, k)
    g_rows, _ = _rows(dy, k)
    mean = np.asarray(mean, dtype=np.float64).reshape(-1, 1)
    rstd = np.asarray(rstd, dtype=np.float64).reshape(-1, 1)
    h = rows.shape[1]
    xhat = (rows - mean) * rstd
    g = g_rows if weight is None else g_rows * np.asarray(weight, dtype=np.float64).reshape(-1)
    dx = rstd / h * (h * g - g.sum(axis=1, keepdims=True) - xhat * (g * xhat).sum(axis=1, keepdims=True))
    norm_shape = np.shape(x)[np.ndim(x) - k:]
    dweight = (g_rows * xhat).sum(axis=0).reshape(norm_shape)
    dbias = g_rows.sum(axis=0).reshape(norm_shape)
    return dx.reshape(np.shape(x)), dweight, dbias


def exact_mean_var(values):
    """Mean and biased variance of a 1-D sequence, using correctly rounded sums.

    ``math.fsum`` makes both sums exact before the final rounding, so this is
    the yardstick for the accuracy tests on ill-conditioned data.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    mean = math.fsum(v) / v.size
    var = math.fsum((v - mean) ** 2) / v.size
    return mean, var


def moments(x, axis=None):
    """(count, mean, m2) of x over `axis` (None, an int or a tuple), two-pass in
    float64: mean = sum(x) / count, m2 = sum((x - mean) ** 2)."""
    v = np.asarray(x, dtype=np.float64)
    axes = tuple(range(v.ndim)) if axis is None else axis
    axes = tuple(a % v.ndim for a in (axes if isinstance(axes, tuple) else (axes,)))
    count = 1
    for a in axes:
        count *= v.shape[a]
    mean = v.sum(axis=axes, keepdims=True) / count
    m2 = ((v - mean) ** 2).sum(axis=axes)
    return count, mean.reshape(m2.shape), m2


def activation(y, name=None):
    """y after the activation `name` (None, 'relu' or 'silu'), in float64."""
    y = np.asarray(y, dtype=np.float64)
    if name is None:
        return y
    if name == "relu":
        return np.where(y < 0, 0.0, y)
    if name == "silu":
        with np.errstate(over="ignore"):
            return y / (1.0 + np.exp(-y))
    raise ValueError(f"unknown activation {name!r}")


def _groups_view(x, num_groups, axis):
    """x in float64 as (N, G, C/G, S): channels moved to axis 1, the rest flattened."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 1)
    n, c = x.shape[:2]
    return x.reshape(n, num_groups, c // num_groups, -1), x.shape


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, axis=1):
    """Group norm of x (N, C, ...) with channel axis `axis`: statistics per sample and
    group of C / num_groups channels.  Returns ``(y, mean, rstd)``, the statistics of
    shape (N, num_groups)."""
    v, moved = _groups_view(x, num_groups, axis)
    n, g, cg, _ = v.shape
    mean = v.mean(axis=(2, 3))
    var = ((v - mean[:, :, None, None]) ** 2).mean(axis=(2, 3))
    rstd = 1.0 / np.sqrt(var + eps)
    y = (v - mean[:, :, None, None]) * rstd[:, :, None, None]
    c = g * cg
    y = y * _per_channel(weight, c, 1.0).reshape(1, g, cg, 1)
    y = y + _per_channel(bias, c, 0.0).reshape(1, g, cg, 1)
    return np.moveaxis(y.reshape(moved), 1, axis), mean, rstd


def group_norm_backward(dy, x, mean, rstd, weight=None, axis=1):
    """Gradients of group norm.  Returns ``(dx, dweight, dbias)``."""
    mean = np.asarray(mean, dtype=np.float64)
    rstd = np.asarray(rstd, dtype=np.float64)
    g = mean.shape[1]
    v, moved = _groups_view(x, g, axis)
    gv, _ = _groups_view(dy, g, axis)
    n, _, cg, s = v.shape
    xhat = (v - mean[:, :, None, None]) * rstd[:, :, None, None]
    w = _per_channel(weight, g * cg, 1.0).reshape(1, g, cg, 1)
    gw = gv * w
    m = cg * s
    dx = rstd[:, :, None, None] / m * (m * gw - gw.sum(axis=(2, 3), keepdims=True)
                                       - xhat * (gw * xhat).sum(axis=(2, 3), keepdims=True))
    dweight = (gv * xhat).sum(axis=(0, 3)).reshape(-1)
    dbias = gv.sum(axis=(0, 3)).reshape(-1)
    return np.moveaxis(dx.reshape(moved), 1, axis), dweight, dbias


def instance_norm(x, weight=None, bias=None, eps=1e-5, axis=1):
    """Instance norm: group norm with one channel per group.  Returns ``(y, mean, rstd)``
    with statistics of shape (N, C)."""
    c = np.shape(x)[axis]
    return group_norm(x, c, weight, bias, eps, axis)


def instance_norm_backward(dy, x, mean, rstd, weight=None, axis=1):
    """Gradients of instance norm.  Returns ``(dx, dweight, dbias)``."""
    return group_norm_backward(dy, x, mean, rstd, weight, axis)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """RMS norm over the trailing dimensions: ``y = x / sqrt(mean(x**2) + eps) * weight``.

    eps None is the machine epsilon of x's dtype (float32's for 16-bit floats).
    Returns ``(y, rstd)``, rstd of the leading shape."""
    shape = (normalized_shape,) if np.ndim(normalized_shape) == 0 else tuple(normalized_shape)
    if eps is None:
        dt = np.asarray(x).dtype
        eps = float(np.finfo(dt if dt.itemsize >= 4 else np.float32).eps)
    rows, lead = _rows(x, len(shape))
    rstd = 1.0 / np.sqrt((rows ** 2).mean(axis=1, keepdims=True) + eps)
    y = rows * rstd
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float64).reshape(-1)
    return y.reshape(np.shape(x)), rstd.reshape(lead)


def rms_norm_backward(dy, x, rstd, weight=None):
    """Gradients of RMS norm.  Returns ``(dx, dweight)``."""
    k = np.ndim(x) - np.ndim(rstd)
    rows, _ = _rows(x, k)
    g_rows, _ = _rows(dy, k)
    rstd = np.asarray(rstd, dtype=np.float64).reshape(-1, 1)
    h = rows.shape[1]
    g = g_rows if weight is None else g_rows * np.asarray(weight, dtype=np.float64).reshape(-1)
    xhat = rows * rstd
    dx = rstd * (g - xhat * (g * xhat).sum(axis=1, keepdims=True) / h)
    dweight = (g_rows * xhat).sum(axis=0).reshape(np.shape(x)[np.ndim(x) - k:])
    return dx.reshape(np.shape(x)), dweight
