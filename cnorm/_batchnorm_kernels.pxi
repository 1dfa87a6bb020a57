# Batch-normalization kernels, included by _batchnorm.pyx (any x86-64) and
# _batchnorm_v3.pyx (compiled for x86-64-v3, AVX2); see cnorm/_dispatch.py.
#
# Layout: the Python layer presents x as a C-contiguous (N, C, M) array, with the
# channel axis in the middle (M = product of the axes after it; M == 1 for
# channels-last and (N, C) inputs).
#
# * "planar" kernels (M >= PLANAR_MIN_RUN): a channel is N runs of M contiguous
#   values.  With enough channels, each thread takes whole channels and
#   normalises a channel right after computing its statistics, while it is
#   still in cache (one trip to memory).  With few channels, the statistics of
#   fixed CHUNK-sized pieces are computed in parallel and merged in order.
# * "rows" kernels (small M): x is an (N, C*M) matrix; column statistics are
#   computed over tiles of rows with vector accumulators across columns, then
#   the M columns of each channel are merged.
#
# Both give results that do not depend on the number of threads.
#

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

from cnorm._moments cimport (
    CHUNK, ROW_GROUP, TWO_PASS, WELFORD, Affine, Moments, chunked_dot, chunked_moments, merge_columns,
    col_dot2_x4, col_sum2, col_sum2_x4, col_welford_x4, moments_merge, moments_zero, one_pass_ok,
    rows_affine, run_affine, seq_dot, seq_moments, STREAM_TILE,
    cnorm_grad_cols_f32, cnorm_grad_cols_f64, cnorm_grad_f32, cnorm_grad_f64, cnorm_prefetch,
    cnorm_prefetch_write, cnorm_stream_fence, prefetch_rows, short_row_bytes,
)
from cnorm._openmp cimport omp_get_thread_num, threads_for

cnp.import_array()

cdef enum:
    PLANAR_MIN_RUN = 16   # shortest run M for which the planar kernels pay off
    COL_TILE = 1024       # columns per tile in the rows kernels


# ---------------------------------------------------------------------------
# Per-channel finishing steps
# ---------------------------------------------------------------------------

cdef inline Affine make_affine(double mean, double scale, double shift, floating tag) noexcept nogil:
    """Split mean into hi + lo of the data type (lo == 0 for float64)."""
    cdef Affine p
    p.hi = <double><floating>mean
    p.lo = mean - p.hi
    p.scale = scale
    p.shift = shift
    return p


cdef inline Affine finish_channel(Moments mo, Py_ssize_t c, const floating* w, const floating* b,
                                  floating* rmean, floating* rvar, floating* mean_out,
                                  floating* invstd_out, double eps, double momentum) noexcept nogil:
    """Batch statistics -> outputs, running-statistics update, normalisation parameters."""
    cdef double var = mo.m2 / mo.n
    cdef double invstd = 1.0 / sqrt(var + eps)
    if mean_out != NULL:
        mean_out[c] = <floating>mo.mean
        invstd_out[c] = <floating>invstd
    if rmean != NULL:
        rmean[c] = <floating>((1.0 - momentum) * rmean[c] + momentum * mo.mean)
        rvar[c] = <floating>((1.0 - momentum) * rvar[c] + momentum * (var * (mo.n / (mo.n - 1.0))))
    return make_affine(mo.mean, invstd * (w[c] if w != NULL else 1.0),
                       b[c] if b != NULL else 0.0, <floating>0)


cdef inline bint whole_channels(Py_ssize_t C, int nt) noexcept nogil:
    """Give each thread whole channels?  Yes unless that leaves threads idle."""
    return nt == 1 or C >= 4 * nt or C % nt == 0


cdef inline void prefetch_write_runs(floating* y, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t S,
                                     size_t nbytes) noexcept nogil:
    """Prefetch, for writing, the first nbytes of runs n1 - 1 down to max(n0, 0) of y
    (stride S); none when n1 <= 0.  The whole-channel loops write a channel's runs
    a stride apart, and short runs end before the hardware fetches their lines:
    without this, their stores wait on one cache miss after another."""
    cdef Py_ssize_t n
    if nbytes != 0:
        for n in range(n1 - 1, (n0 if n0 > 0 else 0) - 1, -1):
            cnorm_prefetch_write(y + n * S, nbytes)


# ---------------------------------------------------------------------------
# Elementwise passes
# ---------------------------------------------------------------------------

cdef void normalize_planar(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                           const Affine* aff, bint relu, bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t k
    for k in prange(N * C, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        run_affine(x + k * M, y + k * M, M, aff[k % C], relu, stream)


cdef void normalize_rows(const floating* x, floating* y, Py_ssize_t R, Py_ssize_t K,
                         const floating* cols, bint relu, bint stream, int nt) noexcept nogil:
    """cols holds hi, lo, scale, shift: four arrays of K."""
    cdef Py_ssize_t rb = STREAM_TILE // K if STREAM_TILE // K > 1 else 1
    cdef Py_ssize_t nb = (R + rb - 1) // rb
    cdef Py_ssize_t b
    for b in prange(nb, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        rows_affine(x, y, b * rb, (b + 1) * rb if (b + 1) * rb < R else R, R, K, cols, relu,
                    stream)


# ---------------------------------------------------------------------------
# Column reductions of an (R, K) matrix, tiled and merged in a fixed order
# ---------------------------------------------------------------------------

ctypedef struct Tiling:
    Py_ssize_t tile      # columns per tile
    Py_ssize_t ntile
    Py_ssize_t rows      # rows per group
    Py_ssize_t ngroup


cdef inline Tiling make_tiling(Py_ssize_t R, Py_ssize_t K) noexcept nogil:
    cdef Tiling t
    t.tile = K if K < COL_TILE else COL_TILE
    t.ntile = (K + t.tile - 1) // t.tile
    # at most CHUNK rows: a group is one two-pass block (see tile_moments)
    t.rows = ROW_GROUP // t.tile if ROW_GROUP // t.tile > 1 else 1
    t.rows = t.rows if t.rows < CHUNK else CHUNK
    t.ngroup = (R + t.rows - 1) // t.rows
    return t


cdef inline void prefetch_rows4(const floating* x, Py_ssize_t K, Py_ssize_t r, Py_ssize_t r1,
                                size_t nbytes) noexcept nogil:
    """Prefetch the first nbytes of rows r .. r + 3 of x (row stride K) that are below r1."""
    cdef Py_ssize_t j
    if nbytes != 0:
        for j in range(r, r + 4 if r + 4 < r1 else r1):
            cnorm_prefetch(x + j * K, nbytes)


cdef void tile_moments(const floating* x, Py_ssize_t K, Py_ssize_t r0, Py_ssize_t r1,
                       Py_ssize_t ncol, int method, double* mean, double* m2,
                       double* scratch) noexcept nogil:
    """Column statistics of rows [r0, r1), columns [0, ncol) of x (row stride K);
    scratch holds 2 * ncol values.  Each column's arithmetic is its own: the
    result for a column does not depend on ncol or on the other columns."""
    cdef Py_ssize_t r, c
    cdef double k, inv, d, v, sd, sq
    cdef double* f64 = scratch
    cdef double* bq = scratch + ncol
    cdef const floating* row
    cdef bint ok
    cdef double r4[4]
    # the hardware prefetcher alone left these loops waiting on loads of x; four
    # rows go at a time, so the distance is rounded up to a whole number of steps
    cdef Py_ssize_t pd = (prefetch_rows(ncol, sizeof(floating)) + 3) // 4 * 4
    cdef size_t pbytes = ncol * sizeof(floating)
    if method == WELFORD:
        for c in range(ncol):
            mean[c] = 0.0
            m2[c] = 0.0
        k = 0.0
        r = r0
        while r + 4 <= r1:
            prefetch_rows4(x, K, r + pd, r1, pbytes)
            for c in range(4):
                r4[c] = 1.0 / (k + (c + 1))
            col_welford_x4(mean, m2, x + r * K, K, r4, ncol)
            k = k + 4.0
            r = r + 4
        for r in range(r, r1):
            row = x + r * K
            k = k + 1.0
            inv = 1.0 / k
            for c in range(ncol):
                v = row[c]
                d = v - mean[c]
                mean[c] = mean[c] + d * inv
                m2[c] = m2[c] + d * (v - mean[c])
        return
    # two-pass: as in seq_moments, the first pass sums x - (the first row) and
    # its squares, and a column gets a second pass only if one_pass_ok refuses it
    row = x + r0 * K
    for c in range(ncol):
        mean[c] = 0.0
        bq[c] = 0.0
        f64[c] = row[c]
    r = r0 + 1
    while r + 4 <= r1:
        prefetch_rows4(x, K, r + pd, r1, pbytes)
        col_sum2_x4(mean, bq, x + r * K, K, f64, ncol)
        r = r + 4
    for r in range(r, r1):
        col_sum2(mean, bq, x + r * K, f64, ncol)
    inv = 1.0 / (r1 - r0)
    ok = True
    for c in range(ncol):
        sd = mean[c]                      # the sum of x - first
        sq = bq[c]                        # and of its squares
        mean[c] = f64[c] + sd * inv
        m2[c] = sq - sd * (sd * inv)
        if not one_pass_ok(m2[c], sq, x):
            m2[c] = -1.0                  # an accepted M2 is >= 0
            ok = False
    if not ok:                            # column by column: one bad column changes no other
        for c in range(ncol):
            if m2[c] < 0.0:
                v = 0.0
                for r in range(r0, r1):
                    d = x[r * K + c] - mean[c]
                    v += d * d
                m2[c] = v


cdef int column_moments(const floating* x, Py_ssize_t R, Py_ssize_t K, int method, int nt,
                        double* mean, double* m2) noexcept nogil:
    """Column means and M2 of a C-contiguous (R, K) matrix (count R for every column)."""
    cdef Tiling t = make_tiling(R, K)
    cdef Py_ssize_t it, g, j, c0, nc, r0, r1
    cdef double* part = <double*>malloc((2 * t.ngroup * K + 2 * nt * t.tile + 1) * sizeof(double))
    cdef double* scratch
    if part == NULL:
        return -1
    scratch = part + 2 * t.ngroup * K
    for it in prange(t.ngroup * t.ntile, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        g = it // t.ntile
        j = it - g * t.ntile
        c0 = j * t.tile
        nc = t.tile if c0 + t.tile <= K else K - c0
        r0 = g * t.rows
        r1 = r0 + t.rows if r0 + t.rows < R else R
        tile_moments(x + c0, K, r0, r1, nc, method, part + 2 * g * K + c0,
                     part + (2 * g + 1) * K + c0, scratch + 2 * t.tile * omp_get_thread_num())
    for j in range(K):
        mean[j] = part[j]
        m2[j] = part[K + j]
    for g in range(1, t.ngroup):
        r0 = g * t.rows
        r1 = r0 + t.rows if r0 + t.rows < R else R
        merge_columns(mean, m2, <double>r0, part + 2 * g * K, part + (2 * g + 1) * K, <double>(r1 - r0), K)
    free(part)
    return 0


cdef int column_dots(const floating* g, const floating* x, Py_ssize_t R, Py_ssize_t K,
                     const double* mu, int nt, double* sum_g, double* sum_gx) noexcept nogil:
    """Column sums of g and of g * (x - mu) for C-contiguous (R, K) matrices."""
    cdef Tiling t = make_tiling(R, K)
    cdef Py_ssize_t it, gi, j, c, r, c0, c1, r0, r1
    cdef Py_ssize_t pd = (prefetch_rows(t.tile, sizeof(floating)) + 3) // 4 * 4
    cdef size_t pbytes = short_row_bytes(t.tile, sizeof(floating))
    cdef double* part = <double*>malloc((2 * t.ngroup * K + 1) * sizeof(double))
    cdef double* pg
    cdef double* pgx
    if part == NULL:
        return -1
    for it in prange(t.ngroup * t.ntile, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        gi = it // t.ntile
        j = it - gi * t.ntile
        c0 = j * t.tile
        c1 = c0 + t.tile if c0 + t.tile <= K else K
        r0 = gi * t.rows
        r1 = r0 + t.rows if r0 + t.rows < R else R
        pg = part + 2 * gi * K
        pgx = part + (2 * gi + 1) * K
        for c in range(c0, c1):
            pg[c] = 0.0
            pgx[c] = 0.0
        r = r0
        while r + 4 <= r1:
            prefetch_rows4(g + c0, K, r + pd, R, pbytes)
            prefetch_rows4(x + c0, K, r + pd, R, pbytes)
            col_dot2_x4(pg + c0, pgx + c0, g + r * K + c0, x + r * K + c0, K, mu + c0, c1 - c0)
            r = r + 4
        for r in range(r, r1):
            for c in range(c0, c1):
                pg[c] += g[r * K + c]
                pgx[c] += g[r * K + c] * (x[r * K + c] - mu[c])
    for c in range(K):
        sum_g[c] = 0.0
        sum_gx[c] = 0.0
    for gi in range(t.ngroup):
        for c in range(K):
            sum_g[c] += part[2 * gi * K + c]
            sum_gx[c] += part[(2 * gi + 1) * K + c]
    free(part)
    return 0


# ---------------------------------------------------------------------------
# Training forward
# ---------------------------------------------------------------------------

cdef int train_planar(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                      const floating* w, const floating* b, floating* rmean, floating* rvar,
                      floating* mean_out, floating* invstd_out, double eps, double momentum,
                      int method, bint relu, bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t S = C * M, count = N * M
    cdef Py_ssize_t nchunk = (count + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, k, n, i0
    cdef Moments mo
    cdef Affine p
    cdef Moments* part
    cdef Affine* aff
    cdef Py_ssize_t pd = prefetch_rows(M, sizeof(floating))
    cdef size_t ybytes = short_row_bytes(M, sizeof(floating))
    if whole_channels(C, nt):
        for c in prange(C, num_threads=nt, schedule='static', use_threads_if=nt > 1):
            mo = chunked_moments(x + c * M, M, S, count, method)
            p = finish_channel(mo, c, w, b, rmean, rvar, mean_out, invstd_out, eps, momentum)
            # backwards: the runs read last by the statistics are the likeliest still in cache
            prefetch_write_runs(y + c * M, N - pd, N, S, ybytes)
            for n in range(N - 1, -1, -1):
                prefetch_write_runs(y + c * M, n - pd, n - pd + 1, S, ybytes)
                run_affine(x + n * S + c * M, y + n * S + c * M, M, p, relu, stream)
        return 0
    part = <Moments*>malloc(C * nchunk * sizeof(Moments) + C * sizeof(Affine))
    if part == NULL:
        return -1
    aff = <Affine*>(part + C * nchunk)
    for k in prange(C * nchunk, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        c = k // nchunk
        i0 = (k - c * nchunk) * CHUNK
        part[k] = seq_moments(x + c * M, M, S, i0, i0 + CHUNK if i0 + CHUNK < count else count,
                              count, method)
    for c in range(C):
        mo = moments_zero()
        for k in range(nchunk):
            moments_merge(&mo, part[c * nchunk + k])
        aff[c] = finish_channel(mo, c, w, b, rmean, rvar, mean_out, invstd_out, eps, momentum)
    normalize_planar(x, y, N, C, M, aff, relu, stream, nt)
    free(part)
    return 0


cdef inline Moments channel_moments(const double* mean, const double* m2, Py_ssize_t c,
                                    Py_ssize_t M, double n) noexcept nogil:
    """Merge the column statistics of channel c's M columns (count n each)."""
    cdef Moments mo = moments_zero(), col
    cdef Py_ssize_t m
    col.n = n
    for m in range(M):
        col.mean = mean[c * M + m]
        col.m2 = m2[c * M + m]
        moments_merge(&mo, col)
    return mo


cdef inline void set_columns(double v0, double v1, double v2, double v3, Py_ssize_t k0,
                             Py_ssize_t M, Py_ssize_t K, floating* cols) noexcept nogil:
    """One channel's four parameters into its M columns k0 .. of the four per-column
    arrays in cols (K each): hi, lo, scale, shift forward, hi, a, bc, cc backward."""
    cdef Py_ssize_t k
    for k in range(k0, k0 + M):
        cols[k] = <floating>v0
        cols[K + k] = <floating>v1
        cols[2 * K + k] = <floating>v2
        cols[3 * K + k] = <floating>v3


cdef inline void set_affine_columns(Affine p, Py_ssize_t k0, Py_ssize_t M, Py_ssize_t K,
                                    floating* cols) noexcept nogil:
    set_columns(p.hi, p.lo, p.scale, p.shift, k0, M, K, cols)


cdef int train_rows(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                    const floating* w, const floating* b, floating* rmean, floating* rvar,
                    floating* mean_out, floating* invstd_out, double eps, double momentum,
                    int method, bint relu, bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t K = C * M, c
    cdef double* stats = <double*>malloc((2 * K + 1) * sizeof(double))
    cdef floating* cols = <floating*>malloc((4 * K + 1) * sizeof(floating))
    cdef int rc = -1
    if stats != NULL and cols != NULL:
        rc = column_moments(x, N, K, method, nt, stats, stats + K)
    if rc == 0:
        for c in range(C):
            set_affine_columns(finish_channel(channel_moments(stats, stats + K, c, M, <double>N), c,
                                              w, b, rmean, rvar, mean_out, invstd_out, eps,
                                              momentum),
                               c * M, M, K, cols)
        normalize_rows(x, y, N, K, cols, relu, stream, nt)
    free(stats)
    free(cols)
    return rc


# ---------------------------------------------------------------------------
# Inference forward
# ---------------------------------------------------------------------------

cdef int infer(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
               const floating* w, const floating* b, const floating* rmean, const floating* rvar,
               double eps, bint relu, bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t c
    cdef Affine* aff = <Affine*>malloc((C + 1) * sizeof(Affine))
    cdef floating* cols = NULL
    if aff == NULL:
        return -1
    for c in range(C):
        aff[c] = make_affine(rmean[c], (w[c] if w != NULL else 1.0) / sqrt(<double>rvar[c] + eps),
                             b[c] if b != NULL else 0.0, <floating>0)
    if M >= PLANAR_MIN_RUN:
        normalize_planar(x, y, N, C, M, aff, relu, stream, nt)
    else:
        cols = <floating*>malloc((4 * C * M + 1) * sizeof(floating))
        if cols == NULL:
            free(aff)
            return -1
        for c in range(C):
            set_affine_columns(aff[c], c * M, M, C * M, cols)
        normalize_rows(x, y, N, C * M, cols, relu, stream, nt)
        free(cols)
    free(aff)
    return 0


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

ctypedef struct Grad:
    # dx = (g * a - (x - hi) * bc) - cc in training; dx = g * a otherwise
    double hi
    double a
    double bc
    double cc


cdef inline Grad finish_grad(double sum_g, double sum_gx, Py_ssize_t c, double count,
                             const floating* mean, const floating* invstd, const floating* w,
                             floating* dweight, floating* dbias, bint training) noexcept nogil:
    cdef Grad q
    cdef double s = invstd[c]
    cdef double ws = s * (w[c] if w != NULL else 1.0)
    cdef double dw = sum_gx * s
    dweight[c] = <floating>dw
    dbias[c] = <floating>sum_g
    q.hi = mean[c]
    q.a = ws
    q.bc = ws * s * dw / count if training else 0.0
    q.cc = ws * sum_g / count if training else 0.0
    return q


cdef inline void run_grad(const floating* g, const floating* x, floating* dx, Py_ssize_t n,
                          Grad q, bint training, bint stream) noexcept nogil:
    """dx over a run (see Grad); streaming stores as in run_affine."""
    cdef bint st = stream and n >= STREAM_TILE
    if floating is float:
        cnorm_grad_f32(g, x, dx, n, <float>q.hi, <float>q.a, <float>q.bc, <float>q.cc, training, st)
    else:
        cnorm_grad_f64(g, x, dx, n, q.hi, q.a, q.bc, q.cc, training, st)
    if st:
        cnorm_stream_fence()


cdef inline void grad_rows(const floating* g, const floating* x, floating* dx, Py_ssize_t r0,
                           Py_ssize_t r1, Py_ssize_t R, Py_ssize_t K, const floating* cols,
                           bint training, bint stream) noexcept nogil:
    """dx over rows [r0, r1) of (R, K) matrices; cols holds hi, a, bc and cc (K each).
    Rows are prefetched as in rows_affine."""
    cdef Py_ssize_t r
    cdef Py_ssize_t pd = prefetch_rows(K, sizeof(floating))
    cdef size_t pbytes = short_row_bytes(K, sizeof(floating))
    for r in range(r0, r1):
        if r + pd < R:
            cnorm_prefetch(g + (r + pd) * K, pbytes)
            cnorm_prefetch(x + (r + pd) * K, pbytes)
        if floating is float:
            cnorm_grad_cols_f32(g + r * K, x + r * K, dx + r * K, K, cols, cols + K, cols + 2 * K,
                                cols + 3 * K, training, stream)
        else:
            cnorm_grad_cols_f64(g + r * K, x + r * K, dx + r * K, K, cols, cols + K, cols + 2 * K,
                                cols + 3 * K, training, stream)
    if stream:
        cnorm_stream_fence()


cdef int backward_planar(const floating* g, const floating* x, floating* dx, Py_ssize_t N,
                         Py_ssize_t C, Py_ssize_t M, const floating* mean, const floating* invstd,
                         const floating* w, floating* dweight, floating* dbias, bint training,
                         bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t S = C * M, count = N * M
    cdef Py_ssize_t nchunk = (count + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, k, n, i0, off
    cdef double sg, sgx
    cdef Grad q
    cdef double* part
    cdef Grad* qs
    cdef Py_ssize_t pd = prefetch_rows(M, sizeof(floating))
    cdef size_t ybytes = short_row_bytes(M, sizeof(floating))
    if whole_channels(C, nt):
        for c in prange(C, num_threads=nt, schedule='static', use_threads_if=nt > 1):
            sg = 0.0
            sgx = 0.0
            chunked_dot(g + c * M, x + c * M, M, S, count, mean[c], &sg, &sgx)
            q = finish_grad(sg, sgx, c, <double>count, mean, invstd, w, dweight, dbias, training)
            prefetch_write_runs(dx + c * M, N - pd, N, S, ybytes)
            for n in range(N - 1, -1, -1):    # backwards, as in train_planar
                prefetch_write_runs(dx + c * M, n - pd, n - pd + 1, S, ybytes)
                off = n * S + c * M
                run_grad(g + off, x + off, dx + off, M, q, training, stream)
        return 0
    part = <double*>malloc(2 * C * nchunk * sizeof(double) + C * sizeof(Grad))
    if part == NULL:
        return -1
    qs = <Grad*>(part + 2 * C * nchunk)
    for k in prange(C * nchunk, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        c = k // nchunk
        i0 = (k - c * nchunk) * CHUNK
        part[2 * k] = 0.0
        part[2 * k + 1] = 0.0
        seq_dot(g + c * M, x + c * M, M, S, i0, i0 + CHUNK if i0 + CHUNK < count else count,
                count, mean[c], &part[2 * k], &part[2 * k + 1])
    for c in range(C):
        sg = 0.0
        sgx = 0.0
        for k in range(c * nchunk, (c + 1) * nchunk):
            sg += part[2 * k]
            sgx += part[2 * k + 1]
        qs[c] = finish_grad(sg, sgx, c, <double>count, mean, invstd, w, dweight, dbias, training)
    for k in prange(N * C, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        run_grad(g + k * M, x + k * M, dx + k * M, M, qs[k % C], training, stream)
    free(part)
    return 0


cdef int backward_rows(const floating* g, const floating* x, floating* dx, Py_ssize_t N,
                       Py_ssize_t C, Py_ssize_t M, const floating* mean, const floating* invstd,
                       const floating* w, floating* dweight, floating* dbias, bint training,
                       bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t K = C * M, c, m, b
    cdef Py_ssize_t rb = STREAM_TILE // K if STREAM_TILE // K > 1 else 1
    cdef Py_ssize_t nb = (N + rb - 1) // rb
    cdef double sg, sgx
    cdef Grad q
    cdef double* buf = <double*>malloc((3 * K + 1) * sizeof(double))
    cdef floating* cols = <floating*>malloc((4 * K + 1) * sizeof(floating))
    cdef int rc = -1
    if buf != NULL and cols != NULL:
        for c in range(C):
            for m in range(M):
                buf[2 * K + c * M + m] = mean[c]
        rc = column_dots(g, x, N, K, buf + 2 * K, nt, buf, buf + K)
    if rc == 0:
        for c in range(C):
            sg = 0.0
            sgx = 0.0
            for m in range(M):
                sg += buf[c * M + m]
                sgx += buf[K + c * M + m]
            q = finish_grad(sg, sgx, c, <double>(N * M), mean, invstd, w, dweight, dbias, training)
            set_columns(q.hi, q.a, q.bc, q.cc, c * M, M, K, cols)
        for b in prange(nb, num_threads=nt, schedule='static', use_threads_if=nt > 1):
            grad_rows(g, x, dx, b * rb, (b + 1) * rb if (b + 1) * rb < N else N, N, K, cols,
                      training, stream)
    free(buf)
    free(cols)
    return rc


# ---------------------------------------------------------------------------
# Python-facing shims.  The Python layer (cnorm/batchnorm.py) has validated
# every argument: arrays are C-contiguous, of x's dtype, and of the right
# sizes.  The shims only pick the dtype, release the GIL and call a kernel.
# ---------------------------------------------------------------------------

cdef inline void* data(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline int method_code(object method) except -1:
    if method == "welford":
        return WELFORD
    return TWO_PASS


def train(cnp.ndarray x, cnp.ndarray y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
          weight, bias, running_mean, running_var, mean_out, invstd_out,
          double eps, double momentum, method, bint relu, bint stream):
    cdef int meth = method_code(method)
    cdef int nt = threads_for(N * C * M)
    cdef bint planar = M >= PLANAR_MIN_RUN
    cdef void* px = data(x)
    cdef void* py = data(y)
    cdef void* pw = data(weight)
    cdef void* pb = data(bias)
    cdef void* prm = data(running_mean)
    cdef void* prv = data(running_var)
    cdef void* pmean = data(mean_out)
    cdef void* pinv = data(invstd_out)
    cdef int rc
    with nogil:
        if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
            rc = (train_planar[float] if planar else train_rows[float])(
                <float*>px, <float*>py, N, C, M, <float*>pw, <float*>pb, <float*>prm, <float*>prv,
                <float*>pmean, <float*>pinv, eps, momentum, meth, relu, stream, nt)
        else:
            rc = (train_planar[double] if planar else train_rows[double])(
                <double*>px, <double*>py, N, C, M, <double*>pw, <double*>pb, <double*>prm,
                <double*>prv, <double*>pmean, <double*>pinv, eps, momentum, meth, relu, stream, nt)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for batch_norm")


def inference(cnp.ndarray x, cnp.ndarray y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
              weight, bias, running_mean, running_var, double eps, bint relu, bint stream):
    cdef int nt = threads_for(N * C * M)
    cdef void* px = data(x)
    cdef void* py = data(y)
    cdef void* pw = data(weight)
    cdef void* pb = data(bias)
    cdef void* prm = data(running_mean)
    cdef void* prv = data(running_var)
    cdef int rc
    with nogil:
        if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
            rc = infer[float](<float*>px, <float*>py, N, C, M, <float*>pw, <float*>pb,
                              <float*>prm, <float*>prv, eps, relu, stream, nt)
        else:
            rc = infer[double](<double*>px, <double*>py, N, C, M, <double*>pw, <double*>pb,
                               <double*>prm, <double*>prv, eps, relu, stream, nt)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for batch_norm")


def backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t N, Py_ssize_t C,
             Py_ssize_t M, mean, invstd, weight, dweight, dbias, bint training, bint stream):
    cdef int nt = threads_for(N * C * M)
    cdef bint planar = M >= PLANAR_MIN_RUN
    cdef void* pg = data(dy)
    cdef void* px = data(x)
    cdef void* pdx = data(dx)
    cdef void* pmean = data(mean)
    cdef void* pinv = data(invstd)
    cdef void* pw = data(weight)
    cdef void* pdw = data(dweight)
    cdef void* pdb = data(dbias)
    cdef int rc
    with nogil:
        if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
            rc = (backward_planar[float] if planar else backward_rows[float])(
                <float*>pg, <float*>px, <float*>pdx, N, C, M, <float*>pmean, <float*>pinv,
                <float*>pw, <float*>pdw, <float*>pdb, training, stream, nt)
        else:
            rc = (backward_planar[double] if planar else backward_rows[double])(
                <double*>pg, <double*>px, <double*>pdx, N, C, M, <double*>pmean, <double*>pinv,
                <double*>pw, <double*>pdw, <double*>pdb, training, stream, nt)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for batch_norm_backward")
