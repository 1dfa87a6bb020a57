"""Thread-count control for cnorm's OpenMP kernels."""

import numpy as np

from cython.parallel cimport prange
from libc.string cimport memcpy


# Read once per call by each kernel shim; written only by set_num_threads.
# A plain C int: a concurrent set_num_threads is seen by the next call, never
# half-way through one.
cdef int _num_threads = 1


def _default_threads():
    if CNORM_HAVE_OPENMP:
        return max(1, omp_get_max_threads())  # honours OMP_NUM_THREADS
    return 1


def cpu_has_v3():
    """Whether this CPU (and OS) supports x86-64-v3: AVX2, FMA, BMI2, F16C."""
    return bool(cnorm_cpu_has_v3())


def cpu_has_v4():
    """Whether this CPU (and OS) supports x86-64-v4: v3 and AVX-512 F, BW, DQ, VL."""
    return bool(cnorm_cpu_has_v4())


def llc_bytes():
    """Bytes of last-level cache as the system reports it (0 when unknown)."""
    return cnorm_llc_bytes()


def openmp_enabled():
    """Whether the kernels were compiled with OpenMP.

    Returns
    -------
    bool
        False when the build found no OpenMP (or ``CNORM_NO_OPENMP=1`` was
        set): the kernels then run on one thread.
    """
    return bool(CNORM_HAVE_OPENMP)


def get_num_threads():
    """The number of threads cnorm's kernels may use.

    Returns
    -------
    int
        What `set_num_threads` last set; at import, ``OMP_NUM_THREADS`` when
        set, else the number of cores.  Always 1 in a build without OpenMP
        (see `openmp_enabled`), where every kernel runs serially.  Inputs too
        small to pay for waking threads use one thread whatever this says.
    """
    return _num_threads


def set_num_threads(n):
    """Set the number of threads cnorm's kernels may use.

    Parameters
    ----------
    n : int
        At least 1.  Results do not depend on it: every reduction is carried
        out in fixed-size blocks merged in a fixed order.  In a build without
        OpenMP, n is checked and ignored: the kernels stay serial and
        `get_num_threads` stays 1.

    Raises
    ------
    TypeError
        If ``n`` is not an integer (bool included).
    ValueError
        If ``n < 1``.
    """
    global _num_threads
    if isinstance(n, (bool, np.bool_)):
        raise TypeError("n must be an integer, got bool")
    try:
        value = n.__index__()
    except AttributeError:
        raise TypeError(f"n must be an integer, got {type(n).__name__}") from None
    if value < 1:
        raise ValueError(f"n must be at least 1, got {value}")
    if CNORM_HAVE_OPENMP:
        _num_threads = min(value, 1 << 16)


cdef int threads_for(Py_ssize_t work) noexcept nogil:
    """Threads worth using for ``work`` elements: 1 for small inputs."""
    cdef Py_ssize_t cap
    if not CNORM_HAVE_OPENMP or _num_threads <= 1:
        return 1
    cap = work // MIN_WORK_PER_THREAD
    if cap < 1:
        return 1
    return <int>cap if cap < _num_threads else _num_threads


_num_threads = _default_threads()


def parallel_copy(const unsigned char[::1] src, unsigned char[::1] dst):
    """memcpy src into dst on get_num_threads() threads (for measuring copy bandwidth)."""
    cdef Py_ssize_t n = src.shape[0]
    cdef Py_ssize_t block = 1 << 20
    cdef Py_ssize_t nb = (n + block - 1) // block
    cdef Py_ssize_t k, start, size
    cdef int nt = _num_threads if CNORM_HAVE_OPENMP else 1
    if dst.shape[0] != n:
        raise ValueError(f"dst must have {n} bytes, got {dst.shape[0]}")
    if n == 0:
        return
    for k in prange(nb, nogil=True, num_threads=nt, schedule='static'):
        start = k * block
        size = block if start + block <= n else n - start
        memcpy(&dst[start], &src[start], size)
