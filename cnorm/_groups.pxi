# Column groups: x viewed as N samples of an (HW, C) matrix, statistics per
# (sample n, group g) over the HW rows and the C / G columns of the group.
# Each sample's column statistics (_columns.pxi) are merged group by group,
# and the output pass takes per-column coefficients.  Parameters go by runs of
# columns: parameter k covers columns k * run .. (k + 1) * run - 1 of every
# sample (run divides C / G).
#
#   group norm, channels last      N, HW = H*W, C, G          run = 1
#   instance norm, channels last   N, HW = H*W, C, G = C      run = 1
#   batch norm, channels last or runs shorter than 16 (the (N, C*M) matrix):
#                                  N = 1, HW = N, C = C*M, G = C, run = M
#
# A large sample is worked on by all threads, one sample after another; small
# samples (below SAMPLE_WORK values) go one per thread instead.  Each sample's
# arithmetic is the same either way, and backward's parameter gradients are
# summed over the samples in order, so results do not depend on the thread
# count.

cdef enum:
    SAMPLE_WORK = 65536     # values per sample below which threads take whole samples


ctypedef struct ColGroups:
    Py_ssize_t N                # samples
    Py_ssize_t HW               # rows of a sample
    Py_ssize_t C                # columns
    Py_ssize_t G                # groups of C / G consecutive columns
    Py_ssize_t run              # columns per parameter


cdef inline ColGroups col_groups(Py_ssize_t N, Py_ssize_t HW, Py_ssize_t C, Py_ssize_t G,
                                 Py_ssize_t run) noexcept nogil:
    cdef ColGroups m
    m.N = N
    m.HW = HW
    m.C = C
    m.G = G
    m.run = run
    return m


cdef inline void set_affine_columns(Affine p, Py_ssize_t k0, Py_ssize_t M, Py_ssize_t K,
                                    void* cols, const real* like) noexcept nogil:
    set_columns(p.hi, p.lo, p.scale, p.shift, k0, M, K, cols, like)


cdef inline void affine_coefficients(const double* mean, const double* rstd, const void* w,
                                     const void* b, Py_ssize_t C, void* cols,
                                     const real* like) noexcept nogil:
    """make_affine(mean[c], rstd[c] * w[c], b[c]) into column c of cols (hi, lo, scale,
    shift: four arrays of C), in a loop over the columns that the compiler vectorizes."""
    cdef Py_ssize_t c
    cdef Affine p
    for c in range(C):
        p = make_affine(mean[c], rstd[c] * pget(w, c, 1.0, like), pget(b, c, 0.0, like), like)
        pset(cols, c, p.hi, like)
        pset(cols, C + c, p.lo, like)
        pset(cols, 2 * C + c, p.scale, like)
        pset(cols, 3 * C + c, p.shift, like)


cdef inline void grad_coefficients(const void* mean, const void* rstd, const void* w,
                                   const double* sums, Py_ssize_t i0, Py_ssize_t C, double S,
                                   bint training, void* cols, const real* like) noexcept nogil:
    """make_grad's coefficients into column c of cols (hi, a, bc, cc: four arrays of C)
    for statistics i0 + c and parameter c, whose sums are sums[c] and sums[C + c], in a
    loop over the columns that the compiler vectorizes."""
    cdef Py_ssize_t c
    cdef double wk
    cdef Grad q
    for c in range(C):
        wk = pget(w, c, 1.0, like)
        q = make_grad(pget(mean, i0 + c, 0.0, like), pget(rstd, i0 + c, 0.0, like), wk,
                      wk * sums[c], wk * sums[C + c], S, training, like)
        pset(cols, c, q.hi, like)
        pset(cols, C + c, q.a, like)
        pset(cols, 2 * C + c, q.bc, like)
        pset(cols, 3 * C + c, q.cc, like)


cdef inline bint whole_samples(Py_ssize_t N, Py_ssize_t HW, Py_ssize_t C, int nt) noexcept nogil:
    """Give each thread whole samples?  For small samples, and whenever the samples
    share out evenly (or nearly: at least 4 a thread), which spares two parallel
    regions a sample."""
    return nt > 1 and (HW * C < SAMPLE_WORK or N % nt == 0 or N >= 4 * nt)


cdef int group_sample_forward(const real* x, real* y, Py_ssize_t n, ColGroups m,
                              const void* w, const void* b, StatsOut o, double eps,
                              int method, int act, bint stream, int nt, double* stats,
                              void* cols) noexcept nogil:
    """Sample n (x and y point at it); stats holds 3 C doubles, cols 4 C values of the
    arithmetic type."""
    cdef Py_ssize_t C = m.C, cs = m.C // m.G, kg = m.C // m.G // m.run, g, k
    cdef Moments mo
    cdef double* rstd = stats + 2 * C
    if column_moments(x, m.HW, C, method, nt, stats, stats + C) != 0:
        return -1
    # each group's mean and M2 go to stats[g] and stats[C + g], where its columns' are no
    # longer needed, and are finished all together
    if cs > 1:
        for g in range(m.G):
            mo = channel_moments(stats, stats + C, g, cs, <double>m.HW)
            stats[g] = mo.mean
            stats[C + g] = mo.m2
    finish_many(stats, stats + C, rstd, m.G, <double>(m.HW * cs), n * m.G, eps, o, x)
    if C == m.G:    # a column a group and a parameter: loops the compiler vectorizes
        affine_coefficients(stats, rstd, w, b, C, cols, x)
    else:
        for g in range(m.G):
            for k in range(g * kg, (g + 1) * kg):
                set_affine_columns(make_affine(stats[g], rstd[g] * pget(w, k, 1.0, x),
                                               pget(b, k, 0.0, x), x),
                                   k * m.run, m.run, C, cols, x)
    normalize_rows(x, y, m.HW, C, cols, act, stream, nt)
    return 0


cdef int groups_forward(const real* x, real* y, ColGroups m, const void* w, const void* b,
                        StatsOut o, double eps, int method, int act, bint stream,
                        int nt) noexcept nogil:
    cdef bint by_sample = whole_samples(m.N, m.HW, m.C, nt)
    cdef int slots = nt if by_sample else 1
    cdef Py_ssize_t n, off, C = m.C
    cdef int rc = 0, t, fails = 0
    cdef double* stats = <double*>malloc((3 * C * slots + 1) * sizeof(double))
    cdef char* cols = <char*>malloc((4 * C * slots + 1) * psize(x))
    if stats == NULL or cols == NULL:
        free(stats)
        free(cols)
        return -1
    if by_sample:
        for n in prange(m.N, num_threads=nt, schedule='static'):
            t = omp_get_thread_num()
            off = n * m.HW * C
            fails += group_sample_forward(x + off, y + off, n, m, w, b, o, eps, method, act,
                                          stream, 1, stats + 3 * C * t,
                                          cols + 4 * C * t * psize(x)) != 0
        rc = -1 if fails else 0
    else:
        for n in range(m.N):
            off = n * m.HW * C
            if group_sample_forward(x + off, y + off, n, m, w, b, o, eps, method, act, stream,
                                    nt, stats, cols) != 0:
                rc = -1
                break
    free(stats)
    free(cols)
    return rc


cdef int group_sample_backward(const real* g, const real* x, real* dx, Py_ssize_t n,
                               ColGroups m, const void* mean, const void* rstd,
                               const void* w, double* sums, bint training, bint stream,
                               int nt, double* mu, void* cols) noexcept nogil:
    """Sample n (g, x and dx point at it): dx, and the sample's sum(dy) and sum(dy * (x -
    mean)) of each parameter k's columns into sums[k] and sums[C + k].  mu holds C
    doubles, cols 4 C."""
    cdef Py_ssize_t C = m.C, cs = m.C // m.G, kg = m.C // m.G // m.run, gi, c, k, j
    cdef double r, A, B, wk, sg, sgx, S = <double>(m.HW * cs)
    cdef Grad q
    for gi in range(m.G):
        r = pget(mean, n * m.G + gi, 0.0, x)
        for c in range(gi * cs, (gi + 1) * cs):
            mu[c] = r
    if column_dots(g, x, m.HW, C, mu, nt, sums, sums + C) != 0:
        return -1
    if C == m.G:    # a column a group and a parameter: its sums are the parameter's
        grad_coefficients(mean, rstd, w, sums, n * m.G, C, S, training, cols, x)
        grad_rows_parallel(g, x, dx, m.HW, C, cols, training, stream, nt)
        return 0
    # per group, A = sum(dy * w) and B = sum(dy * w * (x - mean)) over its S values
    for gi in range(m.G):
        r = pget(rstd, n * m.G + gi, 0.0, x)
        if kg == 1:     # one parameter a group (batch and instance norm): one pass
            sg = 0.0
            sgx = 0.0
            for j in range(gi * cs, (gi + 1) * cs):
                sg += sums[j]
                sgx += sums[C + j]
            sums[gi] = sg           # parameter gi's sums, where its columns' were
            sums[C + gi] = sgx
            wk = pget(w, gi, 1.0, x)
            q = make_grad(pget(mean, n * m.G + gi, 0.0, x), r, wk, wk * sg, wk * sgx, S,
                          training, x)
            set_columns(q.hi, q.a, q.bc, q.cc, gi * cs, cs, C, cols, x)
            continue
        A = 0.0
        B = 0.0
        for k in range(gi * kg, (gi + 1) * kg):
            sg = 0.0
            sgx = 0.0
            for j in range(k * m.run, (k + 1) * m.run):
                sg += sums[j]
                sgx += sums[C + j]
            sums[k] = sg            # parameter k's sums, where its columns' were
            sums[C + k] = sgx
            wk = pget(w, k, 1.0, x)
            A += wk * sg
            B += wk * sgx
        for k in range(gi * kg, (gi + 1) * kg):
            q = make_grad(pget(mean, n * m.G + gi, 0.0, x), r, pget(w, k, 1.0, x), A, B, S,
                          training, x)
            set_columns(q.hi, q.a, q.bc, q.cc, k * m.run, m.run, C, cols, x)
    grad_rows_parallel(g, x, dx, m.HW, C, cols, training, stream, nt)
    return 0


cdef int groups_backward(const real* g, const real* x, real* dx, ColGroups m,
                         const void* mean, const void* rstd, const void* w, void* dweight,
                         void* dbias, bint training, bint stream, int nt) noexcept nogil:
    """dx, and dweight and dbias (C / run each): the run sums of each sample, summed
    over the samples in order.  Without training, the statistics are constants
    (batch norm in eval mode): dx = dy * rstd * w."""
    cdef bint by_sample = whole_samples(m.N, m.HW, m.C, nt)
    cdef int slots = nt if by_sample else 1
    cdef Py_ssize_t C = m.C, kg = m.C // m.G // m.run, n, k, gi, off
    cdef int rc = 0, t, fails = 0
    cdef double sw, sb
    # sums: each sample's run sums (2 C), then mu (C a slot, and 2 C for the last step)
    cdef double* sums = <double*>malloc((2 * C * m.N + 2 * C * slots + 1) * sizeof(double))
    cdef char* cols = <char*>malloc((4 * C * slots + 1) * psize(x))
    cdef double* mu
    if sums == NULL or cols == NULL:
        free(sums)
        free(cols)
        return -1
    mu = sums + 2 * C * m.N
    if by_sample:
        for n in prange(m.N, num_threads=nt, schedule='static'):
            t = omp_get_thread_num()
            off = n * m.HW * C
            fails += group_sample_backward(g + off, x + off, dx + off, n, m, mean, rstd, w,
                                           sums + 2 * C * n, training, stream, 1, mu + C * t,
                                           cols + 4 * C * t * psize(x)) != 0
        rc = -1 if fails else 0
    else:
        for n in range(m.N):
            off = n * m.HW * C
            if group_sample_backward(g + off, x + off, dx + off, n, m, mean, rstd, w,
                                     sums + 2 * C * n, training, stream, nt, mu, cols) != 0:
                rc = -1
                break
    if rc == 0 and C == m.G:
        # each parameter's sums over the samples in order, a loop over the parameters
        # within each sample (vectorized); mu is free again
        for k in range(C):
            mu[k] = 0.0
            mu[C + k] = 0.0
        for n in range(m.N):
            for k in range(C):
                mu[k] += sums[2 * C * n + C + k] * pget(rstd, n * m.G + k, 0.0, x)
            for k in range(C):
                mu[C + k] += sums[2 * C * n + k]
        for k in range(C):
            pset(dweight, k, mu[k], x)
            pset(dbias, k, mu[C + k], x)
    elif rc == 0:
        for gi in range(m.G):
            for k in range(gi * kg, (gi + 1) * kg):
                sw = 0.0
                sb = 0.0
                for n in range(m.N):
                    sw += sums[2 * C * n + C + k] * pget(rstd, n * m.G + gi, 0.0, x)
                    sb += sums[2 * C * n + k]
                pset(dweight, k, sw, x)
                pset(dbias, k, sb, x)
    free(sums)
    free(cols)
    return rc
