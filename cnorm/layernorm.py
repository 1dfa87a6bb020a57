"""Layer normalization: the Python API.

This layer checks every argument, allocates every output and picks the
kernel; the arithmetic lives in ``cnorm/_rows.pxi``.
"""

from collections import namedtuple

import numpy as np

from cnorm._checks import (
    activation_value, deliver, eps_value, float_array, grad_array, like_array, method_value,
    output_buffer, param_dtype, shape_value,
)
from cnorm import _dispatch as dispatch
from cnorm._dispatch import kernels, stream_stores

_kernels = kernels("_kernels")
NAN = float("nan")
DEFAULT_METHOD = "two_pass"     # see the docstring of layer_norm

__all__ = ["layer_norm", "layer_norm_forward", "layer_norm_backward",
           "LayerNormOutput", "LayerNormGrads"]

LayerNormOutput = namedtuple("LayerNormOutput", ["y", "mean", "rstd"])
LayerNormOutput.__doc__ = """Result of `layer_norm_forward`: y, and the mean and 1/sqrt(var + eps)
of each sample, of shape ``x.shape[:x.ndim - len(normalized_shape)]`` and x's parameter dtype
(float32 for float16 and bfloat16 x)."""

LayerNormGrads = namedtuple("LayerNormGrads", ["dx", "dweight", "dbias"])
LayerNormGrads.__doc__ = """Result of `layer_norm_backward`: dx (x's shape) and the gradients of
weight and bias, each of shape normalized_shape."""


Plan = namedtuple("Plan", ["x", "shape", "h"])
Plan.__doc__ = """x checked (a float ndarray), the normalized shape (x's trailing dimensions)
and its size h: the row view (x.size // h, h) that the row kernels take."""


def _normalized_shape(normalized_shape, x, layer=False):
    """normalized_shape as a tuple matching x's trailing dimensions; returns (shape, H).
    layer: the shape is a layer's own, and the message is about x."""
    shape = shape_value(normalized_shape)
    k = len(shape)
    if k == 0 or k > x.ndim or x.shape[x.ndim - k:] != shape:
        if layer:
            raise ValueError(f"x must end with the dimensions normalized_shape {shape}, "
                             f"got shape {x.shape}")
        raise ValueError(f"normalized_shape {shape} must equal the trailing dimensions of x, "
                         f"whose shape is {x.shape}")
    h = 1
    for s in shape:
        h *= s
    if h == 0:
        raise ValueError(f"normalized_shape {shape} has no elements to normalize over")
    return shape, h


def plan(x, normalized_shape, layer=False):
    """Check x and normalized_shape once, into the Plan that the row ops' _forward
    functions and the layers share."""
    x = float_array(x, "x")
    return Plan(x, *_normalized_shape(normalized_shape, x, layer))


def _forward(p, weight, bias, eps, method, act, out, want_stats):
    """Forward of a planned call (see plan); returns (y, mean, rstd)."""
    x, shape, h = p
    weight = like_array(weight, "weight", param_dtype(x.dtype), shape)
    bias = like_array(bias, "bias", param_dtype(x.dtype), shape)
    eps = eps_value(eps)
    method = method_value(method, DEFAULT_METHOD)
    lead = x.shape[:x.ndim - len(shape)]
    rows = x.size // h
    out, dst = output_buffer(out, x, [("x", x)])
    mean = rstd = None
    if want_stats:
        mean = np.empty(lead, dtype=param_dtype(x.dtype))
        rstd = np.empty(lead, dtype=param_dtype(x.dtype))
    if rows:
        _kernels.norm_rows(x if x.flags.c_contiguous else np.ascontiguousarray(x), dst, rows, h,
                           True, act, weight, bias, mean, rstd, eps, method,
                           stream_stores(2 * x.nbytes))
    return deliver(out, dst), mean, rstd


def layer_norm(x, normalized_shape, weight=None, bias=None, *, eps=1e-5, method=None,
               activation=None, out=None):
    """Layer normalization over the trailing dimensions.

    Each sample (each index into the leading ``x.ndim - len(normalized_shape)``
    dimensions) is normalised over the trailing dimensions with its own mean
    and biased variance::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    Parameters
    ----------
    x : array_like of shape (..., *normalized_shape)
        float32, float64, float16 or bfloat16 data, any strides.
    normalized_shape : int or tuple of int
        The trailing dimensions of x to normalise over (torch's convention).
    weight, bias : array_like of shape normalized_shape, optional
        Elementwise scale and shift, cast to x's parameter dtype (float32 for
        half-precision x); each may be None
        independently (torch's ``elementwise_affine=False`` and ``bias=False``).
    eps : float >= 0, default 1e-5
        Added to the variance.
    method : {None, 'two_pass', 'welford'}
        How the variance is computed (see `batch_norm`).  None is
        'two_pass', the faster of the two for rows (chosen by measurement:
        Welford's division per step costs more than two-pass's plain sums).
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
        weight or bias; activation not a string.
    ValueError
        normalized_shape not the trailing dimensions of x, or empty; weight or
        bias of the wrong shape; bad eps or method; a bad `out`.  Nothing is
        modified when an error is raised.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> cnorm.layer_norm(np.array([[1.0, 2.0, 3.0]]), 3, eps=0.0)
    array([[-1.22474487,  0.        ,  1.22474487]])
    """
    # The common call (ndarray input, int normalized_shape, parameters that are already
    # right, out= None or a plain buffer) is checked in C (rows_fast): the same checks as
    # _forward, at a fraction of the cost, so that small calls are not dominated by
    # Python.  Anything else goes the general way, which raises any error.
    if method is None and activation is None:
        y = _kernels.rows_fast(x, normalized_shape, weight, bias, eps, True, NAN, NAN,
                               dispatch.STREAM_BYTES, out)
        if y is not None:
            return y
    return _forward(plan(x, normalized_shape), weight, bias, eps, method,
                    activation_value(activation),
                    out, False)[0]


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, *, eps=1e-5, method=None,
                       out=None):
    """Layer normalization that also returns what backward needs.

    Takes the same arguments as `layer_norm` (no activation).

    Returns
    -------
    LayerNormOutput
        ``(y, mean, rstd)``; mean and ``rstd = 1 / sqrt(var + eps)`` have
        shape ``x.shape[:x.ndim - len(normalized_shape)]`` and x's dtype.

    Raises
    ------
    TypeError, ValueError
        As `layer_norm`; nothing is modified when an error is raised.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> res = cnorm.layer_norm_forward(np.array([[1.0, 3.0], [2.0, 2.0]]), 2, eps=0.0)
    >>> res.mean, res.rstd
    (array([2., 2.]), array([ 1., inf]))
    """
    if method is None:     # the common call, checked in C (see layer_norm)
        fast = _kernels.rows_forward_fast(x, normalized_shape, weight, bias, eps, True, NAN,
                                          NAN, dispatch.STREAM_BYTES, out)
        if fast is not None:
            return LayerNormOutput(*fast)
    return LayerNormOutput(*_forward(plan(x, normalized_shape), weight, bias, eps, method, 0, out,
                                     True))


def layer_norm_backward(dy, x, mean, rstd, weight=None, *, out=None):
    """Gradients of layer normalization.

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to y; x's shape (cast to x's dtype).
    x : array_like
        The forward input: float32, float64, float16 or bfloat16.
    mean, rstd : array_like of shape x.shape[:x.ndim - k]
        What `layer_norm_forward` returned; k, the number of normalised
        dimensions, is ``x.ndim - mean.ndim``.
    weight : array_like of shape x.shape[x.ndim - k:], optional
        None means ones.
    out : ndarray, optional
        Receives dx; may be dy or x itself.

    Returns
    -------
    LayerNormGrads
        ``(dx, dweight, dbias)`` with, per sample, ``g = dy * weight``,
        ``xhat = (x - mean) * rstd`` and H normalised elements::

            dx = rstd / H * (H * g - sum(g) - xhat * sum(g * xhat))

        and, summed over the samples, ``dweight = sum(dy * xhat)`` and
        ``dbias = sum(dy)``, both of the normalised shape (always returned).

    Raises
    ------
    TypeError
        x or dy not floating (dy of another float dtype is cast to x's);
        non-numeric mean, rstd or weight.
    ValueError
        dy of another shape than x; mean with as many dimensions as x or
        more; mean or rstd not of shape ``x.shape[:x.ndim - k]``; weight not
        of the normalised shape; no elements to normalise over; a bad `out`.
        Nothing is modified when an error is raised.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.array([[1.0, 3.0]])
    >>> f = cnorm.layer_norm_forward(x, 2, eps=0.0)
    >>> cnorm.layer_norm_backward(np.array([[1.0, 0.0]]), x, f.mean, f.rstd)
    LayerNormGrads(dx=array([[0., 0.]]), dweight=array([-1.,  0.]), dbias=array([1., 0.]))
    """
    fast = _kernels.rows_backward_fast(dy, x, mean, rstd, weight, True, dispatch.STREAM_BYTES,
                                       out)   # the common call, checked in C
    if fast is not None:
        return LayerNormGrads(*fast)
    x = float_array(x, "x")
    dy = grad_array(dy, x)
    if mean is None or rstd is None:
        raise ValueError("mean and rstd are required")
    mean_a = np.asarray(mean)
    k = x.ndim - mean_a.ndim
    if k < 1:
        raise ValueError(f"mean must have fewer dimensions than x (x.shape[:x.ndim - k] for k "
                         f"normalised dimensions), got shape {mean_a.shape} for x of shape {x.shape}")
    lead, shape = x.shape[:x.ndim - k], x.shape[x.ndim - k:]
    mean = like_array(mean, "mean", param_dtype(x.dtype), lead)
    rstd = like_array(rstd, "rstd", param_dtype(x.dtype), lead)
    weight = like_array(weight, "weight", param_dtype(x.dtype), shape)
    h = 1
    for s in shape:
        h *= s
    if h == 0:
        raise ValueError(f"x has no elements to normalize over in its trailing dimensions {shape}")
    out, dst = output_buffer(out, x, [("x", x), ("dy", dy)])
    dweight = np.zeros(shape, dtype=param_dtype(x.dtype))
    dbias = np.zeros(shape, dtype=param_dtype(x.dtype))
    rows = x.size // h
    if rows:
        dyc = np.ascontiguousarray(dy, dtype=x.dtype)
        _kernels.norm_rows_backward(dyc, np.ascontiguousarray(x), dst, rows, h, mean, rstd,
                                    weight, dweight, dbias, stream_stores(3 * x.nbytes))
    return LayerNormGrads(deliver(out, dst), dweight, dbias)
