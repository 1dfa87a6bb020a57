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
    if nt == 1 and R * H < 16384:   # small: releasing the GIL costs more than it gives
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


cdef inline bint _fast_types(int t, int* pt, int* code) noexcept:
    """The fast paths' dtypes: for x of NumPy type t (float32, float64 or float16), the
    parameters' NumPy type and the kernels' dtype code; False for any other type."""
    if t == cnp.NPY_FLOAT32:
        pt[0], code[0] = cnp.NPY_FLOAT32, F32
    elif t == cnp.NPY_FLOAT64:
        pt[0], code[0] = cnp.NPY_FLOAT64, F64
    elif t == cnp.NPY_FLOAT16:
        pt[0], code[0] = cnp.NPY_FLOAT32, F16
    else:
        return False
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


def rows_fast(x, normalized_shape, weight, bias, eps, bint centred, double default_eps,
              Py_ssize_t stream_bytes, out=None):
    """layer_norm's (centred) or rms_norm's common call, checked here in C: x a
    C-contiguous float32, float64 or float16 ndarray whose last dimension is
    normalized_shape (an int); weight and bias None or contiguous 1-D ndarrays of x's
    parameter type and that length; eps a float in [0, inf), or None for default_eps
    (NaN when the op has no default); out None or an array _out_ok takes.
    Returns y (out when given), computed by the kernels exactly as the general path
    computes it, or None when the call is not of that kind: the Python layer then
    takes its general path, which also raises any error.  Outputs stream past
    stream_bytes moved."""
    cdef cnp.ndarray a, y
    cdef int t, pt, code
    cdef Py_ssize_t H, R, nd
    cdef double e
    if type(x) is not cnp.ndarray or type(normalized_shape) is not int:
        return None
    if eps is None:
        e = default_eps
        if e != e:              # NaN: eps=None is not a spelling this op takes
            return None
    elif type(eps) is float:
        e = eps
        if not (0.0 <= e < INFINITY):
            return None
    else:
        return None
    a = <cnp.ndarray>x
    t = cnp.PyArray_TYPE(a)
    if not _fast_types(t, &pt, &code):
        return None
    nd = cnp.PyArray_NDIM(a)
    H = normalized_shape
    if (nd == 0 or H <= 0 or cnp.PyArray_DIMS(a)[nd - 1] != H
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or not _param_ok(weight, pt, H) or not _param_ok(bias, pt, H)):
        return None
    if out is None:
        y = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(a), t, 0)
    elif _out_ok(out, a):
        y = <cnp.ndarray>out
    else:
        return None
    R = cnp.PyArray_SIZE(a) // H
    if R:
        _rows_call(code, cnp.PyArray_DATA(a), cnp.PyArray_DATA(y), R, H,
                   row_map(centred, 0), data(weight), data(bias), NULL, NULL, e,
                   TWO_PASS, 2 * cnp.PyArray_NBYTES(a) > stream_bytes, NULL, NULL)
    return y


def norm_rows_backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t R,
                       Py_ssize_t H, mean, rstd, weight, dweight, dbias, bint stream):
    """Backward of the row geometry; mean None means not centred (RMS norm)."""
    cdef int nt = threads_for(R * H)
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
            rc = rows_backward_positions(<float*>pg, <float*>px, <float*>pdx, R, H, pm, pr, pw,
                                         pdw, pdb, stream, nt)
        elif t == F64:
            rc = rows_backward_positions(<double*>pg, <double*>px, <double*>pdx, R, H, pm, pr, pw,
                                         pdw, pdb, stream, nt)
        elif t == F16:
            rc = rows_backward_positions(<cnorm_f16*>pg, <cnorm_f16*>px, <cnorm_f16*>pdx, R, H,
                                         pm, pr, pw, pdw, pdb, stream, nt)
        else:
            rc = rows_backward_positions(<cnorm_bf16*>pg, <cnorm_bf16*>px, <cnorm_bf16*>pdx, R, H,
                                         pm, pr, pw, pdw, pdb, stream, nt)
    call_done(KIND_ROWS_BACKWARD, nt, R * H, t, 0)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for a backward pass")


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
    cdef int nt = threads_for(P * Q * S)
    cdef Planes g = planes(P, Q, S, Qp, run)
    cdef StatsOut o = stats_out(data(mean_out), data(rstd_out), data(var_out), NULL, NULL, 0.0)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* pw = data(weight)
    cdef void* pb = data(bias)
    cdef int meth = method_code(method)
    cdef int t = dtype_code(x)
    cdef int rc
    if nt == 1 and P * Q * S < 16384:   # small: releasing the GIL costs more than it gives
        rc = _planes_dispatch(t, px, py, g, pw, pb, o, eps, meth, act, stream, nt)
    else:
        with nogil:
            rc = _planes_dispatch(t, px, py, g, pw, pb, o, eps, meth, act, stream, nt)
    call_done(KIND_GROUPS, nt, P * Q * S, t, act)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for a group norm")


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
    cdef int meth = method_code(method)
    cdef int nt = threads_for(N * HW * C)
    cdef ColGroups m = col_groups(N, HW, C, G, 1)
    cdef StatsOut o = stats_out(data(mean_out), data(rstd_out), data(var_out), NULL, NULL, 0.0)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* pw = data(weight)
    cdef void* pb = data(bias)
    cdef int t = dtype_code(x)
    cdef int rc
    with nogil:
        if t == F32:
            rc = groups_forward(<float*>px, <float*>py, m, pw, pb, o, eps, meth, act, stream, nt)
        elif t == F64:
            rc = groups_forward(<double*>px, <double*>py, m, pw, pb, o, eps, meth, act, stream,
                                nt)
        elif t == F16:
            rc = groups_forward(<cnorm_f16*>px, <cnorm_f16*>py, m, pw, pb, o, eps, meth, act,
                                stream, nt)
        else:
            rc = groups_forward(<cnorm_bf16*>px, <cnorm_bf16*>py, m, pw, pb, o, eps, meth, act,
                                stream, nt)
    call_done(KIND_GROUPS, nt, N * HW * C, t, act)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for a group norm")


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
    if nt == 1 and A * B * C < 16384:   # small: releasing the GIL costs more than it gives
        rc = _stats_dispatch(t, samples, px, A, B, C, meth, nt, pm, pq)
    else:
        with nogil:
            rc = _stats_dispatch(t, samples, px, A, B, C, meth, nt, pm, pq)
    call_done(KIND_MOMENTS, nt, A * B * C, t, 0)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for moments")
