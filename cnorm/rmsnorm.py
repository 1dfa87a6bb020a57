"""RMS normalization: the Python API.

The row geometry of layer norm without the centring step; the arithmetic
lives in ``cnorm/_rows.pxi``.
"""

from collections import namedtuple

import numpy as np

from cnorm._checks import (
    F32, F64, activation_value, deliver, eps_value, float_array, grad_array, like_array,
    output_buffer, param_dtype,
)
from cnorm import _dispatch as dispatch
from cnorm._dispatch import kernels, stream_stores
from cnorm.layernorm import plan

_kernels = kernels("_kernels")

__all__ = ["rms_norm", "rms_norm_forward", "rms_norm_backward", "RMSNormOutput",
           "RMSNormGrads"]

RMSNormOutput = namedtuple("RMSNormOutput", ["y", "rstd"])
RMSNormOutput.__doc__ = """Result of `rms_norm_forward`: y, and 1/sqrt(mean(x**2) + eps) of each
sample, of shape ``x.shape[:x.ndim - len(normalized_shape)]`` and x's parameter dtype
(float32 for float16 and bfloat16 x)."""
RMSNormGrads = namedtuple("RMSNormGrads", ["dx", "dweight"])
RMSNormGrads.__doc__ = """Result of `rms_norm_backward`: dx (x's shape) and the gradient of
weight, of shape normalized_shape."""

_EPS = {F32: float(np.finfo(np.float32).eps), F64: float(np.finfo(np.float64).eps)}
# eps=None as the C fast paths take it, (for float32 parameters, for float64 ones), by
# whether the op is centred: layer norm has no default (NaN), RMS norm the epsilon above
FAST_EPS = {True: (float("nan"), float("nan")), False: (_EPS[F32], _EPS[F64])}


def _eps(eps, dtype):
    """eps None: the machine epsilon of the computation type, as torch."""
    return _EPS[param_dtype(dtype)] if eps is None else eps_value(eps)


def _forward(p, weight, eps, activation, out, want_stats):
    """Forward of a call planned by layernorm.plan; returns (y, rstd)."""
    x, shape, h = p
    weight = like_array(weight, "weight", param_dtype(x.dtype), shape)
    eps = _eps(eps, x.dtype)
    act = activation_value(activation)
    lead = x.shape[:x.ndim - len(shape)]
    rows = x.size // h
    out, y = output_buffer(out, x, [("x", x)])
    rstd = np.empty(lead, param_dtype(x.dtype)) if want_stats else None
    if rows:
        _kernels.norm_rows(x if x.flags.c_contiguous else np.ascontiguousarray(x), y, rows, h,
                           False, act, weight, None, None, rstd, eps, None,
                           stream_stores(2 * x.nbytes))
    return deliver(out, y), rstd


def rms_norm(x, normalized_shape, weight=None, *, eps=None, activation=None, out=None):
    """RMS normalization over the trailing dimensions, as ``torch.nn.functional.rms_norm``.

    Each sample is scaled by the reciprocal root mean square of its values
    over the trailing dimensions, without centring::

        y = activation(x / sqrt(mean(x**2) + eps) * weight)

    Parameters
    ----------
    x : array_like of shape (..., *normalized_shape)
        float32, float64, float16 or bfloat16 data, any strides.
    normalized_shape : int or tuple of int
        The trailing dimensions of x to normalise over.
    weight : array_like of shape normalized_shape, optional
        Elementwise scale, cast to x's parameter dtype (float32 for half-precision
        x); None means ones.
    eps : float >= 0 or None, default None
        Added to the mean square; None is the machine epsilon of the computation
        type, as in torch: ``np.finfo(x.dtype).eps`` for float32 and float64 x,
        float32's for float16 and bfloat16 x.
    activation : {None, 'relu', 'silu'}
        Applied to y in the same pass.
    out : ndarray, optional
        Receives y: x's shape and dtype, writeable; may be x itself.

    Returns
    -------
    y : ndarray
        x's shape and dtype.

    Raises
    ------
    TypeError
        x not float32, float64, float16 or bfloat16; normalized_shape not integers; non-numeric
        weight; eps not a number; activation not a string.
    ValueError
        normalized_shape not the trailing dimensions of x, or empty; weight of
        the wrong shape; bad eps or activation; a bad `out`.  Nothing is
        modified when an error is raised.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> cnorm.rms_norm(np.array([[3.0, 4.0]]), 2, eps=0.0)
    array([[0.84852814, 1.13137085]])
    """
    # The common call, checked in C: the same checks as _forward, at a fraction of the cost.
    if activation is None:
        y = _kernels.rows_fast(x, normalized_shape, weight, None, eps, False, *FAST_EPS[False],
                               dispatch.STREAM_BYTES, out)
        if y is not None:
            return y
    return _forward(plan(x, normalized_shape), weight, eps, activation, out, False)[0]


def rms_norm_forward(x, normalized_shape, weight=None, *, eps=None, out=None):
    """RMS normalization that also returns what backward needs.

    Takes the arguments of `rms_norm` (no activation).

    Returns
    -------
    RMSNormOutput
        ``(y, rstd)``; ``rstd = 1 / sqrt(mean(x**2) + eps)`` has shape
        ``x.shape[:x.ndim - len(normalized_shape)]`` and x's dtype.

    Raises
    ------
    TypeError, ValueError
        As `rms_norm`; nothing is modified when an error is raised.
    """
    fast = _kernels.rows_forward_fast(x, normalized_shape, weight, None, eps, False,
                                      *FAST_EPS[False], dispatch.STREAM_BYTES,
                                      out)   # the common call
    if fast is not None:
        return RMSNormOutput(fast[0], fast[2])
    return RMSNormOutput(*_forward(plan(x, normalized_shape), weight, eps, None, out, True))


def rms_norm_backward(dy, x, rstd, weight=None, *, out=None):
    """Gradients of RMS normalization (without the activation).

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to y; x's shape (cast to x's dtype).
    x : array_like
        The forward input: float32, float64, float16 or bfloat16.
    rstd : array_like of shape x.shape[:x.ndim - k]
        What `rms_norm_forward` returned; k, the number of normalised
        dimensions, is ``x.ndim - rstd.ndim``.
    weight : array_like of shape x.shape[x.ndim - k:], optional
        None means ones.
    out : ndarray, optional
        Receives dx; may be dy or x itself.

    Returns
    -------
    RMSNormGrads
        ``(dx, dweight)`` with, per sample of H values, ``g = dy * weight`` and
        ``xhat = x * rstd``::

            dx = rstd * (g - xhat * sum(g * xhat) / H)

        and ``dweight = sum(dy * xhat)`` over the samples.

    Raises
    ------
    TypeError
        x or dy not floating; non-numeric rstd or weight.
    ValueError
        dy of another shape than x; rstd with as many dimensions as x or more,
        or not of x's leading shape; weight not of the normalised shape; no
        elements to normalise over; a bad `out`.  Nothing is modified when an
        error is raised.
    """
    fast = _kernels.rows_backward_fast(dy, x, None, rstd, weight, False, dispatch.STREAM_BYTES,
                                       out)   # the common call, checked in C
    if fast is not None:
        return RMSNormGrads(fast[0], fast[1])
    x = float_array(x, "x")
    dy = grad_array(dy, x)
    if rstd is None:
        raise ValueError("rstd is required")
    rstd_a = np.asarray(rstd)
    k = x.ndim - rstd_a.ndim
    if k < 1:
        raise ValueError(f"rstd must have fewer dimensions than x (x.shape[:x.ndim - k] for k "
                         f"normalised dimensions), got shape {rstd_a.shape} for x of shape "
                         f"{x.shape}")
    lead, shape = x.shape[:x.ndim - k], x.shape[x.ndim - k:]
    rstd = like_array(rstd, "rstd", param_dtype(x.dtype), lead)
    weight = like_array(weight, "weight", param_dtype(x.dtype), shape)
    h = 1
    for s in shape:
        h *= s
    if h == 0:
        raise ValueError(f"x has no elements to normalize over in its trailing dimensions {shape}")
    out, dx = output_buffer(out, x, [("x", x), ("dy", dy)])
    dweight = np.zeros(shape, param_dtype(x.dtype))
    rows = x.size // h
    if rows:
        _kernels.norm_rows_backward(np.ascontiguousarray(dy, dtype=x.dtype), np.ascontiguousarray(x),
                                    dx, rows, h, None, rstd, weight, dweight, None,
                                    stream_stores(3 * x.nbytes))
    return RMSNormGrads(deliver(out, dx), dweight)
