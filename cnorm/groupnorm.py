"""Group normalization and instance normalization: the Python API.

Both take statistics per (sample, group of channels); instance norm is one
channel per group.  This layer checks the arguments, allocates the outputs
and plans the geometry (cnorm/_geometry.py); the arithmetic lives in
``cnorm/_planes.pxi`` (channels first, shared with batch norm) and
``cnorm/_groups.pxi`` (channels last).
"""

from collections import namedtuple

import numpy as np

from cnorm._checks import (
    ACTIVATIONS, activation_value, axis_value, bool_value, deliver, eps_value, float_array,
    grad_array, inplace_array, like_array, method_value, momentum_value, output_buffer,
    param_dtype, positive_int,
)
from cnorm._dispatch import kernels, stream_stores, stream_stores_one_pass
from cnorm._geometry import Planes, channel_geometry, group_geometry

_kernels = kernels("_kernels")
DEFAULT_METHOD = "two_pass"
# Group and instance norm write with plain stores: on the 2-core Zen 5 host, streaming made
# every group-norm case of the benchmark slower (forward (8, 256, 28, 28) 0.149 -> 0.213 ms,
# channels-last (2, 64, 64, 320) 0.396 -> 0.569 ms) and none faster (docs/performance.md).
STREAMS = False

__all__ = ["group_norm", "group_norm_forward", "group_norm_backward", "GroupNormOutput",
           "GroupNormGrads", "instance_norm", "instance_norm_forward", "instance_norm_backward",
           "InstanceNormOutput", "InstanceNormGrads"]

GroupNormOutput = namedtuple("GroupNormOutput", ["y", "mean", "rstd"])
GroupNormOutput.__doc__ = """Result of `group_norm_forward`: y, and the mean and 1/sqrt(var + eps)
of each (sample, group), of shape (N, num_groups) and x's parameter dtype
(float32 for float16 and bfloat16 x)."""
GroupNormGrads = namedtuple("GroupNormGrads", ["dx", "dweight", "dbias"])
GroupNormGrads.__doc__ = """Result of `group_norm_backward`: dx (x's shape) and the per-channel
gradients of weight and bias, of shape (C,)."""
InstanceNormOutput = namedtuple("InstanceNormOutput", ["y", "mean", "rstd"])
InstanceNormOutput.__doc__ = """Result of `instance_norm_forward`: y, and the mean and
1/sqrt(var + eps) of each (sample, channel), of shape (N, C) and x's parameter dtype
(float32 for float16 and bfloat16 x)."""
InstanceNormGrads = namedtuple("InstanceNormGrads", ["dx", "dweight", "dbias"])
InstanceNormGrads.__doc__ = """Result of `instance_norm_backward`: dx (x's shape) and the
per-channel gradients of weight and bias, of shape (C,)."""


def plan(x, axis, min_ndim, what):
    """Check x (a float array of min_ndim or more dimensions) and its channel axis (1 or the
    last) once; returns (x, axis), which the forward functions and the layers share."""
    x = float_array(x, "x")
    if x.ndim < min_ndim:
        dims = "(N, C)" if min_ndim == 2 else "(N, C, L, ...)"
        raise ValueError(f"x must have at least {min_ndim} dimensions {dims} for {what}, "
                         f"got shape {x.shape}")
    a = axis_value(axis, x.ndim)
    if a != 1 and a != x.ndim - 1:
        raise ValueError(f"axis must be 1 (channels first) or -1 (channels last) for {what}, "
                         f"got {axis} for an array of {x.ndim} dimensions")
    return x, a


def _fast_act(activation):
    """The activation code of a fast call, -1 for a value the general path must check."""
    if activation is None:
        return 0
    return ACTIVATIONS.get(activation, -1) if type(activation) is str else -1


def _instance_fast(running_mean, running_var, use_input_stats, momentum, method):
    """Whether an instance-norm call may take groups_fast: the input statistics, no running
    ones to update, a plain momentum (checked, though unused) and the default method."""
    return (running_mean is None and running_var is None and use_input_stats is True
            and method is None and type(momentum) is float and 0.0 <= momentum <= 1.0)


def _groups_value(num_groups, c):
    g = positive_int(num_groups, "num_groups")
    if c % g:
        raise ValueError(f"num_groups must divide the number of channels {c}, got {g}")
    return g


def _normalize(x, geo, weight, bias, eps, method, act, out, var=False):
    """Run the forward kernel of geometry geo; returns (y, mean, rstd, var) with the
    statistics of shape (N, groups), var None unless asked for."""
    out, y = output_buffer(out, x, [("x", x)])
    if type(geo) is Planes:
        stats_shape = (x.shape[0], geo.Qp)
    else:
        stats_shape = (geo.N, geo.G)
    mean = np.empty(stats_shape, param_dtype(x.dtype))
    rstd = np.empty(stats_shape, param_dtype(x.dtype))
    v = np.empty(stats_shape, param_dtype(x.dtype)) if var else None
    if not x.size:      # groups of no values (an empty spatial shape): no statistics
        for a in (mean, rstd, v):
            if a is not None:
                a.fill(np.nan)
    else:
        xc = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        stream = STREAMS and stream_stores(2 * x.nbytes)
        if type(geo) is Planes:
            _kernels.norm_planes(xc, y, *geo, weight, bias, mean, rstd, eps, method, act, stream,
                                 v)
        else:
            _kernels.norm_groups(xc, y, geo.N, geo.HW, geo.C, geo.G, weight, bias, mean, rstd,
                                 eps, method, act, stream, v)
    return deliver(out, y), mean, rstd, v


def _group_forward(p, num_groups, weight, bias, eps, method, activation, out):
    """Group norm of a planned x (see plan); returns (y, mean, rstd)."""
    x, axis = p
    c = x.shape[axis]
    g = _groups_value(num_groups, c)
    weight = like_array(weight, "weight", param_dtype(x.dtype), (c,))
    bias = like_array(bias, "bias", param_dtype(x.dtype), (c,))
    eps = eps_value(eps)
    method = method_value(method, DEFAULT_METHOD)
    act = activation_value(activation)
    geo = group_geometry(x.shape, axis, g)
    return _normalize(x, geo, weight, bias, eps, method, act, out)[:3]


def group_norm(x, num_groups, weight=None, bias=None, *, eps=1e-5, axis=1, method=None,
               activation=None, out=None):
    """Group normalization, as ``torch.nn.functional.group_norm``.

    The C channels are split into `num_groups` groups of consecutive channels;
    each (sample, group) is normalised over its channels and every spatial
    position, with its own mean and biased variance::

        y = activation((x - mean) / sqrt(var + eps) * weight + bias)

    Parameters
    ----------
    x : array_like of shape (N, C, ...) or, with ``axis=-1``, (N, ..., C)
        float32, float64, float16 or bfloat16 data, any strides.
    num_groups : int
        G, a positive divisor of C.
    weight, bias : array_like of shape (C,), optional
        Per-channel scale and shift, cast to x's parameter dtype (float32 for float16 and
        bfloat16 x, else x's dtype).  None means 1 and 0.
    eps : float >= 0, default 1e-5
        Added to the variance.
    axis : int, default 1
        The channel axis: 1 for channels first, -1 (or ``x.ndim - 1``) for
        channels last.  Channels-last data is normalised in place, not
        transposed.
    method : {None, 'two_pass', 'welford'}
        How the variance is computed (see `batch_norm`); None is 'two_pass'.
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
        x not float32, float64, float16 or bfloat16; num_groups not an integer; non-numeric weight
        or bias; activation not a string.
    ValueError
        x with fewer than 2 dimensions; num_groups < 1 or not dividing C; a
        channel axis other than 1 or -1; weight or bias not of shape (C,);
        bad eps, method or activation; a bad `out`.  Nothing is modified when
        an error is raised.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> x = np.array([[1.0, 3.0, 10.0, 30.0]])
    >>> cnorm.group_norm(x, 2, eps=0.0)
    array([[-1.,  1., -1.,  1.]])
    """
    if method is None:      # the common call, checked in C (groups_fast)
        fast = _kernels.groups_fast(x, num_groups, weight, bias, eps, axis, _fast_act(activation),
                                    False, out)
        if fast is not None:
            return fast[0]
    return _group_forward(plan(x, axis, 2, "group norm"), num_groups, weight, bias, eps, method,
                          activation, out)[0]


def group_norm_forward(x, num_groups, weight=None, bias=None, *, eps=1e-5, axis=1, method=None,
                       out=None):
    """Group normalization that also returns what backward needs.

    Takes the arguments of `group_norm` (no activation).

    Returns
    -------
    GroupNormOutput
        ``(y, mean, rstd)``; mean and ``rstd = 1 / sqrt(var + eps)`` have shape
        (N, num_groups) and x's dtype.

    Raises
    ------
    TypeError, ValueError
        As `group_norm`; nothing is modified when an error is raised.
    """
    if method is None:      # the common call, checked in C (groups_fast)
        fast = _kernels.groups_fast(x, num_groups, weight, bias, eps, axis, 0, False, out)
        if fast is not None:
            return GroupNormOutput(*fast)
    return GroupNormOutput(*_group_forward(plan(x, axis, 2, "group norm"), num_groups, weight, bias,
                                           eps, method, None, out))


def _backward(dy, x, mean, rstd, weight, axis, out, what, groups_of):
    """dx, dweight, dbias of group norm (what = 'group norm' or 'instance norm');
    groups_of(c) checks mean's second dimension against the C channels."""
    x, axis = plan(x, axis, 2 if what == "group norm" else 3, what)
    dy = grad_array(dy, x)
    c = x.shape[axis]
    if mean is None or rstd is None:
        raise ValueError("mean and rstd are required")
    mean_a = np.asarray(mean)
    g = groups_of(c, mean_a)
    stats = (x.shape[0], g)
    mean = like_array(mean, "mean", param_dtype(x.dtype), stats)
    rstd = like_array(rstd, "rstd", param_dtype(x.dtype), stats)
    weight = like_array(weight, "weight", param_dtype(x.dtype), (c,))
    geo = group_geometry(x.shape, axis, g)
    out, dx = output_buffer(out, x, [("x", x), ("dy", dy)])
    dweight = np.zeros(c, param_dtype(x.dtype))
    dbias = np.zeros(c, param_dtype(x.dtype))
    if x.size:
        dyc = np.ascontiguousarray(dy, dtype=x.dtype)
        xc = np.ascontiguousarray(x)
        stream = STREAMS and stream_stores(3 * x.nbytes)
        if type(geo) is Planes:
            _kernels.norm_planes_backward(dyc, xc, dx, *geo, mean, rstd, weight, dweight, dbias,
                                          stream)
        else:
            _kernels.norm_groups_backward(dyc, xc, dx, geo.N, geo.HW, geo.C, geo.G, mean, rstd,
                                          weight, dweight, dbias, stream)
    return deliver(out, dx), dweight, dbias


def _mean_groups(c, mean):
    if mean.ndim != 2 or mean.shape[1] < 1 or c % mean.shape[1]:
        raise ValueError(f"mean must have shape (N, num_groups) with num_groups dividing the "
                         f"{c} channels, got shape {mean.shape}")
    return mean.shape[1]


def group_norm_backward(dy, x, mean, rstd, weight=None, *, axis=1, out=None):
    """Gradients of group normalization (without the activation).

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to y; x's shape (cast to x's dtype).
    x : array_like of shape (N, C, ...) or (N, ..., C)
        The forward input: float32, float64, float16 or bfloat16.
    mean, rstd : array_like of shape (N, num_groups)
        What `group_norm_forward` returned; num_groups is their second dimension.
    weight : array_like of shape (C,), optional
        None means ones.
    axis : int, default 1
        The channel axis, as in the forward call.
    out : ndarray, optional
        Receives dx; may be dy or x itself.

    Returns
    -------
    GroupNormGrads
        ``(dx, dweight, dbias)``.  Per (sample, group) of S values, with
        ``g = dy * weight`` and ``xhat = (x - mean) * rstd``::

            dx = rstd / S * (S * g - sum(g) - xhat * sum(g * xhat))

        and per channel ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)``.
        This is the gradient of the normalization alone: a forward activation
        is not differentiated.

    Raises
    ------
    TypeError
        x or dy not floating; non-numeric mean, rstd or weight.
    ValueError
        dy of another shape than x; mean or rstd not of shape (N, G) with G
        dividing C; weight not of shape (C,); a bad axis or `out`.  Nothing is
        modified when an error is raised.
    """
    return GroupNormGrads(*_backward(dy, x, mean, rstd, weight, axis, out, "group norm",
                                     _mean_groups))


# -- instance norm ------------------------------------------------------------------------------

def _instance_forward(p, weight, bias, running_mean, running_var, use_input_stats, momentum, eps,
                      method, activation, out):
    """Instance norm of a planned x (see plan); returns (y, mean, rstd), the statistics None
    when the running ones are used."""
    x, axis = p
    use_input_stats = bool_value(use_input_stats, "use_input_stats")
    c = x.shape[axis]
    shape = (c,)
    weight = like_array(weight, "weight", param_dtype(x.dtype), shape)
    bias = like_array(bias, "bias", param_dtype(x.dtype), shape)
    eps = eps_value(eps)
    momentum = momentum_value(momentum)
    method = method_value(method, DEFAULT_METHOD)
    act = activation_value(activation)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    geo = group_geometry(x.shape, axis, c)
    if not use_input_stats:
        if running_mean is None:
            raise ValueError("running_mean and running_var are required when "
                             "use_input_stats=False")
        running_mean = like_array(running_mean, "running_mean", param_dtype(x.dtype), shape)
        running_var = like_array(running_var, "running_var", param_dtype(x.dtype), shape)
        out, y = output_buffer(out, x, [("x", x)])
        if x.size:
            n, c_, m = channel_geometry(x.shape, axis)
            _kernels.bn_infer(np.ascontiguousarray(x), y, n, c_, m, weight, bias, running_mean,
                              running_var, eps, act, stream_stores_one_pass(2 * x.nbytes))
        return deliver(out, y), None, None
    spatial = x.size // (x.shape[0] * c) if x.size else 0
    if running_mean is not None:
        running_mean = inplace_array(running_mean, "running_mean", param_dtype(x.dtype), shape)
        running_var = inplace_array(running_var, "running_var", param_dtype(x.dtype), shape)
    if spatial <= 1 and x.size:
        raise ValueError(f"x must have more than 1 spatial value per channel when the input "
                         f"statistics are used, got shape {x.shape} with channel axis {axis}")
    y, mean, rstd, var = _normalize(x, geo, weight, bias, eps, method, act, out,
                                    var=running_mean is not None)
    if running_mean is not None and x.size:   # no values: kept, as torch keeps them
        # torch: the batch's per-instance statistics, averaged over the samples
        m = float(momentum)
        new_mean = (1 - m) * running_mean + m * mean.astype(np.float64).mean(axis=0)
        new_var = ((1 - m) * running_var
                   + m * (var.astype(np.float64) * (spatial / (spatial - 1))).mean(axis=0))
        running_mean[...] = new_mean
        running_var[...] = new_var
    return y, mean, rstd


def instance_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                  use_input_stats=True, momentum=0.1, eps=1e-5, axis=1, method=None,
                  activation=None, out=None):
    """Instance normalization, as ``torch.nn.functional.instance_norm``.

    Each (sample, channel) is normalised over its spatial positions::

        y = activation((x - mean) / sqrt(var + eps) * weight + bias)

    Parameters
    ----------
    x : array_like of shape (N, C, L, ...) or, with ``axis=-1``, (N, L, ..., C)
        float32, float64, float16 or bfloat16 data with at least one spatial dimension.
    weight, bias : array_like of shape (C,), optional
        Per-channel scale and shift; None means 1 and 0.
    running_mean, running_var : ndarray of shape (C,), optional
        Given together.  With ``use_input_stats=True`` they are updated in
        place (writeable arrays of x's parameter dtype), as torch does: the new batch's
        per-instance means and unbiased variances averaged over the samples,
        weighted by `momentum`.  With ``use_input_stats=False`` they are the
        statistics used (any real dtype, cast).
    use_input_stats : bool, default True
        Normalise with each instance's statistics (True) or with the running
        ones (False).
    momentum : float in [0, 1], default 0.1
        The weight of the new batch in the running statistics.
    eps : float >= 0, default 1e-5
    axis : int, default 1
        The channel axis: 1, or -1 for channels last.
    method : {None, 'two_pass', 'welford'}
    activation : {None, 'relu', 'silu'}
        Applied to y in the same pass.
    out : ndarray, optional
        Receives y; may be x itself.

    Returns
    -------
    y : ndarray
        x's shape and dtype.

    Raises
    ------
    TypeError
        x not float32, float64, float16 or bfloat16; running statistics to update that are not
        writeable arrays of x's parameter dtype; non-numeric parameters.
    ValueError
        x with fewer than 3 dimensions or, with input statistics, only one
        spatial value per channel; only one of running_mean / running_var;
        ``use_input_stats=False`` without them; bad shapes, axis, eps,
        momentum, method, activation or `out`.  Nothing is modified when an
        error is raised.
    """
    if _instance_fast(running_mean, running_var, use_input_stats, momentum, method):
        fast = _kernels.groups_fast(x, None, weight, bias, eps, axis, _fast_act(activation), True,
                                    out)
        if fast is not None:
            return fast[0]
    return _instance_forward(plan(x, axis, 3, "instance norm"), weight, bias, running_mean,
                             running_var, use_input_stats, momentum, eps, method, activation,
                             out)[0]


def instance_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                          momentum=0.1, eps=1e-5, axis=1, method=None, out=None):
    """Instance normalization with input statistics that also returns what backward needs.

    Takes the arguments of `instance_norm` with ``use_input_stats=True`` (no
    activation).

    Returns
    -------
    InstanceNormOutput
        ``(y, mean, rstd)``, the statistics of shape (N, C) and x's dtype.
    """
    if _instance_fast(running_mean, running_var, True, momentum, method):
        fast = _kernels.groups_fast(x, None, weight, bias, eps, axis, 0, True, out)
        if fast is not None:
            return InstanceNormOutput(*fast)
    return InstanceNormOutput(*_instance_forward(plan(x, axis, 3, "instance norm"), weight, bias,
                                                 running_mean, running_var, True, momentum, eps,
                                                 method, None, out))


def _mean_channels(c, mean):
    if mean.ndim != 2 or mean.shape[1] != c:
        raise ValueError(f"mean must have shape (N, {c}), got shape {mean.shape}")
    return c


def instance_norm_backward(dy, x, mean, rstd, weight=None, *, axis=1, out=None):
    """Gradients of instance normalization with input statistics (without the activation).

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to y; x's shape.
    x : array_like of shape (N, C, L, ...) or (N, L, ..., C)
        The forward input.
    mean, rstd : array_like of shape (N, C)
        What `instance_norm_forward` returned.
    weight : array_like of shape (C,), optional
    axis : int, default 1
    out : ndarray, optional
        Receives dx; may be dy or x itself.

    Returns
    -------
    InstanceNormGrads
        ``(dx, dweight, dbias)``, as `group_norm_backward` with one channel per
        group.

    Raises
    ------
    TypeError, ValueError
        As `group_norm_backward`, with mean and rstd of shape (N, C).
    """
    return InstanceNormGrads(*_backward(dy, x, mean, rstd, weight, axis, out, "instance norm",
                                        _mean_channels))
