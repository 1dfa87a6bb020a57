"""Fused residual add and normalization: ``h = x + residual; y = norm(h)`` in one pass.

Every transformer block computes this.  Fused, each row of x and of the
residual is read once from memory, h is written once (rounded to x's dtype,
as the next block will see it), and the row is normalised from cache:
ONNX Runtime's SkipLayerNormalization and SkipSimplifiedLayerNormalization,
vLLM's ``fused_add_rms_norm``.  The kernel is the row kernel of layer norm
and RMS norm (``cnorm/_rows.pxi``) with an add before its statistics.
"""

from collections import namedtuple

import numpy as np

from cnorm._checks import (
    deliver, eps_value, float_array, like_array, method_value, output_buffer, param_dtype,
)
from cnorm import _dispatch as dispatch
from cnorm._dispatch import kernels, stream_stores
from cnorm.layernorm import DEFAULT_METHOD, _normalized_shape
from cnorm.rmsnorm import FAST_EPS, _eps

_kernels = kernels("_kernels")

__all__ = ["add_layer_norm", "add_rms_norm", "AddNormOutput"]

AddNormOutput = namedtuple("AddNormOutput", ["y", "h"])
AddNormOutput.__doc__ = """Result of `add_layer_norm` and `add_rms_norm`: y = norm(h), and
h = x + residual (x's shape and dtype), both new arrays unless out= and residual_out=
were given."""


def _outputs(x, residual, out, residual_out):
    """Where y and h go: (out, y buffer, residual_out, h buffer), as output_buffer picks
    them; out and residual_out must not share memory with each other."""
    inputs = [("x", x), ("residual", residual)]
    if out is None and residual_out is None:
        # one allocation for both: a fresh large block costs its page faults and the
        # kernel's zeroing of every page, and one block of two is cheaper to get than two
        both = np.empty((2,) + x.shape, x.dtype)
        return None, both[0], None, both[1]
    out, ybuf = output_buffer(out, x, inputs, "out")
    residual_out, hbuf = output_buffer(residual_out, x, inputs, "residual_out")
    if out is not None and residual_out is not None and np.may_share_memory(out, residual_out):
        try:
            shared = np.shares_memory(out, residual_out, max_work=1 << 20)
        except np.exceptions.TooHardError:    # an exotic stride pattern: assume the worst
            shared = True
        if shared:
            raise ValueError("out and residual_out must not share memory: they receive y "
                             "and h")
    return out, ybuf, residual_out, hbuf


def add_forward(x, residual, normalized_shape, weight, bias, eps, centred, out, residual_out,
                want_stats, method=None):
    """The fused call, checked and run: (y, h, mean, rstd), the statistics (of h) None
    unless want_stats (mean None when not centred)."""
    x = float_array(x, "x")
    residual = float_array(residual, "residual")
    if residual.dtype != x.dtype:
        raise TypeError(f"residual must have x's dtype {x.dtype}, got {residual.dtype}")
    if residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {x.shape}, got {residual.shape}")
    shape, h = _normalized_shape(normalized_shape, x)
    pdt = param_dtype(x.dtype)
    weight = like_array(weight, "weight", pdt, shape)
    bias = like_array(bias, "bias", pdt, shape)
    eps = eps_value(eps) if centred else _eps(eps, x.dtype)
    out, ybuf, residual_out, hbuf = _outputs(x, residual, out, residual_out)
    lead = x.shape[:x.ndim - len(shape)]
    mean = np.empty(lead, pdt) if want_stats and centred else None
    rstd = np.empty(lead, pdt) if want_stats else None
    rows = x.size // h
    if rows:
        _kernels.norm_rows(np.ascontiguousarray(x), ybuf, rows, h, centred, 0, weight,
                           bias, mean, rstd, eps, method_value(method, DEFAULT_METHOD),
                           stream_stores(4 * x.nbytes), np.ascontiguousarray(residual), hbuf)
    return deliver(out, ybuf), deliver(residual_out, hbuf), mean, rstd


def _fast(x, residual, normalized_shape, weight, bias, eps, centred):
    """The common call (C-contiguous ndarrays of one storage dtype and shape, an int
    normalized_shape, parameters already right, no out=), checked in C as add_forward
    checks it, and run; None for any other call."""
    r = _kernels.add_rows_fast(x, residual, normalized_shape, weight, bias, eps, centred,
                               *FAST_EPS[centred], dispatch.STREAM_BYTES)
    return None if r is None else AddNormOutput(r[0][0], r[0][1])


def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, *, eps=1e-5, out=None,
                   residual_out=None):
    """Residual add and layer normalization in one pass::

        h = x + residual
        y = (h - mean(h)) / sqrt(var(h) + eps) * weight + bias

    over the trailing dimensions `normalized_shape`, as ONNX Runtime's
    SkipLayerNormalization does.  Each row of x and residual is read once, h
    is written once, and y is computed from h while it is in cache.

    Parameters
    ----------
    x, residual : array_like of shape (..., *normalized_shape)
        Of the same shape and dtype (float32, float64, float16 or bfloat16),
        any strides.
    normalized_shape : int or tuple of int
        The trailing dimensions to normalise over.
    weight, bias : array_like of shape normalized_shape, optional
        As in `layer_norm`.
    eps : float >= 0, default 1e-5
    out, residual_out : ndarray, optional
        Receive y and h (x's shape and dtype, writeable).  ``out=x`` and
        ``residual_out=residual`` work in place, as a decode loop wants; either
        may be either input, but out and residual_out must not share memory,
        and neither may partly overlap an input.

    Returns
    -------
    AddNormOutput
        ``(y, h)``: h = x + residual rounded to x's dtype, and y its layer
        norm.  Without out= and residual_out=, y and h are the two halves of
        one new block (one allocation, not two).  The statistics are those of h as stored, so that the next block
        sees exactly the h that was normalised.  For training, the gradient is
        `layer_norm_backward` of h (and h's gradient is both x's and
        residual's).

    Raises
    ------
    TypeError
        x or residual not floating, or of different dtypes; normalized_shape
        not integers; non-numeric weight or bias.
    ValueError
        residual's shape not x's; normalized_shape not the trailing dimensions
        of x; weight or bias of the wrong shape; bad eps; a bad `out` or
        `residual_out`, or the two sharing memory.  Nothing is modified.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.array([[1.0, 2.0, 3.0]]); r = np.array([[1.0, 1.0, 1.0]])
    >>> cnorm.add_layer_norm(x, r, 3, eps=0.0)
    AddNormOutput(y=array([[-1.22474487,  0.        ,  1.22474487]]), h=array([[2., 3., 4.]]))
    """
    if out is None and residual_out is None:
        r = _fast(x, residual, normalized_shape, weight, bias, eps, True)
        if r is not None:
            return r
    y, h, _, _ = add_forward(x, residual, normalized_shape, weight, bias, eps, True, out,
                             residual_out, False)
    return AddNormOutput(y, h)


def add_rms_norm(x, residual, normalized_shape, weight=None, *, eps=None, out=None,
                 residual_out=None):
    """Residual add and RMS normalization in one pass::

        h = x + residual
        y = h / sqrt(mean(h**2) + eps) * weight

    as ONNX Runtime's SkipSimplifiedLayerNormalization and vLLM's
    ``fused_add_rms_norm`` do.  ``eps=None`` is the machine epsilon of the
    computation type (as `rms_norm`); everything else is as in
    `add_layer_norm`.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> y, h = cnorm.add_rms_norm(np.array([[1.0, 2.0]]), np.array([[2.0, 2.0]]), 2, eps=0.0)
    >>> h, y
    (array([[3., 4.]]), array([[0.84852814, 1.13137085]]))
    """
    if out is None and residual_out is None:
        r = _fast(x, residual, normalized_shape, weight, None, eps, False)
        if r is not None:
            return r
    y, h, _, _ = add_forward(x, residual, normalized_shape, weight, None, eps, False, out,
                             residual_out, False)
    return AddNormOutput(y, h)
