# Row geometry: x viewed as a C-contiguous (R, H) matrix whose statistics are
# per row over its H values, with one parameter per position of a row: layer
# norm and RMS norm.  (This is the plane geometry of _planes.pxi with P = 1 and
# runs of one value; a parameter per position takes these loops of its own.)
#
# What tells them apart is a RowMap:
# * centred: the statistics are the mean and variance (False for RMS norm,
#   whose one statistic is the mean of squares, and whose mean is 0);
# * act: the activation applied in the output pass.
#
# A row's statistics come from the blocked helpers of _moments.pxd, and the
# row is normalised right after, while it is in cache.  Results do not depend
# on the thread count: rows are independent, and backward's parameter
# gradients go through per-block or per-row partials merged in a fixed order.

cdef enum:
    ADD_TILE = 256              # values of h a streamed fused add-norm keeps on the stack
    MAX_COLUMN_BLOCKS = 64      # at most this many row blocks of dweight/dbias partials
    ROWS_WORK = 65536           # elements per row block, at least
    DX_TILE = 256               # elements of a streamed backward row per prefetch request


def set_prefetch_bursts(bint on):
    """Turn the whole-row prefetch bursts of forward_row and prefetch_run on or off
    (cnorm_prefetch_bursts in _stream.h; cnorm._dispatch sets it by CPU)."""
    cnorm_set_prefetch_bursts(on)


ctypedef struct RowMap:
    bint centred                # subtract the mean (False: RMS norm)
    int act                     # Activation of the output pass


cdef inline bint streams_rows(Py_ssize_t H, bint stream, const real* like) noexcept nogil:
    """Whether rows of H elements get streaming stores: as the caller asks, except
    rows of at most PREFETCH_WRITE_MAX bytes, which never do.  `like` only selects
    the data type."""
    return stream and H * <Py_ssize_t>sizeof(real) > PREFETCH_WRITE_MAX


cdef inline double row_mean_square(const real* x, Py_ssize_t H) noexcept nogil:
    """mean(x**2) of a row, summed in float64 lanes in a fixed order."""
    cdef double q[LANES]
    cdef Py_ssize_t j
    for j in range(LANES):
        q[j] = 0.0
    cnorm_sumsq(x, H, q)
    return lanes_total(q) / H


cdef inline void row_affine(const real* x, real* y, Py_ssize_t n, double mean, double rstd,
                            const void* w, const void* b, int act,
                            bint stream) noexcept nogil:
    """y = act(((x - hi) - lo) * rstd [* w] [+ b]), with mean = hi + lo split in the
    arithmetic type; w and b may each be NULL.  With mean 0 (RMS norm) this is
    x * rstd [* w]."""
    cdef double hi = pround(mean, x)
    cdef double lo = pround(mean - hi, x)
    cnorm_ln_affine(x, y, n, hi, lo, rstd, w, b, act, stream and may_stream(x))


cdef inline void add_row_streamed(const real* x, const real* res, real* hout, real* y,
                                  Py_ssize_t H, const void* w, const void* b, void* mean_out,
                                  void* rstd_out, double eps, const real* ahead,
                                  RowMap m) noexcept nogil:
    """A fused add-norm row whose h and y are streamed (a call too large for the cache):
    h = x + res is built a tile at a time on the stack, summed there and streamed
    out, and the output pass rebuilds each tile from x and res (still in cache)
    instead of reading h back, so that no line of h is read before it is written.
    The tiles are whole steps of LANES values but the last, so the sums are those
    of row_moments (or row_mean_square) over h: the same bits.  H <= CHUNK."""
    cdef real tile[ADD_TILE]
    cdef double acc[LANES]
    cdef double sq[LANES]
    cdef double tacc[LANES]
    cdef double tsq[LANES]
    cdef Moments mo
    cdef double x0 = 0.0, q, mean, var, rstd, n = <double>H
    cdef Py_ssize_t t, L, j
    zero_lanes(acc, sq, tacc, tsq)
    t = 0
    while t < H:
        L = ADD_TILE if H - t > ADD_TILE else H - t
        cnorm_add(x + t, res + t, tile, L)
        if m.centred:
            if t == 0:
                x0 = ld(tile, 0)
            sum2_piece(tile, L, x0, acc, sq, tacc, tsq, 0)
        else:
            cnorm_sumsq(tile, L, sq)
        cnorm_copy(tile, hout + t, L, True)
        t += L
    if m.centred:
        fold_tails(acc, sq, tacc, tsq)
        mo = shifted_moments(x0, n, acc, sq, &q)
        if not one_pass_ok(mo.m2, q, x):
            for j in range(LANES):
                acc[j] = 0.0
            t = 0
            while t < H:
                L = ADD_TILE if H - t > ADD_TILE else H - t
                cnorm_add(x + t, res + t, tile, L)
                run_sqdev(acc, tile, L, mo.mean)
                t += L
            mo.m2 = lanes_total(acc)
        mean = mo.mean
        var = mo.m2 / n
    else:
        mean = 0.0
        var = lanes_total(sq) / H
    rstd = 1.0 / sqrt(var + eps)
    if mean_out != NULL:
        pset(mean_out, 0, mean, x)
    if rstd_out != NULL:
        pset(rstd_out, 0, rstd, x)
    t = 0
    while t < H:
        L = ADD_TILE if H - t > ADD_TILE else H - t
        if ahead != NULL:
            cnorm_prefetch(ahead + t, L * sizeof(real))
            cnorm_prefetch(res + (ahead - x) + t, L * sizeof(real))
        cnorm_add(x + t, res + t, tile, L)
        row_affine(tile, y + t, L, mean, rstd, pat(w, t, x), pat(b, t, x), m.act, True)
        t += L


cdef inline void forward_row(const real* x, real* y, Py_ssize_t H, const void* w,
                             const void* b, void* mean_out, void* rstd_out,
                             double eps, int method, bint stream,
                             const real* ahead, RowMap m, const real* res,
                             real* hout) noexcept nogil:
    """One row, with w and b its parameter set (or NULL); `ahead` (or NULL) is a later
    row to prefetch while this one is normalised, so that memory keeps streaming
    during the in-cache passes.

    Plain stores read each line of y first, so y is prefetched for writing: a
    row of up to PREFETCH_BYTES asks for its own lines before its statistics
    passes, which hide the wait (where cnorm_prefetch_bursts is set); one of up to
    PREFETCH_WRITE_MAX, too brief for that, asks for the lines of the row
    `ahead`.  Longer rows prefetch nothing: the hardware keeps up, and a burst
    for a whole long row stalls the loop.  On the Intel host of
    docs/performance.md the burst of a 1-4 KiB row's own lines stalled the loop
    too (without it, 0.77-0.98x the time), so cnorm._dispatch leaves it off
    there.

    With a residual `res` (fused add-norm), the row first becomes h = x + res,
    stored to hout, and h as stored is what is normalised (from cache)."""
    cdef Moments mo
    cdef double mean, var, rstd
    cdef Py_ssize_t t = 0, L
    cdef Py_ssize_t nbytes = H * <Py_ssize_t>sizeof(real)
    cdef bint short_row = nbytes <= PREFETCH_BYTES
    cdef Py_ssize_t ahead_off = ahead - x if ahead != NULL else 0
    # streamed fused add-norm (float32 and float64 stream; half outputs do not), unless h
    # overwrites x or the residual, which its output pass reads again
    if (res != NULL and stream and (real is float or real is double)
            and method != WELFORD and H <= CHUNK and hout != res and hout != x):
        add_row_streamed(x, res, hout, y, H, w, b, mean_out, rstd_out, eps, ahead, m)
        return
    if not stream and short_row and nbytes > PREFETCH_WRITE_MAX and cnorm_prefetch_bursts:
        cnorm_prefetch_write(y, nbytes)
    if res != NULL:
        if ahead != NULL and short_row:
            cnorm_prefetch(res + ahead_off, nbytes)
        cnorm_add(x, res, hout, H)
        x = hout
    if m.centred:
        mo = row_moments(x, H, method)
        mean = mo.mean
        var = mo.m2 / mo.n
    else:
        mean = 0.0
        var = row_mean_square(x, H)
    rstd = 1.0 / sqrt(var + eps)
    if mean_out != NULL:
        pset(mean_out, 0, mean, x)
    if rstd_out != NULL:
        pset(rstd_out, 0, rstd, x)
    if not stream:
        if ahead != NULL and short_row:
            cnorm_prefetch(ahead, nbytes)
            if nbytes <= PREFETCH_WRITE_MAX:
                cnorm_prefetch_write(y + ahead_off, nbytes)
        row_affine(x, y, H, mean, rstd, w, b, m.act, False)
        return
    # streaming: the row ahead is prefetched a tile at a time, spread over the
    # row; the caller fences once after its rows
    while t < H:
        L = STREAM_TILE if H - t > STREAM_TILE else H - t
        if ahead != NULL:
            cnorm_prefetch(ahead + t, L * sizeof(real))
        row_affine(x + t, y + t, L, mean, rstd, pat(w, t, x), pat(b, t, x), m.act, True)
        t += L


cdef void forward_rows(const real* x, real* y, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t R,
                       Py_ssize_t H, const void* w, const void* b, void* mean_out,
                       void* rstd_out, double eps, int method,
                       bint stream, RowMap m, const real* res, real* hout) noexcept nogil:
    """Rows [r0, r1) of R, each prefetching the row at least PREFETCH_BYTES ahead;
    when streaming, one fence after them (a fence per row is much slower).
    res and hout: the residual and where h = x + res goes (both NULL for none)."""
    cdef Py_ssize_t d = prefetch_rows(H, sizeof(real))
    cdef Py_ssize_t r
    cdef RowMap plain                       # layer norm's map, as constants: GCC specialises
    plain.centred = True                    # the inlined forward_row for it, which short
    plain.act = 0                           # rows feel
    if m.centred and m.act == 0 and res == NULL:
        for r in range(r0, r1):
            forward_row(x + r * H, y + r * H, H, w, b, <void*>pat(mean_out, r, x),
                        <void*>pat(rstd_out, r, x), eps, method, stream,
                        x + (r + d) * H if r + d < R else NULL, plain, NULL, NULL)
        if stream:
            cnorm_stream_fence()
        return
    for r in range(r0, r1):
        forward_row(x + r * H, y + r * H, H, w, b,
                    <void*>pat(mean_out, r, x), <void*>pat(rstd_out, r, x), eps, method, stream,
                    x + (r + d) * H if r + d < R else NULL, m,
                    res + r * H if res != NULL else NULL, hout + r * H if res != NULL else NULL)
    if stream:
        cnorm_stream_fence()


cdef void rows_forward(const real* x, real* y, Py_ssize_t R, Py_ssize_t H,
                       const void* w, const void* b, void* mean_out,
                       void* rstd_out, double eps, int method,
                       bint stream, RowMap m, int nt, const real* res,
                       real* hout) noexcept nogil:
    # one contiguous block of rows per thread, as a static schedule over rows gives
    cdef Py_ssize_t rb = (R + nt - 1) // nt
    cdef Py_ssize_t k
    stream = streams_rows(H, stream, x)
    if nt == 1:     # no parallel region at all: even an inactive one costs a microsecond
        forward_rows(x, y, 0, R, R, H, w, b, mean_out, rstd_out, eps, method, stream, m,
                     res, hout)
        return
    for k in prange(nt, num_threads=nt, schedule='static'):
        forward_rows(x, y, k * rb, (k + 1) * rb if (k + 1) * rb < R else R, R, H, w, b,
                     mean_out, rstd_out, eps, method, stream, m, res, hout)


# ---------------------------------------------------------------------------
# Backward.  With g = dy * w (w per value, by the RowMap) and, per row,
# xhat = (x - mean) * rstd (mean 0 when not centred):
#     dx = rstd * (g - [mean(g)] - xhat * mean(g * xhat))
# where the mean(g) term is there only when centred.  dweight = sum(dy * xhat)
# and dbias = sum(dy), per parameter, over the rows that use it.
# ---------------------------------------------------------------------------

cdef inline void backward_row(const real* g, const real* x, real* dx, Py_ssize_t H,
                              double mean, double rstd, const void* w, double* dw,
                              double* db, bint centred, bint stream) noexcept nogil:
    """dx of one row with a parameter per position, and its terms of dweight and
    dbias (w: the weight, or ones)."""
    cdef double sums[2]
    # As in forward_row, only a short row asks for dx's lines before its sums pass:
    # longer rows were slower with it (dx likely evicting g and x from L1).
    if not stream and H * <Py_ssize_t>sizeof(real) <= PREFETCH_WRITE_MAX:
        cnorm_prefetch_write(dx, H * sizeof(real))
    # every sum before any dx: dx may be the very buffer of g or x
    cnorm_row_grad_sums(g, x, w, H, mean, rstd, sums, dw, db)
    row_dx(g, x, dx, H, mean, rstd, sums, w, centred, stream, 0)


cdef inline void row_dx(const real* g, const real* x, real* dx, Py_ssize_t H, double mean,
                        double rstd, const double* sums, const void* w, bint centred,
                        bint stream, Py_ssize_t ahead) noexcept nogil:
    """dx = rstd * (g*w - sum_g / H - (x - mean) * rstd**2 * sum_gx / H) of one row,
    from its sums (sum_g, sum_gx).  ahead > 0: a tile at a time, each tile asking
    for the lines of g and x `ahead` elements on, so that the next rows keep
    arriving while this one is computed from cache (the same bits)."""
    cdef double hi = pround(mean, x)
    cdef double lo = pround(mean - hi, x)
    cdef double rb = rstd * rstd * rstd * sums[1] / H
    cdef double rc = rstd * sums[0] / H if centred else 0.0
    cdef Py_ssize_t t = 0, L
    if ahead == 0:
        cnorm_ln_dx(g, x, w, dx, H, hi, lo, rstd, rb, rc, stream and may_stream(x))
        return
    while t < H:
        L = DX_TILE if H - t > DX_TILE else H - t
        cnorm_prefetch(g + ahead + t, L * sizeof(real))
        cnorm_prefetch(x + ahead + t, L * sizeof(real))
        cnorm_ln_dx(g + t, x + t, pat(w, t, x), dx + t, L, hi, lo, rstd, rb, rc,
                    stream and may_stream(x))
        t += L


cdef inline void backward_row_pair(const real* g, const real* x, real* dx, Py_ssize_t H,
                                   double mean0, double rstd0, double mean1, double rstd1,
                                   const void* w, double* dw, double* db, bint centred,
                                   bint stream, Py_ssize_t ahead) noexcept nogil:
    """backward_row of two consecutive rows, bit for bit: both rows' sums in one pass
    (dw and db read and written once for the two), then each row's dx.  ahead: when
    streaming, how far on (in elements) the rows to prefetch meanwhile are, or 0."""
    cdef double s0[2]
    cdef double s1[2]
    if not stream and 2 * H * <Py_ssize_t>sizeof(real) <= PREFETCH_WRITE_MAX:
        cnorm_prefetch_write(dx, 2 * H * sizeof(real))
    cnorm_row_grad_sums2(g, x, g + H, x + H, w, H, mean0, rstd0, mean1, rstd1, s0, s1, dw, db)
    row_dx(g, x, dx, H, mean0, rstd0, s0, w, centred, stream, ahead)
    row_dx(g + H, x + H, dx + H, H, mean1, rstd1, s1, w, centred, stream, ahead)


cdef inline void backward_block(const real* g, const real* x, real* dx, Py_ssize_t R,
                                Py_ssize_t H, Py_ssize_t rb, Py_ssize_t k, const void* mean,
                                const void* rstd, const void* w, double* part,
                                bint stream, bint large) noexcept nogil:
    """Rows of block k; its dweight and dbias partials go to part[2k*H : (2k+2)*H].
    mean NULL: not centred.  large: the call is too large for the cache (stream is that
    and a row long enough to stream)."""
    cdef Py_ssize_t i, r
    cdef Py_ssize_t r1 = (k + 1) * rb if (k + 1) * rb < R else R
    cdef double* dw = part + 2 * k * H
    cdef double* db = part + (2 * k + 1) * H
    # A streamed pair's dx pass, from cache, asks for the rows at least PREFETCH_BYTES
    # on (an even number of rows), so that memory keeps streaming meanwhile: 0.70-0.86x
    # the time for (4096, 768) and (4096, 1024) float32.  Calls that fit in cache
    # were no faster with it.
    cdef Py_ssize_t ah = (prefetch_rows(H, sizeof(real)) + 1) // 2 * 2
    # Rows too short to stream prefetch ahead too when the call is that large: 0.72x the
    # time for (16384, 128) float32 on a Zen 3 host.  Calls that fit in cache were
    # slower with it (1.1-1.3x for (2048, 128), (8192, 64) float64, (64, 4096)).
    for i in range(2 * H):
        dw[i] = 0.0
    r = k * rb
    while r + 2 <= r1:
        backward_row_pair(g + r * H, x + r * H, dx + r * H, H, pget(mean, r, 0.0, x),
                          pget(rstd, r, 0.0, x), pget(mean, r + 1, 0.0, x),
                          pget(rstd, r + 1, 0.0, x), w, dw, db, mean != NULL, stream,
                          ah * H if large and r + 2 + ah <= R else 0)
        r += 2
    if r < r1:
        backward_row(g + r * H, x + r * H, dx + r * H, H, pget(mean, r, 0.0, x),
                     pget(rstd, r, 0.0, x), w, dw, db, mean != NULL, stream)
    if stream:
        cnorm_stream_fence()


cdef int rows_backward_positions(const real* g, const real* x, real* dx,
                                 Py_ssize_t R, Py_ssize_t H, const void* mean,
                                 const void* rstd, const void* w, void* dweight,
                                 void* dbias, bint stream, int nt) noexcept nogil:
    """Backward of rows with one parameter set of a parameter per position (Q = 1,
    run = 1: layer norm, RMS norm).  mean NULL: not centred."""
    # Row blocks: at least ROWS_WORK elements each, at most MAX_COLUMN_BLOCKS of them;
    # both bounds depend on the shape alone.
    cdef Py_ssize_t rb = (ROWS_WORK + H - 1) // H
    cdef Py_ssize_t nblk, k, i
    cdef double* part
    cdef void* ones = NULL
    cdef bint large = stream
    stream = streams_rows(H, stream, x)
    if rb * MAX_COLUMN_BLOCKS < R:
        rb = (R + MAX_COLUMN_BLOCKS - 1) // MAX_COLUMN_BLOCKS
    nblk = (R + rb - 1) // rb
    part = <double*>malloc((2 * nblk * H + 1) * sizeof(double))
    if part == NULL:
        return -1
    if w == NULL:   # no weight: the same loops, with ones
        ones = malloc(H * psize(x))
        if ones == NULL:
            free(part)
            return -1
        for i in range(H):
            pset(ones, i, 1.0, x)
        w = ones
    # One loop for every thread count: GCC compiled a separate serial loop (as
    # forward has) with an inlined backward_block far worse than the parallel one.
    for k in prange(nblk, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        backward_block(g, x, dx, R, H, rb, k, mean, rstd, w, part, stream, large)
    # The blocks' partials, merged in block order into block 0's: for each position the
    # sums of the loop over blocks for each position, in its order (block 0's partial
    # starts from +0.0 and is never -0.0, so 0.0 + it is itself), but with the positions
    # inside, which vectorises.  The other order cost 23 instructions a position: 6.7 of
    # the 7.3 us of a (1, 4096) call.
    for k in range(1, nblk):
        for i in range(H):
            part[i] += part[2 * k * H + i]
            part[H + i] += part[(2 * k + 1) * H + i]
    for i in range(H):
        pset(dweight, i, part[i], x)
    if dbias != NULL:
        for i in range(H):
            pset(dbias, i, part[H + i], x)
    free(part)
    free(ones)
    return 0
