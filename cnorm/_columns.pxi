# Column geometry: an (R, K) C-contiguous matrix whose statistics are per
# column over its rows (batch norm's channels-last and (N, C) layouts, and the
# channels-last group and instance norms, one sample at a time).  Column sums
# go over tiles of rows with vector accumulators across columns; tiles depend
# only on the shape and merge in a fixed order, so results do not depend on
# the thread count.  The output passes take per-column coefficients.

cdef enum:
    COL_TILE = 1024       # columns per tile
    OUTPUT_BLOCK = 16384  # elements per parallel block of the row-major output passes
    SPAN = 512            # elements of a span of short rows in those passes, about


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


cdef inline void prefetch_rows4(const real* x, Py_ssize_t K, Py_ssize_t r, Py_ssize_t r1,
                                size_t nbytes) noexcept nogil:
    """Prefetch the first nbytes of rows r .. r + 3 of x (row stride K) that are below r1."""
    cdef Py_ssize_t j
    if nbytes != 0:
        for j in range(r, r + 4 if r + 4 < r1 else r1):
            cnorm_prefetch(x + j * K, nbytes)


cdef void tile_moments(const real* x, Py_ssize_t K, Py_ssize_t r0, Py_ssize_t r1,
                       Py_ssize_t ncol, int method, double* mean, double* m2,
                       double* scratch) noexcept nogil:
    """Column statistics of rows [r0, r1), columns [0, ncol) of x (row stride K);
    scratch holds 2 * ncol values.  Each column's arithmetic is its own: the
    result for a column does not depend on ncol or on the other columns."""
    cdef Py_ssize_t r, c
    cdef double k, inv, d, v, sd, sq
    cdef double* f64 = scratch
    cdef double* bq = scratch + ncol
    cdef const real* row
    cdef bint ok
    cdef double r4[4]
    # the hardware prefetcher alone left these loops waiting on loads of x; four
    # rows go at a time, so the distance is rounded up to a whole number of steps
    cdef Py_ssize_t pd = (prefetch_rows(ncol, sizeof(real)) + 3) // 4 * 4
    cdef size_t pbytes = ncol * sizeof(real)
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
            cnorm_col_welford_x4(x + r * K, K, r4, mean, m2, ncol)
            k = k + 4.0
            r = r + 4
        for r in range(r, r1):
            row = x + r * K
            k = k + 1.0
            inv = 1.0 / k
            for c in range(ncol):
                v = ld(row, c)
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
        f64[c] = ld(row, c)
    r = r0 + 1
    while r + 4 <= r1:
        prefetch_rows4(x, K, r + pd, r1, pbytes)
        cnorm_col_sum2_x4(x + r * K, K, f64, mean, bq, ncol)
        r = r + 4
    for r in range(r, r1):
        cnorm_col_sum2(x + r * K, f64, mean, bq, ncol)
    inv = 1.0 / (r1 - r0)
    ok = True
    for c in range(ncol):
        sd = mean[c]                      # the sum of x - first
        sq = bq[c]                        # and of its squares
        mean[c] = f64[c] + sd * inv
        m2[c] = sq - sd * (sd * inv)
        # the first row's own term, x0 - x0, is left out of the sums: it is 0 unless x0 is
        # inf or NaN, where the second pass gives the NaN it stands for
        if not one_pass_ok(m2[c], sq, x) or f64[c] - f64[c] != 0.0:
            m2[c] = -1.0                  # an accepted M2 is >= 0
            ok = False
    if not ok:                            # column by column: one bad column changes no other
        for c in range(ncol):
            if m2[c] < 0.0:
                v = 0.0
                for r in range(r0, r1):
                    d = ld(x, r * K + c) - mean[c]
                    v += d * d
                m2[c] = v


cdef int column_moments(const real* x, Py_ssize_t R, Py_ssize_t K, int method, int nt,
                        double* mean, double* m2) noexcept nogil:
    """Column means and M2 of a C-contiguous (R, K) matrix (count R for every column)."""
    cdef Tiling t = make_tiling(R, K)
    cdef Py_ssize_t it, g, j, c0, nc, r0, r1
    # each thread's scratch (its shift row and sums of squares, updated every four rows)
    # starts on a cache line of its own: with two threads' scratch meeting inside a line,
    # that line went back and forth between the cores, and channels-last (32, 56, 56, 64)
    # took 0.46 ms on 2 threads against 0.60 on one
    cdef Py_ssize_t stride = (2 * t.tile + 7) // 8 * 8
    cdef double* part = <double*>malloc((2 * t.ngroup * K + nt * stride + 8) * sizeof(double))
    cdef double* scratch
    if part == NULL:
        return -1
    scratch = part + 2 * t.ngroup * K
    scratch = scratch + (8 - (<size_t>scratch // sizeof(double)) % 8) % 8
    for it in prange(t.ngroup * t.ntile, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        g = it // t.ntile
        j = it - g * t.ntile
        c0 = j * t.tile
        nc = t.tile if c0 + t.tile <= K else K - c0
        r0 = g * t.rows
        r1 = r0 + t.rows if r0 + t.rows < R else R
        tile_moments(x + c0, K, r0, r1, nc, method, part + 2 * g * K + c0,
                     part + (2 * g + 1) * K + c0, scratch + stride * omp_get_thread_num())
    for j in range(K):
        mean[j] = part[j]
        m2[j] = part[K + j]
    for g in range(1, t.ngroup):
        r0 = g * t.rows
        r1 = r0 + t.rows if r0 + t.rows < R else R
        merge_columns(mean, m2, <double>r0, part + 2 * g * K, part + (2 * g + 1) * K, <double>(r1 - r0), K)
    free(part)
    return 0


cdef int column_dots(const real* g, const real* x, Py_ssize_t R, Py_ssize_t K,
                     const double* mu, int nt, double* sum_g, double* sum_gx) noexcept nogil:
    """Column sums of g and of g * (x - mu) for C-contiguous (R, K) matrices."""
    cdef Tiling t = make_tiling(R, K)
    cdef Py_ssize_t it, gi, j, c, r, c0, c1, r0, r1
    cdef Py_ssize_t pd = (prefetch_rows(t.tile, sizeof(real)) + 3) // 4 * 4
    cdef size_t pbytes = short_row_bytes(t.tile, sizeof(real))
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
            cnorm_col_dot2_x4(g + r * K + c0, x + r * K + c0, K, mu + c0, pg + c0, pgx + c0,
                              c1 - c0)
            r = r + 4
        for r in range(r, r1):
            for c in range(c0, c1):
                pg[c] += ld(g, r * K + c)
                pgx[c] += ld(g, r * K + c) * (ld(x, r * K + c) - mu[c])
    for c in range(K):
        sum_g[c] = 0.0
        sum_gx[c] = 0.0
    for gi in range(t.ngroup):
        for c in range(K):
            sum_g[c] += part[2 * gi * K + c]
            sum_gx[c] += part[(2 * gi + 1) * K + c]
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
                             Py_ssize_t M, Py_ssize_t K, void* cols, const real* like) noexcept nogil:
    """One channel's four parameters into its M columns k0 .. of the four per-column
    arrays in cols (K each, of the arithmetic type): hi, lo, scale, shift forward,
    hi, a, bc, cc backward."""
    cdef Py_ssize_t k
    for k in range(k0, k0 + M):
        pset(cols, k, v0, like)
        pset(cols, K + k, v1, like)
        pset(cols, 2 * K + k, v2, like)
        pset(cols, 3 * K + k, v3, like)


cdef inline Py_ssize_t output_block_rows(Py_ssize_t K) noexcept nogil:
    """Rows of K elements per parallel block of the row-major output passes: about
    OUTPUT_BLOCK elements, each block fenced once.  Blocks of STREAM_TILE elements
    were 1.3-1.5x slower (channels-last batch norm (32, 56, 56, 64)); one share per
    thread made (256, 1024) inference, in cache, 1.25x slower than these blocks."""
    return OUTPUT_BLOCK // K if OUTPUT_BLOCK // K > 1 else 1


cdef inline Py_ssize_t share(Py_ssize_t n, Py_ssize_t t, Py_ssize_t nt) noexcept nogil:
    """Where thread t's share of n items starts when n is split into nt contiguous
    shares (t = nt: n).  Batch norm's planar output passes give each thread one
    share of the runs and fence its streaming stores once at its end: a fence per
    run of a few KiB cost NCHW batch norm 5-20%."""
    return n * t // nt


cdef inline Py_ssize_t span_rows(Py_ssize_t R, Py_ssize_t K) noexcept nogil:
    """How many rows of K elements the row-major output passes take as one span of
    about SPAN elements, with the per-column coefficients repeated to the span's
    length; 1 (rows one at a time) for rows of more than SPAN / 2 elements, or for a
    matrix of fewer than OUTPUT_BLOCK elements, where repeating the coefficients
    costs more than it saves (channels-last (1, 7, 7, 64) inference took 2.4 us with
    spans against 1.9 without)."""
    cdef Py_ssize_t G = SPAN // K if K > 0 else 1
    return G if G > 1 and R * K >= OUTPUT_BLOCK else 1


ctypedef struct Spans:
    Py_ssize_t G         # rows a span
    Py_ssize_t R0        # rows in whole spans; rows R0 .. R go one at a time
    void* cols           # the coefficients repeated G times (four arrays of G * K), or NULL


cdef Spans make_spans(Py_ssize_t R, Py_ssize_t K, const void* cols,
                      const real* like) noexcept nogil:
    """The spans of an (R, K) output pass with cols' four coefficient arrays (K each):
    G = span_rows(R, K), or rows one at a time (G = 1, cols NULL) when that is 1 or
    there is no memory for the repeated coefficients.  The caller frees s.cols.  Not
    inlined: the output passes of small calls, which take no spans, were 0.1-0.3 us
    slower with it."""
    cdef Spans s
    cdef size_t ps = psize(like)
    cdef Py_ssize_t a, j
    s.G = span_rows(R, K)
    s.cols = malloc(4 * s.G * K * ps) if s.G > 1 else NULL
    if s.cols == NULL:
        s.G = 1
    else:
        for a in range(4):
            for j in range(s.G):
                memcpy(<char*>s.cols + (a * s.G + j) * K * ps,
                       <const char*>cols + a * K * ps, K * ps)
    s.R0 = R - R % s.G
    return s


cdef void normalize_rows(const real* x, real* y, Py_ssize_t R, Py_ssize_t K,
                         const void* cols, int act, bint stream, int nt) noexcept nogil:
    """cols holds hi, lo, scale, shift: four arrays of K.  Short rows go a span of G rows
    at a time (see span_rows): the loop over a row's few vectors, and its per-row
    work, cost channels-last float16 (32, 56, 56, 64) twice the time of the same
    bytes with channels first.  Each element gets the same coefficients either way:
    the same bits.  The rows left over after the whole spans are one more block."""
    stream = stream and may_stream(x)
    cdef Spans s = make_spans(R, K, cols, x)
    cdef Py_ssize_t n = s.R0 // s.G                     # spans (rows of G * K)
    cdef Py_ssize_t rb = output_block_rows(s.G * K)
    cdef Py_ssize_t nb = (n + rb - 1) // rb
    cdef Py_ssize_t b, off, r0, r1, rows, k
    cdef const void* c
    # one call of rows_affine in the loop: with a second one GCC stopped inlining the
    # row loop, which cost calls of a few rows 0.1-0.3 us
    for b in prange(nb + (s.R0 < R), num_threads=nt, schedule='static',
                    use_threads_if=nt > 1):
        if b < nb:
            off, r0, r1, rows, k = 0, b * rb, (b + 1) * rb if (b + 1) * rb < n else n, n, s.G * K
            c = s.cols if s.cols != NULL else cols
        else:
            off, r0, r1, rows, k = s.R0 * K, 0, R - s.R0, R - s.R0, K
            c = cols
        rows_affine(x + off, y + off, r0, r1, rows, k, c, act, stream)
    free(s.cols)


ctypedef struct Grad:
    # dx = (g * a - (x - hi) * bc) - cc in training; dx = g * a otherwise
    double hi
    double a
    double bc
    double cc


cdef inline void grad_rows(const real* g, const real* x, real* dx, Py_ssize_t r0,
                           Py_ssize_t r1, Py_ssize_t R, Py_ssize_t K, const void* cols,
                           bint training, bint stream) noexcept nogil:
    """dx over rows [r0, r1) of (R, K) matrices; cols holds hi, a, bc and cc (K each).
    Rows are prefetched as in rows_affine."""
    cdef Py_ssize_t r
    cdef Py_ssize_t pd = prefetch_rows(K, sizeof(real))
    cdef size_t pbytes = short_row_bytes(K, sizeof(real))
    stream = stream and may_stream(x)
    for r in range(r0, r1):
        if r + pd < R:
            cnorm_prefetch(g + (r + pd) * K, pbytes)
            cnorm_prefetch(x + (r + pd) * K, pbytes)
        cnorm_grad_cols(g + r * K, x + r * K, dx + r * K, K, cols, pat(cols, K, x),
                        pat(cols, 2 * K, x), pat(cols, 3 * K, x), training, stream)
    if stream:
        cnorm_stream_fence()




cdef void grad_rows_parallel(const real* g, const real* x, real* dx, Py_ssize_t R,
                             Py_ssize_t K, const void* cols, bint training, bint stream,
                             int nt) noexcept nogil:
    """dx of (R, K) matrices from per-column coefficients (see grad_rows), in blocks of
    about OUTPUT_BLOCK elements (see output_block_rows); short rows a span at a time,
    as in normalize_rows (the same bits)."""
    cdef Spans s = make_spans(R, K, cols, x)
    cdef Py_ssize_t n = s.R0 // s.G
    cdef Py_ssize_t rb = output_block_rows(s.G * K)
    cdef Py_ssize_t nb = (n + rb - 1) // rb
    cdef Py_ssize_t b, off, r0, r1, rows, k
    cdef const void* c
    for b in prange(nb + (s.R0 < R), num_threads=nt, schedule='static',
                    use_threads_if=nt > 1):
        if b < nb:
            off, r0, r1, rows, k = 0, b * rb, (b + 1) * rb if (b + 1) * rb < n else n, n, s.G * K
            c = s.cols if s.cols != NULL else cols
        else:
            off, r0, r1, rows, k = s.R0 * K, 0, R - s.R0, R - s.R0, K
            c = cols
        grad_rows(g + off, x + off, dx + off, r0, r1, rows, k, c, training, stream)
    free(s.cols)