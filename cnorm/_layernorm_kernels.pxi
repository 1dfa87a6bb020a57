# Layer-normalization kernels, included by _layernorm.pyx (any x86-64) and
# _layernorm_v3.pyx (compiled for x86-64-v3, AVX2); see cnorm/_dispatch.py.
#
# The Python layer presents x as a C-contiguous (R, H) matrix, one row per
# sample.  A row's statistics come from batch norm's blocked helpers (a row is a
# one-run sequence), and the row is normalised right after, while in L1/L2.
# Results do not depend on the thread count: rows are independent, and
# backward's dweight/dbias go through per-block partials whose blocks depend
# only on the shape, merged in order.

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

from cnorm._moments cimport (
    PREFETCH_BYTES, STREAM_TILE, Moments, chunked_moments, cnorm_ln_affine_f32, cnorm_ln_affine_f64,
    cnorm_ln_dx_f32, cnorm_ln_dx_f64, cnorm_prefetch, cnorm_prefetch_write, cnorm_stream_fence,
    prefetch_rows, row_grad_sums, TWO_PASS, WELFORD,
)
from cnorm._openmp cimport threads_for

cnp.import_array()

cdef enum:
    MAX_COLUMN_BLOCKS = 64      # at most this many row blocks of dweight/dbias partials
    ROWS_WORK = 65536           # elements per row block, at least
    PREFETCH_WRITE_MAX = 1024   # rows up to this many bytes prefetch y a row ahead
                                # (see forward_row) and are never streamed (slower)


cdef inline bint streams_rows(Py_ssize_t H, bint stream, const floating* like) noexcept nogil:
    """Whether rows of H elements get streaming stores: as the caller asks, except
    rows of at most PREFETCH_WRITE_MAX bytes, which never do.  `like` only selects
    the data type."""
    return stream and H * <Py_ssize_t>sizeof(floating) > PREFETCH_WRITE_MAX


cdef inline void row_affine(const floating* x, floating* y, Py_ssize_t n, double mean, double rstd,
                            const floating* w, const floating* b, bint stream) noexcept nogil:
    """y = ((x - hi) - lo) * rstd [* w] [+ b], with mean = hi + lo split in x's type;
    w and b may each be NULL."""
    cdef floating hi = <floating>mean
    cdef floating lo = <floating>(mean - <double>hi)
    if floating is float:
        cnorm_ln_affine_f32(x, y, n, hi, lo, <float>rstd, w, b, stream)
    else:
        cnorm_ln_affine_f64(x, y, n, hi, lo, rstd, w, b, stream)


cdef inline void forward_row(const floating* x, floating* y, Py_ssize_t H, const floating* w,
                             const floating* b, floating* mean_out, floating* rstd_out,
                             double eps, int method, bint stream,
                             const floating* ahead) noexcept nogil:
    """One row; `ahead` (or NULL) is a later row to prefetch while this one is
    normalised, so that memory keeps streaming during the in-cache passes.

    Plain stores read each line of y first, so y is prefetched for writing: a
    row of up to PREFETCH_BYTES asks for its own lines before its statistics
    passes, which hide the wait; one of up to PREFETCH_WRITE_MAX, too brief for
    that, asks for the lines of the row `ahead`.  Longer rows prefetch nothing:
    the hardware keeps up, and a burst for a whole long row stalls the loop."""
    cdef Moments mo
    cdef double rstd
    cdef Py_ssize_t t = 0, L
    cdef Py_ssize_t nbytes = H * <Py_ssize_t>sizeof(floating)
    cdef bint short_row = nbytes <= PREFETCH_BYTES
    if not stream and short_row and nbytes > PREFETCH_WRITE_MAX:
        cnorm_prefetch_write(y, nbytes)
    mo = chunked_moments(x, H, H, H, method)
    rstd = 1.0 / sqrt(mo.m2 / mo.n + eps)
    if mean_out != NULL:
        mean_out[0] = <floating>mo.mean
        rstd_out[0] = <floating>rstd
    if not stream:
        if ahead != NULL and short_row:
            cnorm_prefetch(ahead, nbytes)
            if nbytes <= PREFETCH_WRITE_MAX:
                cnorm_prefetch_write(y + (ahead - x), nbytes)
        row_affine(x, y, H, mo.mean, rstd, w, b, False)
        return
    # streaming: the row ahead is prefetched a tile at a time, spread over the
    # row; the caller fences once after its rows
    while t < H:
        L = STREAM_TILE if H - t > STREAM_TILE else H - t
        if ahead != NULL:
            cnorm_prefetch(ahead + t, L * sizeof(floating))
        row_affine(x + t, y + t, L, mo.mean, rstd, w + t if w != NULL else NULL,
                   b + t if b != NULL else NULL, True)
        t += L

cdef void forward_rows(const floating* x, floating* y, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t R,
                       Py_ssize_t H, const floating* w, const floating* b, floating* mean_out,
                       floating* rstd_out, double eps, int method, bint stream) noexcept nogil:
    """Rows [r0, r1) of R, each prefetching the row at least PREFETCH_BYTES ahead;
    when streaming, one fence after them (a fence per row is much slower)."""
    cdef Py_ssize_t d = prefetch_rows(H, sizeof(floating))
    cdef Py_ssize_t r
    for r in range(r0, r1):
        forward_row(x + r * H, y + r * H, H, w, b,
                    mean_out + r if mean_out != NULL else NULL,
                    rstd_out + r if rstd_out != NULL else NULL, eps, method, stream,
                    x + (r + d) * H if r + d < R else NULL)
    if stream:
        cnorm_stream_fence()


cdef void forward(const floating* x, floating* y, Py_ssize_t R, Py_ssize_t H, const floating* w,
                  const floating* b, floating* mean_out, floating* rstd_out, double eps,
                  int method, bint stream, int nt) noexcept nogil:
    # one contiguous block of rows per thread, as a static schedule over rows gives
    cdef Py_ssize_t rb = (R + nt - 1) // nt
    cdef Py_ssize_t k
    stream = streams_rows(H, stream, x)
    if nt == 1:     # no parallel region at all: even an inactive one costs a microsecond
        forward_rows(x, y, 0, R, R, H, w, b, mean_out, rstd_out, eps, method, stream)
        return
    for k in prange(nt, num_threads=nt, schedule='static'):
        forward_rows(x, y, k * rb, (k + 1) * rb if (k + 1) * rb < R else R, R, H, w, b,
                     mean_out, rstd_out, eps, method, stream)


cdef inline void backward_row(const floating* g, const floating* x, floating* dx, Py_ssize_t H,
                              double mean, double rstd, const floating* w, double* dw,
                              double* db, bint stream) noexcept nogil:
    """dx of one row, and its terms of dweight and dbias (w: the weight, or ones)."""
    cdef double sums[2]
    cdef double sum_g, sum_gx
    cdef floating hi = <floating>mean
    cdef floating lo = <floating>(mean - <double>hi)
    cdef floating ra, rb, rc
    # As in forward_row, only a short row asks for dx's lines before its sums pass:
    # longer rows were slower with it (dx likely evicting g and x from L1).
    if not stream and H * <Py_ssize_t>sizeof(floating) <= PREFETCH_WRITE_MAX:
        cnorm_prefetch_write(dx, H * sizeof(floating))
    # every sum before any dx: dx may be the very buffer of g or x
    row_grad_sums(g, x, w, H, mean, rstd, sums, dw, db)
    sum_g = sums[0]
    sum_gx = sums[1]
    # dx = rstd * (g*w - sum_g / H - (x - mean) * rstd**2 * sum_gx / H)
    ra = <floating>rstd
    rb = <floating>(rstd * rstd * rstd * sum_gx / H)
    rc = <floating>(rstd * sum_g / H)
    if floating is float:
        cnorm_ln_dx_f32(g, x, w, dx, H, hi, lo, ra, rb, rc, stream)
    else:
        cnorm_ln_dx_f64(g, x, w, dx, H, hi, lo, ra, rb, rc, stream)


cdef inline void backward_block(const floating* g, const floating* x, floating* dx, Py_ssize_t R,
                                Py_ssize_t H, Py_ssize_t rb, Py_ssize_t k, const floating* mean,
                                const floating* rstd, const floating* w, double* part,
                                bint stream) noexcept nogil:
    """Rows of block k; its dweight and dbias partials go to part[2k*H : (2k+2)*H]."""
    cdef Py_ssize_t i, r
    cdef Py_ssize_t r1 = (k + 1) * rb if (k + 1) * rb < R else R
    cdef double* dw = part + 2 * k * H
    cdef double* db = part + (2 * k + 1) * H
    for i in range(2 * H):
        dw[i] = 0.0
    for r in range(k * rb, r1):
        backward_row(g + r * H, x + r * H, dx + r * H, H, mean[r], rstd[r], w, dw, db, stream)
    if stream:
        cnorm_stream_fence()


cdef int backward(const floating* g, const floating* x, floating* dx, Py_ssize_t R, Py_ssize_t H,
                  const floating* mean, const floating* rstd, const floating* w,
                  floating* dweight, floating* dbias, bint stream, int nt) noexcept nogil:
    # Row blocks: at least ROWS_WORK elements each, at most MAX_COLUMN_BLOCKS of them;
    # both bounds depend on the shape alone.
    cdef Py_ssize_t rb = (ROWS_WORK + H - 1) // H
    cdef Py_ssize_t nblk, k, i
    cdef double* part
    cdef floating* ones = NULL
    cdef double sw, sb
    stream = streams_rows(H, stream, x)
    if rb * MAX_COLUMN_BLOCKS < R:
        rb = (R + MAX_COLUMN_BLOCKS - 1) // MAX_COLUMN_BLOCKS
    nblk = (R + rb - 1) // rb
    part = <double*>malloc((2 * nblk * H + 1) * sizeof(double))
    if part == NULL:
        return -1
    if w == NULL:   # no weight: the same loops, with ones
        ones = <floating*>malloc(H * sizeof(floating))
        if ones == NULL:
            free(part)
            return -1
        for i in range(H):
            ones[i] = 1
        w = ones
    # One loop for every thread count: GCC compiled a separate serial loop (as
    # forward has) with an inlined backward_block far worse than the parallel one.
    for k in prange(nblk, num_threads=nt, schedule='static', use_threads_if=nt > 1):
        backward_block(g, x, dx, R, H, rb, k, mean, rstd, w, part, stream)
    for i in range(H):
        sw = 0.0
        sb = 0.0
        for k in range(nblk):
            sw += part[2 * k * H + i]
            sb += part[(2 * k + 1) * H + i]
        dweight[i] = <floating>sw
        dbias[i] = <floating>sb
    free(part)
    free(ones)
    return 0


# ---------------------------------------------------------------------------
# Python-facing shims: arguments were validated by cnorm/layernorm.py.
# ---------------------------------------------------------------------------

cdef inline void* data(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline void _forward_dispatch(cnp.ndarray x, void* px, void* py, Py_ssize_t R, Py_ssize_t H,
                                   void* pw, void* pb, void* pm, void* pr, double eps, int meth,
                                   bint stream, int nt) noexcept nogil:
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        forward[float](<float*>px, <float*>py, R, H, <float*>pw, <float*>pb, <float*>pm,
                       <float*>pr, eps, meth, stream, nt)
    else:
        forward[double](<double*>px, <double*>py, R, H, <double*>pw, <double*>pb, <double*>pm,
                        <double*>pr, eps, meth, stream, nt)


def layer_norm(cnp.ndarray x, cnp.ndarray y, Py_ssize_t R, Py_ssize_t H, weight, bias,
               mean_out, rstd_out, double eps, method, bint stream):
    cdef int meth = WELFORD if method == "welford" else TWO_PASS
    cdef int nt = threads_for(R * H)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* pw = data(weight)
    cdef void* pb = data(bias)
    cdef void* pm = data(mean_out)
    cdef void* pr = data(rstd_out)
    if nt == 1 and R * H < 16384:   # small: releasing the GIL costs more than it gives
        _forward_dispatch(x, px, py, R, H, pw, pb, pm, pr, eps, meth, stream, nt)
    else:
        with nogil:
            _forward_dispatch(x, px, py, R, H, pw, pb, pm, pr, eps, meth, stream, nt)


def layer_norm_backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t R,
                        Py_ssize_t H, mean, rstd, weight, dweight, dbias, bint stream):
    cdef int nt = threads_for(R * H)
    cdef void* pg = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pm = data(mean)
    cdef void* pr = data(rstd)
    cdef void* pw = data(weight)
    cdef void* pdw = data(dweight)
    cdef void* pdb = data(dbias)
    cdef int rc
    with nogil:
        if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
            rc = backward[float](<float*>pg, <float*>px, <float*>pdx, R, H, <float*>pm,
                                 <float*>pr, <float*>pw, <float*>pdw, <float*>pdb, stream, nt)
        else:
            rc = backward[double](<double*>pg, <double*>px, <double*>pdx, R, H, <double*>pm,
                                  <double*>pr, <double*>pw, <double*>pdw, <double*>pdb, stream, nt)
    if rc != 0:
        raise MemoryError("cnorm: could not allocate scratch memory for layer_norm_backward")
