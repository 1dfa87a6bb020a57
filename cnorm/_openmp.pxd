# The one place that talks to OpenMP.  Built without OpenMP, the omp_*
# functions below are serial stand-ins, so every kernel compiles either way.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CNORM_HAVE_OPENMP 1
    #else
    #define CNORM_HAVE_OPENMP 0
    static inline int omp_get_max_threads(void) { return 1; }
    static inline int omp_get_thread_num(void) { return 0; }
    #endif

    static inline int cnorm_cpu_has_v3(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
    #else
        return 0;
    #endif
    }

    /* 1 for Intel, 2 for AMD, 0 for any other vendor or architecture */
    static inline int cnorm_cpu_vendor(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
        __builtin_cpu_init();
        return __builtin_cpu_is("intel") ? 1 : __builtin_cpu_is("amd") ? 2 : 0;
    #else
        return 0;
    #endif
    }

    static inline int cnorm_cpu_has_v4(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
        return cnorm_cpu_has_v3() && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
            && __builtin_cpu_supports("avx512vl");
    #else
        return 0;
    #endif
    }
    """
    bint CNORM_HAVE_OPENMP
    bint cnorm_cpu_has_v3() noexcept nogil
    bint cnorm_cpu_has_v4() noexcept nogil
    int cnorm_cpu_vendor() noexcept nogil
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil

# Below this many elements of work a call stays on one thread: waking a
# second thread costs a few microseconds, about what it takes to stream
# this much data.
cdef extern from "_stream.h":
    long cnorm_llc_bytes() noexcept nogil

cdef enum:
    MIN_WORK_PER_THREAD = 32768

cdef int threads_for(Py_ssize_t work) noexcept nogil
cdef void call_done(int kind, int nt, Py_ssize_t work, int dtype, int act) noexcept nogil

cdef enum CallKind:      # which shim reports a call to call_done
    KIND_BN_TRAIN = 0
    KIND_BN_INFER = 1
    KIND_BN_BACKWARD = 2
    KIND_ROWS = 3
    KIND_ROWS_BACKWARD = 4
    KIND_GROUPS = 5
    KIND_GROUPS_BACKWARD = 6
    KIND_MOMENTS = 7
