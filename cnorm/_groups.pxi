# Channels-last group and instance norm: x viewed as (N, HW, C), statistics per
# (sample n, group g) over the HW rows and the C / G columns of the group.
# Each sample is an (HW, C) matrix of column statistics (_columns.pxi), whose
# columns are then merged group by group, as batch norm merges a channel's
# columns; the output pass takes per-column coefficients.  Instance norm is
# G = C.
#
# A large sample is worked on by all threads, one sample after another; small
# samples (below SAMPLE_WORK values) go one per thread instead.  Each sample's
# arithmetic is the same either way, and backward's parameter gradients are
# summed over the samples in order, so results do not depend on the thread
# count.

cdef enum:
    SAMPLE_WORK = 65536     # values per sample below which threads take whole samples


cdef inline bint whole_samples(Py_ssize_t N, Py_ssize_t HW, Py_ssize_t C, int nt) noexcept nogil:
    """Give each thread whole samples?  For small samples, and whenever the samples
    share out evenly (or nearly: at least 4 a thread), which spares two parallel
    regions a sample."""
    return nt > 1 and (HW * C < SAMPLE_WORK or N % nt == 0 or N >= 4 * nt)


cdef int group_sample_forward(const real* x, real* y, Py_ssize_t n, Py_ssize_t HW,
                              Py_ssize_t C, Py_ssize_t G, const void* w, const void* b,
                              void* mean_out, void* rstd_out, void* var_out,
                              double eps, int method, int act, bint stream, int nt,
                              double* stats, void* cols) noexcept nogil:
    """Sample n (x and y point at it); stats holds 2 C doubles, cols 4 C values of the
    arithmetic type."""
    cdef Py_ssize_t cs = C // G, g, c
    cdef Moments mo
    cdef double rstd
    cdef Affine p
    cdef StatsOut o = stats_out(mean_out, rstd_out, var_out, NULL, NULL, 0.0)
    if column_moments(x, HW, C, method, nt, stats, stats + C) != 0:
        return -1
    for g in range(G):
        mo = channel_moments(stats, stats + C, g, cs, <double>HW)
        rstd = finish_stats(mo, n * G + g, eps, o, x)
        for c in range(g * cs, (g + 1) * cs):
            p = make_affine(mo.mean, rstd * pget(w, c, 1.0, x), pget(b, c, 0.0, x), x)
            set_affine_columns(p, c, 1, C, cols, x)
    normalize_rows(x, y, HW, C, cols, act, stream, nt)
    return 0


cdef int groups_forward(const real* x, real* y, Py_ssize_t N, Py_ssize_t HW,
                        Py_ssize_t C, Py_ssize_t G, const void* w, const void* b,
                        void* mean_out, void* rstd_out, void* var_out, double eps,
                        int method, int act, bint stream, int nt) noexcept nogil:
    cdef bint by_sample = whole_samples(N, HW, C, nt)
    cdef int slots = nt if by_sample else 1
    cdef Py_ssize_t n, off
    cdef int rc = 0, t, fails = 0
    cdef double* stats = <double*>malloc((2 * C * slots + 1) * sizeof(double))
    cdef char* cols = <char*>malloc((4 * C * slots + 1) * psize(x))
    if stats == NULL or cols == NULL:
        free(stats)
        free(cols)
        return -1
    if by_sample:
        for n in prange(N, num_threads=nt, schedule='static'):
            t = omp_get_thread_num()
            off = n * HW * C
            fails += group_sample_forward(x + off, y + off, n, HW, C, G, w, b, mean_out,
                                          rstd_out, var_out, eps, method, act, stream, 1,
                                          stats + 2 * C * t, cols + 4 * C * t * psize(x)) != 0
        rc = -1 if fails else 0
    else:
        for n in range(N):
            off = n * HW * C
            if group_sample_forward(x + off, y + off, n, HW, C, G, w, b, mean_out, rstd_out,
                                    var_out, eps, method, act, stream, nt, stats, cols) != 0:
                rc = -1
                break
    free(stats)
    free(cols)
    return rc


cdef int group_sample_backward(const real* g, const real* x, real* dx, Py_ssize_t n,
                               Py_ssize_t HW, Py_ssize_t C, Py_ssize_t G, const void* mean,
                               const void* rstd, const void* w, double* sums,
                               bint stream, int nt, double* mu, void* cols) noexcept nogil:
    """Sample n (g, x and dx point at it): dx, and the sample's per-column sum(dy) and
    sum(dy * (x - mean)) into sums[0:C] and sums[C:2C].  mu holds C doubles, cols 4 C."""
    cdef Py_ssize_t cs = C // G, gi, c
    cdef double r, A, B, wc, S = <double>(HW * cs)
    cdef Grad q
    cdef double* sg = sums
    cdef double* sgx = sums + C
    for c in range(C):
        mu[c] = pget(mean, n * G + c // cs, 0.0, x)
    if column_dots(g, x, HW, C, mu, nt, sg, sgx) != 0:
        return -1
    # per group, A = sum(dy * w) and B = sum(dy * w * (x - mean)) over its S values
    for gi in range(G):
        r = pget(rstd, n * G + gi, 0.0, x)
        A = 0.0
        B = 0.0
        for c in range(gi * cs, (gi + 1) * cs):
            wc = pget(w, c, 1.0, x)
            A += wc * sg[c]
            B += wc * sgx[c]
        for c in range(gi * cs, (gi + 1) * cs):
            wc = pget(w, c, 1.0, x)
            q = make_grad(pget(mean, n * G + gi, 0.0, x), r, wc, A, B, S, True, x)
            set_columns(q.hi, q.a, q.bc, q.cc, c, 1, C, cols, x)
    grad_rows_parallel(g, x, dx, HW, C, cols, True, stream, nt)
    return 0


cdef int groups_backward(const real* g, const real* x, real* dx, Py_ssize_t N,
                         Py_ssize_t HW, Py_ssize_t C, Py_ssize_t G, const void* mean,
                         const void* rstd, const void* w, void* dweight,
                         void* dbias, bint stream, int nt) noexcept nogil:
    cdef bint by_sample = whole_samples(N, HW, C, nt)
    cdef int slots = nt if by_sample else 1
    cdef Py_ssize_t cs = C // G, n, c, off
    cdef int rc = 0, t, fails = 0
    cdef double sw, sb
    cdef double* sums = <double*>malloc((2 * C * N + C * slots + 1) * sizeof(double))
    cdef char* cols = <char*>malloc((4 * C * slots + 1) * psize(x))
    cdef double* mu
    if sums == NULL or cols == NULL:
        free(sums)
        free(cols)
        return -1
    mu = sums + 2 * C * N
    if by_sample:
        for n in prange(N, num_threads=nt, schedule='static'):
            t = omp_get_thread_num()
            off = n * HW * C
            fails += group_sample_backward(g + off, x + off, dx + off, n, HW, C, G, mean,
                                           rstd, w, sums + 2 * C * n, stream, 1, mu + C * t,
                                           cols + 4 * C * t * psize(x)) != 0
        rc = -1 if fails else 0
    else:
        for n in range(N):
            off = n * HW * C
            if group_sample_backward(g + off, x + off, dx + off, n, HW, C, G, mean, rstd, w,
                                     sums + 2 * C * n, stream, nt, mu, cols) != 0:
                rc = -1
                break
    if rc == 0:
        for c in range(C):
            sw = 0.0
            sb = 0.0
            for n in range(N):
                sw += sums[2 * C * n + C + c] * pget(rstd, n * G + c // cs, 0.0, x)
                sb += sums[2 * C * n + c]
            pset(dweight, c, sw, x)
            pset(dbias, c, sb, x)
    free(sums)
    free(cols)
    return rc
