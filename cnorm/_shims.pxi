# ---------------------------------------------------------------------------
# Python-facing shims of the row and group kernels.  The Python layer has
# validated every argument (arrays C-contiguous, of the right dtypes and
# sizes) and planned the call; the shims pick the dtype, release the GIL and
# call a kernel.
# ---------------------------------------------------------------------------

cdef inline RowMap row_map(bint centred, int act) noexcept:
    cdef RowMap m
    m.centred = centred
    m.act = act
    return m


cdef inline void _rows_dispatch(int t, void* px, void* py, Py_ssize_t R, Py_ssize_t H,
                                void* pw, void* pb, void* pm, void* pr, double eps,
                                int meth, bint stream, RowMap m, int nt, void* pres,
                                void* ph) noexcept nogil:
    if t == F32:
        rows_forward(<float*>px, <float*>py, R, H, pw, pb, pm, pr, eps, meth, stream, m, nt,
                     <float*>pres, <float*>ph)
    elif t == F64:
        rows_forward(<double*>px, <double*>py, R, H, pw, pb, pm, pr, eps, meth, stream, m, nt,
                     <double*>pres, <double*>ph)
    elif t == F16:
        rows_forward(<cnorm_f16*>px, <cnorm_f16*>py, R, H, pw, pb, pm, pr, eps, meth, stream,
                     m, nt, <cnorm_f16*>pres, <cnorm_f16*>ph)
    else:
        rows_forward(<cnorm_bf16*>px, <cnorm_bf16*>py, R, H, pw, pb, pm, pr, eps, meth,
                     stream, m, nt, <cnorm_bf16*>pres, <cnorm_bf16*>ph)


def norm_rows(cnp.ndarray x, cnp.ndarray y, Py_ssize_t R, Py_ssize_t H, bint centred,
              int act, weight, bias, mean_out, rstd_out, double eps, method, bint stream,
              residual=None, h_out=None):
    """Forward of the row geometry (see _rows.pxi); with residual (and h_out, both of
    x's dtype and shape, C-contiguous), the rows of h = x + residual are written to
    h_out and normalised instead of x's."""
    _rows_call(dtype_code(x), cnp.PyArray_DATA(x), cnp.PyArray_DATA(y), R, H,
               row_map(centred, act), data(weight), data(bias), data(mean_out),
               data(rstd_out), eps, method_code(method), stream, data(residual), data(h_out))


cdef inline void _rows_call(int t, void* px, void* py, Py_ssize_t R, Py_ssize_t H, RowMap m,
                            void* pw, void* pb, void* pm, void* pr, double eps,
                            int meth, bint stream, void* pres, void* ph) noexcept:
    cdef int nt = threads_for(R * H)
    if keeps_gil(R * H, nt):
        _rows_dispatch(t, px, py, R, H, pw, pb, pm, pr, eps, meth, stream, m, nt, pres, ph)
    else:
        with nogil:
            _rows_dispatch(t, px, py, R, H, pw, pb, pm, pr, eps, meth, stream, m, nt, pres,
                           ph)
    call_done(KIND_ROWS, nt, R * H, t, m.act)


cdef inline bint _param_ok(object v, int ptype, Py_ssize_t H) noexcept:
    """v is None, or a contiguous 1-D native-byte-order ndarray of type ptype and
    length H."""
    cdef cnp.ndarray a
    if v is None:
        return True
    if type(v) is not cnp.ndarray:
        return False
    a = <cnp.ndarray>v
    return (cnp.PyArray_TYPE(a) == ptype and cnp.PyArray_NDIM(a) == 1
            and cnp.PyArray_DIMS(a)[0] == H
            and cnp.PyArray_STRIDES(a)[0] == cnp.PyArray_ITEMSIZE(a)
            and cnp.PyArray_ISNOTSWAPPED(a))


# ml_dtypes' bfloat16 is a user-defined NumPy type, whose number is known only once
# ml_dtypes is imported: the Python layer, which imports it on first need, hands it
# over (set_bfloat16_type), and until then a bfloat16 call takes the general path.
cdef int _bf16_type = -1


def set_bfloat16_type(int t):
    """Let the fast paths take arrays of NumPy type number t as bfloat16 (cnorm._checks
    calls this when it first finds ml_dtypes' bfloat16)."""
    global _bf16_type
    _bf16_type = t


cdef inline bint _fast_types(int t, int* pt, int* code) noexcept:
    """The fast paths' dtypes: for x of NumPy type t (float32, float64, float16, or
    bfloat16 once set_bfloat16_type has named it), the parameters' NumPy type and the
    kernels' dtype code; False for any other type."""
    if t == cnp.NPY_FLOAT32:
        pt[0], code[0] = cnp.NPY_FLOAT32, F32
    elif t == cnp.NPY_FLOAT64:
        pt[0], code[0] = cnp.NPY_FLOAT64, F64
    elif t == cnp.NPY_FLOAT16:
        pt[0], code[0] = cnp.NPY_FLOAT32, F16
    elif t == _bf16_type:
        pt[0], code[0] = cnp.NPY_FLOAT32, BF16
    else:
        return False
    return True


cdef inline bint _fast_x(object x, int min_nd, int* t, int* pt, int* code) noexcept:
    """What every fast path takes of x: a C-contiguous native-byte-order ndarray of at
    least min_nd dimensions, of a type _fast_types takes (t gets its NumPy type, pt and
    code as _fast_types gives them)."""
    cdef cnp.ndarray a
    if type(x) is not cnp.ndarray:
        return False
    a = <cnp.ndarray>x
    t[0] = cnp.PyArray_TYPE(a)
    return (_fast_types(t[0], pt, code) and cnp.PyArray_NDIM(a) >= min_nd
            and cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISNOTSWAPPED(a))


cdef inline int _param_take(object v, int pt, int t, Py_ssize_t H) noexcept:
    """How a fast path takes a weight or bias v for x of NumPy type t whose parameter
    type is pt: 0 as it is (_param_ok of type pt, None included), 1 widened to float32
    (v of x's own half-precision type, as a model shipped in float16 or bfloat16 has
    it), -1 not at all."""
    if _param_ok(v, pt, H):
        return 0
    if t != pt and v is not None and _param_ok(v, t, H):
        return 1
    return -1


cdef inline void _widen(const void* src, int code, Py_ssize_t n, float* dst) noexcept nogil:
    """dst[:n] = the float16 (code F16) or bfloat16 values at src, exactly (the
    general path's astype(float32))."""
    cdef Py_ssize_t i
    if code == F16:
        for i in range(n):
            dst[i] = <float>CNORM_LD1_f16(<const cnorm_f16*>src + i)
    else:
        for i in range(n):
            dst[i] = <float>CNORM_LD1_bf16(<const cnorm_bf16*>src + i)


cdef inline bint _fast_params(object w, object b, int pt, int t, int code, Py_ssize_t H,
                              void** pw, void** pb, float** buf) noexcept:
    """weight and bias (each may be None) as a fast path hands them to a kernel: *pw and
    *pb their data, a parameter of x's half-precision type widened to float32 into
    *buf, one block the caller frees (NULL when nothing was widened).  False: a
    parameter the fast path does not take (or no memory for the block), and nothing to
    free."""
    cdef int kw = _param_take(w, pt, t, H)
    cdef int kb = _param_take(b, pt, t, H)
    buf[0] = NULL
    if kw < 0 or kb < 0:
        return False
    pw[0] = data(w)
    pb[0] = data(b)
    if kw or kb:
        buf[0] = <float*>malloc(2 * H * sizeof(float))
        if buf[0] == NULL:
            return False
        if kw:
            _widen(pw[0], code, H, buf[0])
            pw[0] = buf[0]
        if kb:
            _widen(pb[0], code, H, buf[0] + H)
            pb[0] = buf[0] + H
    return True


cdef inline bint _same_layout(cnp.ndarray o, cnp.ndarray a) noexcept:
    """o is a C-contiguous native-byte-order ndarray of a's type and shape."""
    cdef int nd = cnp.PyArray_NDIM(a)
    if (cnp.PyArray_TYPE(o) != cnp.PyArray_TYPE(a) or cnp.PyArray_NDIM(o) != nd
            or not cnp.PyArray_IS_C_CONTIGUOUS(o) or not cnp.PyArray_ISNOTSWAPPED(o)):
        return False
    for i in range(nd):
        if cnp.PyArray_DIMS(o)[i] != cnp.PyArray_DIMS(a)[i]:
            return False
    return True


cdef inline bint _out_ok(object out, cnp.ndarray a) noexcept:
    """out is a writeable ndarray of a's layout (_same_layout) that is a itself or
    shares no memory with it (a is C-contiguous)."""
    cdef cnp.ndarray o
    cdef char* p
    cdef char* q
    if type(out) is not cnp.ndarray:
        return False
    o = <cnp.ndarray>out
    if not _same_layout(o, a) or not cnp.PyArray_ISWRITEABLE(o):
        return False
    if o is a:
        return True
    p = <char*>cnp.PyArray_DATA(o)
    q = <char*>cnp.PyArray_DATA(a)
    return p + cnp.PyArray_NBYTES(o) <= q or q + cnp.PyArray_NBYTES(a) <= p


cdef object _rows_fast(x, residual, normalized_shape, weight, bias, eps, bint centred,
                       double default_eps, double default_eps64, bint want_stats,
                       Py_ssize_t stream_bytes, out):
    """The row ops' common forward call, checked here in C: x a C-contiguous ndarray of a
    type _fast_types takes whose last dimension is normalized_shape (an int); residual
    None, or an ndarray of x's type and shape, C-contiguous and native; weight and bias
    None or contiguous 1-D ndarrays of that length, of x's parameter type or of x's own
    half-precision type (_fast_params); eps a float in [0, inf), or None for the op's
    default: default_eps for float32 parameters, default_eps64 for float64 ones (NaN when
    the op has none); out None or an array _out_ok takes (only without residual).
    Computed by the kernels exactly as the general path computes it, it returns (y, mean,
    rstd) with the statistics None unless want_stats (mean None too when not centred);
    with residual, (block, mean, rstd), y and then h = x + residual the two halves of one
    new block.  None when the call is not of that kind: the Python layer then takes its
    general path, which also raises any error.  Outputs stream past stream_bytes moved."""
    cdef cnp.ndarray a, y
    cdef object mean = None, rstd = None
    cdef int t, pt, code
    cdef Py_ssize_t H, R, nd
    cdef cnp.npy_intp dims[65]       # NumPy's 64 dimensions at most, and the block's
    cdef double e
    cdef void* pw
    cdef void* pb
    cdef void* ph = NULL
    cdef float* buf
    if type(normalized_shape) is not int or not _fast_x(x, 1, &t, &pt, &code):
        return None
    a = <cnp.ndarray>x
    if eps is None:
        e = default_eps64 if code == F64 else default_eps
        if e != e:              # NaN: eps=None is not a spelling this op takes
            return None
    elif type(eps) is float:
        e = eps
        if not (0.0 <= e < INFINITY):
            return None
    else:
        return None
    nd = cnp.PyArray_NDIM(a)
    H = normalized_shape
    if H <= 0 or cnp.PyArray_DIMS(a)[nd - 1] != H:
        return None
    if residual is not None and not (nd < 64 and type(residual) is cnp.ndarray
                                     and _same_layout(<cnp.ndarray>residual, a)):
        return None
    if out is not None and (residual is not None or not _out_ok(out, a)):
        return None
    if not _fast_params(weight, bias, pt, t, code, H, &pw, &pb, &buf):
        return None
    R = cnp.PyArray_SIZE(a) // H
    try:
        if residual is not None:
            dims[0] = 2
            memcpy(&dims[1], cnp.PyArray_DIMS(a), nd * sizeof(cnp.npy_intp))
            y = cnp.PyArray_EMPTY(nd + 1, dims, t, 0)
            ph = <char*>cnp.PyArray_DATA(y) + cnp.PyArray_NBYTES(a)
        elif out is None:
            y = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(a), t, 0)
        else:
            y = <cnp.ndarray>out
        if want_stats:
            if centred:
                mean = cnp.PyArray_EMPTY(nd - 1, cnp.PyArray_DIMS(a), pt, 0)
            rstd = cnp.PyArray_EMPTY(nd - 1, cnp.PyArray_DIMS(a), pt, 0)
        if R:
            _rows_call(code, cnp.PyArray_DATA(a), cnp.PyArray_DATA(y), R, H,
                       row_map(centred, 0), pw, pb, data(mean), data(rstd), e, TWO_PASS,
                       (2 if residual is None else 4) * cnp.PyArray_NBYTES(a) > stream_bytes,
                       data(residual), ph)
    finally:
        free(buf)
    return y, mean, rstd


def rows_fast(x, normalized_shape, weight, bias, eps, bint centred, double default_eps,
              double default_eps64, Py_ssize_t stream_bytes, out=None):
    """layer_norm's (centred) or rms_norm's common call (see _rows_fast): y, or None."""
    r = _rows_fast(x, None, normalized_shape, weight, bias, eps, centred, default_eps,
                   default_eps64, False, stream_bytes, out)
    return None if r is None else r[0]


def rows_forward_fast(x, normalized_shape, weight, bias, eps, bint centred,
                      double default_eps, double default_eps64, Py_ssize_t stream_bytes,
                      out=None):
    """layer_norm_forward's (centred) or rms_norm_forward's common call (see _rows_fast):
    (y, mean, rstd), mean None when not centred; or None."""
    return _rows_fast(x, None, normalized_shape, weight, bias, eps, centred, default_eps,
                      default_eps64, True, stream_bytes, out)


def add_rows_fast(x, residual, normalized_shape, weight, bias, eps, bint centred,
                  double default_eps, double default_eps64, Py_ssize_t stream_bytes,
                  bint want_stats=False):
    """add_layer_norm's (centred) or add_rms_norm's common call without out= or
    residual_out= (see _rows_fast): (a new block of y then h, mean, rstd), the statistics
    (of h) None unless want_stats; or None."""
    if residual is None:
        return None
    return _rows_fast(x, residual, normalized_shape, weight, bias, eps, centred, default_eps,
                      default_eps64, want_stats, stream_bytes, None)


def norm_rows_backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t R,
                       Py_ssize_t H, mean, rstd, weight, dweight, dbias, bint stream):
    """Backward of the row geometry; mean None means not centred (RMS norm)."""
    _rows_backward_call(dtype_code(x), cnp.PyArray_DATA(dy), cnp.PyArray_DATA(x),
                        cnp.PyArray_DATA(dx), R, H, data(mean), data(rstd), data(weight),
                        data(dweight), data(dbias), stream)


cdef inline int _rows_backward_dispatch(int t, void* pg, void* px, void* pdx, Py_ssize_t R,
                                        Py_ssize_t H, void* pm, void* pr, void* pw, void* pdw,
                                        void* pdb, bint stream, int nt) noexcept nogil:
    if t == F32:
        return rows_backward_positions(<float*>pg, <float*>px, <float*>pdx, R, H, pm, pr, pw,
                                       pdw, pdb, stream, nt)
    elif t == F64:
        return rows_backward_positions(<double*>pg, <double*>px, <double*>pdx, R, H, pm, pr,
                                       pw, pdw, pdb, stream, nt)
    elif t == F16:
        return rows_backward_positions(<cnorm_f16*>pg, <cnorm_f16*>px, <cnorm_f16*>pdx, R, H,
                                       pm, pr, pw, pdw, pdb, stream, nt)
    return rows_backward_positions(<cnorm_bf16*>pg, <cnorm_bf16*>px, <cnorm_bf16*>pdx, R, H,
                                   pm, pr, pw, pdw, pdb, stream, nt)


cdef int _rows_backward_call(int t, void* pg, void* px, void* pdx, Py_ssize_t R, Py_ssize_t H,
                             void* pm, void* pr, void* pw, void* pdw, void* pdb,
                             bint stream) except -1:
    cdef int nt = threads_for(R * H)
    cdef int rc
    if keeps_gil(R * H, nt):
        rc = _rows_backward_dispatch(t, pg, px, pdx, R, H, pm, pr, pw, pdw, pdb, stream, nt)
    else:
        with nogil:
            rc = _rows_backward_dispatch(t, pg, px, pdx, R, H, pm, pr, pw, pdw, pdb, stream,
                                         nt)
    call_done(KIND_ROWS_BACKWARD, nt, R * H, t, 0)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for a backward pass")
    return 0


cdef inline bint _lead_ok(object v, int ptype, cnp.ndarray a) noexcept:
    """v is a C-contiguous native ndarray of type ptype and of a's shape without its last
    dimension (a per-row statistic of a)."""
    cdef cnp.ndarray s
    cdef int nd = cnp.PyArray_NDIM(a) - 1
    if type(v) is not cnp.ndarray:
        return False
    s = <cnp.ndarray>v
    if (cnp.PyArray_TYPE(s) != ptype or cnp.PyArray_NDIM(s) != nd
            or not cnp.PyArray_IS_C_CONTIGUOUS(s) or not cnp.PyArray_ISNOTSWAPPED(s)):
        return False
    for i in range(nd):
        if cnp.PyArray_DIMS(s)[i] != cnp.PyArray_DIMS(a)[i]:
            return False
    return True


def rows_backward_fast(dy, x, mean, rstd, weight, bint centred, Py_ssize_t stream_bytes,
                       out=None):
    """layer_norm_backward's (centred) or rms_norm_backward's common call, checked here in
    C: x a C-contiguous native ndarray of a type _fast_types takes, whose last dimension
    is not empty; dy an ndarray of x's layout (_same_layout); rstd, and mean when
    centred, per-row statistics of x's parameter type (_lead_ok); weight None or a
    contiguous 1-D ndarray of x's last dimension, of x's parameter type or x's own
    half-precision type (_fast_params); out None or an array _out_ok takes for x and
    for dy (either of them itself included).  Returns (dx, dweight, dbias), dbias None
    when not centred, bitwise the general path's; or None for the general path."""
    cdef cnp.ndarray a, g, dx, dweight, dbias = None
    cdef int t, pt, code, nd
    cdef Py_ssize_t H
    cdef cnp.npy_intp h_dim
    cdef void* pw
    cdef void* pb
    cdef float* buf
    if type(dy) is not cnp.ndarray or not _fast_x(x, 1, &t, &pt, &code):
        return None
    a = <cnp.ndarray>x
    g = <cnp.ndarray>dy
    nd = cnp.PyArray_NDIM(a)
    if not _same_layout(g, a):
        return None
    H = cnp.PyArray_DIMS(a)[nd - 1]
    if (H == 0 or not _lead_ok(rstd, pt, a) or centred and not _lead_ok(mean, pt, a)
            or out is not None and not (_out_ok(out, a) and (out is dy or _out_ok(out, g)))):
        return None
    if not _fast_params(weight, None, pt, t, code, H, &pw, &pb, &buf):
        return None
    try:
        dx = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(a), t, 0) if out is None else out
        h_dim = H
        dweight = cnp.PyArray_ZEROS(1, &h_dim, pt, 0)
        if centred:
            dbias = cnp.PyArray_ZEROS(1, &h_dim, pt, 0)
        if cnp.PyArray_SIZE(a):
            _rows_backward_call(code, cnp.PyArray_DATA(g), cnp.PyArray_DATA(a),
                                cnp.PyArray_DATA(dx), cnp.PyArray_SIZE(a) // H, H,
                                data(mean) if centred else NULL, data(rstd), pw,
                                data(dweight), data(dbias),
                                3 * cnp.PyArray_NBYTES(a) > stream_bytes)
    finally:
        free(buf)
    return dx, dweight, dbias


cdef inline int _planes_dispatch(int t, void* px, void* py, Planes g, void* pw, void* pb,
                                 StatsOut o, double eps, int meth, int act, bint stream,
                                 int nt) noexcept nogil:
    if t == F32:
        return planes_forward(<float*>px, <float*>py, g, pw, pb, o, eps, meth, act, stream, nt)
    elif t == F64:
        return planes_forward(<double*>px, <double*>py, g, pw, pb, o, eps, meth, act, stream, nt)
    elif t == F16:
        return planes_forward(<cnorm_f16*>px, <cnorm_f16*>py, g, pw, pb, o, eps, meth, act,
                              stream, nt)
    return planes_forward(<cnorm_bf16*>px, <cnorm_bf16*>py, g, pw, pb, o, eps, meth, act,
                          stream, nt)


def norm_planes(cnp.ndarray x, cnp.ndarray y, Py_ssize_t P, Py_ssize_t Q, Py_ssize_t S,
                Py_ssize_t Qp, Py_ssize_t run, weight, bias, mean_out, rstd_out, double eps,
                method, int act, bint stream, var_out=None):
    """Forward of the plane geometry (see _planes.pxi): channels-first group and
    instance norm."""
    _planes_call(dtype_code(x), cnp.PyArray_DATA(x), cnp.PyArray_DATA(y),
                 planes(P, Q, S, Qp, run), data(weight), data(bias),
                 stats_out(data(mean_out), data(rstd_out), data(var_out), NULL, NULL, 0.0), eps,
                 method_code(method), act, stream)


cdef int _planes_call(int t, void* px, void* py, Planes g, void* pw, void* pb, StatsOut o,
                      double eps, int meth, int act, bint stream) except -1:
    cdef Py_ssize_t work = g.P * g.Q * g.S
    cdef int nt = threads_for(work)
    cdef int rc
    if keeps_gil(work, nt):
        rc = _planes_dispatch(t, px, py, g, pw, pb, o, eps, meth, act, stream, nt)
    else:
        with nogil:
            rc = _planes_dispatch(t, px, py, g, pw, pb, o, eps, meth, act, stream, nt)
    call_done(KIND_GROUPS, nt, work, t, act)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for a group norm")
    return 0


def norm_planes_backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t P,
                         Py_ssize_t Q, Py_ssize_t S, Py_ssize_t Qp, Py_ssize_t run, mean, rstd,
                         weight, dweight, dbias, bint stream):
    cdef int nt = threads_for(P * Q * S)
    cdef Planes g = planes(P, Q, S, Qp, run)
    cdef void* pg = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pm = data(mean)
    cdef void* pr = data(rstd)
    cdef void* pw = data(weight)
    cdef void* pdw = data(dweight)
    cdef void* pdb = data(dbias)
    cdef int t = dtype_code(x)
    cdef int rc
    with nogil:
        if t == F32:
            rc = planes_backward(<float*>pg, <float*>px, <float*>pdx, g, pm, pr, pw, pdw, pdb,
                                 True, stream, nt)
        elif t == F64:
            rc = planes_backward(<double*>pg, <double*>px, <double*>pdx, g, pm, pr, pw, pdw, pdb,
                                 True, stream, nt)
        elif t == F16:
            rc = planes_backward(<cnorm_f16*>pg, <cnorm_f16*>px, <cnorm_f16*>pdx, g, pm, pr, pw,
                                 pdw, pdb, True, stream, nt)
        else:
            rc = planes_backward(<cnorm_bf16*>pg, <cnorm_bf16*>px, <cnorm_bf16*>pdx, g, pm, pr,
                                 pw, pdw, pdb, True, stream, nt)
    call_done(KIND_GROUPS_BACKWARD, nt, P * Q * S, t, 0)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for a group norm backward")


def norm_groups(cnp.ndarray x, cnp.ndarray y, Py_ssize_t N, Py_ssize_t HW, Py_ssize_t C,
                Py_ssize_t G, weight, bias, mean_out, rstd_out, double eps, method, int act,
                bint stream, var_out=None):
    """Forward of channels-last group (and instance) norm (see _groups.pxi)."""
    _groups_call(dtype_code(x), cnp.PyArray_DATA(x), cnp.PyArray_DATA(y), N, HW, C, G,
                 data(weight), data(bias),
                 stats_out(data(mean_out), data(rstd_out), data(var_out), NULL, NULL, 0.0), eps,
                 method_code(method), act, stream)


cdef inline int _groups_dispatch(int t, void* px, void* py, ColGroups m, void* pw, void* pb,
                                 StatsOut o, double eps, int meth, int act, bint stream,
                                 int nt) noexcept nogil:
    if t == F32:
        return groups_forward(<float*>px, <float*>py, m, pw, pb, o, eps, meth, act, stream, nt)
    elif t == F64:
        return groups_forward(<double*>px, <double*>py, m, pw, pb, o, eps, meth, act, stream,
                              nt)
    elif t == F16:
        return groups_forward(<cnorm_f16*>px, <cnorm_f16*>py, m, pw, pb, o, eps, meth, act,
                              stream, nt)
    return groups_forward(<cnorm_bf16*>px, <cnorm_bf16*>py, m, pw, pb, o, eps, meth, act,
                          stream, nt)


cdef int _groups_call(int t, void* px, void* py, Py_ssize_t N, Py_ssize_t HW, Py_ssize_t C,
                      Py_ssize_t G, void* pw, void* pb, StatsOut o, double eps, int meth,
                      int act, bint stream) except -1:
    cdef Py_ssize_t work = N * HW * C
    cdef int nt = threads_for(work)
    cdef ColGroups m = col_groups(N, HW, C, G, 1)
    cdef int rc
    if keeps_gil(work, nt):
        rc = _groups_dispatch(t, px, py, m, pw, pb, o, eps, meth, act, stream, nt)
    else:
        with nogil:
            rc = _groups_dispatch(t, px, py, m, pw, pb, o, eps, meth, act, stream, nt)
    call_done(KIND_GROUPS, nt, work, t, act)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for a group norm")
    return 0


def groups_fast(x, num_groups, weight, bias, eps, axis, int act, bint instance, out=None):
    """group_norm's and group_norm_forward's common call (instance: instance_norm's and
    instance_norm_forward's with the input statistics and no running ones, a group per
    channel), checked here in C: x a C-contiguous native ndarray of a type _fast_types
    takes, not empty, of 2 or more dimensions (3 for instance norm, with more than one
    spatial value per channel); axis an int naming the second or the last dimension;
    num_groups an int dividing the channels (ignored for instance norm); weight and
    bias None or contiguous 1-D ndarrays of length C, of x's parameter type or x's own
    half-precision type (_fast_params); eps a float in [0, inf); act an activation code
    (-1: one the fast path leaves to the general one); out None or an array _out_ok
    takes.  Returns (y, mean, rstd), the statistics of shape (N, groups), bitwise the
    general path's (two-pass statistics, plain stores); or None for the general path,
    which also raises any error."""
    cdef cnp.ndarray a, y
    cdef int t, pt, code, nd, ax, i
    cdef Py_ssize_t N, C, G, HW = 1
    cdef cnp.npy_intp sdims[2]
    cdef double e
    cdef void* pw
    cdef void* pb
    cdef float* buf
    if (type(axis) is not int or type(eps) is not float or act < 0
            or not instance and type(num_groups) is not int
            or not _fast_x(x, 3 if instance else 2, &t, &pt, &code)):
        return None
    a = <cnp.ndarray>x
    nd = cnp.PyArray_NDIM(a)
    e = eps
    if not -nd <= axis < nd or not (0.0 <= e < INFINITY) or cnp.PyArray_SIZE(a) == 0:
        return None
    ax = axis % nd
    if ax != 1 and ax != nd - 1:
        return None
    N = cnp.PyArray_DIMS(a)[0]
    C = cnp.PyArray_DIMS(a)[ax]
    for i in range(1, nd):
        if i != ax:
            HW *= cnp.PyArray_DIMS(a)[i]
    G = C if instance else num_groups
    if G <= 0 or C % G or instance and HW <= 1:
        return None
    if out is not None and not _out_ok(out, a):
        return None
    if not _fast_params(weight, bias, pt, t, code, C, &pw, &pb, &buf):
        return None
    try:
        y = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(a), t, 0) if out is None else out
        sdims[0] = N
        sdims[1] = G
        mean = cnp.PyArray_EMPTY(2, sdims, pt, 0)
        rstd = cnp.PyArray_EMPTY(2, sdims, pt, 0)
        if ax == nd - 1:     # channels last (and (N, C)): the column groups
            _groups_call(code, cnp.PyArray_DATA(a), cnp.PyArray_DATA(y), N, HW, C, G, pw, pb,
                         stats_out(data(mean), data(rstd), NULL, NULL, NULL, 0.0), e,
                         TWO_PASS, act, False)
        else:                # channels first: the planes of group_geometry
            _planes_call(code, cnp.PyArray_DATA(a), cnp.PyArray_DATA(y),
                         planes(1, N * G, (C // G) * HW, G, HW), pw, pb,
                         stats_out(data(mean), data(rstd), NULL, NULL, NULL, 0.0), e,
                         TWO_PASS, act, False)
    finally:
        free(buf)
    return y, mean, rstd


def norm_groups_backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t N,
                         Py_ssize_t HW, Py_ssize_t C, Py_ssize_t G, mean, rstd, weight,
                         dweight, dbias, bint stream):
    cdef int nt = threads_for(N * HW * C)
    cdef ColGroups m = col_groups(N, HW, C, G, 1)
    cdef void* pg = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pm = data(mean)
    cdef void* pr = data(rstd)
    cdef void* pw = data(weight)
    cdef void* pdw = data(dweight)
    cdef void* pdb = data(dbias)
    cdef int t = dtype_code(x)
    cdef int rc
    with nogil:
        if t == F32:
            rc = groups_backward(<float*>pg, <float*>px, <float*>pdx, m, pm, pr, pw, pdw, pdb,
                                 True, stream, nt)
        elif t == F64:
            rc = groups_backward(<double*>pg, <double*>px, <double*>pdx, m, pm, pr, pw, pdw, pdb,
                                 True, stream, nt)
        elif t == F16:
            rc = groups_backward(<cnorm_f16*>pg, <cnorm_f16*>px, <cnorm_f16*>pdx, m, pm, pr, pw,
                                 pdw, pdb, True, stream, nt)
        else:
            rc = groups_backward(<cnorm_bf16*>pg, <cnorm_bf16*>px, <cnorm_bf16*>pdx, m, pm, pr,
                                 pw, pdw, pdb, True, stream, nt)
    call_done(KIND_GROUPS_BACKWARD, nt, N * HW * C, t, 0)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for a group norm backward")


cdef int _stats_dispatch(int t, bint samples, void* px, Py_ssize_t A, Py_ssize_t B,
                         Py_ssize_t C, int meth, int nt, double* pm, double* pq) noexcept nogil:
    if samples:
        if t == F32:
            return sample_column_stats(<float*>px, A, B, C, meth, nt, pm, pq)
        elif t == F64:
            return sample_column_stats(<double*>px, A, B, C, meth, nt, pm, pq)
        elif t == F16:
            return sample_column_stats(<cnorm_f16*>px, A, B, C, meth, nt, pm, pq)
        return sample_column_stats(<cnorm_bf16*>px, A, B, C, meth, nt, pm, pq)
    if t == F32:
        return channel_stats(<float*>px, A, B, C, meth, nt, pm, pq)
    elif t == F64:
        return channel_stats(<double*>px, A, B, C, meth, nt, pm, pq)
    elif t == F16:
        return channel_stats(<cnorm_f16*>px, A, B, C, meth, nt, pm, pq)
    return channel_stats(<cnorm_bf16*>px, A, B, C, meth, nt, pm, pq)


def moment_stats(cnp.ndarray x, Py_ssize_t A, Py_ssize_t B, Py_ssize_t C, bint samples,
                 method, cnp.ndarray mean, cnp.ndarray m2):
    """Float64 means and M2 of x (C-contiguous) viewed as (A, B, C): per channel b over
    A runs of C (batch norm's statistics; mean and m2 of length B) or, with samples,
    per (a, c) over the B rows of each (B, C) matrix (lengths A * C)."""
    cdef int meth = method_code(method)
    cdef int nt = threads_for(A * B * C)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pq = <double*>cnp.PyArray_DATA(m2)
    cdef int t = dtype_code(x)
    cdef int rc
    if keeps_gil(A * B * C, nt):
        rc = _stats_dispatch(t, samples, px, A, B, C, meth, nt, pm, pq)
    else:
        with nogil:
            rc = _stats_dispatch(t, samples, px, A, B, C, meth, nt, pm, pq)
    call_done(KIND_MOMENTS, nt, A * B * C, t, 0)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for moments")
