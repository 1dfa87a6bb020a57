# Batch normalization: statistics per channel q of x viewed as (N, C, M).
#
# * runs of M >= PLANAR_MIN_RUN: the plane geometry (_planes.pxi) with P = N,
#   Q = Qp = C and S = run = M: a channel is N blocks of M contiguous values.
# * shorter runs: x is one sample of column groups (_groups.pxi), an (N, C*M)
#   matrix whose M columns per channel are merged into the channel's statistics.
#
# Both give results that do not depend on the number of threads.

cdef enum:
    PLANAR_MIN_RUN = 16   # shortest run M for which the planar kernels pay off


# ---------------------------------------------------------------------------
# Column reductions of an (R, K) matrix, tiled and merged in a fixed order
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Statistics alone (training forward's first pass, and cnorm.moments)
# ---------------------------------------------------------------------------

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
        if whole_segments(C, nt):
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

cdef int train_columns(const real* x, real* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                       const void* w, const void* b, void* rmean, void* rvar,
                       void* mean_out, void* invstd_out, double eps, double momentum,
                       int method, int act, bint stream, int nt) noexcept nogil:
    """Batch norm as column groups: one sample of N rows and C * M columns, a group and
    a parameter per channel's M columns."""
    return groups_forward(x, y, col_groups(1, N, C * M, C, M), w, b,
                          stats_out(mean_out, invstd_out, NULL, rmean, rvar, momentum), eps,
                          method, act, stream, nt)


# ---------------------------------------------------------------------------
# Inference forward
# ---------------------------------------------------------------------------

cdef int infer(const real* x, real* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
               const void* w, const void* b, const void* rmean, const void* rvar,
               double eps, int act, bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t c
    cdef Affine* aff = <Affine*>malloc((C + 1) * sizeof(Affine) + C * sizeof(double))
    cdef double* scale
    cdef void* cols = NULL
    if aff == NULL:
        return -1
    stream = stream and may_stream(x)
    # the scales first, in a loop of their own that the compiler vectorizes (the same bits):
    # one loop making each channel's coefficients waited on its square root and division
    scale = <double*>(aff + C + 1)
    for c in range(C):
        scale[c] = pget(w, c, 1.0, x) / sqrt(pget(rvar, c, 0.0, x) + eps)
    for c in range(C):
        aff[c] = make_affine(pget(rmean, c, 0.0, x), scale[c], pget(b, c, 0.0, x), x)
    if M >= PLANAR_MIN_RUN:
        normalize_planar(x, y, N * C, C, M, aff, act, stream and M >= STREAM_TILE, nt)
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

cdef int backward_columns(const real* g, const real* x, real* dx, Py_ssize_t N,
                          Py_ssize_t C, Py_ssize_t M, const void* mean, const void* invstd,
                          const void* w, void* dweight, void* dbias, bint training,
                          bint stream, int nt) noexcept nogil:
    """Batch norm as column groups (see train_columns)."""
    return groups_backward(g, x, dx, col_groups(1, N, C * M, C, M), mean, invstd, w, dweight,
                           dbias, training, stream, nt)


# ---------------------------------------------------------------------------
# Python-facing shims.  The Python layer (cnorm/batchnorm.py) has validated
# every argument: arrays are C-contiguous, of the right dtypes (see
# _moments.pxd's `real`) and sizes.  The shims only pick the dtype, release
# the GIL and call a kernel.
# ---------------------------------------------------------------------------

cdef int train_planar(const real* x, real* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                      const void* w, const void* b, void* rmean, void* rvar,
                      void* mean_out, void* invstd_out, double eps, double momentum,
                      int method, int act, bint stream, int nt) noexcept nogil:
    """Batch norm in the plane geometry: P = N, Q = Qp = C, S = run = M."""
    return planes_forward(x, y, planes(N, C, M, C, M), w, b,
                          stats_out(mean_out, invstd_out, NULL, rmean, rvar, momentum), eps,
                          method, act, stream, nt)


cdef int _train_dispatch(int t, bint planar, void* px, void* py, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t M, void* pw, void* pb, void* prm, void* prv, void* pmean,
                         void* pinv, double eps, double momentum, int meth, int act,
                         bint stream, int nt) noexcept nogil:
    if t == F32:
        return (train_planar[float] if planar else train_columns[float])(
            <float*>px, <float*>py, N, C, M, pw, pb, prm, prv, pmean, pinv, eps, momentum,
            meth, act, stream, nt)
    elif t == F64:
        return (train_planar[double] if planar else train_columns[double])(
            <double*>px, <double*>py, N, C, M, pw, pb, prm, prv, pmean, pinv, eps, momentum,
            meth, act, stream, nt)
    elif t == F16:
        return (train_planar[cnorm_f16] if planar else train_columns[cnorm_f16])(
            <cnorm_f16*>px, <cnorm_f16*>py, N, C, M, pw, pb, prm, prv, pmean, pinv, eps,
            momentum, meth, act, stream, nt)
    return (train_planar[cnorm_bf16] if planar else train_columns[cnorm_bf16])(
        <cnorm_bf16*>px, <cnorm_bf16*>py, N, C, M, pw, pb, prm, prv, pmean, pinv, eps,
        momentum, meth, act, stream, nt)


cdef inline bint keeps_gil(Py_ssize_t work, int nt) noexcept nogil:
    """Small one-thread calls keep the GIL: releasing it costs more than it gives."""
    return nt == 1 and work < 16384


def bn_train(cnp.ndarray x, cnp.ndarray y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
          weight, bias, running_mean, running_var, mean_out, invstd_out,
          double eps, double momentum, method, int act, bint stream):
    _bn_train_call(dtype_code(x), data(x), data(y), N, C, M, data(weight), data(bias),
                   data(running_mean), data(running_var), data(mean_out), data(invstd_out), eps,
                   momentum, method_code(method), act, stream)


cdef int _bn_train_call(int t, void* px, void* py, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                        void* pw, void* pb, void* prm, void* prv, void* pmean, void* pinv,
                        double eps, double momentum, int meth, int act,
                        bint stream) except -1:
    cdef int nt = threads_for(N * C * M)
    cdef bint planar = M >= PLANAR_MIN_RUN
    cdef int rc
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
    return 0


cdef inline bint _stat_ok(object v, int ptype, Py_ssize_t C) noexcept:
    """v is None, or a running statistic the kernel may update as it is: _param_ok, and
    writeable."""
    return _param_ok(v, ptype, C) and (v is None
                                       or cnp.PyArray_ISWRITEABLE(<cnp.ndarray>v))


ctypedef struct FastBN:
    int code                    # x's dtype (F32, F64, F16, BF16)
    int t                       # x's NumPy type
    int pt                      # the parameters' NumPy type
    Py_ssize_t N, C, M


cdef inline bint _fast_bn(object x, object axis, FastBN* f) noexcept:
    """What every batch-norm fast path takes of x and axis: x as _fast_x takes it, of 2 or
    more dimensions; axis an int in range; f gets x's (N, C, M) view and its dtype codes."""
    cdef cnp.ndarray a
    cdef int nd, ax, i
    if type(axis) is not int or not _fast_x(x, 2, &f.t, &f.pt, &f.code):
        return False
    a = <cnp.ndarray>x
    nd = cnp.PyArray_NDIM(a)
    if not -nd <= axis < nd:
        return False
    ax = axis % nd
    f.N = 1
    f.M = 1
    for i in range(ax):
        f.N *= cnp.PyArray_DIMS(a)[i]
    f.C = cnp.PyArray_DIMS(a)[ax]
    for i in range(ax + 1, nd):
        f.M *= cnp.PyArray_DIMS(a)[i]
    return True


cdef inline object _fast_dest(object out, cnp.ndarray a):
    """A new array like a for out None, out itself when _out_ok takes it, else None."""
    if out is None:
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), cnp.PyArray_TYPE(a),
                                 0)
    if _out_ok(out, a):
        return out
    return None


def bn_train_fast(x, weight, bias, running_mean, running_var, momentum, eps, axis,
                  bint want_stats, Py_ssize_t stream_bytes, out=None):
    """batch_norm's and batch_norm_forward's common training call, checked here in C: x and
    axis as _fast_bn takes them, more than one value per channel; weight, bias,
    running_mean and running_var None or contiguous 1-D ndarrays of x's parameter type and
    length C (weight and bias may be of x's half-precision type too: _fast_params widens
    them, as the general path does), the running statistics given together and writeable; eps a float in [0,
    inf), momentum a float in [0, 1]; out None or an array _out_ok takes.  Returns (y,
    mean, invstd), mean and invstd None unless want_stats, computed by the kernel exactly
    as the general path computes them; or None when the call is not of that kind, and the
    Python layer takes its general path, which also raises any error.  Outputs stream
    past stream_bytes moved."""
    cdef FastBN f
    cdef cnp.ndarray mean = None, invstd = None
    cdef cnp.npy_intp c_dim
    cdef void* pw
    cdef void* pb
    cdef float* buf
    if (type(eps) is not float or type(momentum) is not float
            or (running_mean is None) != (running_var is None) or not _fast_bn(x, axis, &f)):
        return None
    cdef double e = eps, mo = momentum
    if (not (0.0 <= e < INFINITY and 0.0 <= mo <= 1.0) or f.N * f.M <= 1 or f.C == 0
            or not _stat_ok(running_mean, f.pt, f.C) or not _stat_ok(running_var, f.pt, f.C)
            or out is not None and not _out_ok(out, <cnp.ndarray>x)):
        return None
    if not _fast_params(weight, bias, f.pt, f.t, f.code, f.C, &pw, &pb, &buf):
        return None
    try:
        y = _fast_dest(out, <cnp.ndarray>x)
        if want_stats:
            c_dim = f.C
            mean = cnp.PyArray_EMPTY(1, &c_dim, f.pt, 0)
            invstd = cnp.PyArray_EMPTY(1, &c_dim, f.pt, 0)
        _bn_train_call(f.code, data(x), data(y), f.N, f.C, f.M, pw, pb, data(running_mean),
                       data(running_var), data(mean), data(invstd), e, mo, TWO_PASS, 0,
                       2 * cnp.PyArray_NBYTES(<cnp.ndarray>x) > stream_bytes)
    finally:
        free(buf)
    return y, mean, invstd


def bn_infer_fast(x, weight, bias, running_mean, running_var, momentum, eps, axis,
                  Py_ssize_t stream_bytes, out=None):
    """batch_norm's common inference call, checked here in C (see bn_train_fast; the
    running statistics are required and read only, and momentum is checked though
    unused, as the general path checks it).  Returns y, or None."""
    cdef FastBN f
    cdef void* pw
    cdef void* pb
    cdef float* buf
    if (type(eps) is not float or type(momentum) is not float or running_mean is None
            or running_var is None or not _fast_bn(x, axis, &f)):
        return None
    cdef double e = eps, mo = momentum
    if (not (0.0 <= e < INFINITY and 0.0 <= mo <= 1.0)
            or not _param_ok(running_mean, f.pt, f.C) or not _param_ok(running_var, f.pt, f.C)
            or out is not None and not _out_ok(out, <cnp.ndarray>x)):
        return None
    if not _fast_params(weight, bias, f.pt, f.t, f.code, f.C, &pw, &pb, &buf):
        return None
    try:
        y = _fast_dest(out, <cnp.ndarray>x)
        if cnp.PyArray_SIZE(<cnp.ndarray>x):
            _bn_infer_call(f.code, data(x), data(y), f.N, f.C, f.M, pw, pb,
                           data(running_mean), data(running_var), e, 0,
                           2 * cnp.PyArray_NBYTES(<cnp.ndarray>x) > stream_bytes)
    finally:
        free(buf)
    return y


def bn_backward_fast(dy, x, mean, invstd, weight, training, axis, Py_ssize_t stream_bytes,
                     out=None):
    """batch_norm_backward's common call, checked here in C: x as _fast_bn takes it and not
    empty, dy an ndarray of x's dtype and shape, C-contiguous and native; mean, invstd
    (required) and weight None or contiguous 1-D ndarrays of x's parameter type and
    length C; training True or False; out None or an array _out_ok takes for x and for
    dy.  Returns (dx, dweight, dbias), bitwise the general path's, or None."""
    cdef FastBN f
    cdef cnp.ndarray g
    cdef cnp.npy_intp c_dim
    cdef void* pw
    cdef void* pb
    cdef float* buf
    if (type(dy) is not cnp.ndarray or (training is not True and training is not False)
            or mean is None or invstd is None or not _fast_bn(x, axis, &f)):
        return None
    g = <cnp.ndarray>dy
    if (not _same_layout(g, <cnp.ndarray>x)
            or cnp.PyArray_SIZE(<cnp.ndarray>x) == 0 or not _param_ok(mean, f.pt, f.C)
            or not _param_ok(invstd, f.pt, f.C)
            or out is not None and not (_out_ok(out, <cnp.ndarray>x)
                                        and (out is dy or _out_ok(out, g)))):
        return None
    if not _fast_params(weight, None, f.pt, f.t, f.code, f.C, &pw, &pb, &buf):
        return None
    try:
        dx = _fast_dest(out, <cnp.ndarray>x)
        c_dim = f.C
        dweight = cnp.PyArray_ZEROS(1, &c_dim, f.pt, 0)
        dbias = cnp.PyArray_ZEROS(1, &c_dim, f.pt, 0)
        _bn_backward_call(f.code, data(dy), data(x), data(dx), f.N, f.C, f.M, data(mean),
                          data(invstd), pw, data(dweight), data(dbias), training,
                          3 * cnp.PyArray_NBYTES(<cnp.ndarray>x) > stream_bytes)
    finally:
        free(buf)
    return dx, dweight, dbias


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
    _bn_infer_call(dtype_code(x), data(x), data(y), N, C, M, data(weight), data(bias),
                   data(running_mean), data(running_var), eps, act, stream)


cdef int _bn_infer_call(int t, void* px, void* py, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M,
                        void* pw, void* pb, void* prm, void* prv, double eps, int act,
                        bint stream) except -1:
    cdef int nt = threads_for(N * C * M)
    cdef int rc
    if keeps_gil(N * C * M, nt):
        rc = _infer_dispatch(t, px, py, N, C, M, pw, pb, prm, prv, eps, act, stream, nt)
    else:
        with nogil:
            rc = _infer_dispatch(t, px, py, N, C, M, pw, pb, prm, prv, eps, act, stream, nt)
    call_done(KIND_BN_INFER, nt, N * C * M, t, act)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for batch_norm")
    return 0


cdef int backward_planar(const real* g, const real* x, real* dx, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t M, const void* mean, const void* invstd, const void* w,
                         void* dweight, void* dbias, bint training, bint stream,
                         int nt) noexcept nogil:
    """Batch norm in the plane geometry: P = N, Q = Qp = C, S = run = M."""
    return planes_backward(g, x, dx, planes(N, C, M, C, M), mean, invstd, w, dweight, dbias,
                           training, stream, nt)


cdef int _backward_dispatch(int t, bint planar, void* pg, void* px, void* pdx, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t M, void* pmean, void* pinv, void* pw,
                            void* pdw, void* pdb, bint training, bint stream,
                            int nt) noexcept nogil:
    if t == F32:
        return (backward_planar[float] if planar else backward_columns[float])(
            <float*>pg, <float*>px, <float*>pdx, N, C, M, pmean, pinv, pw, pdw, pdb, training,
            stream, nt)
    elif t == F64:
        return (backward_planar[double] if planar else backward_columns[double])(
            <double*>pg, <double*>px, <double*>pdx, N, C, M, pmean, pinv, pw, pdw, pdb,
            training, stream, nt)
    elif t == F16:
        return (backward_planar[cnorm_f16] if planar else backward_columns[cnorm_f16])(
            <cnorm_f16*>pg, <cnorm_f16*>px, <cnorm_f16*>pdx, N, C, M, pmean, pinv, pw, pdw,
            pdb, training, stream, nt)
    return (backward_planar[cnorm_bf16] if planar else backward_columns[cnorm_bf16])(
        <cnorm_bf16*>pg, <cnorm_bf16*>px, <cnorm_bf16*>pdx, N, C, M, pmean, pinv, pw,
        pdw, pdb, training, stream, nt)


def bn_backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t N, Py_ssize_t C,
             Py_ssize_t M, mean, invstd, weight, dweight, dbias, bint training, bint stream):
    _bn_backward_call(dtype_code(x), data(dy), data(x), data(dx), N, C, M, data(mean),
                      data(invstd), data(weight), data(dweight), data(dbias), training, stream)


cdef int _bn_backward_call(int t, void* pg, void* px, void* pdx, Py_ssize_t N, Py_ssize_t C,
                           Py_ssize_t M, void* pmean, void* pinv, void* pw, void* pdw,
                           void* pdb, bint training, bint stream) except -1:
    cdef int nt = threads_for(N * C * M)
    cdef bint planar = M >= PLANAR_MIN_RUN
    cdef int rc
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
    return 0
