# The kernel module's body, included by _kernels.pyx and _kernels_v3.pyx: the
# shared imports, then one file per geometry, then the shims.

cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport INFINITY, sqrt
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from cnorm._moments cimport (
    CHUNK, CNORM_LD1_bf16, CNORM_LD1_f16, LANES, PREFETCH_BYTES, PREFETCH_WRITE_MAX, ROW_GROUP,
    STREAM_TILE, TWO_PASS, WELFORD, Affine, Moments, chunked_dot, chunked_moments, cnorm_add, cnorm_affine, cnorm_copy, cnorm_bf16, cnorm_col_dot2_x4, cnorm_col_sum2,
    cnorm_col_sum2_x4, cnorm_col_welford_x4, cnorm_f16, cnorm_grad, cnorm_grad_cols,
    cnorm_ln_affine, cnorm_ln_dx, cnorm_next_segment_max, cnorm_prefetch, cnorm_prefetch_l2,
    cnorm_prefetch_bursts, cnorm_prefetch_write, cnorm_row_grad_sums, cnorm_row_grad_sums2,
    cnorm_set_prefetch_bursts, cnorm_stream_fence,
    cnorm_sumsq, lanes_total, ld, may_stream, merge_columns, moments_merge, moments_zero,
    one_pass_ok, pat, pget, prefetch_rows, pround, pset, psize, real, row_moments, rows_affine,
    run_sqdev, shifted_moments,
    seq_dot, seq_moments, short_row_bytes, sum2_piece, fold_tails, zero_lanes,
)
from cnorm._openmp cimport (
    KIND_BN_BACKWARD, KIND_BN_INFER, KIND_BN_TRAIN, KIND_GROUPS, KIND_GROUPS_BACKWARD,
    KIND_MOMENTS, KIND_ROWS, KIND_ROWS_BACKWARD, call_done, omp_get_thread_num, threads_for,
)

cnp.import_array()


cdef inline void* data(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef enum DType:     # the storage types, as the shims dispatch on them
    F32 = 0
    F64 = 1
    F16 = 2
    BF16 = 3


cdef inline int dtype_code(cnp.ndarray x) noexcept:
    """x's storage type; the Python layer admits only these four (bfloat16 is
    ml_dtypes' user-defined type, the one 2-byte type that is not float16)."""
    cdef int t = cnp.PyArray_TYPE(x)
    if t == cnp.NPY_FLOAT32:
        return F32
    if t == cnp.NPY_FLOAT64:
        return F64
    if t == cnp.NPY_FLOAT16:
        return F16
    return BF16


cdef inline int method_code(object method) except -1:
    if method == "welford":
        return WELFORD
    return TWO_PASS


include "_columns.pxi"
include "_planes.pxi"
include "_groups.pxi"
include "_batchnorm_kernels.pxi"
include "_rows.pxi"
include "_shims.pxi"
