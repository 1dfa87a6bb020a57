# Reduction and output helpers shared by every cnorm kernel.
#
# All of them are `inline noexcept nogil` and written once over the fused type
# `real` (the storage types of _dtypes.h); statistics are carried out in
# float64.
#
# Determinism: every reduction is split into blocks whose boundaries depend
# only on the array's shape (CHUNK elements of a channel or row, ROW_GROUP
# elements of a row-major matrix).  Inside a block the order of operations is
# fixed by the code (LANES independent accumulators, then a fixed tree), and
# blocks are merged in index order.  Which thread computes a block never
# changes a bit of the result.

from libc.math cimport sqrt

cdef extern from "_stream.h":
    void cnorm_stream_fence() noexcept nogil
    void cnorm_prefetch(const void* p, size_t n) noexcept nogil
    void cnorm_prefetch_write(void* p, size_t n) noexcept nogil
    void cnorm_prefetch_l2(const void* p, size_t n) noexcept nogil
    long cnorm_next_segment_max() noexcept nogil
    int cnorm_prefetch_bursts
    void cnorm_set_prefetch_bursts(int on) noexcept nogil

cdef extern from "_dtypes.h":
    ctypedef struct cnorm_f16:
        unsigned short bits
    ctypedef struct cnorm_bf16:
        unsigned short bits
    double CNORM_LD1_f16(const cnorm_f16* p) noexcept nogil
    double CNORM_LD1_bf16(const cnorm_bf16* p) noexcept nogil


# The storage types of x, y, dy and dx.  Parameters (weight, bias, running
# statistics), returned statistics and coefficient scratch are of the
# arithmetic type instead: float64 for float64 data, float32 for the rest.
# They travel as void pointers, read and written with pget, pset and pat
# below, whose `like` argument (a data pointer) selects the type.
ctypedef fused real:
    float
    double
    cnorm_f16
    cnorm_bf16


# The C loops, one declaration for every storage type: _dtypes.h's
# CNORM_BY_TYPE picks the variant by the type of the first data pointer, and
# C converts the double scalars and void pointers to the variant's parameter
# type (float32 for all but float64 data).
cdef extern from "_elementwise.h":
    # h = x + r, in the arithmetic type, rounded once to the storage type
    void cnorm_add(const void* x, const void* r, void* h, Py_ssize_t n) noexcept nogil
    # y = x, streamed or not
    void cnorm_copy(const void* x, void* y, Py_ssize_t n, int stream) noexcept nogil
    # y = act(((x - hi) - lo) * s + b)
    void cnorm_affine(const void* x, void* y, Py_ssize_t n, double hi, double lo, double s,
                      double b, int act, int stream) noexcept nogil
    # the same with per-element hi, lo, s and b
    void cnorm_affine_cols(const void* x, void* y, Py_ssize_t n, const void* hi, const void* lo,
                           const void* s, const void* b, int act, int stream) noexcept nogil
    # dx = (g * a - (x - hi) * bc) - cc, or g * a when not training
    void cnorm_grad(const void* g, const void* x, void* dx, Py_ssize_t n, double hi, double a,
                    double bc, double cc, int training, int stream) noexcept nogil
    void cnorm_grad_cols(const void* g, const void* x, void* dx, Py_ssize_t n, const void* hi,
                         const void* a, const void* bc, const void* cc, int training,
                         int stream) noexcept nogil
    # y = act(((x - hi) - lo) * r [* w] [+ b]), w and b per element or NULL
    void cnorm_ln_affine(const void* x, void* y, Py_ssize_t n, double hi, double lo, double r,
                         const void* w, const void* b, int act, int stream) noexcept nogil
    # dx = ((g * w) * ra - ((x - hi) - lo) * rb) - rc
    void cnorm_ln_dx(const void* g, const void* x, const void* w, void* dx, Py_ssize_t n,
                     double hi, double lo, double ra, double rb, double rc,
                     int stream) noexcept nogil

cdef extern from "_lanes.h":
    # Welford over whole steps of LANES values, one lane per position; returns the count
    double cnorm_welford(const void* x, Py_ssize_t n, double k, double* mu,
                         double* m2) noexcept nogil
    # a += g and c += g * (x - m), lane-wise
    # (ahead: 0, or elements to the same positions of a later run, prefetched as it goes)
    void cnorm_dot2(const void* g, const void* x, Py_ssize_t n, double m, double* a,
                    double* c, Py_ssize_t ahead) noexcept nogil
    # a += x - s and q += (x - s)**2, lane-wise
    void cnorm_sum2(const void* x, Py_ssize_t n, double s, double* a, double* q,
                    Py_ssize_t ahead) noexcept nogil
    # q += x**2, lane-wise
    void cnorm_sumsq(const void* x, Py_ssize_t n, double* q) noexcept nogil
    # one row of column sums: s[c] += x[c] - f[c], q[c] += (x[c] - f[c])**2
    void cnorm_col_sum2(const void* x, const double* f, double* s, double* q,
                        Py_ssize_t n) noexcept nogil
    # the same for four rows x, x + ld, x + 2 ld, x + 3 ld, in a fixed tree
    void cnorm_col_sum2_x4(const void* x, Py_ssize_t ld, const double* f, double* s, double* q,
                           Py_ssize_t n) noexcept nogil
    # Welford's column update by four rows in turn; r[j] = 1 / (count after row j)
    void cnorm_col_welford_x4(const void* x, Py_ssize_t ld, const double* r, double* mu,
                              double* m2, Py_ssize_t n) noexcept nogil
    # a[c] += g and b[c] += g * (x - mu[c]) over four rows, in a fixed tree
    void cnorm_col_dot2_x4(const void* g, const void* x, Py_ssize_t ld, const double* mu,
                           double* a, double* b, Py_ssize_t n) noexcept nogil
    # one pass over a layer-norm row: sums[0] = sum(g*w), sums[1] = sum(g*w*(x - m)),
    # dw += g*(x - m)*r, db += g
    void cnorm_row_grad_sums(const void* g, const void* x, const void* w, Py_ssize_t n,
                             double m, double r, double* sums, double* dw,
                             double* db) noexcept nogil
    # two rows in one pass, bit for bit two calls of cnorm_row_grad_sums
    void cnorm_row_grad_sums2(const void* g, const void* x, const void* g1, const void* x1,
                              const void* w, Py_ssize_t n, double m, double r, double m1,
                              double r1, double* sums, double* sums1, double* dw,
                              double* db) noexcept nogil


# ---------------------------------------------------------------------------
# Loads of data, and parameters of the arithmetic type
# ---------------------------------------------------------------------------

cdef inline double ld(const real* p, Py_ssize_t i) noexcept nogil:
    """p[i] as a double."""
    if real is cnorm_f16:
        return CNORM_LD1_f16(p + i)
    elif real is cnorm_bf16:
        return CNORM_LD1_bf16(p + i)
    else:
        return p[i]


cdef inline double pround(double v, const real* like) noexcept nogil:
    """v rounded to the arithmetic type of data like `like`."""
    if real is double:
        return v
    else:
        return <float>v


cdef inline size_t psize(const real* like) noexcept nogil:
    """The size of the arithmetic type."""
    return sizeof(double) if real is double else sizeof(float)


cdef inline const void* pat(const void* p, Py_ssize_t k, const real* like) noexcept nogil:
    """&p[k] of a parameter array, or NULL for NULL."""
    if p == NULL:
        return NULL
    if real is double:
        return <const double*>p + k
    else:
        return <const float*>p + k


cdef inline double pget(const void* p, Py_ssize_t k, double missing, const real* like) noexcept nogil:
    """p[k] of a parameter array, or `missing` when p is NULL."""
    if p == NULL:
        return missing
    if real is double:
        return (<const double*>p)[k]
    else:
        return (<const float*>p)[k]


cdef inline void pset(void* p, Py_ssize_t k, double v, const real* like) noexcept nogil:
    """p[k] = v, rounded to the arithmetic type."""
    if real is double:
        (<double*>p)[k] = v
    else:
        (<float*>p)[k] = <float>v


cdef enum:
    STREAM_TILE = 1024   # separate runs shorter than this are stored plainly, not streamed
                         # (streaming short runs, a fence each, is slower); also the
                         # elements per work item of row-major BN's output passes,
                         # and the tile of a streamed layer-norm row's prefetching
    LANES = 16           # independent float64 accumulators of the lane loops: four AVX2
                         # vectors (hard-wired in _lanes.h's Welford and dot2 too)
    CHUNK = 4096         # elements of one channel or row per statistics block
    ROW_GROUP = 65536    # elements of a row-major matrix per parallel work item
    SUM2_COND_F32 = 10000   # largest q / M2 for which a one-pass M2 is kept, float32
    SUM2_COND_F64 = 64      # and float64 data (see one_pass_ok)
    PREFETCH_BYTES = 4096   # software prefetch distance of the row-by-row loops, at least
                            # (layer-norm forward and batch norm's column statistics
                            # stall on loads without it)
    RUN_HEAD_BYTES = 2048   # of the next long run, prefetched as a run starts
    AHEAD_MIN = 512         # shortest and longest runs whose successors the lane
    AHEAD_MAX = 32768       # loops prefetch step by step (see seq_ahead)
    PREFETCH_WRITE_MAX = 1024   # rows up to this many bytes prefetch y a row ahead
                                # (see _rows.pxi's forward_row) and are never streamed

cdef inline Py_ssize_t prefetch_rows(Py_ssize_t row_elems, Py_ssize_t itemsize) noexcept nogil:
    """How many rows of row_elems items ahead to prefetch: PREFETCH_BYTES or a bit more."""
    return (PREFETCH_BYTES // itemsize + row_elems - 1) // row_elems


cdef inline size_t short_row_bytes(Py_ssize_t row_elems, Py_ssize_t itemsize) noexcept nogil:
    """Bytes of each row to prefetch ahead: all of a row shorter than PREFETCH_BYTES,
    none of a longer one (the hardware prefetcher keeps up within long rows)."""
    cdef Py_ssize_t n = row_elems * itemsize
    return n if n < PREFETCH_BYTES else 0


cdef enum Method:
    TWO_PASS = 0
    WELFORD = 1


cdef enum Activation:     # the epilogue of an output pass (CNORM_ACT_* in _elementwise.h)
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_SILU = 2


# ---------------------------------------------------------------------------
# (count, mean, M2) partial statistics and Chan's merge
# ---------------------------------------------------------------------------

ctypedef struct Moments:
    double n
    double mean
    double m2


cdef inline Moments moments_zero() noexcept nogil:
    cdef Moments m
    m.n = 0.0
    m.mean = 0.0
    m.m2 = 0.0
    return m


cdef inline void moments_merge(Moments* a, Moments b) noexcept nogil:
    """a <- a (+) b, Chan, Golub and LeVeque's pairwise update."""
    cdef double n, d
    if b.n == 0.0:
        return
    if a.n == 0.0:
        a[0] = b
        return
    n = a.n + b.n
    d = b.mean - a.mean
    a.mean = a.mean + d * (b.n / n)
    a.m2 = a.m2 + b.m2 + d * d * (a.n * (b.n / n))
    a.n = n


cdef inline void moments_push(Moments* a, double v) noexcept nogil:
    """Welford's single-value update."""
    cdef double d = v - a.mean
    a.n = a.n + 1.0
    a.mean = a.mean + d / a.n
    a.m2 = a.m2 + d * (v - a.mean)


cdef inline void merge_columns(double* mean, double* m2, double n,
                               const double* bmean, const double* bm2, double bn,
                               Py_ssize_t ncols) noexcept nogil:
    """Chan merge of column statistics that share their counts n and bn."""
    cdef Py_ssize_t c
    cdef double d, t = n + bn
    cdef double fb = bn / t
    cdef double fab = n * fb
    if bn == 0.0:
        return
    for c in range(ncols):
        d = bmean[c] - mean[c]
        mean[c] = mean[c] + d * fb
        m2[c] = m2[c] + bm2[c] + d * d * fab


# ---------------------------------------------------------------------------
# LANES-wide accumulation over one contiguous run of elements
# ---------------------------------------------------------------------------

cdef inline double lanes_total(const double* a) noexcept nogil:
    """Sum of LANES accumulators in a fixed tree."""
    return ((((a[0] + a[8]) + (a[1] + a[9])) + ((a[2] + a[10]) + (a[3] + a[11])))
            + (((a[4] + a[12]) + (a[5] + a[13])) + ((a[6] + a[14]) + (a[7] + a[15]))))


cdef inline void run_sqdev(double* acc, const real* x, Py_ssize_t n, double m) noexcept nogil:
    """acc += (x - m)**2 over a run: lane j takes elements j, j + LANES, ... of the
    whole steps, then the tail goes to lanes 0, 1, ...  The lanes carry over
    from run to run, so a segmented sequence is summed as one."""
    cdef double a[LANES]
    cdef double d
    cdef Py_ssize_t i, j, step, nb = n - n % LANES
    for j in range(LANES):
        a[j] = acc[j]
    for step in range(nb // LANES):
        i = step * LANES
        for j in range(LANES):
            d = ld(x, i + j) - m
            a[j] += d * d
    for i in range(nb, n):
        d = ld(x, i) - m
        a[i - nb] += d * d
    for j in range(LANES):
        acc[j] = a[j]


ctypedef struct WelfordLanes:
    double k                 # values seen by every lane
    double mean[LANES]
    double m2[LANES]
    Moments tail             # values that did not fill a whole step


cdef inline void welford_init(WelfordLanes* w) noexcept nogil:
    cdef Py_ssize_t j
    w.k = 0.0
    for j in range(LANES):
        w.mean[j] = 0.0
        w.m2[j] = 0.0
    w.tail = moments_zero()


cdef inline void run_welford(WelfordLanes* w, const real* x, Py_ssize_t n) noexcept nogil:
    """Vectorised Welford: every lane has the same count, so one division per step
    (see _lanes.h); the values after the last whole step go to w.tail."""
    cdef Py_ssize_t i, nb = n - n % LANES
    w.k = cnorm_welford(x, nb, w.k, w.mean, w.m2)
    for i in range(nb, n):
        moments_push(&w.tail, ld(x, i))


cdef inline Moments welford_finish(const WelfordLanes* w) noexcept nogil:
    cdef Moments m = moments_zero()
    cdef Moments lane
    cdef Py_ssize_t j
    lane.n = w.k
    for j in range(LANES):
        lane.mean = w.mean[j]
        lane.m2 = w.m2[j]
        moments_merge(&m, lane)
    moments_merge(&m, w.tail)
    return m


cdef inline Moments shifted_moments(double x0, double n, const double* acc, const double* sq,
                                    double* q) noexcept nogil:
    """(count, mean, M2) of n values from the lanes of their sums of x - x0 (acc) and of
    (x - x0)**2 (sq); q receives the latter's total, for one_pass_ok."""
    cdef Moments out
    cdef double s = lanes_total(acc)
    q[0] = lanes_total(sq)
    out.n = n
    out.mean = x0 + s / n
    out.m2 = q[0] - s * (s / n)
    return out


cdef inline bint one_pass_ok(double m2, double q, const real* like) noexcept nogil:
    """Whether M2 = q - s**2 / n, from sums s and q of x - x0 over a block with x0
    one of its values, may stand in for a second pass over x - mean.

    q = M2 + n * (mean - x0)**2 <= (n + 1) * M2, since x0 is one of the values:
    centring on x0 bounds the cancellation in M2 by the block's length.  The
    rounding error of M2 is below ~1e-13 * q (float64 sums of at most CHUNK
    values, in LANES lanes), so q <= cond * M2 keeps M2 within ~1e-13 * cond
    relative: below 1e-9 for float32 data, where no finite block fails the
    check, and below 1e-11 for float64.  A block that fails it (x0 far out in
    float64 data, or NaN or inf, where the comparison is false) takes the
    second pass.  `like` only selects the data type.
    """
    if real is double:
        return m2 * SUM2_COND_F64 >= q
    else:
        return m2 * SUM2_COND_F32 >= q


# ---------------------------------------------------------------------------
# Segmented sequences: a channel of an (N, C, M) array is N runs of M
# contiguous elements, `stride` apart; a layer-norm row is one run.  Element i
# of the sequence is base[(i // M) * stride + i % M].
# ---------------------------------------------------------------------------

cdef inline Py_ssize_t seq_run(Py_ssize_t i, Py_ssize_t stop, Py_ssize_t M, Py_ssize_t stride,
                               Py_ssize_t* offset) noexcept nogil:
    """Offset and length of the contiguous run holding element i, cut at stop."""
    cdef Py_ssize_t n = i // M
    cdef Py_ssize_t m = i - n * M
    offset[0] = n * stride + m
    return M - m if M - m < stop - i else stop - i


cdef inline void prefetch_run(const real* base, Py_ssize_t i, Py_ssize_t limit, Py_ssize_t M,
                              Py_ssize_t stride, bint stepped) noexcept nogil:
    """For runs shorter than PREFETCH_BYTES, prefetch the run at least PREFETCH_BYTES
    ahead of the one holding element i, if it starts before element limit.  Each
    run ends the hardware prefetcher's stream, and the next starts a stride away;
    longer runs give it time to catch up, and prefetching them whole at once was
    slower: as such a run starts, only the first RUN_HEAD_BYTES of the next one are
    asked for.  The statistics and sums loops also prefetch runs of AHEAD_MIN to
    AHEAD_MAX bytes step by step as they go (seq_ahead; `stepped`); Welford's loop
    does not.  Where both ask for a run, the whole-run request is left out unless
    cnorm_prefetch_bursts is set: on the Intel host its burst stalled the loop
    (batch-norm training and backward (8, 256, 28, 28) 0.87-0.90x the time without it,
    (32, 128, 28, 28) 0.83-0.84x), while the Zen measurements behind these rules had both."""
    cdef Py_ssize_t n
    cdef size_t nbytes = short_row_bytes(M, sizeof(real))
    if stepped and nbytes >= AHEAD_MIN and not cnorm_prefetch_bursts:
        return
    if nbytes != 0:
        n = i // M + prefetch_rows(M, sizeof(real))
        if n * M < limit:
            cnorm_prefetch(base + n * stride, nbytes)
    elif i % M == 0:
        n = i // M + 1
        if n * M < limit:
            cnorm_prefetch(base + n * stride, RUN_HEAD_BYTES)


cdef inline Py_ssize_t seq_ahead(Py_ssize_t i, Py_ssize_t limit, Py_ssize_t M, Py_ssize_t stride,
                                 Py_ssize_t itemsize) noexcept nogil:
    """The lane loops' `ahead` for the piece of a run at element i: d strides, so that
    they prefetch the same positions of the run d on as they go, or 0 where that run
    does not start before element limit.  d is 1 for runs of PREFETCH_BYTES up to
    AHEAD_MAX bytes, and for shorter runs the prefetch_rows distance (at least
    PREFETCH_BYTES ahead) down to AHEAD_MIN bytes.  Longer runs give the hardware
    prefetcher time, and runs of a few lines (7x7 planes) gained nothing: both get 0.
    Each run ends the hardware prefetcher's stream, and a short run ends before the
    prefetcher has caught up with the next one.  On Zen 5 this halved the time of
    batch-norm backward's sums pass over the 12.5 KB planes of (32, 64, 56, 56), which
    asking for the next run's head as a run starts had not helped, and took 12-20% off
    the backward of (32, 128, 28, 28) and (128, 256, 14, 14), whose shorter runs
    prefetch_run also asks for whole as they start (without that, 7x7 planes were 1.7x
    as slow)."""
    cdef Py_ssize_t nbytes = M * itemsize
    cdef Py_ssize_t d = 1
    if nbytes < PREFETCH_BYTES:
        d = prefetch_rows(M, itemsize)
    if nbytes < AHEAD_MIN or nbytes > AHEAD_MAX or (i // M + d) * M >= limit:
        return 0
    return d * stride


cdef inline void sum2_piece(const real* x, Py_ssize_t L, double x0, double* acc, double* sq,
                            double* tacc, double* tsq, Py_ssize_t ahead) noexcept nogil:
    """acc, sq += the lanes of x - x0 and its squares over a piece's whole steps of
    LANES values (cnorm_sum2), and tacc, tsq (lanes 0, 1, ...) over its last L % LANES
    values.  The tail lanes are kept apart and added to the others once, at the end
    (fold_tails), so that the vector lanes pass from one piece's call to the next
    whole: with a scalar update of a lane in between, the next call's vector load
    waits for it, and a 7x7 plane's 49 values cost twice those of 48."""
    cdef Py_ssize_t nb = L - L % LANES, t
    cdef double d
    cnorm_sum2(x, nb, x0, acc, sq, ahead)
    for t in range(nb, L):
        d = ld(x, t) - x0
        tacc[t - nb] += d
        tsq[t - nb] += d * d


cdef inline void dot2_piece(const real* g, const real* x, Py_ssize_t L, double m, double* a,
                            double* b, double* ta, double* tb, Py_ssize_t ahead) noexcept nogil:
    """sum2_piece's split for cnorm_dot2: a += g and b += g * (x - m)."""
    cdef Py_ssize_t nb = L - L % LANES, t
    cnorm_dot2(g, x, nb, m, a, b, ahead)
    for t in range(nb, L):
        ta[t - nb] += ld(g, t)
        tb[t - nb] += ld(g, t) * (ld(x, t) - m)


cdef inline void zero_lanes(double* a, double* b, double* ta, double* tb) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(LANES):
        a[j] = 0.0
        b[j] = 0.0
        ta[j] = 0.0
        tb[j] = 0.0


cdef inline void fold_tails(double* a, double* b, const double* ta,
                            const double* tb) noexcept nogil:
    """The tail lanes into the others, lane by lane (see sum2_piece)."""
    cdef Py_ssize_t j
    for j in range(LANES):
        a[j] += ta[j]
        b[j] += tb[j]


cdef inline Moments seq_moments(const real* base, Py_ssize_t M, Py_ssize_t stride,
                                Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t limit,
                                int method) noexcept nogil:
    """(count, mean, M2) of elements [i0, i1) of a segmented sequence of limit elements."""
    cdef Moments out
    cdef double acc[LANES]
    cdef double sq[LANES]
    cdef double tacc[LANES]
    cdef double tsq[LANES]
    cdef double x0, q
    cdef WelfordLanes w
    cdef Py_ssize_t i, j, off, L
    if method == WELFORD:
        welford_init(&w)
        i = i0
        while i < i1:
            L = seq_run(i, i1, M, stride, &off)
            prefetch_run(base, i, limit, M, stride, False)
            run_welford(&w, base + off, L)
            i += L
        return welford_finish(&w)
    # Sum x - x0 and its squares, with x0 the first value: a constant block then
    # has exactly mean x0 and M2 0, and data far from zero loses nothing to its
    # offset.  The second pass, over (x - mean)**2, runs only where one_pass_ok
    # says the first pass's M2 is not accurate enough.
    seq_run(i0, i1, M, stride, &off)
    x0 = ld(base, off)
    zero_lanes(acc, sq, tacc, tsq)
    i = i0
    while i < i1:
        L = seq_run(i, i1, M, stride, &off)
        prefetch_run(base, i, limit, M, stride, True)
        sum2_piece(base + off, L, x0, acc, sq, tacc, tsq,
                   seq_ahead(i, limit, M, stride, sizeof(real)))
        i += L
    fold_tails(acc, sq, tacc, tsq)
    out = shifted_moments(x0, <double>(i1 - i0), acc, sq, &q)
    if one_pass_ok(out.m2, q, base):
        return out
    for j in range(LANES):
        acc[j] = 0.0
    i = i0
    while i < i1:
        L = seq_run(i, i1, M, stride, &off)
        run_sqdev(acc, base + off, L, out.mean)
        i += L
    out.m2 = lanes_total(acc)
    return out


cdef inline void seq_dot(const real* g, const real* x, Py_ssize_t M, Py_ssize_t stride,
                         Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t limit, double m,
                         double* sum_g, double* sum_gx) noexcept nogil:
    """sum_g += sum(g), sum_gx += sum(g * (x - m)) over elements [i0, i1) of limit."""
    cdef double a[LANES]
    cdef double b[LANES]
    cdef double ta[LANES]
    cdef double tb[LANES]
    cdef Py_ssize_t i, off, L
    zero_lanes(a, b, ta, tb)
    i = i0
    while i < i1:
        L = seq_run(i, i1, M, stride, &off)
        prefetch_run(g, i, limit, M, stride, True)
        prefetch_run(x, i, limit, M, stride, True)
        dot2_piece(g + off, x + off, L, m, a, b, ta, tb,
                   seq_ahead(i, limit, M, stride, sizeof(real)))
        i += L
    fold_tails(a, b, ta, tb)
    sum_g[0] += lanes_total(a)
    sum_gx[0] += lanes_total(b)


cdef inline Moments chunked_moments(const real* base, Py_ssize_t M, Py_ssize_t stride,
                                    Py_ssize_t count, int method) noexcept nogil:
    """Statistics of a whole sequence: CHUNK-sized pieces merged in order.

    The same pieces, merged in the same order, as a caller that computes the
    pieces in parallel with seq_moments and merges them afterwards.
    """
    cdef Moments mo = moments_zero()
    cdef Py_ssize_t i = 0
    while i < count:
        moments_merge(&mo, seq_moments(base, M, stride, i, i + CHUNK if i + CHUNK < count else count,
                                         count, method))
        i += CHUNK
    return mo


cdef inline Moments row_moments(const real* x, Py_ssize_t n, int method) noexcept nogil:
    """chunked_moments of one contiguous run (a row), bit for bit: for a row of at
    most CHUNK values, seq_moments' arithmetic on its one run, without the
    segmented-sequence bookkeeping (its integer divisions and prefetches cost a
    row of layer norm (768 values) about a fifth of its time; the row kernels
    prefetch rows themselves)."""
    cdef Moments out
    cdef double acc[LANES]
    cdef double sq[LANES]
    cdef double tacc[LANES]
    cdef double tsq[LANES]
    cdef double x0, q
    cdef WelfordLanes w
    cdef Py_ssize_t j
    if n > CHUNK:
        return chunked_moments(x, n, n, n, method)
    if method == WELFORD:
        welford_init(&w)
        run_welford(&w, x, n)
        return welford_finish(&w)
    x0 = ld(x, 0)
    zero_lanes(acc, sq, tacc, tsq)
    sum2_piece(x, n, x0, acc, sq, tacc, tsq, 0)
    fold_tails(acc, sq, tacc, tsq)
    out = shifted_moments(x0, <double>n, acc, sq, &q)
    if one_pass_ok(out.m2, q, x):
        return out
    for j in range(LANES):
        acc[j] = 0.0
    run_sqdev(acc, x, n, out.mean)
    out.m2 = lanes_total(acc)
    return out


cdef inline void chunked_dot(const real* g, const real* x, Py_ssize_t M, Py_ssize_t stride,
                             Py_ssize_t count, double m, double* sum_g, double* sum_gx) noexcept nogil:
    """seq_dot over a whole sequence, one CHUNK-sized piece after another."""
    cdef Py_ssize_t i = 0
    while i < count:
        seq_dot(g, x, M, stride, i, i + CHUNK if i + CHUNK < count else count, count, m,
                sum_g, sum_gx)
        i += CHUNK


# ---------------------------------------------------------------------------
# Elementwise passes
# ---------------------------------------------------------------------------

ctypedef struct Affine:
    # y = ((x - hi) - lo) * scale + shift, with hi + lo the float64 mean split
    # into two values of the arithmetic type, so that float32 arithmetic centres
    # the data exactly without float64 in the loop.  All four are values of the
    # arithmetic type (see pround).
    double hi
    double lo
    double scale
    double shift


cdef inline void affine_columns(const real* x, real* y, Py_ssize_t n,
                                const void* cols, Py_ssize_t K, int act,
                                bint stream) noexcept nogil:
    """n elements of a row of a row-major matrix; cols holds hi, lo, scale and
    shift (K each, of the arithmetic type) for the row's columns."""
    cnorm_affine_cols(x, y, n, cols, pat(cols, K, x), pat(cols, 2 * K, x), pat(cols, 3 * K, x),
                      act, stream)


cdef inline bint may_stream(const real* like) noexcept nogil:
    """Whether the kernels stream an output of this type when the caller asks: float32
    and float64 always; float16 and bfloat16 only in the plane kernel's training
    forward and backward (batch norm with channels first), whose statistics pass reads
    the input in strided runs while plain stores would also read y's lines: with
    streaming (and the plane kernel's prefetches), float16 (32, 64, 56, 56) training
    took 0.52-0.56 times as long and backward 0.72 (bfloat16 0.62 and 0.70).
    Elsewhere a half call's input and output mostly stay in the LLC between calls,
    and streaming them was slower: inference and layer norm (4096, 768) 1.2-1.5
    times as long, channels-last training 1.07 (float16) and 1.3 (bfloat16)."""
    return real is float or real is double


cdef inline void rows_affine(const real* x, real* y, Py_ssize_t r0, Py_ssize_t r1,
                             Py_ssize_t R, Py_ssize_t K, const void* cols, int act,
                             bint stream) noexcept nogil:
    """Rows [r0, r1) of an (R, K) matrix; cols holds hi, lo, scale, shift (K each).
    Rows shorter than PREFETCH_BYTES are prefetched that far ahead, up to row R."""
    cdef Py_ssize_t r
    cdef Py_ssize_t pd = prefetch_rows(K, sizeof(real))
    cdef size_t pbytes = short_row_bytes(K, sizeof(real))
    for r in range(r0, r1):
        if r + pd < R:
            cnorm_prefetch(x + (r + pd) * K, pbytes)
        affine_columns(x + r * K, y + r * K, K, cols, K, act, stream)
    if stream:
        cnorm_stream_fence()
