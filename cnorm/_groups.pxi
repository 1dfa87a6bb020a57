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


cdef int group_sample_forward(const floating* x, floating* y, Py_ssize_t n, Py_ssize_t HW,
                              Py_ssize_t C, Py_ssize_t G, const floating* w, const floating* b,
                              floating* mean_out, floating* rstd_out, floating* var_out,
                              double eps, int method, int act, bint stream, int nt,
                              double* stats, floating* cols) noexcept nogil:
    """Sample n (x and y point at it); stats holds 2 C doubles, cols 4 C values."""
    cdef Py_ssize_t cs = C // G, g, c
    cdef Moments mo
    cdef double var, rstd
    cdef Affine p
    if column_moments(x, HW, C, method, nt, stats, stats + C) != 0:
        return -1
    for g in range(G):
        mo = channel_moments(stats, stats + C, g, cs, <double>HW)
        var = mo.m2 / mo.n
        rstd = 1.0 / sqrt(var + eps)
        if mean_out != NULL:
            mean_out[n * G + g] = <floating>mo.mean
            rstd_out[n * G + g] = <floating>rstd
        if var_out != NULL:
            var_out[n * G + g] = <floating>var
        for c in range(g * cs, (g + 1) * cs):
            p = make_affine(mo.mean, rstd * (w[c] if w != NULL else 1.0),
                            b[c] if b != NULL else 0.0, <floating>0)
            set_affine_columns(p, c, 1, C, cols)
    normalize_rows(x, y, HW, C, cols, act, stream, nt)
    return 0


cdef int groups_forward(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t HW,
                        Py_ssize_t C, Py_ssize_t G, const floating* w, const floating* b,
                        floating* mean_out, floating* rstd_out, floating* var_out, double eps,
                        int method, int act, bint stream, int nt) noexcept nogil:
    cdef bint by_sample = nt > 1 and HW * C < SAMPLE_WORK
    cdef int slots = nt if by_sample else 1
    cdef Py_ssize_t n, off
    cdef int rc = 0, t, fails = 0
    cdef double* stats = <double*>malloc((2 * C * slots + 1) * sizeof(double))
    cdef floating* cols = <floating*>malloc((4 * C * slots + 1) * sizeof(floating))
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
                                          stats + 2 * C * t, cols + 4 * C * t) != 0
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


cdef int group_sample_backward(const floating* g, const floating* x, floating* dx, Py_ssize_t n,
                               Py_ssize_t HW, Py_ssize_t C, Py_ssize_t G, const floating* mean,
                               const floating* rstd, const floating* w, double* sums,
                               bint stream, int nt, double* mu, floating* cols) noexcept nogil:
    """Sample n (g, x and dx point at it): dx, and the sample's per-column sum(dy) and
    sum(dy * (x - mean)) into sums[0:C] and sums[C:2C].  mu holds C doubles, cols 4 C."""
    cdef Py_ssize_t cs = C // G, gi, c
    cdef double r, A, B, wc, S = <double>(HW * cs)
    cdef double* sg = sums
    cdef double* sgx = sums + C
    for c in range(C):
        mu[c] = mean[n * G + c // cs]
    if column_dots(g, x, HW, C, mu, nt, sg, sgx) != 0:
        return -1
    # dx = (dy * rstd * w_c - (x - mean) * rstd**3 * B / S) - rstd * A / S per group, with
    # A = sum(dy * w) and B = sum(dy * w * (x - mean)) over its S values
    for gi in range(G):
        r = rstd[n * G + gi]
        A = 0.0
        B = 0.0
        for c in range(gi * cs, (gi + 1) * cs):
            wc = w[c] if w != NULL else 1.0
            A += wc * sg[c]
            B += wc * sgx[c]
        for c in range(gi * cs, (gi + 1) * cs):
            wc = w[c] if w != NULL else 1.0
            set_columns(mean[n * G + gi], r * wc, r * r * r * B / S, r * A / S, c, 1, C, cols)
    grad_rows_parallel(g, x, dx, HW, C, cols, True, stream, nt)
    return 0


cdef int groups_backward(const floating* g, const floating* x, floating* dx, Py_ssize_t N,
                         Py_ssize_t HW, Py_ssize_t C, Py_ssize_t G, const floating* mean,
                         const floating* rstd, const floating* w, floating* dweight,
                         floating* dbias, bint stream, int nt) noexcept nogil:
    cdef bint by_sample = nt > 1 and HW * C < SAMPLE_WORK
    cdef int slots = nt if by_sample else 1
    cdef Py_ssize_t cs = C // G, n, c, off
    cdef int rc = 0, t, fails = 0
    cdef double sw, sb
    cdef double* sums = <double*>malloc((2 * C * N + C * slots + 1) * sizeof(double))
    cdef floating* cols = <floating*>malloc((4 * C * slots + 1) * sizeof(floating))
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
                                           cols + 4 * C * t) != 0
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
                sw += sums[2 * C * n + C + c] * rstd[n * G + c // cs]
                sb += sums[2 * C * n + c]
            dweight[c] = <floating>sw
            dbias[c] = <floating>sb
    free(sums)
    free(cols)
    return rc
