"""Thread-count control for cnorm's OpenMP kernels."""

import numpy as np

from cython.parallel cimport prange
from libc.string cimport memcpy


# The thread count a call uses is decided when it starts, in this order:
# 1. a per-thread cap set by cnorm.dask around the chunk calls it runs inside a
#    Dask worker thread (cnorm_local_threads, thread-local, 0 when unset);
# 2. the value of set_num_threads, when it was called (cnorm_explicit_threads,
#    0 when it was not, or after set_num_threads(None));
# 3. otherwise OpenMP's own setting, read at each call: OMP_NUM_THREADS, or
#    omp_set_num_threads as threadpoolctl.threadpool_limits calls it, or the
#    CPUs this process may run on.  This is scikit-learn's convention.
# Plain C ints: a concurrent change is seen by the next call, never half-way
# through one.
cdef extern from *:
    """
    #if defined(_MSC_VER)
    #define CNORM_THREAD_LOCAL __declspec(thread)
    #else
    #define CNORM_THREAD_LOCAL __thread
    #endif
    static int cnorm_explicit_threads = 0;
    static CNORM_THREAD_LOCAL int cnorm_local_threads = 0;
    static int cnorm_get_explicit(void) { return cnorm_explicit_threads; }
    static void cnorm_set_explicit(int n) { cnorm_explicit_threads = n; }
    static int cnorm_get_local(void) { return cnorm_local_threads; }
    static void cnorm_set_local(int n) { cnorm_local_threads = n; }
    """
    int cnorm_get_explicit() noexcept nogil
    void cnorm_set_explicit(int n) noexcept nogil
    int cnorm_get_local() noexcept nogil
    void cnorm_set_local(int n) noexcept nogil


cdef inline int current_threads() noexcept nogil:
    """The thread count of a call that starts now (see above)."""
    cdef int n
    if not CNORM_HAVE_OPENMP:
        return 1
    n = cnorm_get_local()
    if n > 0:
        return n
    n = cnorm_get_explicit()
    if n > 0:
        return n
    n = omp_get_max_threads()
    return n if n > 0 else 1


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
        What `set_num_threads` last set, if it was called.  Otherwise OpenMP's
        setting, read at each call as scikit-learn does: ``OMP_NUM_THREADS``
        when set, the limit of ``threadpoolctl.threadpool_limits(n,
        user_api="openmp")`` inside one, else the number of CPUs this process
        may use.  Inside a chunk call of `cnorm.dask`, the threads that chunk
        was given.  Always 1 in a build without OpenMP (see `openmp_enabled`),
        where every kernel runs serially.  Inputs too small to pay for waking
        threads use one thread whatever this says.
    """
    return current_threads()


def set_num_threads(n):
    """Set the number of threads cnorm's kernels may use.

    Parameters
    ----------
    n : int or None
        At least 1: from now on every call uses n threads, whatever OpenMP's
        setting (threadpoolctl's limits included).  None: follow OpenMP's
        setting again, read at each call (the state at import).  Results do
        not depend on the thread count: every reduction is carried out in
        fixed-size blocks merged in a fixed order.  In a build without OpenMP,
        n is checked and ignored: the kernels stay serial and
        `get_num_threads` stays 1.

    Raises
    ------
    TypeError
        If ``n`` is not an integer or None (bool included).
    ValueError
        If ``n < 1``.
    """
    if n is None:
        cnorm_set_explicit(0)
        return
    if isinstance(n, (bool, np.bool_)):
        raise TypeError("n must be an integer, got bool")
    try:
        value = n.__index__()
    except AttributeError:
        raise TypeError(f"n must be an integer, got {type(n).__name__}") from None
    if value < 1:
        raise ValueError(f"n must be at least 1, got {value}")
    if CNORM_HAVE_OPENMP:
        cnorm_set_explicit(min(value, 1 << 16))


def explicit_threads():
    """What set_num_threads set, or None when cnorm follows OpenMP's setting (so that
    ``set_num_threads(explicit_threads())`` restores the state)."""
    n = cnorm_get_explicit()
    return n if n > 0 else None


def local_threads():
    """This thread's cap (see set_local_threads), or None."""
    n = cnorm_get_local()
    return n if n > 0 else None


def set_local_threads(n):
    """Cap the calls made from this OS thread at n threads (None: no cap), over every
    other setting; returns the previous cap.  cnorm.dask sets it around each chunk
    call; a cap in one thread leaves every other thread alone."""
    previous = local_threads()
    cnorm_set_local(0 if n is None else max(1, min(int(n), 1 << 16)))
    return previous


cdef int threads_for(Py_ssize_t work) noexcept nogil:
    """Threads worth using for ``work`` elements: 1 for small inputs."""
    cdef Py_ssize_t cap
    cdef int n = current_threads()
    if n <= 1:
        return 1
    cap = work // MIN_WORK_PER_THREAD
    if cap < 1:
        return 1
    return <int>cap if cap < n else n


def planned_threads(Py_ssize_t work):
    """The threads a kernel call over `work` values would use if it started now, from
    this thread (what every shim asks threads_for)."""
    return threads_for(work)


def parallel_copy(const unsigned char[::1] src, unsigned char[::1] dst):
    """memcpy src into dst on get_num_threads() threads (for measuring copy bandwidth)."""
    cdef Py_ssize_t n = src.shape[0]
    cdef Py_ssize_t block = 1 << 20
    cdef Py_ssize_t nb = (n + block - 1) // block
    cdef Py_ssize_t k, start, size
    cdef int nt = current_threads()
    if dst.shape[0] != n:
        raise ValueError(f"dst must have {n} bytes, got {dst.shape[0]}")
    if n == 0:
        return
    for k in prange(nb, nogil=True, num_threads=nt, schedule='static'):
        start = k * block
        size = block if start + block <= n else n - start
        memcpy(&dst[start], &src[start], size)
