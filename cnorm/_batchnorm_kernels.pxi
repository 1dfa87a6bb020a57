# Batch normalization: statistics per channel q of x viewed as (N, C, M).
#
# * "planar" kernels (M >= PLANAR_MIN_RUN): a channel is N runs of M contiguous
#   values.  With enough channels, each thread takes whole channels and
#   normalises a channel right after computing its statistics, while it is
#   still in cache (one trip to memory).  With few channels, the statistics of
#   fixed CHUNK-sized pieces are computed in parallel and merged in order.
# * "rows" kernels (small M): x is an (N, C*M) matrix of column statistics
#   (_columns.pxi), whose M columns per channel are then merged.
#
# Both give results that do not depend on the number of threads.

cdef enum:
    PLANAR_MIN_RUN = 16   # shortest run M for which the planar kernels pay off


# ---------------------------------------------------------------------------
# Per-channel finishing steps
# ---------------------------------------------------------------------------

cdef inline Affine make_affine(double mean, double scale, double shift,
                               const real* like) noexcept nogil:
    """Split mean into hi + lo of the arithmetic type (lo == 0 for float64)."""
    cdef Affine p
    p.hi = pround(mean, like)
    p.lo = pround(mean - p.hi, like)
    p.scale = pround(scale, like)
    p.shift = pround(shift, like)
    return p


cdef inline Affine finish_channel(Moments mo, Py_ssize_t c, const void* w, const void* b,
                                  void* rmean, void* rvar, void* mean_out, void* invstd_out,
                                  double eps, double momentum, const real* like) noexcept nogil:
    """Batch statistics -> outputs, running-statistics update, normalisation parameters."""
    cdef double var = mo.m2 / mo.n
    cdef double invstd = 1.0 / sqrt(var + eps)
    if mean_out != NULL:
        pset(mean_out, c, mo.mean, like)
        pset(invstd_out, c, invstd, like)
    if rmean != NULL:
        pset(rmean, c, (1.0 - momentum) * pget(rmean, c, 0.0, like) + momentum * mo.mean, like)
        pset(rvar, c, (1.0 - momentum) * pget(rvar, c, 0.0, like)
             + momentum * (var * (mo.n / (mo.n - 1.0))), like)
    return make_affine(mo.mean, invstd * pget(w, c, 1.0, like), pget(b, c, 0.0, like), like)


cdef inline bint whole_channels(Py_ssize_t C, int nt) noexcept nogil:
    """Give each thread whole channels?  Yes unless that leaves threads idle."""
    return nt == 1 or C >= 4 * nt or C % nt == 0


cdef inline void prefetch_write_runs(real* y, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t S,
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

cdef inline void affine_runs(const real* x, real* y, Py_ssize_t k0, Py_ssize_t k1,
                             Py_ssize_t C, Py_ssize_t M, const Affine* aff, int act,
                             bint stream) noexcept nogil:
    """Runs k0 .. k1 - 1 of (N * C, M), run k with aff[k % C], then one fence."""
    cdef Py_ssize_t k
    for k in range(k0, k1):
        run_affine(x + k * M, y + k * M, M, aff[k % C], act, stream)
    if stream:
        cnorm_stream_fence()


cdef void normalize_planar(const real* x, real* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                           const Affine* aff, int act, bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t t
    if nt == 1:
        affine_runs(x, y, 0, N * C, C, M, aff, act, stream)
        return
    for t in prange(nt, num_threads=nt, schedule='static'):
        affine_runs(x, y, share(N * C, t, nt), share(N * C, t + 1, nt), C, M, aff, act, stream)


# ---------------------------------------------------------------------------
# Column reductions of an (R, K) matrix, tiled and merged in a fixed order
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Statistics alone (training forward's first pass, and cnorm.moments)
# ---------------------------------------------------------------------------

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


cdef int channel_stats(const real* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M, int method,
                       int nt, double* mean, double* m2) noexcept nogil:
    """Mean and M2 (count N * M) of each channel of (N, C, M), as training forward
    computes them: planar for runs of PLANAR_MIN_RUN or more (and for N == 1, where
    each channel is one run), else column statistics of (N, C * M) merged per channel."""
    cdef Py_ssize_t K = C * M, c
    cdef Moments mo
    cdef Moments* part
    cdef double* stats
    if M >= PLANAR_MIN_RUN or N == 1:
        if whole_channels(C, nt):
            for c in prange(C, num_threads=nt, schedule='static', use_threads_if=nt > 1):
                mo = chunked_moments(x + c * M, M, K, N * M, method)
                mean[c] = mo.mean
                m2[c] = mo.m2
            return 0
        part = <Moments*>malloc((C + 1) * sizeof(Moments))
        if part == NULL or chunk_parallel_moments(x, N, C, M, method, nt, part) != 0:
            free(part)
            return -1
        for c in range(C):
            mean[c] = part[c].mean
            m2[c] = part[c].m2
        free(part)
        return 0
    stats = <double*>malloc((2 * K + 1) * sizeof(double))
    if stats == NULL or column_moments(x, N, K, method, nt, stats, stats + K) != 0:
        free(stats)
        return -1
    for c in range(C):
        mo = channel_moments(stats, stats + K, c, M, <double>N)
        mean[c] = mo.mean
        m2[c] = mo.m2
    free(stats)
    return 0


cdef int sample_column_stats(const real* x, Py_ssize_t A, Py_ssize_t B, Py_ssize_t C,
                             int method, int nt, double* mean, double* m2) noexcept nogil:
    """Mean and M2 (count B) of each column of each of the A (B, C) matrices of x:
    channels-last instance norm's statistics."""
    cdef Py_ssize_t a
    for a in range(A):
        if column_moments(x + a * B * C, B, C, method, nt, mean + a * C, m2 + a * C) != 0:
            return -1
    return 0


# ---------------------------------------------------------------------------
# Training forward
# ---------------------------------------------------------------------------

cdef inline void train_channel(const real* x, real* y, Py_ssize_t N, Py_ssize_t C,
                               Py_ssize_t M, Py_ssize_t c, const void* w, const void* b,
                               void* rmean, void* rvar, void* mean_out, void* invstd_out,
                               double eps, double momentum, int method, int act,
                               bint stream) noexcept nogil:
    """Channel c whole: its statistics, then its output while its runs are in cache."""
    cdef Py_ssize_t S = C * M, n
    cdef Py_ssize_t pd = prefetch_rows(M, sizeof(real))
    cdef size_t ybytes = short_row_bytes(M, sizeof(real))
    # one run (N == 1): row_moments gives chunked_moments' bits without its bookkeeping
    cdef Moments mo = (row_moments(x + c * M, M, method) if N == 1
                       else chunked_moments(x + c * M, M, S, N * M, method))
    cdef Affine p = finish_channel(mo, c, w, b, rmean, rvar, mean_out, invstd_out, eps, momentum,
                                   x)
    # backwards: the runs read last by the statistics are the likeliest still in cache
    prefetch_write_runs(y + c * M, N - pd, N, S, ybytes)
    for n in range(N - 1, -1, -1):
        prefetch_write_runs(y + c * M, n - pd, n - pd + 1, S, ybytes)
        run_affine(x + n * S + c * M, y + n * S + c * M, M, p, act, stream)
    if stream:
        cnorm_stream_fence()


cdef int train_planar(const real* x, real* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                      const void* w, const void* b, void* rmean, void* rvar,
                      void* mean_out, void* invstd_out, double eps, double momentum,
                      int method, int act, bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t c
    cdef Moments* part
    cdef Affine* aff
    if nt == 1:     # no parallel region at all: even an inactive one costs a microsecond
        for c in range(C):
            train_channel(x, y, N, C, M, c, w, b, rmean, rvar, mean_out, invstd_out, eps,
                          momentum, method, act, stream)
        return 0
    if whole_channels(C, nt):
        for c in prange(C, num_threads=nt, schedule='static'):
            train_channel(x, y, N, C, M, c, w, b, rmean, rvar, mean_out, invstd_out, eps,
                          momentum, method, act, stream)
        return 0
    part = <Moments*>malloc(C * sizeof(Moments) + C * sizeof(Affine))
    if part == NULL or chunk_parallel_moments(x, N, C, M, method, nt, part) != 0:
        free(part)
        return -1
    aff = <Affine*>(part + C)
    for c in range(C):
        aff[c] = finish_channel(part[c], c, w, b, rmean, rvar, mean_out, invstd_out, eps,
                                momentum, x)
    normalize_planar(x, y, N, C, M, aff, act, stream, nt)
    free(part)
    return 0


cdef inline void set_affine_columns(Affine p, Py_ssize_t k0, Py_ssize_t M, Py_ssize_t K,
                                    void* cols, const real* like) noexcept nogil:
    set_columns(p.hi, p.lo, p.scale, p.shift, k0, M, K, cols, like)


cdef int train_rows(const real* x, real* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                    const void* w, const void* b, void* rmean, void* rvar,
                    void* mean_out, void* invstd_out, double eps, double momentum,
                    int method, int act, bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t K = C * M, c
    cdef double* stats = <double*>malloc((2 * K + 1) * sizeof(double))
    cdef void* cols = malloc((4 * K + 1) * psize(x))
    cdef int rc = -1
    if stats != NULL and cols != NULL:
        rc = column_moments(x, N, K, method, nt, stats, stats + K)
    if rc == 0:
        for c in range(C):
            set_affine_columns(finish_channel(channel_moments(stats, stats + K, c, M, <double>N), c,
                                              w, b, rmean, rvar, mean_out, invstd_out, eps,
                                              momentum, x),
                               c * M, M, K, cols, x)
        normalize_rows(x, y, N, K, cols, act, stream, nt)
    free(stats)
    free(cols)
    return rc


# ---------------------------------------------------------------------------
# Inference forward
# ---------------------------------------------------------------------------

cdef int infer(const real* x, real* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
               const void* w, const void* b, const void* rmean, const void* rvar,
               double eps, int act, bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t c
    cdef Affine* aff = <Affine*>malloc((C + 1) * sizeof(Affine))
    cdef void* cols = NULL
    if aff == NULL:
        return -1
    for c in range(C):
        aff[c] = make_affine(pget(rmean, c, 0.0, x),
                             pget(w, c, 1.0, x) / sqrt(pget(rvar, c, 0.0, x) + eps),
                             pget(b, c, 0.0, x), x)
    if M >= PLANAR_MIN_RUN:
        normalize_planar(x, y, N, C, M, aff, act, stream, nt)
    else:
        cols = malloc((4 * C * M + 1) * psize(x))
        if cols == NULL:
            free(aff)
            return -1
        for c in range(C):
            set_affine_columns(aff[c], c * M, M, C * M, cols, x)
        normalize_rows(x, y, N, C * M, cols, act, stream, nt)
        free(cols)
    free(aff)
    return 0


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

cdef inline Grad finish_grad(double sum_g, double sum_gx, Py_ssize_t c, double count,
                             const void* mean, const void* invstd, const void* w,
                             void* dweight, void* dbias, bint training,
                             const real* like) noexcept nogil:
    """The coefficients of dx (each a value of the arithmetic type), and the
    channel's dweight and dbias."""
    cdef Grad q
    cdef double s = pget(invstd, c, 0.0, like)
    cdef double ws = s * pget(w, c, 1.0, like)
    cdef double dw = sum_gx * s
    pset(dweight, c, dw, like)
    pset(dbias, c, sum_g, like)
    q.hi = pget(mean, c, 0.0, like)
    q.a = pround(ws, like)
    q.bc = pround(ws * s * dw / count if training else 0.0, like)
    q.cc = pround(ws * sum_g / count if training else 0.0, like)
    return q


cdef inline void grad_channel(const real* g, const real* x, real* dx, Py_ssize_t N,
                              Py_ssize_t C, Py_ssize_t M, Py_ssize_t c, const void* mean,
                              const void* invstd, const void* w, void* dweight, void* dbias,
                              bint training, bint stream) noexcept nogil:
    """Channel c whole: its sums, then its dx while its runs are in cache."""
    cdef Py_ssize_t S = C * M, count = N * M, n, off
    cdef Py_ssize_t pd = prefetch_rows(M, sizeof(real))
    cdef size_t ybytes = short_row_bytes(M, sizeof(real))
    cdef double sg = 0.0, sgx = 0.0
    cdef Grad q
    chunked_dot(g + c * M, x + c * M, M, S, count, pget(mean, c, 0.0, x), &sg, &sgx)
    q = finish_grad(sg, sgx, c, <double>count, mean, invstd, w, dweight, dbias, training, x)
    prefetch_write_runs(dx + c * M, N - pd, N, S, ybytes)
    for n in range(N - 1, -1, -1):    # backwards, as in train_channel
        prefetch_write_runs(dx + c * M, n - pd, n - pd + 1, S, ybytes)
        off = n * S + c * M
        run_grad(g + off, x + off, dx + off, M, q, training, stream)
    if stream:
        cnorm_stream_fence()


cdef int backward_planar(const real* g, const real* x, real* dx, Py_ssize_t N,
                         Py_ssize_t C, Py_ssize_t M, const void* mean, const void* invstd,
                         const void* w, void* dweight, void* dbias, bint training,
                         bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t S = C * M, count = N * M
    cdef Py_ssize_t nchunk = (count + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, k, i0, t
    cdef double sg, sgx
    cdef double* part
    cdef Grad* qs
    if nt == 1:     # no parallel region (see train_planar)
        for c in range(C):
            grad_channel(g, x, dx, N, C, M, c, mean, invstd, w, dweight, dbias, training, stream)
        return 0
    if whole_channels(C, nt):
        for c in prange(C, num_threads=nt, schedule='static'):
            grad_channel(g, x, dx, N, C, M, c, mean, invstd, w, dweight, dbias, training, stream)
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
                count, pget(mean, c, 0.0, x), &part[2 * k], &part[2 * k + 1])
    for c in range(C):
        sg = 0.0
        sgx = 0.0
        for k in range(c * nchunk, (c + 1) * nchunk):
            sg += part[2 * k]
            sgx += part[2 * k + 1]
        qs[c] = finish_grad(sg, sgx, c, <double>count, mean, invstd, w, dweight, dbias, training,
                            x)
    for t in prange(nt, num_threads=nt, schedule='static'):   # a share of the runs each
        for k in range(share(N * C, t, nt), share(N * C, t + 1, nt)):
            run_grad(g + k * M, x + k * M, dx + k * M, M, qs[k % C], training, stream)
        if stream:
            cnorm_stream_fence()
    free(part)
    return 0


cdef int backward_rows(const real* g, const real* x, real* dx, Py_ssize_t N,
                       Py_ssize_t C, Py_ssize_t M, const void* mean, const void* invstd,
                       const void* w, void* dweight, void* dbias, bint training,
                       bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t K = C * M, c, m
    cdef double sg, sgx
    cdef Grad q
    cdef double* buf = <double*>malloc((3 * K + 1) * sizeof(double))
    cdef void* cols = malloc((4 * K + 1) * psize(x))
    cdef int rc = -1
    if buf != NULL and cols != NULL:
        for c in range(C):
            for m in range(M):
                buf[2 * K + c * M + m] = pget(mean, c, 0.0, x)
        rc = column_dots(g, x, N, K, buf + 2 * K, nt, buf, buf + K)
    if rc == 0:
        for c in range(C):
            sg = 0.0
            sgx = 0.0
            for m in range(M):
                sg += buf[c * M + m]
                sgx += buf[K + c * M + m]
            q = finish_grad(sg, sgx, c, <double>(N * M), mean, invstd, w, dweight, dbias, training,
                            x)
            set_columns(q.hi, q.a, q.bc, q.cc, c * M, M, K, cols, x)
        grad_rows_parallel(g, x, dx, N, K, cols, training, stream, nt)
    free(buf)
    free(cols)
    return rc


# ---------------------------------------------------------------------------
# Python-facing shims.  The Python layer (cnorm/batchnorm.py) has validated
# every argument: arrays are C-contiguous, of the right dtypes (see
# _moments.pxd's `real`) and sizes.  The shims only pick the dtype, release
# the GIL and call a kernel.
# ---------------------------------------------------------------------------

cdef int _train_dispatch(int t, bint planar, void* px, void* py, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t M, void* pw, void* pb, void* prm, void* prv, void* pmean,
                         void* pinv, double eps, double momentum, int meth, int act,
                         bint stream, int nt) noexcept nogil:
    if t == F32:
        return (train_planar[float] if planar else train_rows[float])(
            <float*>px, <float*>py, N, C, M, pw, pb, prm, prv, pmean, pinv, eps, momentum,
            meth, act, stream, nt)
    elif t == F64:
        return (train_planar[double] if planar else train_rows[double])(
            <double*>px, <double*>py, N, C, M, pw, pb, prm, prv, pmean, pinv, eps, momentum,
            meth, act, stream, nt)
    elif t == F16:
        return (train_planar[cnorm_f16] if planar else train_rows[cnorm_f16])(
            <cnorm_f16*>px, <cnorm_f16*>py, N, C, M, pw, pb, prm, prv, pmean, pinv, eps,
            momentum, meth, act, stream, nt)
    return (train_planar[cnorm_bf16] if planar else train_rows[cnorm_bf16])(
        <cnorm_bf16*>px, <cnorm_bf16*>py, N, C, M, pw, pb, prm, prv, pmean, pinv, eps,
        momentum, meth, act, stream, nt)


cdef inline bint keeps_gil(Py_ssize_t work, int nt) noexcept nogil:
    """Small one-thread calls keep the GIL: releasing it costs more than it gives."""
    return nt == 1 and work < 16384


def bn_train(cnp.ndarray x, cnp.ndarray y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
          weight, bias, running_mean, running_var, mean_out, invstd_out,
          double eps, double momentum, method, int act, bint stream):
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
    cdef int t = dtype_code(x)
    if keeps_gil(N * C * M, nt):
        rc = _train_dispatch(t, planar, px, py, N, C, M, pw, pb, prm, prv, pmean, pinv, eps,
                             momentum, meth, act, stream, nt)
    else:
        with nogil:
            rc = _train_dispatch(t, planar, px, py, N, C, M, pw, pb, prm, prv, pmean, pinv, eps,
                                 momentum, meth, act, stream, nt)
    call_done(KIND_BN_TRAIN, nt, N * C * M, t, act)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for batch_norm")


cdef int _infer_dispatch(int t, void* px, void* py, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                         void* pw, void* pb, void* prm, void* prv, double eps, int act,
                         bint stream, int nt) noexcept nogil:
    if t == F32:
        return infer(<float*>px, <float*>py, N, C, M, pw, pb, prm, prv, eps, act, stream, nt)
    elif t == F64:
        return infer(<double*>px, <double*>py, N, C, M, pw, pb, prm, prv, eps, act, stream, nt)
    elif t == F16:
        return infer(<cnorm_f16*>px, <cnorm_f16*>py, N, C, M, pw, pb, prm, prv, eps, act, stream,
                     nt)
    return infer(<cnorm_bf16*>px, <cnorm_bf16*>py, N, C, M, pw, pb, prm, prv, eps, act, stream,
                 nt)


def bn_infer(cnp.ndarray x, cnp.ndarray y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
              weight, bias, running_mean, running_var, double eps, int act, bint stream):
    cdef int nt = threads_for(N * C * M)
    cdef void* px = data(x)
    cdef void* py = data(y)
    cdef void* pw = data(weight)
    cdef void* pb = data(bias)
    cdef void* prm = data(running_mean)
    cdef void* prv = data(running_var)
    cdef int rc
    cdef int t = dtype_code(x)
    if keeps_gil(N * C * M, nt):
        rc = _infer_dispatch(t, px, py, N, C, M, pw, pb, prm, prv, eps, act, stream, nt)
    else:
        with nogil:
            rc = _infer_dispatch(t, px, py, N, C, M, pw, pb, prm, prv, eps, act, stream, nt)
    call_done(KIND_BN_INFER, nt, N * C * M, t, act)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for batch_norm")


cdef int _backward_dispatch(int t, bint planar, void* pg, void* px, void* pdx, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t M, void* pmean, void* pinv, void* pw,
                            void* pdw, void* pdb, bint training, bint stream,
                            int nt) noexcept nogil:
    if t == F32:
        return (backward_planar[float] if planar else backward_rows[float])(
            <float*>pg, <float*>px, <float*>pdx, N, C, M, pmean, pinv, pw, pdw, pdb, training,
            stream, nt)
    elif t == F64:
        return (backward_planar[double] if planar else backward_rows[double])(
            <double*>pg, <double*>px, <double*>pdx, N, C, M, pmean, pinv, pw, pdw, pdb,
            training, stream, nt)
    elif t == F16:
        return (backward_planar[cnorm_f16] if planar else backward_rows[cnorm_f16])(
            <cnorm_f16*>pg, <cnorm_f16*>px, <cnorm_f16*>pdx, N, C, M, pmean, pinv, pw, pdw,
            pdb, training, stream, nt)
    return (backward_planar[cnorm_bf16] if planar else backward_rows[cnorm_bf16])(
        <cnorm_bf16*>pg, <cnorm_bf16*>px, <cnorm_bf16*>pdx, N, C, M, pmean, pinv, pw,
        pdw, pdb, training, stream, nt)


def bn_backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t N, Py_ssize_t C,
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
    cdef int t = dtype_code(x)
    if keeps_gil(N * C * M, nt):
        rc = _backward_dispatch(t, planar, pg, px, pdx, N, C, M, pmean, pinv, pw, pdw, pdb,
                                training, stream, nt)
    else:
        with nogil:
            rc = _backward_dispatch(t, planar, pg, px, pdx, N, C, M, pmean, pinv, pw, pdw, pdb,
                                    training, stream, nt)
    call_done(KIND_BN_BACKWARD, nt, N * C * M, t, 0)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for batch_norm_backward")
