# Channels-last group and instance norm: x viewed as (N, HW, C), statistics per
# (sample n, group g) over the HW rows and the C / G columns of the group.
# Each sample is an (HW, C) matrix of column statistics (_columns.pxi), whose
# columns are then merged group by group, as batch norm merges a channel's
# columns; the output pass takes per-column coefficients.  Instance norm is
# G = C.  Samples are taken in order and each one's passes are parallel, so
# results do not depend on the thread count.

cdef int groups_forward(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t HW,
                        Py_ssize_t C, Py_ssize_t G, const floating* w, const floating* b,
                        floating* mean_out, floating* rstd_out, double eps, int method, int act,
                        bint stream, int nt) noexcept nogil:
    cdef Py_ssize_t cs = C // G, n, g, c
    cdef Moments mo
    cdef double rstd
    cdef Affine p
    cdef double* stats = <double*>malloc((2 * C + 1) * sizeof(double))
    cdef floating* cols = <floating*>malloc((4 * C + 1) * sizeof(floating))
    cdef int rc = 0 if stats != NULL and cols != NULL else -1
    for n in range(N if rc == 0 else 0):
        rc = column_moments(x + n * HW * C, HW, C, method, nt, stats, stats + C)
        if rc != 0:
            break
        for g in range(G):
            mo = channel_moments(stats, stats + C, g, cs, <double>HW)
            rstd = 1.0 / sqrt(mo.m2 / mo.n + eps)
            if mean_out != NULL:
                mean_out[n * G + g] = <floating>mo.mean
                rstd_out[n * G + g] = <floating>rstd
            for c in range(g * cs, (g + 1) * cs):
                p = make_affine(mo.mean, rstd * (w[c] if w != NULL else 1.0),
                                b[c] if b != NULL else 0.0, <floating>0)
                set_affine_columns(p, c, 1, C, cols)
        normalize_rows(x + n * HW * C, y + n * HW * C, HW, C, cols, act, stream, nt)
    free(stats)
    free(cols)
    return rc


cdef int groups_backward(const floating* g, const floating* x, floating* dx, Py_ssize_t N,
                         Py_ssize_t HW, Py_ssize_t C, Py_ssize_t G, const floating* mean,
                         const floating* rstd, const floating* w, floating* dweight,
                         floating* dbias, bint stream, int nt) noexcept nogil:
    """dx = (dy * rstd * w_c - (x - mean) * rstd**3 * B / S) - rstd * A / S per
    (n, g), with A = sum(dy * w), B = sum(dy * w * (x - mean)) over the group's
    S = HW * C / G values."""
    cdef Py_ssize_t cs = C // G, n, gi, c, off
    cdef double r, A, B, wc, S = <double>(HW * cs)
    cdef double* buf = <double*>malloc((5 * C + 1) * sizeof(double))
    cdef floating* cols = <floating*>malloc((4 * C + 1) * sizeof(floating))
    cdef double* sg
    cdef double* sgx
    cdef double* mu
    cdef double* dw
    cdef double* db
    cdef int rc = 0 if buf != NULL and cols != NULL else -1
    sg = buf
    sgx = buf + C
    mu = buf + 2 * C
    dw = buf + 3 * C
    db = buf + 4 * C
    if rc == 0:
        for c in range(C):
            dw[c] = 0.0
            db[c] = 0.0
    for n in range(N if rc == 0 else 0):
        off = n * HW * C
        for c in range(C):
            mu[c] = mean[n * G + c // cs]
        rc = column_dots(g + off, x + off, HW, C, mu, nt, sg, sgx)
        if rc != 0:
            break
        for gi in range(G):
            r = rstd[n * G + gi]
            A = 0.0
            B = 0.0
            for c in range(gi * cs, (gi + 1) * cs):
                wc = w[c] if w != NULL else 1.0
                A += wc * sg[c]
                B += wc * sgx[c]
                dw[c] += sgx[c] * r
                db[c] += sg[c]
            for c in range(gi * cs, (gi + 1) * cs):
                wc = w[c] if w != NULL else 1.0
                set_columns(mean[n * G + gi], r * wc, r * r * r * B / S, r * A / S, c, 1, C,
                            cols)
        grad_rows_parallel(g + off, x + off, dx + off, HW, C, cols, True, stream, nt)
    if rc == 0:
        for c in range(C):
            dweight[c] = <floating>dw[c]
            dbias[c] = <floating>db[c]
    free(buf)
    free(cols)
    return rc
