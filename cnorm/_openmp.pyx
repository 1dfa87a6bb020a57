"""Thread-count control for cnorm's OpenMP kernels."""

import os

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
    static int cnorm_default_cap = 0;        /* the cgroup's CPU quota, rounded up; 0: none */
    static int cnorm_get_local(void) { return cnorm_local_threads; }
    static void cnorm_set_local(int n) { cnorm_local_threads = n; }

    /* Backing off from a busy core.  A parallel call waits at its end for its slowest
       thread; a thread whose core another process is using may not run again for a
       scheduler time slice (milliseconds), which then decides the call's time.  Each
       parallel call is timed; one that takes STALL_FACTOR times the usual time per
       value of its kind, and at least STALL_MIN seconds, was held up so, and the
       calls started in the next `window` seconds use a thread fewer.  The window
       starts at BACKOFF_MIN and grows fourfold at each stall (up to BACKOFF_MAX), so
       that a core that stays busy is soon left alone, with one probing call a window
       (each probe that stalls costs a time slice or more: with a window that only
       doubled from 1 ms to 1 s, the probes were over 5% of 300 calls next to a
       spinning neighbour on the Intel host); it halves each time 8 windows pass
       without a stall, so that a stray stall costs 2 ms of one thread fewer.  The
       usual time of a kind starts as the fastest of its first LEARN_FIRST calls, then
       follows a moving average: a first call already held up (a neighbour busy from
       the start) would otherwise set a usual time that later stalls do not exceed
       four times.  Results do not depend on the thread count: nothing but the time
       changes. */
    #include <time.h>
    #define CNORM_KINDS 16
    #define CNORM_VARIANTS 16      /* per kind: dtype code * 4 + activation */
    #define CNORM_STALL_FACTOR 4.0
    #define CNORM_STALL_MIN 5e-4
    #define CNORM_BACKOFF_MIN 2e-3
    #define CNORM_BACKOFF_MAX 4.0
    #define CNORM_LEARN_FIRST 8
    /* usual seconds per value, per kind and variant: a float64 SiLU pass costs more
       than 4x a float32 one per value, and must not look like a stall after it */
    static double cnorm_per_value[CNORM_KINDS * CNORM_VARIANTS];
    static int cnorm_learnt[CNORM_KINDS * CNORM_VARIANTS];    /* calls learnt from */
    static double cnorm_backoff_until = 0.0;
    static double cnorm_backoff_len = 0.0;        /* the window; 0: none */
    static double cnorm_last_change = 0.0;        /* of the window */
    static int cnorm_adaptive = 1;
    static long cnorm_stalls = 0;
    static CNORM_THREAD_LOCAL double cnorm_call_t0 = 0.0;

    static inline double cnorm_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    }
    static inline int cnorm_backing_off(void) {
        return cnorm_adaptive && cnorm_backoff_until > 0.0 && cnorm_now() < cnorm_backoff_until;
    }
    static void cnorm_record(int kind, long long work, double dt) {
        double per, usual, now;
        if (work <= 0 || kind < 0 || kind >= CNORM_KINDS * CNORM_VARIANTS)
            return;
        per = dt / (double)work;
        usual = cnorm_per_value[kind];
        now = cnorm_now();
        if (cnorm_adaptive && usual > 0.0 && dt > CNORM_STALL_MIN
                && per > CNORM_STALL_FACTOR * usual) {
            cnorm_backoff_len = cnorm_backoff_len > 0.0 ? 4.0 * cnorm_backoff_len
                                                        : CNORM_BACKOFF_MIN;
            if (cnorm_backoff_len > CNORM_BACKOFF_MAX)
                cnorm_backoff_len = CNORM_BACKOFF_MAX;
            cnorm_backoff_until = now + cnorm_backoff_len;
            cnorm_last_change = now;
            cnorm_stalls++;
            return;                    /* a stalled call does not teach the usual time */
        }
        if (cnorm_learnt[kind] < CNORM_LEARN_FIRST) {
            cnorm_learnt[kind]++;
            cnorm_per_value[kind] = usual > 0.0 && usual < per ? usual : per;
        } else {
            cnorm_per_value[kind] = 0.875 * usual + 0.125 * per;
        }
        if (cnorm_backoff_len > 0.0 && now - cnorm_last_change > 8.0 * cnorm_backoff_len) {
            cnorm_backoff_len *= 0.5;
            if (cnorm_backoff_len < CNORM_BACKOFF_MIN)
                cnorm_backoff_len = 0.0;
            cnorm_last_change = now;
        }
    }
    static inline void cnorm_start_call(void) { cnorm_call_t0 = cnorm_now(); }
    static inline double cnorm_call_time(void) { return cnorm_now() - cnorm_call_t0; }
    static void cnorm_set_adaptive(int on) { cnorm_adaptive = on; }
    static int cnorm_get_adaptive(void) { return cnorm_adaptive; }
    static long cnorm_get_stalls(void) { return cnorm_stalls; }
    static double cnorm_get_backoff_len(void) { return cnorm_backoff_len; }
    static void cnorm_reset_adaptive(void) {
        int k;
        for (k = 0; k < CNORM_KINDS * CNORM_VARIANTS; k++) {
            cnorm_per_value[k] = 0.0;
            cnorm_learnt[k] = 0;
        }
        cnorm_backoff_until = 0.0;
        cnorm_backoff_len = 0.0;
        cnorm_last_change = 0.0;
        cnorm_stalls = 0;
    }
    """
    int cnorm_get_explicit() noexcept nogil
    void cnorm_set_explicit(int n) noexcept nogil
    int cnorm_get_local() noexcept nogil
    int cnorm_default_cap
    void cnorm_set_local(int n) noexcept nogil
    double cnorm_now() noexcept nogil
    bint cnorm_backing_off() noexcept nogil
    void cnorm_record(int kind, long long work, double dt) noexcept nogil
    void cnorm_reset_adaptive() noexcept nogil
    void cnorm_start_call() noexcept nogil
    double cnorm_call_time() noexcept nogil
    void cnorm_set_adaptive(int on) noexcept nogil
    int cnorm_get_adaptive() noexcept nogil
    long cnorm_get_stalls() noexcept nogil
    double cnorm_get_backoff_len() noexcept nogil


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
    if 0 < cnorm_default_cap < n:
        n = cnorm_default_cap
    return n if n > 0 else 1


def cpu_has_v3():
    """Whether this CPU (and OS) supports x86-64-v3: AVX2, FMA, BMI2, F16C."""
    return bool(cnorm_cpu_has_v3())


def cpu_has_v4():
    """Whether this CPU (and OS) supports x86-64-v4: v3 and AVX-512 F, BW, DQ, VL."""
    return bool(cnorm_cpu_has_v4())


def cpu_vendor():
    """'intel', 'amd' or 'other' (any other vendor or architecture)."""
    return ("other", "intel", "amd")[cnorm_cpu_vendor()]


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
    if cap < n:
        n = <int>cap
    if n > 1 and cnorm_backing_off():
        n -= 1
    if n > 1:
        cnorm_start_call()      # thread-local: call_done times this call
    return n


cdef inline int _slot(int kind, int dtype, int act) noexcept nogil:
    """The learnt-time slot of a kind of call, its dtype code and its activation code
    (CNORM_VARIANTS = 16 per kind); -1 for codes out of range."""
    if 0 <= dtype < 4 and 0 <= act < 4:
        return kind * 16 + dtype * 4 + act
    return -1


cdef void call_done(int kind, int nt, Py_ssize_t work, int dtype, int act) noexcept nogil:
    """Report the end of a kernel call that threads_for gave nt threads, started by
    this thread (kind: which shim; dtype: x's dtype code, act: the activation code, so
    that each kind of call learns its own usual time)."""
    if nt > 1:
        cnorm_record(_slot(kind, dtype, act), work, cnorm_call_time())


def adaptive_state():
    """(enabled, stalls seen, current back-off window in seconds, backing off now)."""
    return bool(cnorm_get_adaptive()), int(cnorm_get_stalls()), float(cnorm_get_backoff_len()), \
        bool(cnorm_backing_off())


def set_adaptive(enabled):
    """Turn backing off from busy cores on or off (CNORM_ADAPTIVE_THREADS=0 turns it
    off at import); either way the learnt times and any back-off are forgotten."""
    cnorm_set_adaptive(1 if enabled else 0)
    cnorm_reset_adaptive()


def record_call(int kind, int nt, Py_ssize_t work, double seconds, int dtype=0, int act=0):
    """Feed the back-off logic a call of `kind` (of dtype code and activation code; 0, 0:
    float32, none) on nt threads over work values that took seconds (for tests: a
    held-up call without a busy neighbour)."""
    if nt > 1:
        cnorm_record(_slot(kind, dtype, act), work, seconds)


def cgroup_cpu_limit(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """The CPUs this process's cgroup CPU quota allows, rounded up (cgroup v2's cpu.max,
    or v1's cpu.cfs_quota_us over cpu.cfs_period_us), or None where there is no quota
    or it cannot be read.  A container limited to 1.5 CPUs on a 16-core machine gets 2."""
    import math
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        path = path.lstrip("/")
        if controllers == "":                                   # v2
            candidates = [(os.path.join(root, path, "cpu.max"), None)]
        elif "cpu" in controllers.split(","):                   # v1
            for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                d = os.path.join(root, name, path)
                if os.path.isdir(d):
                    break
            candidates = [(os.path.join(d, "cpu.cfs_quota_us"),
                           os.path.join(d, "cpu.cfs_period_us"))]
        else:
            continue
        for quota_file, period_file in candidates:
            try:
                with open(quota_file) as f:
                    fields = f.read().split()
                if period_file is not None:
                    with open(period_file) as f:
                        fields = fields[:1] + f.read().split()[:1]
                quota, period = fields[0], float(fields[1])
            except (OSError, IndexError, ValueError):
                continue
            if quota == "max" or float(quota) <= 0 or period <= 0:
                continue
            n = max(1, math.ceil(float(quota) / period))
            best = n if best is None else min(best, n)
    return best


def _set_default_cap(n=False):
    """Cap OpenMP's default at the cgroup quota unless OMP_NUM_THREADS says otherwise (the
    user's word); n: that cap instead (None: none), for tests."""
    global cnorm_default_cap
    if n is False:
        n = None if "OMP_NUM_THREADS" in os.environ else cgroup_cpu_limit()
    cnorm_default_cap = n if n is not None else 0


_set_default_cap()


if os.environ.get("CNORM_ADAPTIVE_THREADS", "1").strip() in ("0", "false", "no", "off"):
    cnorm_set_adaptive(0)


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
