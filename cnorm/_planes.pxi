# Plane geometry: x viewed C-contiguous as (P, Q, S).  Segment q is the P blocks
# of S contiguous values at x + p * Q * S + q * S, and the statistics are per
# segment.  Parameters go by runs: segment q uses parameter set q % Qp, of
# K = S / run parameters, and parameter k covers the k-th run of `run` values
# of each of its blocks.
#
#   batch norm, channels first   P = N   Q = C        S = M          Qp = C   run = M
#   group norm, channels first   P = 1   Q = N * G    S = C/G * HW   Qp = G   run = HW
#   instance norm, channels first P = 1  Q = N * C    S = HW         Qp = C   run = HW
#
# (Layer and RMS norm are the rows of _rows.pxi: P = 1 too, but a parameter per
# position; the column geometry of _columns.pxi serves the channels-last layouts.)
#
# With enough segments each thread takes whole ones and normalises a segment
# right after its statistics, while it is in cache (one trip to memory).  With
# few, the statistics of fixed CHUNK-sized pieces are computed in parallel and
# merged in order, then a parallel output pass follows.  Both give the same
# bits, and parameter gradients are summed over the segments in segment order,
# so results do not depend on the thread count.

ctypedef struct Planes:
    Py_ssize_t P                # blocks per segment
    Py_ssize_t Q                # segments
    Py_ssize_t S                # values per block
    Py_ssize_t Qp               # parameter sets, used by the segments in turn
    Py_ssize_t run              # values per parameter in a block


ctypedef struct StatsOut:
    # where a segment's statistics go, each NULL or an array indexed by segment
    void* mean
    void* rstd                  # 1 / sqrt(var + eps): batch norm's invstd
    void* var                   # biased variance
    void* rmean                 # running statistics, updated in place as
    void* rvar                  # (1 - momentum) * old + momentum * new (var unbiased)
    double momentum


cdef inline Planes planes(Py_ssize_t P, Py_ssize_t Q, Py_ssize_t S, Py_ssize_t Qp,
                          Py_ssize_t run) noexcept nogil:
    cdef Planes g
    g.P = P
    g.Q = Q
    g.S = S
    g.Qp = Qp
    g.run = run
    return g


cdef inline StatsOut stats_out(void* mean, void* rstd, void* var, void* rmean, void* rvar,
                               double momentum) noexcept nogil:
    cdef StatsOut o
    o.mean = mean
    o.rstd = rstd
    o.var = var
    o.rmean = rmean
    o.rvar = rvar
    o.momentum = momentum
    return o


# ---------------------------------------------------------------------------
# Finishing steps shared by every geometry's kernels
# ---------------------------------------------------------------------------

cdef inline void finish_many(const double* mean, double* m2, double* rstd, Py_ssize_t G,
                             double count, Py_ssize_t i0, double eps, StatsOut o,
                             const real* like) noexcept nogil:
    """Statistics i0 .. i0 + G - 1 from their means and M2 (count values each) into o:
    m2 becomes the biased variance, rstd gets 1 / sqrt(var + eps).  Each step is a loop
    of its own over the G statistics, which the compiler vectorizes (divisions and
    square roots are exact, so the bits are those of one at a time): a loop doing all
    the steps for one statistic at a time waited on its division and square root, about
    10 ns for each of batch norm's (256, 1024) channels."""
    cdef Py_ssize_t g
    cdef double keep = 1.0 - o.momentum
    cdef double unbias = count / (count - 1.0)
    for g in range(G):
        m2[g] = m2[g] / count
    for g in range(G):
        rstd[g] = 1.0 / sqrt(m2[g] + eps)
    if o.mean != NULL:
        for g in range(G):
            pset(o.mean, i0 + g, mean[g], like)
    if o.rstd != NULL:
        for g in range(G):
            pset(o.rstd, i0 + g, rstd[g], like)
    if o.var != NULL:
        for g in range(G):
            pset(o.var, i0 + g, m2[g], like)
    if o.rmean != NULL:
        for g in range(G):
            pset(o.rmean, i0 + g, keep * pget(o.rmean, i0 + g, 0.0, like) + o.momentum * mean[g],
                 like)
        for g in range(G):
            pset(o.rvar, i0 + g, keep * pget(o.rvar, i0 + g, 0.0, like)
                 + o.momentum * (m2[g] * unbias), like)


cdef inline double finish_stats(Moments mo, Py_ssize_t i, double eps, StatsOut o,
                                const real* like) noexcept nogil:
    """Statistics i from its moments into o (see finish_many); returns rstd."""
    cdef double var = mo.m2, rstd
    finish_many(&mo.mean, &var, &rstd, 1, mo.n, i, eps, o, like)
    return rstd


cdef inline Affine make_affine(double mean, double scale, double shift,
                               const real* like) noexcept nogil:
    """Split mean into hi + lo of the arithmetic type (lo == 0 for float64)."""
    cdef Affine p
    p.hi = pround(mean, like)
    p.lo = pround(mean - p.hi, like)
    p.scale = pround(scale, like)
    p.shift = pround(shift, like)
    return p


cdef inline Grad make_grad(double mean, double rstd, double w, double A, double B,
                           double count, bint training, const real* like) noexcept nogil:
    """dx's coefficients for the values of weight w in statistics (mean, rstd) over
    count values, with A = sum(dy * w) and B = sum(dy * w * (x - mean)) over them:
        dx = (dy * rstd * w - (x - mean) * rstd**3 * B / count) - rstd * A / count
    in training; dx = dy * rstd * w when the statistics are constants."""
    cdef Grad q
    q.hi = pround(mean, like)
    q.a = pround(rstd * w, like)
    q.bc = pround(rstd * rstd * rstd * B / count if training else 0.0, like)
    q.cc = pround(rstd * A / count if training else 0.0, like)
    return q


cdef inline bint whole_segments(Py_ssize_t Q, int nt) noexcept nogil:
    """Give each thread whole segments?  Yes unless that leaves threads idle."""
    return nt == 1 or Q >= 4 * nt or Q % nt == 0


cdef inline bint streams_planes(Planes g, bint stream, const real* like) noexcept nogil:
    """Whether the runs get streaming stores: as asked, but not runs that end a few
    values on from where the next starts a stride away (P > 1, runs shorter than
    STREAM_TILE), nor a segment of at most PREFETCH_WRITE_MAX bytes."""
    if g.P == 1:
        return stream and g.S * <Py_ssize_t>sizeof(real) > PREFETCH_WRITE_MAX
    return stream and g.run >= STREAM_TILE


cdef inline bint prefetches_next(Planes g, int arrays, const real* like) noexcept nogil:
    """Whether a thread's whole-segment loop asks for the next segment's blocks during
    an output pass: where the blocks are a stride apart and longer than PREFETCH_BYTES
    (so that the statistics pass does not prefetch them, and each block's first lines
    wait on memory), and the `arrays` arrays' blocks of a segment fit half the L2
    (this segment's and the next's then share it).  The callers count the inputs, and
    the output when it is stored plainly (it then takes L2 lines too).  Contiguous
    segments (P = 1) do not: the hardware streams them, and asking for them was
    slower."""
    cdef Py_ssize_t nbytes = g.S * <Py_ssize_t>sizeof(real)
    return (g.P > 1 and nbytes >= PREFETCH_BYTES
            and arrays * g.P * nbytes <= cnorm_next_segment_max())


cdef inline void prefetch_write_runs(real* y, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t S,
                                     size_t nbytes) noexcept nogil:
    """Prefetch, for writing, the first nbytes of blocks n1 - 1 down to max(n0, 0) of y
    (stride S); none when n1 <= 0.  The whole-segment loops write a segment's blocks
    a stride apart, and short blocks end before the hardware fetches their lines:
    without this, their stores wait on one cache miss after another."""
    cdef Py_ssize_t n
    if nbytes != 0:
        for n in range(n1 - 1, (n0 if n0 > 0 else 0) - 1, -1):
            cnorm_prefetch_write(y + n * S, nbytes)


# ---------------------------------------------------------------------------
# The output pass over runs with given coefficients (inference, and the
# few-segment forward)
# ---------------------------------------------------------------------------

cdef inline void affine_runs(const real* x, real* y, Py_ssize_t k0, Py_ssize_t k1,
                             Py_ssize_t period, Py_ssize_t run, const Affine* aff, int act,
                             bint stream) noexcept nogil:
    """Runs k0 .. k1 - 1 of run values, run k with aff[k % period], then one fence."""
    cdef Py_ssize_t k, c = k0 % period       # k % period, kept without a division a run
    for k in range(k0, k1):
        cnorm_affine(x + k * run, y + k * run, run, aff[c].hi, aff[c].lo, aff[c].scale,
                     aff[c].shift, act, stream)
        c = c + 1 if c + 1 < period else 0
    if stream:
        cnorm_stream_fence()


cdef void normalize_planar(const real* x, real* y, Py_ssize_t nrun, Py_ssize_t period,
                           Py_ssize_t run, const Affine* aff, int act, bint stream,
                           int nt) noexcept nogil:
    """y = act(((x - hi) - lo) * scale + shift) over nrun runs of run values, run k
    with aff[k % period]; each thread takes one share of the runs."""
    cdef Py_ssize_t t
    if nt == 1:
        affine_runs(x, y, 0, nrun, period, run, aff, act, stream)
        return
    for t in prange(nt, num_threads=nt, schedule='static'):
        affine_runs(x, y, share(nrun, t, nt), share(nrun, t + 1, nt), period, run, aff, act,
                    stream)


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

cdef inline Moments segment_moments(const real* x, Planes g, Py_ssize_t q,
                                    int method) noexcept nogil:
    """Segment q's statistics: CHUNK-sized pieces merged in order (row_moments gives
    those bits for one block, without the bookkeeping)."""
    if g.P == 1:
        return row_moments(x + q * g.S, g.S, method)
    return chunked_moments(x + q * g.S, g.S, g.Q * g.S, g.P * g.S, method)


cdef int chunk_parallel_moments(const real* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                                int method, int nt, Moments* out) noexcept nogil:
    """Per channel of (N, C, M): the CHUNK-sized pieces computed in parallel, then
    merged in order: chunked_moments' result, bit for bit, for channels too few to
    share out."""
    cdef Py_ssize_t S = C * M, count = N * M
    cdef Py_ssize_t nchunk = (count + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, k, i0
    cdef Moments* part = <Moments*>malloc((C * nchunk + 1) * sizeof(Moments))
    if part == NULL:
        return -1
    for k in prange(C * nchunk, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        c = k // nchunk
        i0 = (k - c * nchunk) * CHUNK
        part[k] = seq_moments(x + c * M, M, S, i0, i0 + CHUNK if i0 + CHUNK < count else count,
                              count, method)
    for c in range(C):
        out[c] = moments_zero()
        for k in range(nchunk):
            moments_merge(&out[c], part[c * nchunk + k])
    free(part)
    return 0


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

cdef inline void segment_forward(const real* x, real* y, Planes g, Py_ssize_t q,
                                 const void* w, const void* b, StatsOut o, double eps,
                                 int method, int act, bint stream,
                                 bint prefetch_next) noexcept nogil:
    """Segment q whole: its statistics, then its output while its blocks are in cache;
    the caller fences.  With prefetch_next, blocks of more than PREFETCH_BYTES (which
    the statistics pass does not prefetch) ask for segment q + 1's blocks, first to
    last, during the output pass, which otherwise leaves the memory idle."""
    cdef Py_ssize_t T = g.Q * g.S, K = g.S // g.run, k0 = (q % g.Qp) * (g.S // g.run)
    cdef Py_ssize_t base = q * g.S, n, k, off
    cdef Py_ssize_t pd = prefetch_rows(g.S, sizeof(real))
    cdef size_t ybytes = short_row_bytes(g.S, sizeof(real))
    cdef Moments mo
    cdef double rstd
    cdef Affine p
    if g.P == 1:    # one block: ask for its lines while the statistics passes run
        if not stream and ybytes > PREFETCH_WRITE_MAX:
            cnorm_prefetch_write(y + base, ybytes)
        ybytes = 0
    mo = segment_moments(x, g, q, method)
    rstd = finish_stats(mo, q, eps, o, x)
    p = make_affine(mo.mean, rstd * pget(w, k0, 1.0, x), pget(b, k0, 0.0, x), x)
    # backwards: the blocks read last by the statistics are the likeliest still in cache
    prefetch_write_runs(y + base, g.P - pd, g.P, T, ybytes)
    for n in range(g.P - 1, -1, -1):
        prefetch_write_runs(y + base, n - pd, n - pd + 1, T, ybytes)
        off = n * T + base
        if prefetch_next:
            cnorm_prefetch_l2(x + (g.P - 1 - n) * T + base + g.S, g.S * sizeof(real))
        if K == 1:
            cnorm_affine(x + off, y + off, g.S, p.hi, p.lo, p.scale, p.shift, act, stream)
        else:
            for k in range(K):
                cnorm_affine(x + off + k * g.run, y + off + k * g.run, g.run, p.hi, p.lo,
                             rstd * pget(w, k0 + k, 1.0, x), pget(b, k0 + k, 0.0, x), act,
                             stream)


cdef inline void segments_forward(const real* x, real* y, Planes g, Py_ssize_t q0,
                                  Py_ssize_t q1, const void* w, const void* b, StatsOut o,
                                  double eps, int method, int act,
                                  bint stream) noexcept nogil:
    cdef Py_ssize_t q
    cdef bint ahead = prefetches_next(g, 1 + (not stream), x)
    for q in range(q0, q1):
        segment_forward(x, y, g, q, w, b, o, eps, method, act, stream, ahead and q + 1 < q1)
    if stream:
        cnorm_stream_fence()


cdef int planes_forward(const real* x, real* y, Planes g, const void* w, const void* b,
                        StatsOut o, double eps, int method, int act, bint stream,
                        int nt) noexcept nogil:
    cdef Py_ssize_t K = g.S // g.run, q, k, k0, t
    cdef Moments* part
    cdef Affine* aff
    cdef double rstd
    stream = streams_planes(g, stream, x)
    if nt == 1:     # no parallel region at all: even an inactive one costs a microsecond
        segments_forward(x, y, g, 0, g.Q, w, b, o, eps, method, act, stream)
        return 0
    if whole_segments(g.Q, nt):
        for t in prange(nt, num_threads=nt, schedule='static'):
            segments_forward(x, y, g, share(g.Q, t, nt), share(g.Q, t + 1, nt), w, b, o, eps,
                             method, act, stream)
        return 0
    part = <Moments*>malloc(g.Q * sizeof(Moments) + g.Q * K * sizeof(Affine))
    if part == NULL or chunk_parallel_moments(x, g.P, g.Q, g.S, method, nt, part) != 0:
        free(part)
        return -1
    aff = <Affine*>(part + g.Q)
    for q in range(g.Q):
        rstd = finish_stats(part[q], q, eps, o, x)
        k0 = (q % g.Qp) * K
        for k in range(K):
            aff[q * K + k] = make_affine(part[q].mean, rstd * pget(w, k0 + k, 1.0, x),
                                         pget(b, k0 + k, 0.0, x), x)
    normalize_planar(x, y, g.P * g.Q * K, g.Q * K, g.run, aff, act, stream, nt)
    free(part)
    return 0


# ---------------------------------------------------------------------------
# Backward.  Per segment, with each run's sums sum(dy) and sum(dy * (x - mean))
# taken over its P blocks, A = sum(w_k * sum(dy)) and B = sum(w_k * sum(dy * (x -
# mean))) over the segment's K runs give dx's coefficients (make_grad).
# dweight and dbias of a parameter are summed over the segments that use it, in
# segment order.
# ---------------------------------------------------------------------------

cdef inline void run_sums(const real* g, const real* x, Planes gm, Py_ssize_t q, Py_ssize_t k,
                          double mean, double* sums) noexcept nogil:
    """sums[0:2] = sum(dy), sum(dy * (x - mean)) of run k of segment q, over its
    blocks: CHUNK-sized pieces in order."""
    cdef Py_ssize_t off = q * gm.S + k * gm.run
    sums[0] = 0.0
    sums[1] = 0.0
    chunked_dot(g + off, x + off, gm.run, gm.Q * gm.S, gm.P * gm.run, mean, &sums[0], &sums[1])


cdef inline void segment_backward(const real* g, const real* x, real* dx, Planes gm,
                                  Py_ssize_t q, const void* mean, const void* rstd,
                                  const void* w, double* sums, bint training,
                                  bint stream, bint prefetch_next) noexcept nogil:
    """Segment q whole: its run sums into sums[0:2K], then its dx while its blocks are
    in cache; the caller fences.  prefetch_next: as in segment_forward, for g and x."""
    cdef Py_ssize_t T = gm.Q * gm.S, K = gm.S // gm.run, k0 = (q % gm.Qp) * (gm.S // gm.run)
    cdef Py_ssize_t base = q * gm.S, n, k, off
    cdef Py_ssize_t pd = prefetch_rows(gm.S, sizeof(real))
    cdef size_t ybytes = short_row_bytes(gm.S, sizeof(real))
    cdef double mu = pget(mean, q, 0.0, x), r = pget(rstd, q, 0.0, x)
    cdef double A = 0.0, B = 0.0, wk, count = <double>(gm.P * gm.S)
    cdef Grad c
    if gm.P == 1:   # one block, contiguous with the next segment's: the hardware keeps up
        ybytes = 0
    # every sum before any dx: dx may be the very buffer of g or x
    for k in range(K):
        run_sums(g, x, gm, q, k, mu, sums + 2 * k)
        wk = pget(w, k0 + k, 1.0, x)
        A += wk * sums[2 * k]
        B += wk * sums[2 * k + 1]
    c = make_grad(mu, r, pget(w, k0, 1.0, x), A, B, count, training, x)
    prefetch_write_runs(dx + base, gm.P - pd, gm.P, T, ybytes)
    for n in range(gm.P - 1, -1, -1):    # backwards, as in segment_forward
        prefetch_write_runs(dx + base, n - pd, n - pd + 1, T, ybytes)
        off = n * T + base
        if prefetch_next:
            cnorm_prefetch_l2(g + (gm.P - 1 - n) * T + base + gm.S, gm.S * sizeof(real))
            cnorm_prefetch_l2(x + (gm.P - 1 - n) * T + base + gm.S, gm.S * sizeof(real))
        if K == 1:
            cnorm_grad(g + off, x + off, dx + off, gm.S, c.hi, c.a, c.bc, c.cc, training, stream)
        else:
            for k in range(K):
                cnorm_grad(g + off + k * gm.run, x + off + k * gm.run, dx + off + k * gm.run,
                           gm.run, c.hi, r * pget(w, k0 + k, 1.0, x), c.bc, c.cc, training,
                           stream)


cdef inline void segments_backward(const real* g, const real* x, real* dx, Planes gm,
                                   Py_ssize_t q0, Py_ssize_t q1, const void* mean,
                                   const void* rstd, const void* w, double* sums,
                                   bint training, bint stream) noexcept nogil:
    cdef Py_ssize_t q, K = gm.S // gm.run
    # with dx stored plainly, (32, 64, 56, 56) float32 on a 2 MiB L2 (2 x 400 KiB of
    # inputs, and dx) took 0.78x the time without the next segment's request (0.85x on
    # one thread)
    cdef bint ahead = prefetches_next(gm, 2 + (not stream), x)
    for q in range(q0, q1):
        segment_backward(g, x, dx, gm, q, mean, rstd, w, sums + 2 * K * q, training, stream,
                         ahead and q + 1 < q1)
    if stream:
        cnorm_stream_fence()


cdef void parameter_grads(Planes gm, const double* sums, const void* rstd, void* dweight,
                          void* dbias, const real* like) noexcept nogil:
    """dweight and dbias of each parameter: its runs' sums over the segments that use
    it, in segment order (sums: 2K per segment)."""
    cdef Py_ssize_t K = gm.S // gm.run, p, q, k
    cdef double sw, sb
    for p in range(gm.Qp * K):
        q = p // K
        k = p - q * K
        sw = sums[2 * (q * K + k) + 1] * pget(rstd, q, 0.0, like)
        sb = sums[2 * (q * K + k)]
        q += gm.Qp
        while q < gm.Q:
            sw += sums[2 * (q * K + k) + 1] * pget(rstd, q, 0.0, like)
            sb += sums[2 * (q * K + k)]
            q += gm.Qp
        pset(dweight, p, sw, like)
        pset(dbias, p, sb, like)


cdef int planes_backward(const real* g, const real* x, real* dx, Planes gm,
                         const void* mean, const void* rstd, const void* w, void* dweight,
                         void* dbias, bint training, bint stream, int nt) noexcept nogil:
    """dx, and dweight and dbias (Qp * K each).  Without training, the statistics are
    constants (batch norm in eval mode): dx = dy * rstd * w."""
    cdef Py_ssize_t K = gm.S // gm.run, L = gm.Q * K
    cdef Py_ssize_t nchunk = (gm.P * gm.run + CHUNK - 1) // CHUNK
    cdef Py_ssize_t q, k, j, i0, t, k0
    cdef double A, B, wk, mu, r
    cdef double* sums = <double*>malloc((2 * L + 1) * sizeof(double))
    cdef double* part
    cdef Grad* qs
    if sums == NULL:
        return -1
    stream = streams_planes(gm, stream, x)
    if nt == 1:     # no parallel region (see planes_forward)
        segments_backward(g, x, dx, gm, 0, gm.Q, mean, rstd, w, sums, training, stream)
    elif whole_segments(gm.Q, nt):
        for t in prange(nt, num_threads=nt, schedule='static'):
            segments_backward(g, x, dx, gm, share(gm.Q, t, nt), share(gm.Q, t + 1, nt), mean,
                              rstd, w, sums, training, stream)
    else:
        # few segments: each run's CHUNK-sized pieces in parallel, merged in order (the
        # pieces and order of chunked_dot), then dx over a share of the runs per thread
        part = <double*>malloc(2 * L * nchunk * sizeof(double) + L * sizeof(Grad))
        if part == NULL:
            free(sums)
            return -1
        qs = <Grad*>(part + 2 * L * nchunk)
        for j in prange(L * nchunk, num_threads=nt, schedule='static'):
            k = j // nchunk                 # the run: segment q = k // K, its run k % K
            q = k // K
            i0 = (j - k * nchunk) * CHUNK
            part[2 * j] = 0.0
            part[2 * j + 1] = 0.0
            seq_dot(g + q * gm.S + (k - q * K) * gm.run, x + q * gm.S + (k - q * K) * gm.run,
                    gm.run, gm.Q * gm.S, i0,
                    i0 + CHUNK if i0 + CHUNK < gm.P * gm.run else gm.P * gm.run, gm.P * gm.run,
                    pget(mean, q, 0.0, x), &part[2 * j], &part[2 * j + 1])
        for q in range(gm.Q):
            A = 0.0
            B = 0.0
            mu = pget(mean, q, 0.0, x)
            r = pget(rstd, q, 0.0, x)
            k0 = (q % gm.Qp) * K
            for k in range(K):
                sums[2 * (q * K + k)] = 0.0
                sums[2 * (q * K + k) + 1] = 0.0
                for j in range((q * K + k) * nchunk, (q * K + k + 1) * nchunk):
                    sums[2 * (q * K + k)] += part[2 * j]
                    sums[2 * (q * K + k) + 1] += part[2 * j + 1]
                wk = pget(w, k0 + k, 1.0, x)
                A += wk * sums[2 * (q * K + k)]
                B += wk * sums[2 * (q * K + k) + 1]
            for k in range(K):
                qs[q * K + k] = make_grad(mu, r, pget(w, k0 + k, 1.0, x), A, B,
                                          <double>(gm.P * gm.S), training, x)
        for t in prange(nt, num_threads=nt, schedule='static'):   # a share of the runs each
            k = share(gm.P * L, t, nt) % L
            for j in range(share(gm.P * L, t, nt), share(gm.P * L, t + 1, nt)):
                cnorm_grad(g + j * gm.run, x + j * gm.run, dx + j * gm.run, gm.run, qs[k].hi,
                           qs[k].a, qs[k].bc, qs[k].cc, training, stream)
                k = k + 1 if k + 1 < L else 0
            if stream:
                cnorm_stream_fence()
        free(part)
    parameter_grads(gm, sums, rstd, dweight, dbias, x)
    free(sums)
    return 0
