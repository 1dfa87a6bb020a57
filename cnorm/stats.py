"""Mergeable moments: the statistics pass of the norms, as a public API.

`moments` reduces any set of axes with the kernels batch norm and channels-last
instance norm compute their statistics with (no new kernel): x viewed
C-contiguous is grouped into runs of reduced (R) and kept (K) axes, and

- R, K R, R K and R K R are batch norm's (N, C, M) view, statistics per channel;
- K R K is channels-last instance norm's (N, HW, C) view, per (sample, column);
- any other pattern is first copied with its kept axes in front (K R).

`Moments.merge` combines partial results with Chan's formula, in the order given.
"""

import math
from typing import Any, NamedTuple

import numpy as np

from cnorm._checks import F64, float_array, int_value, method_value, real_number
from cnorm._dispatch import kernels

_kernels = kernels("_kernels")

__all__ = ["Moments", "moments"]

DEFAULT_METHOD = "two_pass"


class Moments(NamedTuple):
    """Count, mean and M2 (the sum of squared deviations from the mean) of a set of
    values per entry of the kept shape.

    Attributes
    ----------
    count : int
        Values each entry summarises (the same for every entry).
    mean : float64 array of the kept shape
        Their mean (NaN when count is 0).
    m2 : float64 array of the kept shape
        Their sum of squared deviations from the mean.

    `cnorm.moments` returns NumPy arrays; `cnorm.dask.moments` returns lazy dask arrays,
    for which `var` and `std` are lazy too.
    """

    count: int
    mean: Any
    m2: Any

    def var(self, ddof=0):
        """m2 / (count - ddof): the variance with ddof delta degrees of freedom (NaN
        where count - ddof <= 0, as np.var gives with a warning)."""
        d = self.count - real_number(ddof, "ddof")
        if d <= 0:
            return self.m2 * math.nan
        return self.m2 / d

    def std(self, ddof=0):
        """The square root of `var(ddof)`."""
        return np.sqrt(self.var(ddof))

    @staticmethod
    def merge(parts):
        """The moments of the union of parts' values, by Chan, Golub and LeVeque's
        pairwise formula applied left to right.

        Parameters
        ----------
        parts : iterable of Moments
            Moments of the same kept shape over disjoint sets of values (as from
            `cnorm.moments` on the pieces of any split of the data).  Parts with count
            0 are skipped.

        Returns
        -------
        Moments
            The same parts merged in the same order give the same bits.  Their values
            agree with `cnorm.moments` of the whole within the accuracy promise of the
            norms (docs/numerics.md).

        Raises
        ------
        TypeError
            If a part is not a Moments.
        ValueError
            If parts is empty or the parts' shapes differ.
        """
        if isinstance(parts, Moments):
            raise TypeError("parts must be an iterable of Moments, got a single Moments "
                            "(wrap it in a list)")
        try:
            parts = list(parts)
        except TypeError:
            raise TypeError(f"parts must be an iterable of Moments, got "
                            f"{type(parts).__name__}") from None
        if not parts:
            raise ValueError("parts must hold at least one Moments, got none")
        for i, p in enumerate(parts):
            if not isinstance(p, Moments):
                raise TypeError(f"parts[{i}] must be a Moments, got {type(p).__name__}")
        shape = np.shape(parts[0].mean)
        for i, p in enumerate(parts):
            if np.shape(p.mean) != shape or np.shape(p.m2) != shape:
                raise ValueError(f"parts[{i}] has shape {np.shape(p.mean)}, parts[0] has "
                                 f"{shape}: only moments of the same shape merge")
        n, mean, m2 = 0, None, None
        for p in parts:
            if p.count == 0:
                continue
            if n == 0:
                n, mean, m2 = p.count, p.mean, p.m2
                continue
            total = n + p.count
            d = p.mean - mean
            mean = mean + d * (p.count / total)
            m2 = m2 + p.m2 + d * d * (n * (p.count / total))
            n = total
        if n == 0:
            return parts[0]
        return Moments(n, mean, m2)


def reduced_axes(axis, ndim, name="axis"):
    """The sorted tuple of axes that `axis` (None, an int or a tuple of ints, negative
    ones counting from the end) reduces."""
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, tuple) else (axis,)
    out = []
    for a in items:
        a = int_value(a, name, "an int, a tuple of ints or None")
        if not -ndim <= a < ndim:
            raise ValueError(f"{name} {a} is out of range for an array of {ndim} dimensions")
        a %= ndim
        if a in out:
            raise ValueError(f"{name} repeats axis {a}: {axis!r}")
        out.append(a)
    return tuple(sorted(out))


def _runs(shape, reduced):
    """[(reduced?, size)] over shape's axes of size > 1, adjacent axes of the same kind
    merged."""
    runs = []
    for i, n in enumerate(shape):
        if n == 1:
            continue
        r = i in reduced
        if runs and runs[-1][0] == r:
            runs[-1][1] *= n
        else:
            runs.append([r, n])
    return runs


def moments(x, axis=None, *, method=None):
    """Count, mean and M2 of x over the given axes, mergeable across pieces of the data.

    Parameters
    ----------
    x : array_like of float32, float64, float16 or bfloat16
        Any shape and strides; non-contiguous x is copied once.
    axis : None, int or tuple of ints, optional
        The axes reduced, as in NumPy (None: all of them).
    method : {None, 'two_pass', 'welford'}, optional
        As for the norms; None is two-pass.

    Returns
    -------
    Moments
        count (an int: the values per entry), mean and m2 (float64 arrays of x's shape
        without the reduced axes; 0-d for ``axis=None``).  ``m.var(ddof)`` and
        ``m.std(ddof)`` give the variance and standard deviation.

    Notes
    -----
    The statistics are those of the batch-norm kernels: float64 accumulation, within
    1e-6 relative of an exact reference for |mean| / std up to 3e7 in float32, the
    same bits for any thread count; the GIL is released.  NaN and inf propagate into
    their entries' statistics.  An empty reduction has count 0, mean NaN and m2 0.

    Raises
    ------
    TypeError
        If x is not an array of one of the four float dtypes, or an axis is not an int.
    ValueError
        If an axis is out of range or repeated, or method is unknown.
    """
    x = float_array(x, "x")
    red = reduced_axes(axis, x.ndim)
    method = method_value(method, DEFAULT_METHOD)
    kept = tuple(n for i, n in enumerate(x.shape) if i not in red)
    count = 1
    for i in red:
        count *= x.shape[i]
    if count == 0 or x.size == 0:
        return Moments(count, np.full(kept, np.nan if count == 0 else 0.0),
                       np.zeros(kept))
    runs = _runs(x.shape, red)
    pattern = "".join("R" if r else "K" for r, _ in runs)
    sizes = [n for _, n in runs]
    if "R" not in pattern:                  # every reduced axis has length 1
        return Moments(count, np.array(x, dtype=F64).reshape(kept), np.zeros(kept))
    samples = pattern == "KRK"
    if pattern in ("R", "KR", "RK", "RKR", "KRK"):
        a, b, c = {"R": (1, 1, count), "KR": (1, *sizes), "RK": (*sizes, 1),
                   "RKR": sizes, "KRK": sizes}[pattern]
    else:                                   # kept axes first, in order, then the reduced
        order = [i for i in range(x.ndim) if i not in red] + list(red)
        x = np.transpose(x, order)
        a, b, c = 1, math.prod(kept), count
    x = np.ascontiguousarray(x)
    n_out = a * c if samples else b
    mean = np.empty(n_out)
    m2 = np.empty(n_out)
    _kernels.moment_stats(x, a, b, c, samples, method, mean, m2)
    return Moments(count, mean.reshape(kept), m2.reshape(kept))
