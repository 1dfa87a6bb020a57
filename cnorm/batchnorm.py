"""Batch normalization: the Python API.

This layer checks every argument, allocates every output and picks the
kernel; the arithmetic lives in ``cnorm/_planes.pxi`` (runs of 16 values or
more) and ``cnorm/_batchnorm_kernels.pxi`` (shorter runs, as columns).
"""

from collections import namedtuple

import numpy as np

from cnorm._checks import (
    activation_value, axis_value, bool_value, deliver, eps_value, float_array, grad_array,
    inplace_array, like_array, method_value, momentum_value, output_buffer, param_dtype,
)
from cnorm import _dispatch as dispatch
from cnorm._dispatch import kernels, stream_stores, stream_stores_one_pass
from cnorm._geometry import channel_geometry

_kernels = kernels("_kernels")

# method=None is two-pass, chosen by measurement (the method comparison in the
# README): since output runs are prefetched for writing, Welford is slower for
# every layout, the short runs (16 to 127 values) it used to win included.
DEFAULT_METHOD = "two_pass"


__all__ = ["batch_norm", "batch_norm_forward", "batch_norm_backward",
           "BatchNormOutput", "BatchNormGrads"]

BatchNormOutput = namedtuple("BatchNormOutput", ["y", "mean", "invstd"])
BatchNormOutput.__doc__ = """Result of `batch_norm_forward`: y, and the per-channel batch mean and
1/sqrt(var + eps), each of shape (C,) and of x's parameter dtype
(float32 for float16 and bfloat16 x)."""

BatchNormGrads = namedtuple("BatchNormGrads", ["dx", "dweight", "dbias"])
BatchNormGrads.__doc__ = """Result of `batch_norm_backward`: dx (x's shape) and the per-channel
gradients of weight and bias, each of shape (C,)."""


def _c_contiguous(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


Plan = namedtuple("Plan", ["x", "axis", "n", "c", "m"])
Plan.__doc__ = """x checked (a float ndarray of 2 or more dimensions), its channel axis in
[0, ndim), and the (N, C, M) view of x that the kernels take."""


def plan(x, axis):
    """Check x and axis once, into the Plan that `_forward` and the layers use."""
    x = float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    axis = axis_value(axis, x.ndim)
    return Plan(x, axis, *channel_geometry(x.shape, axis))


def _forward(p, weight, bias, running_mean, running_var, training, momentum, eps, method, act,
             out, want_stats):
    """Forward of a planned call (see plan); returns (y, mean, invstd)."""
    x, axis, n, c, m = p
    eps = eps_value(eps)
    method = method_value(method, DEFAULT_METHOD)
    shape = (c,)
    weight = like_array(weight, "weight", param_dtype(x.dtype), shape)
    bias = like_array(bias, "bias", param_dtype(x.dtype), shape)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    momentum = momentum_value(momentum)     # checked in inference too: a bad value is a bug
    if training:
        if running_mean is not None:
            running_mean = inplace_array(running_mean, "running_mean", param_dtype(x.dtype), shape)
            running_var = inplace_array(running_var, "running_var", param_dtype(x.dtype), shape)
        if n * m <= 1:
            raise ValueError(f"x must have more than 1 value per channel in training, got shape "
                             f"{x.shape} with channel axis {axis}")
    else:
        if running_mean is None:
            raise ValueError("running_mean and running_var are required when training=False")
        running_mean = like_array(running_mean, "running_mean", param_dtype(x.dtype), shape)
        running_var = like_array(running_var, "running_var", param_dtype(x.dtype), shape)
    out, y = output_buffer(out, x, [("x", x)])
    mean = invstd = None
    if want_stats:
        mean = np.empty(shape, dtype=param_dtype(x.dtype))
        invstd = np.empty(shape, dtype=param_dtype(x.dtype))
    if x.size:
        xc = _c_contiguous(x)
        if training:
            # The kernel updates running statistics as contiguous arrays; a strided view is
            # updated through a contiguous copy that is written back.
            rm, rv = running_mean, running_var
            if rm is not None:
                rm, rv = _c_contiguous(rm), _c_contiguous(rv)
            _kernels.bn_train(xc, y, n, c, m, weight, bias, rm, rv, mean, invstd, eps, momentum,
                             method, act, stream_stores(2 * x.nbytes))
            if rm is not running_mean:
                running_mean[...] = rm
            if rv is not running_var:
                running_var[...] = rv
        else:
            _kernels.bn_infer(xc, y, n, c, m, weight, bias, running_mean, running_var, eps, act,
                                 stream_stores_one_pass(2 * x.nbytes))
    return deliver(out, y), mean, invstd


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *,
               training=False, momentum=0.1, eps=1e-5, axis=1, method=None, activation=None,
               relu=False, out=None):
    """Batch normalization, in training or inference mode.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, with per-channel
    statistics taken over every axis except `axis`.

    Parameters
    ----------
    x : array_like of shape (N, C, ...) or (N, ..., C)
        float32, float64, float16 or bfloat16 data, any strides.  Other array-likes are converted
        as by ``np.asarray``.
    weight, bias : array_like of shape (C,), optional
        Per-channel scale and shift, cast to x's parameter dtype (float32 for float16 and
        bfloat16 x, else x's dtype).  None means 1 and 0.
    running_mean, running_var : ndarray of shape (C,), optional
        Running statistics.  Required when ``training=False``, where they are
        the statistics used (any real dtype, cast to x's).  With
        ``training=True`` they are optional; when given they must be
        writeable arrays of x's parameter dtype (float32 for half-precision x),
        and they are updated in place as
        PyTorch does::

            running_mean = (1 - momentum) * running_mean + momentum * mean
            running_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)

        where ``var`` is the biased batch variance and ``n`` the number of
        values per channel.
    training : bool, default False
        Use batch statistics (True) or the running statistics (False).
    momentum : float in [0, 1], default 0.1
        PyTorch's convention: the weight of the new batch.  Keras/TensorFlow
        call ``1 - momentum`` their momentum (``momentum_keras = 1 - momentum``).
    eps : float >= 0, default 1e-5
        Added to the variance.
    axis : int, default 1
        The channel axis: 1 for NC, NCL, NCHW, NCDHW; -1 for channels-last.
    method : {None, 'two_pass', 'welford'}
        How batch variances are computed; both accumulate in float64, merge
        fixed-size blocks with Chan's formula and agree to rounding.
        'two_pass': each block is summed as x - x0 and (x - x0)**2, with x0
        its first value; a second pass over (x - mean)**2, while the block is
        in cache, runs only where the first pass's cancellation could cost
        accuracy (see the README).  'welford': each block is streamed once with
        a vectorised Welford update.  None picks the faster, by measurement:
        'two_pass'.
    activation : {None, 'relu', 'silu'}
        Applied to y in the same pass: ``max(y, 0)`` (NaN stays NaN) or
        ``y * sigmoid(y)``.
    relu : bool, default False
        Another spelling of ``activation='relu'``.
    out : ndarray, optional
        Receives y: x's shape and dtype, writeable.  May be x itself.

    Returns
    -------
    y : ndarray
        x's shape and dtype; a new C-contiguous array unless `out` is given.

    Raises
    ------
    TypeError
        x not float32, float64, float16 or bfloat16; a parameter that is not numeric; running
        statistics of another dtype than x in training.
    ValueError
        Bad shapes, axis, eps, momentum or method; too few values per channel
        in training; inference without running statistics; a bad `out`.
        Nothing is modified when an error is raised.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    >>> cnorm.batch_norm(x, training=True, eps=0.0)[:, 0]
    array([[-1.2126781, -0.7276069],
           [ 0.7276069,  1.2126781]], dtype=float32)
    """
    # Fast paths for the common calls, checked in C (bn_infer_fast, bn_train_fast): the same
    # checks as _forward at a fraction of the cost, so that small calls are not dominated
    # by Python.  Anything else, errors included, goes the general way.
    if training is False and relu is False and activation is None and method is None:
        y = _kernels.bn_infer_fast(x, weight, bias, running_mean, running_var, momentum, eps,
                                   axis, dispatch.ONE_PASS_STREAM_BYTES, out)
        if y is not None:
            return y
    if training is True and relu is False and activation is None and method is None:
        fast = _kernels.bn_train_fast(x, weight, bias, running_mean, running_var, momentum,
                                      eps, axis, False, dispatch.STREAM_BYTES, out)
        if fast is not None:
            return fast[0]
    act = activation_value(activation, relu)
    training = bool_value(training, "training")
    y, _, _ = _forward(plan(x, axis), weight, bias, running_mean, running_var, training, momentum,
                       eps, method, act, out, False)
    return y


def batch_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                       momentum=0.1, eps=1e-5, axis=1, method=None, out=None):
    """Training-mode batch normalization that also returns what backward needs.

    Takes the same arguments as `batch_norm` with ``training=True`` (no
    activation).

    Returns
    -------
    BatchNormOutput
        ``(y, mean, invstd)``: y of x's shape; the batch mean and
        ``1 / sqrt(var + eps)`` per channel, of shape (C,) and x's dtype.

    Raises
    ------
    TypeError, ValueError
        As `batch_norm` with ``training=True``; nothing is modified when an
        error is raised.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> res = cnorm.batch_norm_forward(x, eps=0.0)
    >>> res.mean, res.invstd
    (array([ 2., 20.]), array([1. , 0.1]))
    """
    if method is None:
        # the common call, checked in C as in batch_norm (bitwise the general path's result)
        fast = _kernels.bn_train_fast(x, weight, bias, running_mean, running_var, momentum,
                                      eps, axis, True, dispatch.STREAM_BYTES, out)
        if fast is not None:
            return BatchNormOutput(*fast)
    return BatchNormOutput(*_forward(plan(x, axis), weight, bias, running_mean, running_var, True,
                                     momentum, eps, method, 0, out, True))


def batch_norm_backward(dy, x, mean, invstd, weight=None, *, training=True, axis=1, out=None):
    """Gradients of batch normalization.

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to y; x's shape (cast to x's dtype).
    x : array_like of shape (N, C, ...) or (N, ..., C)
        The forward input: float32, float64, float16 or bfloat16.
    mean, invstd : array_like of shape (C,)
        With ``training=True``, the batch statistics `batch_norm_forward`
        returned.  With ``training=False``, the running mean and
        ``1 / sqrt(running_var + eps)``.
    weight : array_like of shape (C,), optional
        None means ones.
    training : bool, default True
        True: the gradient flows through the batch statistics::

            dx = weight * invstd / n * (n * dy - sum(dy) - xhat * sum(dy * xhat))

        False: the statistics are constants, ``dx = dy * weight * invstd``.
    axis : int, default 1
        The channel axis.
    out : ndarray, optional
        Receives dx; may be dy or x itself.

    Returns
    -------
    BatchNormGrads
        ``(dx, dweight, dbias)`` with ``dweight = sum(dy * xhat)`` and
        ``dbias = sum(dy)`` per channel, where ``xhat = (x - mean) * invstd``.

    Raises
    ------
    TypeError
        x or dy not floating (dy of another float dtype is cast to x's);
        non-numeric mean, invstd or weight.
    ValueError
        x with fewer than 2 dimensions; dy of another shape than x; axis out
        of range; mean, invstd or weight not of shape (C,); a bad `out`
        (shape, dtype, read-only, or partly overlapping x or dy).  Nothing is
        modified when an error is raised.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.array([[1.0], [3.0]])
    >>> fwd = cnorm.batch_norm_forward(x, eps=0.0)
    >>> dx, dweight, dbias = cnorm.batch_norm_backward(np.array([[1.0], [0.0]]), x, fwd.mean,
    ...                                                fwd.invstd)
    >>> dx.ravel(), dweight, dbias
    (array([0., 0.]), array([-1.]), array([1.]))
    """
    # Fast path for the common call, checked in C (bn_backward_fast; bitwise the general
    # path's result)
    fast = _kernels.bn_backward_fast(dy, x, mean, invstd, weight, training, axis,
                                     dispatch.STREAM_BYTES, out)
    if fast is not None:
        return BatchNormGrads(*fast)
    x = float_array(x, "x")
    dy = float_array(dy, "dy")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    dy = grad_array(dy, x)
    training = bool_value(training, "training")
    x, axis, n, c, m = plan(x, axis)
    shape = (c,)
    if mean is None or invstd is None:
        raise ValueError("mean and invstd are required")
    mean = like_array(mean, "mean", param_dtype(x.dtype), shape)
    invstd = like_array(invstd, "invstd", param_dtype(x.dtype), shape)
    weight = like_array(weight, "weight", param_dtype(x.dtype), shape)
    out, dx = output_buffer(out, x, [("x", x), ("dy", dy)])
    dweight = np.zeros(shape, dtype=param_dtype(x.dtype))
    dbias = np.zeros(shape, dtype=param_dtype(x.dtype))
    if x.size:
        dyc = _c_contiguous(dy if dy.dtype == x.dtype else dy.astype(x.dtype))
        _kernels.bn_backward(dyc, _c_contiguous(x), dx, n, c, m, mean, invstd, weight, dweight,
                            dbias, training, stream_stores(3 * x.nbytes))
    return BatchNormGrads(deliver(out, dx), dweight, dbias)
