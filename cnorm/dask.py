"""cnorm's kernels on Dask arrays: moments, batch norm, layer norm and a standard scaler.

Needs dask (``pip install "cnorm[dask]"``).  Everything here plugs cnorm's
kernels into Dask's own machinery (one ``dask.array.reduction`` for the
statistics, ``map_blocks`` for the elementwise passes), so it runs on any Dask
scheduler: the threaded one on one machine, ``distributed`` across many.

Threads: each chunk call runs with its own cap on cnorm's OpenMP threads, so that
Dask's threads and cnorm's do not oversubscribe the machine.  By default the cap
is one thread per Dask thread: the CPUs this process may use divided by the Dask
threads running chunks in it (a ``distributed`` worker's ``nthreads``, or the
threaded scheduler's pool size), and never more than cnorm would use outside Dask
(``distributed``'s nannies set ``OMP_NUM_THREADS=1`` in their workers, which
cnorm follows).  Pass ``threads=n`` to any function here to give every chunk call
n threads instead.
"""

import contextlib
import functools
import math
import numbers
import os

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as e:   # pragma: no cover - exercised only without dask
    raise ImportError("cnorm.dask needs dask: pip install \"cnorm[dask]\" (or "
                      "pip install \"dask[array]\")") from e

import cnorm
from cnorm import _openmp
from cnorm._checks import (
    F64, axis_value, bool_value, eps_value, float_array, inplace_array, like_array,
    method_value, momentum_value, param_dtype, shape_value,
)
from cnorm.stats import Moments, reduced_axes

__all__ = ["moments", "batch_norm", "layer_norm", "StandardScaler"]

_RECORD = np.dtype([("mean", F64), ("m2", F64)])


# ---------------------------------------------------------------------------
# Checks and threads
# ---------------------------------------------------------------------------

def _dask_array(x, name="x", where="cnorm.dask"):
    if not isinstance(x, da.Array):
        raise TypeError(f"{name} must be a dask array for {where}, got {type(x).__name__} "
                        "(use the cnorm function of the same name for NumPy arrays, or "
                        "dask.array.from_array(x, chunks=...) to make one)")
    float_array(np.empty(0, dtype=x.dtype), name)          # a dtype the kernels take
    if any(math.isnan(n) for n in x.shape):
        raise ValueError(f"{name} has unknown chunk sizes (shape {x.shape}); call "
                         f"{name}.compute_chunk_sizes() first")
    return x


def _threads_value(threads):
    if threads is None:
        return None
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads must be None or a positive int, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be None or a positive int, got {threads}")
    return int(threads)


def _split_every_value(split_every):
    """None, an int >= 2, or a dict {axis: int >= 2} (smaller values never finish)."""
    values = split_every.values() if isinstance(split_every, dict) else [split_every]
    for v in values:
        if v is None and not isinstance(split_every, dict):
            continue
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"split_every must be None, an int >= 2 or a dict of them, got "
                            f"{split_every!r}")
        if v < 2:
            raise ValueError(f"split_every must be at least 2 (each step must merge two or "
                             f"more partials), got {split_every!r}")
    return split_every


def _available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _dask_threads():
    """How many Dask threads run chunks in this process."""
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:
        state = getattr(worker, "state", None)
        return getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1) or 1
    if dask.config.get("scheduler", None) in ("sync", "synchronous", "single-threaded"):
        return 1
    from dask.system import CPU_COUNT
    return dask.config.get("num_workers", None) or CPU_COUNT


def chunk_threads(threads=None):
    """The threads a chunk call made now, from this thread, gets (see the module's
    docstring): `threads` when given, else one per Dask thread."""
    if threads is not None:
        return threads
    share = max(1, _available_cpus() // max(1, _dask_threads()))
    return max(1, min(share, cnorm.get_num_threads()))


@contextlib.contextmanager
def _capped(threads):
    previous = _openmp.set_local_threads(chunk_threads(threads))
    try:
        yield
    finally:
        _openmp.set_local_threads(previous)


# ---------------------------------------------------------------------------
# Moments
# ---------------------------------------------------------------------------

def _flatten(parts):
    """The partials of a reduction step (nested lists in block order) as one list of
    Moments.  Partials travel as dicts: dask reads a tuple result as a tuple of
    arrays."""
    if isinstance(parts, list):
        return [p for sub in parts for p in _flatten(sub)]
    return [Moments(parts["count"], parts["mean"], parts["m2"])]


def _as_dict(m):
    return {"count": m.count, "mean": m.mean, "m2": m.m2}


def _chunk(x, axis, keepdims, method, threads, computing_meta=False):
    if computing_meta:          # dask asks for the type of the partials: not arrays
        return x
    with _capped(threads):
        return _as_dict(cnorm.moments(x, axis, method=method))


def _combine(parts, axis, keepdims, computing_meta=False):
    if computing_meta:
        return parts
    return _as_dict(Moments.merge(_flatten(parts)))


def _aggregate(parts, axis, keepdims, computing_meta=False):
    if computing_meta:
        return np.empty((0,) * (np.ndim(parts) - len(axis)), dtype=_RECORD)
    m = Moments.merge(_flatten(parts))
    out = np.empty(np.shape(m.mean), dtype=_RECORD)
    out["mean"] = m.mean
    out["m2"] = m.m2
    return out


def moments(x, axis=None, *, split_every=None, method=None, threads=None):
    """Count, mean and M2 of a dask array over `axis`, as lazy dask arrays.

    One ``dask.array.reduction``: `cnorm.moments` on each chunk (one read of it, no
    ``x - mean`` temporaries), `cnorm.Moments.merge` to combine the partials and to
    aggregate them, in a tree of `split_every` partials a step.

    Parameters
    ----------
    x : dask array of float32, float64, float16 or bfloat16
        Known chunk sizes.
    axis : None, int or tuple of ints, optional
        The axes reduced, as in NumPy (None: all).
    split_every : None, int >= 2 or dict {axis: int}, optional
        Partials merged per step of the tree (dask's default when None).
    method : {None, 'two_pass', 'welford'}, optional
        As for `cnorm.moments`.
    threads : int, optional
        cnorm threads per chunk call (default: one per Dask thread; see the module).

    Returns
    -------
    Moments
        count (an int) and lazy float64 dask arrays mean and m2 of the kept shape,
        both from the one reduction: ``dask.compute(m.mean, m.m2)`` reads x once.
        ``m.var(ddof)`` and ``m.std(ddof)`` are lazy too.  Merging the same chunks
        with the same split_every gives the same bits.

    Raises
    ------
    TypeError
        If x is not a dask array of a float dtype cnorm takes, or an argument has the
        wrong type.
    ValueError
        If an axis is out of range or repeated, x's chunk sizes are unknown, or
        split_every is below 2.
    """
    x = _dask_array(x, where="cnorm.dask.moments")
    red = reduced_axes(axis, x.ndim)
    method = method_value(method, "two_pass")
    split_every = _split_every_value(split_every)
    threads = _threads_value(threads)
    count = math.prod(x.shape[i] for i in red)
    kept_ndim = x.ndim - len(red)
    rec = da.reduction(
        x, functools.partial(_chunk, method=method, threads=threads), _aggregate,
        axis=red, keepdims=False, dtype=_RECORD, split_every=split_every, combine=_combine,
        concatenate=False, meta=np.empty((0,) * kept_ndim, dtype=_RECORD),
        name="cnorm-moments")
    return Moments(count, rec["mean"], rec["m2"])


# ---------------------------------------------------------------------------
# Batch norm and layer norm
# ---------------------------------------------------------------------------

def _bn_block(block, weight, bias, mean, var, eps, axis, threads, block_info=None):
    loc = block_info[0]["array-location"][axis]
    s = slice(*loc)
    with _capped(threads):
        return cnorm.batch_norm(block, None if weight is None else weight[s],
                                None if bias is None else bias[s], mean[s], var[s],
                                training=False, eps=eps, axis=axis)


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *,
               training=False, momentum=0.1, eps=1e-5, axis=1, method=None, threads=None):
    """Batch normalization of a dask array: `cnorm.batch_norm`, chunk by chunk.

    Parameters
    ----------
    x : dask array of shape (N, C, ...) or (N, ..., C)
        float32, float64, float16 or bfloat16, with known chunk sizes; any chunking
        (the channel axis may be split too).
    weight, bias, running_mean, running_var, momentum, eps, axis, method
        As for `cnorm.batch_norm` (NumPy arrays).  In inference the running
        statistics are read when this is called: the graph holds copies.
    training : bool, default False
        False: each chunk is normalised with the running statistics (``map_blocks``).
        True: the batch statistics are computed now with one distributed reduction
        (`moments` over every axis but `axis`), running_mean and running_var (when
        given) are updated in place exactly as `cnorm.batch_norm` updates them, and x
        is normalised lazily with the batch statistics.
    threads : int, optional
        cnorm threads per chunk call (default: one per Dask thread).

    Returns
    -------
    dask array
        y, lazily, of x's shape, dtype and chunks.

    Raises
    ------
    TypeError, ValueError
        As `cnorm.batch_norm` raises them, before any computation; TypeError also if
        x is not a dask array.
    """
    x = _dask_array(x, where="cnorm.dask.batch_norm")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    axis = axis_value(axis, x.ndim)
    training = bool_value(training, "training")
    eps = eps_value(eps)
    momentum = momentum_value(momentum)
    method = method_value(method, "two_pass")
    threads = _threads_value(threads)
    pdt = param_dtype(np.dtype(x.dtype))
    c = x.shape[axis]
    weight = like_array(weight, "weight", pdt, (c,))
    bias = like_array(bias, "bias", pdt, (c,))
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if not training:
        if running_mean is None:
            raise ValueError("running_mean and running_var are required when training=False")
        mean = np.array(like_array(running_mean, "running_mean", pdt, (c,)))
        var = np.array(like_array(running_var, "running_var", pdt, (c,)))
    else:
        if running_mean is not None:
            running_mean = inplace_array(running_mean, "running_mean", pdt, (c,))
            running_var = inplace_array(running_var, "running_var", pdt, (c,))
        n = x.size // c if c else 0
        if n <= 1:
            raise ValueError(f"x must have more than 1 value per channel in training, got "
                             f"shape {x.shape} with channel axis {axis}")
        m = moments(x, tuple(i for i in range(x.ndim) if i != axis), method=method,
                    threads=threads)
        bmean, m2 = dask.compute(m.mean, m.m2)
        bvar = m2 / n
        if running_mean is not None:
            running_mean[...] = (1.0 - momentum) * running_mean.astype(F64) + momentum * bmean
            running_var[...] = ((1.0 - momentum) * running_var.astype(F64)
                                + momentum * (bvar * (n / (n - 1.0))))
        mean, var, bias = _batch_params(bmean, bvar, weight, bias, eps, pdt)
    return x.map_blocks(_bn_block, weight, bias, mean, var, eps, axis, threads,
                        dtype=x.dtype, meta=np.empty((0,) * x.ndim, dtype=x.dtype),
                        token="cnorm-batch-norm")


def _batch_params(mean, var, weight, bias, eps, pdt):
    """Float64 batch statistics as the inference kernel's (mean, var, bias) of dtype pdt.

    A float32 mean can be off by half a unit of |mean|, which is many standard
    deviations when |mean| >> std; what rounding drops from the mean is folded
    into the bias instead (as the training kernel carries it as mean's low part)."""
    hi = mean.astype(pdt)
    scale = (1.0 if weight is None else weight.astype(F64)) / np.sqrt(var + eps)
    lo = mean - hi.astype(F64)
    b = (0.0 if bias is None else bias.astype(F64)) - lo * scale
    return hi, var.astype(pdt), np.asarray(b, dtype=pdt).reshape(mean.shape)


def _ln_block(block, normalized_shape, weight, bias, eps, method, threads):
    with _capped(threads):
        return cnorm.layer_norm(block, normalized_shape, weight, bias, eps=eps, method=method)


def layer_norm(x, normalized_shape, weight=None, bias=None, *, eps=1e-5, method=None,
               threads=None):
    """Layer normalization of a dask array: `cnorm.layer_norm`, chunk by chunk.

    The normalised (trailing) dimensions must each be one chunk for a chunk to hold
    whole rows: where x splits them, they are rechunked into one chunk first
    (``x.rechunk``), which moves data between workers; chunk x that way from the
    start to avoid it.  The leading dimensions may be chunked as they like.

    Parameters
    ----------
    x : dask array of float32, float64, float16 or bfloat16
        Known chunk sizes.
    normalized_shape, weight, bias, eps, method
        As for `cnorm.layer_norm` (weight and bias NumPy arrays).
    threads : int, optional
        cnorm threads per chunk call (default: one per Dask thread).

    Returns
    -------
    dask array
        y, lazily, of x's shape and dtype.
    """
    x = _dask_array(x, where="cnorm.dask.layer_norm")
    shape = shape_value(normalized_shape)
    k = len(shape)
    if k == 0 or k > x.ndim or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"normalized_shape {shape} must equal the trailing dimensions of x, "
                         f"whose shape is {x.shape}")
    if math.prod(shape) == 0:
        raise ValueError(f"normalized_shape {shape} has no elements to normalize over")
    eps = eps_value(eps)
    method = method_value(method, None)
    threads = _threads_value(threads)
    pdt = param_dtype(np.dtype(x.dtype))
    weight = like_array(weight, "weight", pdt, shape)
    bias = like_array(bias, "bias", pdt, shape)
    if any(len(x.chunks[i]) > 1 for i in range(x.ndim - k, x.ndim)):
        x = x.rechunk({i: -1 for i in range(x.ndim - k, x.ndim)})
    return x.map_blocks(_ln_block, shape, weight, bias, eps, method, threads, dtype=x.dtype,
                        meta=np.empty((0,) * x.ndim, dtype=x.dtype), token="cnorm-layer-norm")


# ---------------------------------------------------------------------------
# StandardScaler
# ---------------------------------------------------------------------------

def _scale_block(block, mean, scale, inverse=False):
    """(block - mean) / scale in a copy of the block's float dtype (scikit-learn's two
    in-place steps, so the same bits), or with inverse, block * scale + mean."""
    out = np.array(block, dtype=block.dtype if block.dtype.kind == "f" else F64)
    if not inverse:
        if mean is not None:
            out -= mean
        if scale is not None:
            out /= scale
    else:
        if scale is not None:
            out *= scale
        if mean is not None:
            out += mean
    return out


class StandardScaler:
    """Standardise features to zero mean and unit variance, fitted in one pass.

    scikit-learn's ``StandardScaler`` (its attribute names and results), for NumPy
    or dask arrays of shape (n_samples, n_features).  `fit` reads the data once
    (`cnorm.moments` or `moments` over the samples), where scikit-learn's and
    dask-ml's make two passes; `partial_fit` merges the moments of each new shard
    into those seen so far, so a dataset can be fitted shard by shard or as a
    stream.  Transforms of dask arrays are lazy; of NumPy arrays, immediate.

    Parameters
    ----------
    with_mean : bool, default True
        Subtract the mean in `transform`.
    with_std : bool, default True
        Divide by the standard deviation in `transform`.
    ddof : int, default 0
        Delta degrees of freedom of ``var_`` (scikit-learn's is 0).

    Attributes
    ----------
    mean_ : float64 array of shape (n_features,), or None
        The features' means (None when both with_mean and with_std are False).
    var_ : float64 array of shape (n_features,), or None
        Their variances, ``M2 / (n - ddof)`` (None when with_std is False).
    scale_ : float64 array of shape (n_features,), or None
        ``sqrt(var_)``, with 1 where the variance is 0 (None when with_std is False).
    n_samples_seen_ : int
        Samples fitted so far.
    n_features_in_ : int
        Features of the data fitted.

    Notes
    -----
    NaN is not skipped: a feature with a NaN gets a NaN mean and variance (scikit-
    learn ignores NaN in fit).  Integer and bool data are converted to float64.
    """

    def __init__(self, *, with_mean=True, with_std=True, ddof=0):
        self.with_mean = bool_value(with_mean, "with_mean")
        self.with_std = bool_value(with_std, "with_std")
        if isinstance(ddof, (bool, np.bool_)) or not isinstance(ddof, numbers.Integral):
            raise TypeError(f"ddof must be a non-negative int, got {type(ddof).__name__}")
        if ddof < 0:
            raise ValueError(f"ddof must be a non-negative int, got {ddof}")
        self.ddof = int(ddof)
        self._moments = None

    # scikit-learn's estimator protocol, so that clone() and pipelines work
    def get_params(self, deep=True):
        return {"with_mean": self.with_mean, "with_std": self.with_std, "ddof": self.ddof}

    def set_params(self, **params):
        unknown = set(params) - set(self.get_params())
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)} for StandardScaler")
        self.__init__(**{**self.get_params(), **params})
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"StandardScaler({args})"

    @staticmethod
    def _data(X, name="X"):
        """X as a 2-D dask array or ndarray of a dtype the kernels take."""
        if not isinstance(X, da.Array):
            X = np.asarray(X) if not isinstance(X, np.ndarray) else X
            if X.dtype.kind in "iub":
                X = X.astype(F64)
            X = float_array(X, name)
        elif np.dtype(X.dtype).kind in "iub":
            X = X.astype(F64)
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
        if isinstance(X, da.Array):
            _dask_array(X, name, "StandardScaler")
        return X

    def _check_features(self, X, name="X"):
        if self._moments is None:
            raise ValueError("this StandardScaler is not fitted yet: call fit or partial_fit "
                             "first")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"{name} has {X.shape[1]} features, but this StandardScaler was "
                             f"fitted with {self.n_features_in_}")

    def partial_fit(self, X, y=None):
        """Merge the moments of X's samples into those seen so far; returns self."""
        X = self._data(X)
        if self._moments is not None:
            self._check_features(X)
        if isinstance(X, da.Array):
            m = moments(X, 0)
            mean, m2 = dask.compute(m.mean, m.m2)
            m = Moments(m.count, mean, m2)
        else:
            m = cnorm.moments(X, 0)
        self._moments = m if self._moments is None else Moments.merge([self._moments, m])
        self._publish(X.shape[1])
        return self

    def fit(self, X, y=None):
        """Fit to X from scratch; returns self."""
        self._moments = None
        return self.partial_fit(X, y)

    def _publish(self, n_features):
        m = self._moments
        self.n_features_in_ = n_features
        self.n_samples_seen_ = m.count
        self.mean_ = np.array(m.mean, dtype=F64) if self.with_mean or self.with_std else None
        if self.with_std:
            self.var_ = np.asarray(m.var(self.ddof), dtype=F64)
            scale = np.sqrt(self.var_)
            self.scale_ = np.where(self.var_ == 0, 1.0, scale)
        else:
            self.var_ = self.scale_ = None

    def _apply(self, X, inverse):
        X = self._data(X, "X")
        self._check_features(X, "X")
        mean = self.mean_ if self.with_mean else None
        scale = self.scale_ if self.with_std else None
        if isinstance(X, da.Array):
            dt = X.dtype if np.dtype(X.dtype).kind == "f" else F64
            return X.map_blocks(_scale_block, mean, scale, inverse, dtype=dt,
                                meta=np.empty((0, 0), dtype=dt))
        return _scale_block(X, mean, scale, inverse)

    def transform(self, X):
        """(X - mean_) / scale_, in X's float dtype (lazily for dask X)."""
        return self._apply(X, False)

    def inverse_transform(self, X):
        """X * scale_ + mean_, undoing `transform`."""
        return self._apply(X, True)

    def fit_transform(self, X, y=None):
        """fit(X), then transform(X)."""
        return self.fit(X).transform(X)
