"""Stateful normalization layers, and folding batch norm into a linear layer.

`BatchNorm`, `LayerNorm`, `GroupNorm`, `InstanceNorm` and `RMSNorm` hold their
parameters and running statistics as NumPy arrays, follow torch's modules
(modes, running-statistics update, ``state_dict`` key names) and call the
functional API (`cnorm.batch_norm_forward`, `cnorm.layer_norm_forward`, ...)
for the arithmetic.  `fold_batch_norm` merges an inference-mode batch norm
into the weights of the Linear or Conv layer before it.
"""

from collections import namedtuple
from collections.abc import Mapping

import numpy as np

from cnorm import _dispatch as dispatch
from cnorm._checks import (
    _type_name, bool_value, dtype_value, eps_value, float_array, int_value, like_array,
    method_value, momentum_value, param_dtype, positive_int, real_array, shape_value,
)
from cnorm.addnorm import AddNormOutput, add_forward
from cnorm.batchnorm import _forward as bn_forward
from cnorm.batchnorm import batch_norm_backward
from cnorm.batchnorm import plan as bn_plan
from cnorm.groupnorm import _group_forward as gn_forward
from cnorm.groupnorm import _instance_forward as in_forward
from cnorm.groupnorm import group_norm_backward, instance_norm_backward
from cnorm.groupnorm import plan as gn_plan
from cnorm.layernorm import _forward as ln_forward
from cnorm.layernorm import layer_norm_backward
from cnorm.layernorm import plan as ln_plan
from cnorm.rmsnorm import _forward as rms_forward
from cnorm.rmsnorm import FAST_EPS
from cnorm.rmsnorm import rms_norm_backward

_kernels = dispatch.kernels("_kernels")

__all__ = ["BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "fold_batch_norm",
           "LoadResult"]


LoadResult = namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])
LoadResult.__doc__ = """Result of ``load_state_dict``: the expected keys that were absent and the
keys that were not expected, each a list of str (both empty after a strict load), as torch's
``load_state_dict`` returns."""


# -- argument checks --------------------------------------------------------------------------

def _shape_value(normalized_shape):
    shape = shape_value(normalized_shape)
    if not shape:
        raise ValueError("normalized_shape must have at least one dimension, got ()")
    if len(shape) == 1:
        return (positive_int(shape[0], "normalized_shape"),)
    if min(shape) <= 0:
        raise ValueError(f"normalized_shape must hold positive ints, got {shape}")
    return shape


def _real_array(v, name):
    """v as an ndarray of real numbers (torch tensors included), without copying when possible."""
    if not isinstance(v, np.ndarray):
        if hasattr(v, "detach") and hasattr(v, "numpy"):   # a torch tensor
            t = v.detach().cpu()
            try:
                v = t.numpy()
            except (TypeError, RuntimeError):
                v = t.float().numpy()   # dtypes NumPy lacks (bfloat16)
        elif not hasattr(v, "__array__") and hasattr(v, "numpy"):
            v = v.numpy()
    return real_array(v, name)


# -- shared machinery ------------------------------------------------------------------------

class _Norm:
    """What BatchNorm and LayerNorm share: modes, calling, state_dict."""

    def train(self, mode=True):
        """Set training mode (``mode=True``) or inference mode; returns self.

        Raises
        ------
        TypeError
            mode is not a bool.
        """
        self.training = bool_value(mode, "mode")
        return self

    def eval(self):
        """Set inference mode, as ``train(False)``; returns self."""
        return self.train(False)

    def __call__(self, x):
        return self.forward(x)

    @property
    def _pdt(self):
        """The dtype of parameters, buffers and gradients: the layer's, or float32 for a
        float16 or bfloat16 layer (as torch's mixed precision keeps them)."""
        return param_dtype(self.dtype)

    def _input(self, x, name):
        """x as an ndarray of the layer's dtype (other real dtypes are cast)."""
        if type(x) is np.ndarray and x.dtype == self.dtype:
            return x
        a = _real_array(x, name)
        return a if a.dtype == self.dtype else a.astype(self.dtype)

    def _state_shapes(self):
        raise NotImplementedError

    def state_dict(self):
        """The layer's parameters and buffers, under torch's key names.

        Returns
        -------
        dict of str to ndarray
            Copies (changing them does not change the layer) of those of
            ``weight``, ``bias``, ``running_mean``, ``running_var`` and
            ``num_batches_tracked`` that the layer has, in that order;
            ``num_batches_tracked`` is a 0-d int64 array, as in torch.
        """
        out = {}
        for key in self._state_shapes():
            v = getattr(self, key)
            if key == "num_batches_tracked":
                out[key] = np.array(v, dtype=np.int64)
            else:
                out[key] = np.array(v, dtype=self._pdt, copy=True)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Load parameters and buffers from a mapping such as `state_dict`'s.

        Parameters
        ----------
        state_dict : mapping of str to array_like
            Values may be ndarrays, torch tensors (read through
            ``t.detach().cpu().numpy()``), or anything with ``__array__`` or
            ``.numpy()``.  They are copied, cast to the layer's parameter
            dtype (float32 for a float16 or bfloat16 layer, else the layer's
            dtype; ``num_batches_tracked`` to an int), so a torch module's
            ``state_dict()`` loads directly.
        strict : bool, default True
            Whether a missing or an unexpected key is an error.  With
            ``strict=False`` they are skipped; shapes are checked all the same.

        Returns
        -------
        LoadResult
            ``(missing_keys, unexpected_keys)``, lists of str.

        Raises
        ------
        TypeError
            state_dict not a mapping; a value that does not hold real numbers.
        KeyError
            With ``strict=True``: a key the layer has is missing, or one it
            does not have is present.
        ValueError
            A value of the wrong shape; a ``num_batches_tracked`` that is not a
            non-negative integer.

        Every entry is checked before any is assigned: when an error is
        raised the layer is unchanged.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of str to arrays, "
                            f"got {_type_name(state_dict)}")
        strict = bool_value(strict, "strict")
        shapes = self._state_shapes()
        missing = [k for k in shapes if k not in state_dict]
        unexpected = [k for k in state_dict if k not in shapes]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"state_dict does not match {type(self).__name__}: "
                           f"{' and '.join(parts)} (expected keys {list(shapes)})")
        new = {}
        for key, shape in shapes.items():
            if key not in state_dict:
                continue
            a = _real_array(state_dict[key], f"state_dict[{key!r}]")
            if a.shape != shape:
                raise ValueError(f"state_dict[{key!r}] must have shape {shape}, got {a.shape}")
            if key == "num_batches_tracked":
                n = a.item()
                if isinstance(n, bool) or n != int(n) or n < 0:
                    raise ValueError(f"state_dict['num_batches_tracked'] must be a non-negative "
                                     f"integer, got {n!r}")
                new[key] = int(n)
            else:
                new[key] = np.array(a, dtype=self._pdt, copy=True, order="C")
        for key, value in new.items():
            setattr(self, key, value)
        return LoadResult(missing, unexpected)


def _saved_input(layer, dy):
    """The last forward's saved state, and dy checked against its input."""
    if layer._saved is None:
        raise RuntimeError("backward needs a forward call first: there is no saved input")
    x = layer._saved[0]
    dy = layer._input(dy, "dy")
    if dy.shape != x.shape:
        raise ValueError(f"dy must have the shape of the last forward input {x.shape}, "
                         f"got {dy.shape}")
    return layer._saved, dy


def _channel_input(layer, x, c, min_ndim, what):
    """x as the layer's dtype, planned by the functions' own check (groupnorm.plan), with c
    channels along the layer's axis; returns the plan (x, axis)."""
    p = gn_plan(layer._input(x, "x"), layer.axis, min_ndim, what)
    if p[0].shape[p[1]] != c:
        raise ValueError(f"x must have {c} channels along axis {layer.axis}, "
                         f"got shape {p[0].shape}")
    return p


def _trailing_input(layer, x):
    """x as the layer's dtype, ending with the layer's normalized_shape: the row plan
    (layernorm.plan) that the functions' _forward take, checked once, here."""
    return ln_plan(layer._input(x, "x"), layer.normalized_shape, layer=True)


def _fast_rows(layer, x, residual, centred):
    """A row layer's common call, run by the functions' fast paths (checked in C): x, and
    the residual when given, ndarrays of the layer's dtype; one normalised dimension.
    Returns (what forward returns, the input to save, mean, rstd), or None for the
    general path."""
    shape = layer.normalized_shape
    dt = layer.dtype
    if (len(shape) != 1 or type(x) is not np.ndarray or x.dtype != dt
            or residual is not None and (type(residual) is not np.ndarray
                                         or residual.dtype != dt)):
        return None
    d32, d64 = FAST_EPS[centred]
    bias = layer.bias if centred else None
    if residual is None:
        r = _kernels.rows_forward_fast(x, shape[0], layer.weight, bias, layer.eps, centred, d32,
                                       d64, dispatch.STREAM_BYTES)
        return None if r is None else (r[0], x, r[1], r[2])
    r = _kernels.add_rows_fast(x, residual, shape[0], layer.weight, bias, layer.eps, centred,
                               d32, d64, dispatch.STREAM_BYTES, True)
    return None if r is None else (AddNormOutput(r[0][0], r[0][1]), r[0][1], r[1], r[2])


def _fast_channels(layer, x, c, groups, instance):
    """A group or instance layer's common call, run by groups_fast (checked in C): x an
    ndarray of the layer's dtype with c channels along the layer's axis, the default
    method.  Returns (y, mean, rstd, the axis in [0, ndim)), or None for the general
    path."""
    if (layer.method is not None or type(x) is not np.ndarray or x.dtype != layer.dtype
            or not -x.ndim <= layer.axis < x.ndim or x.shape[layer.axis] != c):
        return None
    r = _kernels.groups_fast(x, groups, layer.weight, layer.bias, layer.eps, layer.axis, 0,
                             instance)
    return None if r is None else (*r, layer.axis % x.ndim)


# -- BatchNorm ---------------------------------------------------------------------------------

class BatchNorm(_Norm):
    """Batch normalization layer with running statistics, like ``torch.nn.BatchNorm1d/2d/3d``.

    One class serves every rank: x has shape (N, C), (N, C, L), (N, C, H, W),
    (N, C, D, H, W) or any (N, C, ...), or channels-last with ``axis=-1``::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    In training mode (the initial mode, as in torch) mean and var are the
    statistics of the batch, over every axis except `axis`, and the running
    statistics are updated.  In inference mode (`eval`) the running statistics
    are used, unless ``track_running_stats=False``, where there are none and
    batch statistics are used in both modes.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float >= 0, default 1e-5
        Added to the variance.
    momentum : float in [0, 1] or None, default 0.1
        PyTorch's convention, the weight of the new batch::

            running_mean = (1 - momentum) * running_mean + momentum * mean
            running_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)

        Keras/TensorFlow's ``momentum`` is the weight of the old value:
        ``momentum_keras = 1 - momentum`` (Keras' default 0.99 is 0.01
        here).  None means a cumulative average: as torch does,
        ``num_batches_tracked`` is incremented first, then
        ``momentum = 1 / num_batches_tracked``.
    affine : bool, default True
        Whether the layer has `weight` and `bias` (ones and zeros at first).
    track_running_stats : bool, default True
        Whether the layer keeps running statistics.
    axis : int, default 1
        The channel axis of x; -1 for channels-last.
    method : {None, 'two_pass', 'welford'}
        How batch statistics are computed: None is batch_norm's default
        ('two_pass'); 'welford' streams each block once;
        'two_pass' sums each block as x - x0 and its square, with a second
        pass only where that could cost accuracy.  Both accumulate in
        float64 and agree to rounding; `method` has no effect when the running
        statistics are used.
    dtype : {float32, float64, float16, bfloat16}, default float32
        dtype of the input and the computation; parameters and buffers are
        of it too, or float32 for float16 and bfloat16 layers.

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
        The per-channel scale and shift; None when ``affine=False``.
    running_mean, running_var : ndarray of shape (C,) or None
        Zeros and ones at first; None when ``track_running_stats=False``.
        `running_var` holds the unbiased variance (``n / (n - 1)`` times the
        biased one); the biased batch variance is the one used to normalise.
    num_batches_tracked : int or None
        Training-mode forward calls so far; None without running statistics.
    training : bool
        The mode; see `train` and `eval`.
    weight_grad, bias_grad : ndarray of shape (C,) or None
        Set by `backward` (replaced, not accumulated); None before it and
        when the layer has no weight/bias.

    Raises
    ------
    TypeError
        num_features not an int; eps or momentum not a real number; affine or
        track_running_stats not a bool; axis not an int; dtype not one of
        those four.
    ValueError
        num_features < 1; eps negative or not finite; momentum outside [0, 1];
        method not one of the above.

    Notes
    -----
    The forward input is cast to the layer's dtype when it has another one
    (float64 data through a float32 layer gives float32 results).  The layer
    keeps a reference to the (cast) input of the last forward call for
    `backward`: changing that array in place before `backward` changes the
    gradient.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> bn = cnorm.BatchNorm(2, eps=0.0, dtype=np.float64)
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> bn(x)                      # training: the batch's statistics
    array([[-1., -1.],
           [ 1.,  1.]])
    >>> bn.running_mean, bn.running_var, bn.num_batches_tracked
    (array([0.2, 2. ]), array([ 1.1, 20.9]), 1)
    >>> bn.eval()(x)               # inference: the running statistics
    array([[0.76277007, 1.74991456],
           [2.66969525, 6.12470095]])
    >>> sorted(bn.state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, axis=1, method=None, dtype=np.float32):
        num_features = positive_int(num_features, "num_features")
        eps = eps_value(eps)
        if momentum is not None:
            momentum = momentum_value(momentum)
        affine = bool_value(affine, "affine")
        track_running_stats = bool_value(track_running_stats, "track_running_stats")
        axis = int_value(axis, "axis")
        method = method_value(method)     # None stays None: the functional default
        dtype = dtype_value(dtype)

        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.axis = axis
        self.method = method
        self.dtype = dtype
        self.training = True
        c = num_features
        self.weight = np.ones(c, param_dtype(dtype)) if affine else None
        self.bias = np.zeros(c, param_dtype(dtype)) if affine else None
        if track_running_stats:
            self.running_mean = np.zeros(c, param_dtype(dtype))
            self.running_var = np.ones(c, param_dtype(dtype))
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.weight_grad = self.bias_grad = None
        self._saved = None

    def __repr__(self):
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"axis={self.axis}, dtype={self.dtype.name})")

    def _state_shapes(self):
        c = (self.num_features,)
        shapes = {}
        if self.weight is not None:
            shapes["weight"] = c
        if self.bias is not None:
            shapes["bias"] = c
        if self.running_mean is not None:
            shapes["running_mean"] = c
        if self.running_var is not None:
            shapes["running_var"] = c
        if self.num_batches_tracked is not None:
            shapes["num_batches_tracked"] = ()
        return shapes

    def forward(self, x):
        """Normalise x, in the layer's mode; the same as ``layer(x)``.

        Parameters
        ----------
        x : array_like of shape (N, C, ...) (C along `axis`)
            Real numbers, cast to the layer's dtype.

        Returns
        -------
        y : ndarray
            x's shape, the layer's dtype.

        Raises
        ------
        TypeError
            x does not hold real numbers.
        ValueError
            x has fewer than 2 dimensions or not C channels along `axis`;
            batch statistics are needed and there is only one value per
            channel.  Nothing (running statistics, counter) changes on error.
        """
        # The same decisions as torch.nn.modules.batchnorm._BatchNorm.forward.
        factor = 0.0 if self.momentum is None else self.momentum
        count = self.num_batches_tracked
        if self.training and self.track_running_stats and count is not None:
            count += 1
            factor = 1.0 / count if self.momentum is None else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if self.training and not self.track_running_stats:
            rm = rv = None
        else:
            rm, rv = self.running_mean, self.running_var
        bias = self.bias
        if (self.method is None and type(x) is np.ndarray and x.dtype == self.dtype
                and -x.ndim <= self.axis < x.ndim and x.shape[self.axis] == self.num_features):
            # the common call, checked in C by the functions' fast paths
            weight = self.weight
            if batch_stats:
                fast = _kernels.bn_train_fast(x, weight, bias, rm, rv, factor, self.eps,
                                              self.axis, True, dispatch.STREAM_BYTES)
            else:
                fast = _kernels.bn_infer_fast(x, weight, bias, rm, rv, factor, self.eps,
                                              self.axis, dispatch.ONE_PASS_STREAM_BYTES)
            if fast is not None:
                if batch_stats:
                    y, mean, invstd = fast
                    var = None
                else:    # the running statistics as they are now, for backward
                    y, mean, invstd, var = fast, np.array(rm), None, np.array(rv)
                if self.training and self.track_running_stats and count is not None:
                    self.num_batches_tracked = count
                self._saved = (x, mean, invstd, None if weight is None else weight.copy(),
                               bias is not None, batch_stats, self.axis % x.ndim, var, self.eps)
                return y
        p = bn_plan(self._input(x, "x"), self.axis)     # x and axis checked once, here
        x, axis = p.x, p.axis
        if p.c != self.num_features:
            raise ValueError(f"x must have {self.num_features} channels along axis {self.axis}, "
                             f"got shape {x.shape}")
        dtype = self._pdt
        weight = None if self.weight is None else like_array(self.weight, "weight", dtype,
                                                             (self.num_features,)).copy()
        var = None
        if batch_stats:
            y, mean, invstd = bn_forward(p, weight, bias, rm, rv, True, factor, self.eps,
                                         self.method, 0, None, True)
        else:
            y = bn_forward(p, weight, bias, rm, rv, False, factor, self.eps, self.method, 0, None,
                           False)[0]
            # the statistics as they are now, for backward (invstd made there, if asked for)
            mean = np.array(rm, dtype=dtype)
            invstd, var = None, np.array(rv, dtype=dtype)
        if self.training and self.track_running_stats and count is not None:
            self.num_batches_tracked = count
        self._saved = (x, mean, invstd, weight, bias is not None, batch_stats, axis, var,
                       self.eps)
        return y

    def backward(self, dy):
        """Gradient of the last forward call, in the mode it ran in.

        After a forward with batch statistics (training mode, or no running
        statistics) the gradient flows through the batch mean and variance;
        after an inference-mode forward the running statistics, as they were
        at that call, are constants.

        Parameters
        ----------
        dy : array_like
            Gradient of the loss with respect to y: the shape of the last
            forward input; cast to the layer's dtype.

        Returns
        -------
        dx : ndarray
            The shape of x, the layer's dtype.

        Also sets `weight_grad` and `bias_grad` (shape (C,), ``sum(dy * xhat)``
        and ``sum(dy)`` per channel) when the layer had a weight and a bias at
        that forward call, else None.

        Raises
        ------
        RuntimeError
            No forward call yet.
        TypeError
            dy does not hold real numbers.
        ValueError
            dy not of the forward input's shape.
        """
        (x, mean, invstd, weight, has_bias, batch_stats, axis, var, eps), dy = \
            _saved_input(self, dy)
        if invstd is None:      # after inference: the running variance of that call
            invstd = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(var.dtype)
        dx, dweight, dbias = batch_norm_backward(dy, x, mean, invstd, weight,
                                                 training=batch_stats, axis=axis)
        self.weight_grad = dweight if weight is not None else None
        self.bias_grad = dbias if has_bias else None
        return dx


# -- LayerNorm ---------------------------------------------------------------------------------

class LayerNorm(_Norm):
    """Layer normalization layer, like ``torch.nn.LayerNorm``.

    Each sample is normalised over the trailing dimensions given by
    `normalized_shape`, with its own mean and biased variance::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    There are no running statistics: the training and inference modes
    compute the same thing (`train` and `eval` exist for uniformity).

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dimensions of x to normalise over, each > 0.
    eps : float >= 0, default 1e-5
        Added to the variance.
    elementwise_affine : bool, default True
        Whether the layer has a `weight` (ones at first) and, when `bias` is
        True, a `bias` (zeros at first), of shape normalized_shape.
    bias : bool, default True
        Whether the layer has a bias (with ``elementwise_affine=True``).
    method : {None, 'two_pass', 'welford'}
        How the statistics are computed; None is layer_norm's default, 'two_pass'.  Both accumulate
        in float64 and agree to rounding.
    dtype : {float32, float64, float16, bfloat16}, default float32
        dtype of the input and the computation; parameters are of it too, or
        float32 for float16 and bfloat16 layers.

    Attributes
    ----------
    weight, bias : ndarray of shape normalized_shape, or None
        None when absent (``elementwise_affine=False``; ``bias=False``).
    normalized_shape : tuple of int
    training : bool
        True at first, as in torch; it changes nothing in the computation.
    weight_grad, bias_grad : ndarray of shape normalized_shape, or None
        Set by `backward` (replaced, not accumulated).

    Raises
    ------
    TypeError
        normalized_shape not an int or a tuple of ints; eps not a real
        number; elementwise_affine or bias not a bool; dtype not one of those
        four.
    ValueError
        normalized_shape empty or with a dimension < 1; eps negative or not
        finite; a bad method.

    Notes
    -----
    The forward input is cast to the layer's dtype when it has another one.
    The layer keeps a reference to the (cast) input of the last forward call
    for `backward`.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> ln = cnorm.LayerNorm(3, eps=0.0, dtype=np.float64)
    >>> ln.bias[:] = 1.0
    >>> ln(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]))
    array([[-0.22474487,  1.        ,  2.22474487],
           [ 0.29289322,  0.29289322,  2.41421356]])
    >>> ln.state_dict()["weight"]
    array([1., 1., 1.])
    """

    def __init__(self, normalized_shape, *, eps=1e-5, elementwise_affine=True, bias=True,
                 method=None, dtype=np.float32):
        shape = _shape_value(normalized_shape)
        eps = eps_value(eps)
        elementwise_affine = bool_value(elementwise_affine, "elementwise_affine")
        bias = bool_value(bias, "bias")
        method = method_value(method)     # None stays None: the functional default
        dtype = dtype_value(dtype)

        self.normalized_shape = shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.method = method
        self.dtype = dtype
        self.training = True
        self.weight = np.ones(shape, param_dtype(dtype)) if elementwise_affine else None
        self.bias = np.zeros(shape, param_dtype(dtype)) if elementwise_affine and bias else None
        self.weight_grad = self.bias_grad = None
        self._saved = None

    def __repr__(self):
        return (f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}, "
                f"dtype={self.dtype.name})")

    def _state_shapes(self):
        shapes = {}
        if self.weight is not None:
            shapes["weight"] = self.normalized_shape
        if self.bias is not None:
            shapes["bias"] = self.normalized_shape
        return shapes

    def __call__(self, x, residual=None):
        return self.forward(x, residual)

    def forward(self, x, residual=None):
        """Normalise x over its trailing dimensions; the same as ``layer(x)``.  With a
        residual, normalise h = x + residual in one fused pass (`add_layer_norm`).

        Parameters
        ----------
        x : array_like of shape (..., *normalized_shape)
            Real numbers, cast to the layer's dtype.
        residual : array_like of x's shape, optional
            Real numbers, cast to the layer's dtype.

        Returns
        -------
        y : ndarray
            x's shape, the layer's dtype; or, with a residual, ``(y, h)`` (an
            `AddNormOutput`), as vLLM's layers return it.  `backward` then
            gives the gradient with respect to h, which is both x's and the
            residual's.

        Raises
        ------
        TypeError
            x or residual does not hold real numbers.
        ValueError
            x's trailing dimensions are not normalized_shape; residual's shape
            is not x's.
        """
        fast = None if self.method is not None else _fast_rows(self, x, residual, True)
        if fast is not None:
            out, saved, mean, rstd = fast
            weight = None if self.weight is None else self.weight.copy()
            self._saved = (saved, mean, rstd, weight, self.bias is not None)
            return out
        p = _trailing_input(self, x)
        x, shape = p.x, p.shape
        weight = None if self.weight is None else like_array(self.weight, "weight", self._pdt,
                                                             shape).copy()
        if residual is not None:
            y, h, mean, rstd = add_forward(x, self._input(residual, "residual"), shape, weight,
                                           self.bias, self.eps, True, None, None, True,
                                           self.method)
            self._saved = (h, mean, rstd, weight, self.bias is not None)
            return AddNormOutput(y, h)
        y, mean, rstd = ln_forward(p, weight, self.bias, self.eps, self.method, 0, None, True)
        self._saved = (x, mean, rstd, weight, self.bias is not None)
        return y

    def backward(self, dy):
        """Gradient of the last forward call.

        Parameters
        ----------
        dy : array_like
            Gradient of the loss with respect to y: the shape of the last
            forward input; cast to the layer's dtype.

        Returns
        -------
        dx : ndarray
            The shape of x, the layer's dtype.

        Also sets `weight_grad` (``sum(dy * xhat)`` over the samples) and
        `bias_grad` (``sum(dy)``), of shape normalized_shape, when the layer
        had them at that forward call, else None.

        Raises
        ------
        RuntimeError
            No forward call yet.
        TypeError
            dy does not hold real numbers.
        ValueError
            dy not of the forward input's shape.
        """
        (x, mean, rstd, weight, has_bias), dy = _saved_input(self, dy)
        dx, dweight, dbias = layer_norm_backward(dy, x, mean, rstd, weight)
        self.weight_grad = dweight if weight is not None else None
        self.bias_grad = dbias if has_bias else None
        return dx


# -- GroupNorm, InstanceNorm, RMSNorm -----------------------------------------------------------

class GroupNorm(_Norm):
    """Group normalization layer, like ``torch.nn.GroupNorm``.

    The C channels form `num_groups` groups of consecutive channels; each
    (sample, group) is normalised over its channels and spatial positions::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    There are no running statistics: training and inference compute the same.

    Parameters
    ----------
    num_groups : int
        G, a positive divisor of num_channels.
    num_channels : int
        C.
    eps : float >= 0, default 1e-5
    affine : bool, default True
        Whether the layer has a per-channel `weight` (ones) and `bias` (zeros).
    axis : int, default 1
        The channel axis of x: 1, or -1 for channels last.
    method : {None, 'two_pass', 'welford'}
    dtype : {float32, float64, float16, bfloat16}, default float32

    Raises
    ------
    TypeError
        num_groups or num_channels not integers; eps not a real number; affine
        not a bool; axis not an integer; dtype not one of those four.
    ValueError
        num_groups or num_channels < 1; num_groups not dividing num_channels;
        eps negative or not finite; a bad method.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> gn = cnorm.GroupNorm(2, 4, eps=0.0, dtype=np.float64)
    >>> gn(np.array([[1.0, 3.0, 10.0, 30.0]]))
    array([[-1.,  1., -1.,  1.]])
    """

    def __init__(self, num_groups, num_channels, *, eps=1e-5, affine=True, axis=1, method=None,
                 dtype=np.float32):
        num_groups = positive_int(num_groups, "num_groups")
        num_channels = positive_int(num_channels, "num_channels")
        if num_channels % num_groups:
            raise ValueError(f"num_groups must divide num_channels {num_channels}, "
                             f"got {num_groups}")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps_value(eps)
        self.affine = bool_value(affine, "affine")
        self.axis = int_value(axis, "axis")
        self.method = method_value(method)
        self.dtype = dtype_value(dtype)
        self.training = True
        self.weight = np.ones(num_channels, self._pdt) if self.affine else None
        self.bias = np.zeros(num_channels, self._pdt) if self.affine else None
        self.weight_grad = self.bias_grad = None
        self._saved = None

    def __repr__(self):
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, axis={self.axis}, dtype={self.dtype.name})")

    def _state_shapes(self):
        c = (self.num_channels,)
        return {"weight": c, "bias": c} if self.affine else {}

    def forward(self, x):
        """Normalise x; the same as ``layer(x)``.

        Parameters
        ----------
        x : array_like of shape (N, C, ...) (C along `axis`)

        Returns
        -------
        y : ndarray
            x's shape, the layer's dtype.

        Raises
        ------
        TypeError
            x does not hold real numbers.
        ValueError
            x has fewer than 2 dimensions or not C channels along `axis`.
        """
        fast = _fast_channels(self, x, self.num_channels, self.num_groups, False)
        if fast is not None:
            y, mean, rstd, axis = fast
            self._saved = (x, mean, rstd, None if self.weight is None else self.weight.copy(),
                           axis)
            return y
        p = _channel_input(self, x, self.num_channels, 2, "group norm")
        x, axis = p
        y, mean, rstd = gn_forward(p, self.num_groups, self.weight, self.bias, self.eps,
                                   self.method, None, None)
        self._saved = (x, mean, rstd, None if self.weight is None else self.weight.copy(), axis)
        return y

    def backward(self, dy):
        """Gradient of the last forward call; also sets `weight_grad` and `bias_grad`
        (shape (C,)) when the layer is affine.

        Raises
        ------
        RuntimeError
            No forward call yet.
        TypeError, ValueError
            dy not real numbers of the forward input's shape.
        """
        (x, mean, rstd, weight, axis), dy = _saved_input(self, dy)
        dx, dweight, dbias = group_norm_backward(dy, x, mean, rstd, weight, axis=axis)
        self.weight_grad = dweight if weight is not None else None
        self.bias_grad = dbias if weight is not None else None
        return dx


class InstanceNorm(_Norm):
    """Instance normalization layer, like ``torch.nn.InstanceNorm1d/2d/3d``.

    One class serves every rank: x has shape (N, C, L), (N, C, H, W),
    (N, C, D, H, W), or channels-last with ``axis=-1``; each (sample, channel)
    is normalised over its spatial positions.  With ``track_running_stats``
    the running statistics are updated in training and used in inference, as
    in torch; without, both modes use the input's statistics.

    Parameters
    ----------
    num_features : int
        C.
    eps : float >= 0, default 1e-5
    momentum : float in [0, 1], default 0.1
        The weight of the new batch in the running statistics.
    affine : bool, default False
        Whether the layer has a per-channel `weight` and `bias` (torch's default
        is False for instance norm).
    track_running_stats : bool, default False
        Keep running statistics (and, for torch's state_dict keys, a
        ``num_batches_tracked`` that torch's instance norm leaves at 0).
    axis : int, default 1
    method : {None, 'two_pass', 'welford'}
    dtype : {float32, float64, float16, bfloat16}, default float32

    Raises
    ------
    TypeError, ValueError
        As `BatchNorm`'s constructor.
    """

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, axis=1, method=None, dtype=np.float32):
        self.num_features = positive_int(num_features, "num_features")
        self.eps = eps_value(eps)
        self.momentum = momentum_value(momentum)
        self.affine = bool_value(affine, "affine")
        self.track_running_stats = bool_value(track_running_stats, "track_running_stats")
        self.axis = int_value(axis, "axis")
        self.method = method_value(method)
        self.dtype = dtype_value(dtype)
        self.training = True
        c = self.num_features
        self.weight = np.ones(c, self._pdt) if self.affine else None
        self.bias = np.zeros(c, self._pdt) if self.affine else None
        if self.track_running_stats:
            self.running_mean = np.zeros(c, self._pdt)
            self.running_var = np.ones(c, self._pdt)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.weight_grad = self.bias_grad = None
        self._saved = None

    def __repr__(self):
        return (f"InstanceNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"axis={self.axis}, dtype={self.dtype.name})")

    _state_shapes = BatchNorm._state_shapes

    def forward(self, x):
        """Normalise x in the layer's mode; the same as ``layer(x)``.

        Parameters
        ----------
        x : array_like of shape (N, C, L, ...) (C along `axis`)

        Returns
        -------
        y : ndarray
            x's shape, the layer's dtype.

        Raises
        ------
        TypeError
            x does not hold real numbers.
        ValueError
            x has fewer than 3 dimensions or not C channels along `axis`; only
            one spatial value per channel where input statistics are used.
            Nothing (running statistics, counter) changes on error.
        """
        # the input statistics and no running ones to update or use: the common call
        fast = (None if self.track_running_stats
                else _fast_channels(self, x, self.num_features, None, True))
        if fast is not None:
            y, mean, rstd, axis = fast
            self._saved = (x, mean, rstd, None if self.weight is None else self.weight.copy(),
                           axis, True, None)
            return y
        p = _channel_input(self, x, self.num_features, 3, "instance norm")
        x, axis = p
        input_stats = self.training or not self.track_running_stats
        rm, rv = ((self.running_mean, self.running_var)
                  if self.track_running_stats and (self.training or not input_stats)
                  else (None, None))
        y, mean, rstd = in_forward(p, self.weight, self.bias, rm, rv, input_stats, self.momentum,
                                   self.eps, self.method, None, None)
        self._saved = (x, mean, rstd, None if self.weight is None else self.weight.copy(), axis,
                       input_stats, None if input_stats else
                       (np.array(self.running_mean), np.array(self.running_var)))
        return y

    def backward(self, dy):
        """Gradient of the last forward call, in the mode it ran in (input statistics:
        through them; running statistics: as constants).  Also sets `weight_grad` and
        `bias_grad` (shape (C,)) when the layer is affine.

        Raises
        ------
        RuntimeError
            No forward call yet.
        TypeError, ValueError
            dy not real numbers of the forward input's shape.
        """
        (x, mean, rstd, weight, axis, input_stats, running), dy = _saved_input(self, dy)
        if input_stats:
            dx, dweight, dbias = instance_norm_backward(dy, x, mean, rstd, weight, axis=axis)
        else:
            rm, rv = running
            invstd = (1.0 / np.sqrt(rv.astype(np.float64) + self.eps)).astype(self._pdt)
            dx, dweight, dbias = batch_norm_backward(dy, x, rm, invstd, weight, training=False,
                                                     axis=axis)
        self.weight_grad = dweight if weight is not None else None
        self.bias_grad = dbias if weight is not None else None
        return dx


class RMSNorm(_Norm):
    """RMS normalization layer, like ``torch.nn.RMSNorm``.

    Each sample is scaled by the reciprocal root mean square of its values over
    the trailing dimensions `normalized_shape`::

        y = x / sqrt(mean(x**2) + eps) * weight

    Parameters
    ----------
    normalized_shape : int or tuple of int
    eps : float >= 0 or None, default None
        None is the machine epsilon of the layer's dtype, as in torch.
    elementwise_affine : bool, default True
        Whether the layer has a `weight` (ones) of shape normalized_shape.
    dtype : {float32, float64, float16, bfloat16}, default float32

    Raises
    ------
    TypeError, ValueError
        As `LayerNorm`'s constructor.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> cnorm.RMSNorm(2, eps=0.0, dtype=np.float64)(np.array([[3.0, 4.0]]))
    array([[0.84852814, 1.13137085]])
    """

    def __init__(self, normalized_shape, *, eps=None, elementwise_affine=True, dtype=np.float32):
        self.normalized_shape = _shape_value(normalized_shape)
        self.eps = None if eps is None else eps_value(eps)
        self.elementwise_affine = bool_value(elementwise_affine, "elementwise_affine")
        self.dtype = dtype_value(dtype)
        self.training = True
        self.weight = (np.ones(self.normalized_shape, self._pdt) if self.elementwise_affine
                       else None)
        self.weight_grad = None
        self._saved = None

    def __repr__(self):
        return (f"RMSNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, dtype={self.dtype.name})")

    def _state_shapes(self):
        return {"weight": self.normalized_shape} if self.weight is not None else {}

    def __call__(self, x, residual=None):
        return self.forward(x, residual)

    def forward(self, x, residual=None):
        """Normalise x over its trailing dimensions; the same as ``layer(x)``.  With a
        residual, normalise h = x + residual in one fused pass (`add_rms_norm`) and
        return ``(y, h)``, as `LayerNorm.forward` does.

        Raises
        ------
        TypeError
            x or residual does not hold real numbers.
        ValueError
            x's trailing dimensions are not normalized_shape; residual's shape
            is not x's.
        """
        fast = _fast_rows(self, x, residual, False)
        if fast is not None:
            out, saved, _, rstd = fast
            self._saved = (saved, rstd, None if self.weight is None else self.weight.copy())
            return out
        p = _trailing_input(self, x)
        x, shape = p.x, p.shape
        weight = None if self.weight is None else self.weight.copy()
        if residual is not None:
            y, h, _, rstd = add_forward(x, self._input(residual, "residual"), shape, weight,
                                        None, self.eps, False, None, None, True)
            self._saved = (h, rstd, weight)
            return AddNormOutput(y, h)
        y, rstd = rms_forward(p, weight, self.eps, None, None, True)
        self._saved = (x, rstd, weight)
        return y

    def backward(self, dy):
        """Gradient of the last forward call; also sets `weight_grad` when the layer has
        a weight.

        Raises
        ------
        RuntimeError
            No forward call yet.
        TypeError, ValueError
            dy not real numbers of the forward input's shape.
        """
        (x, rstd, weight), dy = _saved_input(self, dy)
        dx, dweight = rms_norm_backward(dy, x, rstd, weight)
        self.weight_grad = dweight if weight is not None else None
        return dx


# -- folding -----------------------------------------------------------------------------------

def fold_batch_norm(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps=1e-5):
    """Fold an inference-mode batch norm into the Linear or Conv layer before it.

    For ``z = W x + b`` followed by ``y = (z - running_mean) * s + bn_bias``
    with ``s = bn_weight / sqrt(running_var + eps)``, returns ``W'`` and
    ``b'`` such that ``y = W' x + b'``::

        W' = W * s      (s along W's axis 0, the output channels)
        b' = (b - running_mean) * s + bn_bias

    Parameters
    ----------
    weight : array_like of shape (out, in) or (out, in, *kernel)
        Linear (torch's ``(out_features, in_features)``) or Conv weight, float32
        or float64.  Grouped convolutions, ``(out, in / groups, *kernel)``,
        fold the same way; transposed convolutions, whose axis 0 is the input
        channels, do not.
    bias : array_like of shape (out,), optional
        The layer's bias; None means zeros.
    bn_weight, bn_bias : array_like of shape (out,), optional
        The batch norm's weight and bias; None means ones and zeros
        (``affine=False``).
    running_mean, running_var : array_like of shape (out,)
        The batch norm's running statistics (`BatchNorm.running_mean`, ...).
    eps : float >= 0, default 1e-5
        The batch norm's eps.

    Returns
    -------
    weight, bias : ndarray
        New arrays of weight's dtype, of shapes ``weight.shape`` and (out,);
        the inputs are not modified.  The arithmetic is done in float64.

    Raises
    ------
    TypeError
        weight not float32/float64; another argument not real numbers.
    ValueError
        weight with fewer than 2 dimensions; another array not of shape
        (out,); running statistics missing; bad eps.

    Examples
    --------
    >>> import numpy as np, cnorm
    >>> w, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, -1.0])
    >>> fw, fb = cnorm.fold_batch_norm(w, b, np.array([2.0, 1.0]), np.array([0.0, 1.0]),
    ...                                np.array([1.0, 0.0]), np.array([4.0, 1.0]), eps=0.0)
    >>> fw
    array([[1., 2.],
           [3., 4.]])
    >>> fb
    array([-0.5,  0. ])
    >>> x = np.array([1.0, 1.0])
    >>> bn = cnorm.BatchNorm(2, eps=0.0, dtype=np.float64).eval()
    >>> _ = bn.load_state_dict({"weight": [2.0, 1.0], "bias": [0.0, 1.0],
    ...     "running_mean": [1.0, 0.0], "running_var": [4.0, 1.0], "num_batches_tracked": 0})
    >>> bn((w @ x + b)[None]), fw @ x + fb
    (array([[2.5, 7. ]]), array([2.5, 7. ]))
    """
    w = float_array(weight, "weight")
    if w.ndim < 2:
        raise ValueError(f"weight must have shape (out, in) or (out, in, *kernel), "
                         f"got shape {w.shape}")
    eps = eps_value(eps)
    c = (w.shape[0],)
    f64 = np.float64
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are required")
    rm = like_array(running_mean, "running_mean", f64, c)
    rv = like_array(running_var, "running_var", f64, c)
    b = like_array(bias, "bias", f64, c)
    g = like_array(bn_weight, "bn_weight", f64, c)
    beta = like_array(bn_bias, "bn_bias", f64, c)
    scale = 1.0 / np.sqrt(rv + eps)
    if g is not None:
        scale = scale * g
    new_bias = (-rm if b is None else b - rm) * scale
    if beta is not None:
        new_bias = new_bias + beta
    new_weight = np.asarray(w, dtype=f64) * scale.reshape(c + (1,) * (w.ndim - 1))
    return new_weight.astype(w.dtype), new_bias.astype(w.dtype)

