# The kernel module's body, included by _kernels.pyx and _kernels_v3.pyx: the
# shared imports, then one file per geometry, then the shims.

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

from cnorm._moments cimport (
    CHUNK, LANES, PREFETCH_BYTES, ROW_GROUP, STREAM_TILE, TWO_PASS, WELFORD, Affine, Moments,
    chunked_dot, chunked_moments, cnorm_affine_f32, cnorm_affine_f64, cnorm_grad_cols_f32,
    cnorm_grad_cols_f64, cnorm_grad_f32, cnorm_grad_f64, cnorm_ln_affine_f32, cnorm_ln_affine_f64,
    cnorm_ln_dx_f32, cnorm_ln_dx_f64, cnorm_prefetch, cnorm_prefetch_write, cnorm_stream_fence,
    col_dot2_x4, col_sum2, col_sum2_x4, col_welford_x4, lanes_total, merge_columns, moments_merge,
    moments_zero, one_pass_ok, prefetch_rows, row_grad_sums, rows_affine, run_affine, run_dot2,
    run_sum2, run_sumsq, seq_dot, seq_moments, short_row_bytes,
)
from cnorm._openmp cimport omp_get_thread_num, threads_for

cnp.import_array()


cdef inline void* data(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline int method_code(object method) except -1:
    if method == "welford":
        return WELFORD
    return TWO_PASS


include "_columns.pxi"
include "_batchnorm_kernels.pxi"
include "_rows.pxi"
include "_groups.pxi"
include "_shims.pxi"
