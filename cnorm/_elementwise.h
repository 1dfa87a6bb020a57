/* The elementwise output loops of every kernel, in C: y from x and per-run or
 * per-column coefficients, with plain or streaming (non-temporal) stores.
 *
 * Why C: a streaming store must be the very instruction that writes y.  Cython
 * can only compute into a buffer and copy that out with streaming stores, which
 * costs a second store and load of every element.
 *
 * Each formula is written once, as a BODY macro over a load (LD), a store (ST)
 * and an activation (ACT: none, ReLU or SiLU); CNORM_OUTPUT_LOOP expands it for
 * 32-byte GCC vector values (the main loop) and for scalars (the elements
 * before the first 32-byte boundary of y, and the tail).  Vector and scalar
 * expansions do the same IEEE operations in the same order, and the kernels
 * are built with -ffp-contract=off, so every element gets the same bits
 * whichever path, build or store kind writes it.  Other compilers, or
 * CNORM_LANES_SCALAR, get the scalar loops alone (tests/test_lanes.py
 * compares them).
 *
 * Streaming stores need y aligned to its element size; otherwise (a
 * misaligned out= array) the loop stores plainly.  Elements before y's first
 * 16-byte boundary, and a tail shorter than 16 bytes, are stored plainly.  The caller issues
 * cnorm_stream_fence() before anything reads y.
 */
#ifndef CNORM_ELEMENTWISE_H
#define CNORM_ELEMENTWISE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_dtypes.h"
#include "_stream.h"

#define CNORM_LD_S(p) (*(p))
#define CNORM_ST_S(p, v) (*(p) = (v))
#define CNORM_RELU_S(v) ((v) < 0 ? 0 : (v))     /* NaN stays NaN, -0.0 stays -0.0 */

#if defined(__GNUC__) && !defined(CNORM_LANES_SCALAR)

/* Vectors of 32 bytes (the main loop) and 16 bytes (a streamed output's first
 * and last elements when they are 16- but not 32-byte aligned: NumPy's large
 * arrays start 16 bytes past a page, and a row of a row-major matrix may too).
 * The suffix W is the width in bytes. */
#define CNORM_VECTORS(W)                                                        \
typedef float cnorm_vf32_##W __attribute__((vector_size(W)));                   \
typedef double cnorm_vf64_##W __attribute__((vector_size(W)));                  \
typedef int32_t cnorm_vi32_##W __attribute__((vector_size(W)));                 \
typedef int64_t cnorm_vi64_##W __attribute__((vector_size(W)));
CNORM_VECTORS(32)
CNORM_VECTORS(16)
#if defined(__AVX512F__) && defined(__AVX512DQ__)
/* x86-64-v4 builds: 64-byte vectors for the main loop of plain stores */
#define CNORM_HAVE_V64 1
CNORM_VECTORS(64)
#endif

/* Loads and stores as macros (a function returning a vector draws GCC's
 * -Wpsabi note in the baseline build); unaligned addresses are fine. */
#define CNORM_LD(S, W, p) __extension__({ cnorm_v##S##_##W v_; memcpy(&v_, (p), W); v_; })
#define CNORM_ST(S, W, p, v) do { cnorm_v##S##_##W t_ = (v); memcpy((p), &t_, W); } while (0)
#define cnorm_ld_f32_32(p) CNORM_LD(f32, 32, p)
#define cnorm_ld_f64_32(p) CNORM_LD(f64, 32, p)
#define cnorm_ld_f32_16(p) CNORM_LD(f32, 16, p)
#define cnorm_ld_f64_16(p) CNORM_LD(f64, 16, p)
#define cnorm_st_f32_32(p, v) CNORM_ST(f32, 32, p, v)
#define cnorm_st_f64_32(p, v) CNORM_ST(f64, 32, p, v)
#define cnorm_st_f32_16(p, v) CNORM_ST(f32, 16, p, v)
#define cnorm_st_f64_16(p, v) CNORM_ST(f64, 16, p, v)
#define cnorm_ld_f32_64(p) CNORM_LD(f32, 64, p)
#define cnorm_ld_f64_64(p) CNORM_LD(f64, 64, p)
#define cnorm_st_f32_64(p, v) CNORM_ST(f32, 64, p, v)
#define cnorm_st_f64_64(p, v) CNORM_ST(f64, 64, p, v)

/* Data loads and stores of storage type S, W bytes of arithmetic lanes at a
 * time: the arithmetic type's own for float32 and float64, conversions (see
 * _dtypes.h) for the half types, whose W bytes of float lanes hold W / 4 values. */
#define cnorm_ldx_f32_16 cnorm_ld_f32_16
#define cnorm_ldx_f32_32 cnorm_ld_f32_32
#define cnorm_ldx_f32_64 cnorm_ld_f32_64
#define cnorm_ldx_f64_16 cnorm_ld_f64_16
#define cnorm_ldx_f64_32 cnorm_ld_f64_32
#define cnorm_ldx_f64_64 cnorm_ld_f64_64
#define cnorm_stx_f32_16 cnorm_st_f32_16
#define cnorm_stx_f32_32 cnorm_st_f32_32
#define cnorm_stx_f32_64 cnorm_st_f32_64
#define cnorm_stx_f64_16 cnorm_st_f64_16
#define cnorm_stx_f64_32 cnorm_st_f64_32
#define cnorm_stx_f64_64 cnorm_st_f64_64
#define cnorm_ldx_f16_16 cnorm_ldh_f16_4
#define cnorm_ldx_f16_32 cnorm_ldh_f16_8
#define cnorm_ldx_f16_64 cnorm_ldh_f16_16
#define cnorm_stx_f16_16 cnorm_sth_f16_4
#define cnorm_stx_f16_32 cnorm_sth_f16_8
#define cnorm_stx_f16_64 cnorm_sth_f16_16
#define cnorm_ldx_bf16_16 cnorm_ldh_bf16_4
#define cnorm_ldx_bf16_32 cnorm_ldh_bf16_8
#define cnorm_ldx_bf16_64 cnorm_ldh_bf16_16
#define cnorm_stx_bf16_16 cnorm_sth_bf16_4
#define cnorm_stx_bf16_32 cnorm_sth_bf16_8
#define cnorm_stx_bf16_64 cnorm_sth_bf16_16
/* The half types' streaming stores: a step of 8 float lanes is 16 bytes of
 * output (of 16 lanes, 32 bytes), converted as by a plain store and written
 * around the cache; a step of 4 lanes (a run's last few values) is an ordinary
 * store. */
#if defined(__SSE2__)
/* N values converted as by a plain store, then streamed as one VT by F */
#define CNORM_NT_HALF(S, N, VT, F, p, v)                                        \
    do {                                                                        \
        uint16_t t_[N];                                                         \
        VT u_;                                                                  \
        cnorm_sth_##S##_##N((void *)t_, (v));                                   \
        memcpy(&u_, t_, sizeof u_);                                             \
        F((VT *)(void *)(p), u_);                                               \
    } while (0)
#define cnorm_nt_f16_32(p, v) CNORM_NT_HALF(f16, 8, __m128i, _mm_stream_si128, p, v)
#define cnorm_nt_bf16_32(p, v) CNORM_NT_HALF(bf16, 8, __m128i, _mm_stream_si128, p, v)
#else
#define cnorm_nt_f16_32 cnorm_sth_f16_8
#define cnorm_nt_bf16_32 cnorm_sth_bf16_8
#endif
#define cnorm_nt_f16_16 cnorm_sth_f16_4
#define cnorm_nt_bf16_16 cnorm_sth_bf16_4
#if defined(CNORM_HAVE_V64)
/* x86-64-v4: 16 values, 32 bytes of output, a store at a 32-byte boundary */
#define cnorm_nt_f16_64(p, v) CNORM_NT_HALF(f16, 16, __m256i, _mm256_stream_si256, p, v)
#define cnorm_nt_bf16_64(p, v) CNORM_NT_HALF(bf16, 16, __m256i, _mm256_stream_si256, p, v)
/* A streamed half loop's wide steps, from a 16-byte boundary: one step of 8
 * values to a 32-byte boundary, then steps of 16 (the conversions and the
 * stores of 8 values were what bound the loop); float32 and float64 have none. */
#define CNORM_NT_WIDE_HALF(S, C, y, n, BODY, A)                                 \
    do {                                                                        \
        if (i_ + v32_ <= (n) && ((uintptr_t)((y) + i_) & 31)) {                 \
            BODY(i_, cnorm_ld_##C##_32, cnorm_ldx_##S##_32, cnorm_nt_##S##_32, CNORM_##A##_##C##_32); \
            i_ += v32_;                                                         \
        }                                                                       \
        for (; i_ + 2 * v32_ <= (n); i_ += 2 * v32_)                            \
            BODY(i_, cnorm_ld_##C##_64, cnorm_ldx_##S##_64, cnorm_nt_##S##_64, CNORM_##A##_##C##_64); \
    } while (0)
#define CNORM_NT_WIDE_f16(C, y, n, BODY, A) CNORM_NT_WIDE_HALF(f16, C, y, n, BODY, A)
#define CNORM_NT_WIDE_bf16(C, y, n, BODY, A) CNORM_NT_WIDE_HALF(bf16, C, y, n, BODY, A)
#else
#define CNORM_NT_WIDE_f16(C, y, n, BODY, A) do { } while (0)
#define CNORM_NT_WIDE_bf16(C, y, n, BODY, A) do { } while (0)
#endif
#define CNORM_NT_WIDE_f32(C, y, n, BODY, A) do { } while (0)
#define CNORM_NT_WIDE_f64(C, y, n, BODY, A) do { } while (0)

/* ReLU on vectors: clear the lanes where v < 0 (false for NaN and -0.0). */
#define CNORM_RELU_V(S, I, W, Z, v) ((cnorm_v##S##_##W)((cnorm_v##I##_##W)(v) & ~(cnorm_v##I##_##W)((v) < Z)))
#define CNORM_RELU_f32_32(v) CNORM_RELU_V(f32, i32, 32, 0.0f, v)
#define CNORM_RELU_f64_32(v) CNORM_RELU_V(f64, i64, 32, 0.0, v)
#define CNORM_RELU_f32_16(v) CNORM_RELU_V(f32, i32, 16, 0.0f, v)
#define CNORM_RELU_f64_16(v) CNORM_RELU_V(f64, i64, 16, 0.0, v)
#define CNORM_RELU_f32_64(v) CNORM_RELU_V(f32, i32, 64, 0.0f, v)
#define CNORM_RELU_f64_64(v) CNORM_RELU_V(f64, i64, 64, 0.0, v)

/* Streaming stores, to addresses aligned to their width. */
#if defined(__SSE2__)
#define CNORM_NT16(p, v, HT, F) do { HT t_; memcpy(&t_, &(v), 16); F((p), t_); } while (0)
#define cnorm_nt_f32_16(p, v) do { cnorm_vf32_16 u_ = (v); CNORM_NT16(p, u_, __m128, _mm_stream_ps); } while (0)
#define cnorm_nt_f64_16(p, v) do { cnorm_vf64_16 u_ = (v); CNORM_NT16(p, u_, __m128d, _mm_stream_pd); } while (0)
#if defined(__AVX__)
#define cnorm_nt_f32_32(p, v) _mm256_stream_ps((p), (__m256)(v))
#define cnorm_nt_f64_32(p, v) _mm256_stream_pd((p), (__m256d)(v))
#else   /* two 16-byte halves */
#define CNORM_NT_HALVES(S, p, v, H)                                             \
    do {                                                                        \
        cnorm_v##S##_32 w_ = (v);                                               \
        cnorm_v##S##_16 a_, b_;                                                 \
        memcpy(&a_, &w_, 16);                                                   \
        memcpy(&b_, (const char *)&w_ + 16, 16);                                \
        cnorm_nt_##S##_16((p), a_);                                             \
        cnorm_nt_##S##_16((p) + H, b_);                                         \
    } while (0)
#define cnorm_nt_f32_32(p, v) CNORM_NT_HALVES(f32, p, v, 4)
#define cnorm_nt_f64_32(p, v) CNORM_NT_HALVES(f64, p, v, 2)
#endif
#else   /* no streaming stores on this CPU: plain ones */
#define cnorm_nt_f32_32 cnorm_st_f32_32
#define cnorm_nt_f64_32 cnorm_st_f64_32
#define cnorm_nt_f32_16 cnorm_st_f32_16
#define cnorm_nt_f64_16 cnorm_st_f64_16
#endif

#ifdef CNORM_HAVE_V64
#define CNORM_LOOP_64(S, C, n, BODY, A)                                         \
    for (; i_ + 64 / CNORM_SIZE_##C <= (n); i_ += 64 / CNORM_SIZE_##C)          \
        BODY(i_, cnorm_ld_##C##_64, cnorm_ldx_##S##_64, cnorm_stx_##S##_64, CNORM_##A##_##C##_64)
#else
#define CNORM_LOOP_64(S, C, n, BODY, A) do { } while (0)
#endif

/* y[i] for i in [0, n) by BODY(i, LD, LDX, ST, ACT): LD loads parameters (of the
 * arithmetic type, suffix C), LDX loads data and ST stores it (storage suffix
 * S); A is the activation's name (ID, RELU or SILU: ACT is its form for the
 * width at hand).  Streamed, every store of y is a streaming one where y is
 * 16-byte aligned and n fills whole 16 bytes: for float32 and float64 a 16-byte
 * store up to the first 32-byte boundary, 32-byte stores, and a 16-byte store of
 * the rest; for the half types, 16-byte stores of 8 values, or in the AVX-512
 * build 32-byte stores of 16 from a 32-byte boundary (the last few values
 * plainly). */
#define CNORM_OUTPUT_LOOP_ACT(S, C, y, n, stream, BODY, A)                      \
    do {                                                                        \
        ptrdiff_t i_ = 0;                                                       \
        const ptrdiff_t v32_ = 32 / CNORM_SIZE_##C;                             \
        const ptrdiff_t v16_ = 16 / CNORM_SIZE_##C;                             \
        if (CNORM_STREAMS_##S && (stream) && (uintptr_t)(y) % sizeof(*(y)) == 0) { \
            for (; i_ < (n) && ((uintptr_t)((y) + i_) & 15); i_++)              \
                BODY(i_, CNORM_LD_S, CNORM_LDT_##S, CNORM_STS_##S, CNORM_##A##_##C##_S); \
            if (CNORM_NT_MID_##S && i_ + v16_ <= (n) && ((uintptr_t)((y) + i_) & 31)) { \
                BODY(i_, cnorm_ld_##C##_16, cnorm_ldx_##S##_16, cnorm_nt_##S##_16, CNORM_##A##_##C##_16); \
                i_ += v16_;                                                     \
            }                                                                   \
            CNORM_NT_WIDE_##S(C, y, n, BODY, A);                                \
            for (; i_ + v32_ <= (n); i_ += v32_)                                \
                BODY(i_, cnorm_ld_##C##_32, cnorm_ldx_##S##_32, cnorm_nt_##S##_32, CNORM_##A##_##C##_32); \
            if (i_ + v16_ <= (n)) {                                             \
                BODY(i_, cnorm_ld_##C##_16, cnorm_ldx_##S##_16, cnorm_nt_##S##_16, CNORM_##A##_##C##_16); \
                i_ += v16_;                                                     \
            }                                                                   \
        } else {                                                                \
            CNORM_LOOP_64(S, C, n, BODY, A);                                    \
            for (; i_ + v32_ <= (n); i_ += v32_)                                \
                BODY(i_, cnorm_ld_##C##_32, cnorm_ldx_##S##_32, cnorm_stx_##S##_32, CNORM_##A##_##C##_32); \
        }                                                                       \
        for (; i_ < (n); i_++)                                                  \
            BODY(i_, CNORM_LD_S, CNORM_LDT_##S, CNORM_STS_##S, CNORM_##A##_##C##_S); \
    } while (0)

#else

#define CNORM_OUTPUT_LOOP_ACT(S, C, y, n, stream, BODY, A)                      \
    do {                                                                        \
        ptrdiff_t i_;                                                           \
        (void)(stream);                                                         \
        for (i_ = 0; i_ < (n); i_++)                                            \
            BODY(i_, CNORM_LD_S, CNORM_LDS_##S, CNORM_STS_##S, CNORM_##A##_##C##_S); \
    } while (0)

#endif

#define CNORM_OUTPUT_LOOP(S, C, y, n, stream, BODY) CNORM_OUTPUT_LOOP_ACT(S, C, y, n, stream, BODY, ID)

/* The arithmetic type's size, and which storage types may be streamed. */
#define CNORM_SIZE_f32 4
#define CNORM_SIZE_f64 8
#define CNORM_STREAMS_f32 1
#define CNORM_STREAMS_f64 1
#define CNORM_STREAMS_f16 1
#define CNORM_STREAMS_bf16 1
/* whether a streamed loop takes a 16-byte step to reach a 32-byte boundary: the
 * half types' 16-byte steps (8 values) need only the 16-byte one */
#define CNORM_NT_MID_f32 1
#define CNORM_NT_MID_f64 1
#define CNORM_NT_MID_f16 0
#define CNORM_NT_MID_bf16 0

/* ---- activations, applied to y in the same pass -------------------------- */
/* Scalar forms end in _S; ID is none.  ReLU: max(v, 0) with NaN kept and -0.0
 * kept.  SiLU: v * sigmoid(v) = v / (1 + exp(-v)), with exp written out in
 * IEEE operations (Cody-Waite reduction by ln 2, a Taylor polynomial, 2**k
 * built from its bits in two factors so that it overflows to inf cleanly), so
 * that the scalar and vector forms, and both builds, give the same bits.
 * exp's argument is clamped below where exp(-v) underflows anyway (silu is
 * then v) and above where it overflows (silu is then -0.0 for finite v).
 * NaN stays NaN; silu(-inf) is NaN (-inf / inf), silu(inf) is inf. */
#define CNORM_ID_f32_S(v) (v)
#define CNORM_ID_f64_S(v) (v)
#define CNORM_RELU_f32_S CNORM_RELU_S
#define CNORM_RELU_f64_S CNORM_RELU_S

#define CNORM_SEL_S(m, a, b) ((m) ? (a) : (b))
/* out = silu(v), as statements over the type FT (scalar or vector) and integer
 * types IT/UT of its width.  MAD(a, b, c) is a * b + c: one fused multiply-add
 * (one rounding) for float32, a product and a sum for float64 (see below). */
#define CNORM_SILU_STMTS(out, FT, IT, UT, v, SEL, CONST, MAD, LO, HI, LOG2E, MAGIC, LN2HI,    \
                         LN2LO, ONE, BIAS, SHIFT, POLY)                                      \
    do {                                                                                     \
        FT v_ = (v);                                                                         \
        FT a_ = -v_;                                                                         \
        FT t_, k_, r_, p_, s_;                                                               \
        FT m_ = CONST(MAGIC);                                                                \
        IT kb_, mb_;                                                                         \
        UT e_;                                                                               \
        a_ = SEL(a_ < LO, CONST(LO), a_);                                                    \
        a_ = SEL(a_ > HI, CONST(HI), a_);                                                    \
        t_ = MAD(a_, CONST(LOG2E), m_);                                                      \
        k_ = t_ - MAGIC;                                                                     \
        r_ = MAD(-k_, CONST(LN2HI), a_);                                                     \
        r_ = MAD(-k_, CONST(LN2LO), r_);                                                     \
        p_ = POLY(r_, MAD, CONST);                                                           \
        memcpy(&kb_, &t_, sizeof kb_);                                                       \
        memcpy(&mb_, &m_, sizeof mb_);                                                       \
        e_ = (UT)(kb_ - mb_ + BIAS) << SHIFT;       /* 2**k, k = round(a / ln 2) */          \
        memcpy(&s_, &e_, sizeof s_);                                                         \
        (out) = v_ / MAD(p_, s_, CONST(ONE));                                                \
    } while (0)
/* exp(r) for |r| <= ln(2)/2: Taylor to degree 7 (float32) and 13 (float64), whose
 * truncation errors are below half an ulp, by Horner's scheme. */
#define CNORM_EXP_POLY_F32(r, MAD, C) MAD(r, MAD(r, MAD(r, MAD(r, MAD(r, MAD(r, MAD(r,          \
    C(1.9841270113830e-4f), C(1.3888889225200e-3f)), C(8.3333337679505e-3f)),                 \
    C(4.1666667908430e-2f)), C(1.6666667163372e-1f)), C(0.5f)), C(1.0f)), C(1.0f))
#define CNORM_EXP_POLY_F64(r, MAD, C) MAD(r, MAD(r, MAD(r, MAD(r, MAD(r, MAD(r, MAD(r, MAD(r,   \
    MAD(r, MAD(r, MAD(r, MAD(r, MAD(r, C(1.0 / 6227020800.0), C(1.0 / 479001600)),            \
    C(1.0 / 39916800)), C(1.0 / 3628800)), C(1.0 / 362880)), C(1.0 / 40320)), C(1.0 / 5040)), \
    C(1.0 / 720)), C(1.0 / 120)), C(1.0 / 24)), C(1.0 / 6)), C(0.5)), C(1.0)), C(1.0))
#define CNORM_CONST_S(c) (c)
/* float64's a * b + c stays a product and a sum (the kernels are built with
 * -ffp-contract=off); float32's is one fused multiply-add: 30% fewer operations
 * in SiLU, whose float32 output pass was bound by its arithmetic.  Hardware
 * FMA in the x86-64-v3 and v4 builds, C's correctly rounded fmaf elsewhere
 * (slow, but the same bits). */
#define CNORM_MAD_f64(a, b, c) ((a) * (b) + (c))
#define CNORM_MAD_f32_S(a, b, c) fmaf((a), (b), (c))
#define CNORM_SILU_EXPAND(...) CNORM_SILU_STMTS(__VA_ARGS__)   /* expands the ARGS lists */
#define CNORM_SILU_ARGS_F32 -87.0f, 89.0f, 1.44269504088896341f, 12582912.0f, 0.693145751953125f, \
    1.428606765330187045e-06f, 1.0f, 127, 23, CNORM_EXP_POLY_F32
#define CNORM_SILU_ARGS_F64 -708.0, 710.0, 1.4426950408889634074, 6755399441055744.0,          \
    6.93147180369123816490e-01, 1.90821492927058770002e-10, 1.0, 1023, 52, CNORM_EXP_POLY_F64
static inline float cnorm_silu_f32(float v)
{
    float out;
    CNORM_SILU_EXPAND(out, float, int32_t, uint32_t, v, CNORM_SEL_S, CNORM_CONST_S,
                      CNORM_MAD_f32_S, CNORM_SILU_ARGS_F32);
    return out;
}
static inline double cnorm_silu_f64(double v)
{
    double out;
    CNORM_SILU_EXPAND(out, double, int64_t, uint64_t, v, CNORM_SEL_S, CNORM_CONST_S,
                      CNORM_MAD_f64, CNORM_SILU_ARGS_F64);
    return out;
}
#define CNORM_SILU_f32_S(v) cnorm_silu_f32(v)
#define CNORM_SILU_f64_S(v) cnorm_silu_f64(v)

#if defined(__GNUC__) && !defined(CNORM_LANES_SCALAR)
#define CNORM_ID_V(v) (v)
#define CNORM_ID_f32_32 CNORM_ID_V
#define CNORM_ID_f64_32 CNORM_ID_V
#define CNORM_ID_f32_16 CNORM_ID_V
#define CNORM_ID_f64_16 CNORM_ID_V
/* lane-wise m ? a : b, m a comparison's all-ones / all-zeros mask */
#define CNORM_SEL_V(I, W, m, a, b) ((__typeof__(a))(((cnorm_v##I##_##W)(m) & (cnorm_v##I##_##W)(a)) \
                                                   | (~(cnorm_v##I##_##W)(m) & (cnorm_v##I##_##W)(b))))
#define CNORM_SEL_i32_32(m, a, b) CNORM_SEL_V(i32, 32, m, a, b)
#define CNORM_SEL_i64_32(m, a, b) CNORM_SEL_V(i64, 32, m, a, b)
#define CNORM_SEL_i32_16(m, a, b) CNORM_SEL_V(i32, 16, m, a, b)
#define CNORM_SEL_i64_16(m, a, b) CNORM_SEL_V(i64, 16, m, a, b)
#define CNORM_CONST_f32_32(c) ((cnorm_vf32_32){0} + (c))
#define CNORM_CONST_f64_32(c) ((cnorm_vf64_32){0} + (c))
#define CNORM_CONST_f32_16(c) ((cnorm_vf32_16){0} + (c))
#define CNORM_CONST_f64_16(c) ((cnorm_vf64_16){0} + (c))
typedef uint32_t cnorm_vu32_32 __attribute__((vector_size(32)));
typedef uint64_t cnorm_vu64_32 __attribute__((vector_size(32)));
typedef uint32_t cnorm_vu32_16 __attribute__((vector_size(16)));
typedef uint64_t cnorm_vu64_16 __attribute__((vector_size(16)));
/* float32 vector FMA: the instruction where the build has FMA, lane by lane fmaf
 * (the same bits) where it does not */
#if defined(__FMA__)
#include <immintrin.h>
#define CNORM_MAD_f32_32(a, b, c)                                               \
    ((cnorm_vf32_32)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#define CNORM_MAD_f32_16(a, b, c)                                               \
    ((cnorm_vf32_16)_mm_fmadd_ps((__m128)(a), (__m128)(b), (__m128)(c)))
#else
#define CNORM_FMA_LANES(a, b, c) __extension__({                                \
    __typeof__(a) a__ = (a), b__ = (b), c__ = (c), o__;                         \
    for (size_t i__ = 0; i__ < sizeof a__ / sizeof a__[0]; i__++)               \
        o__[i__] = fmaf(a__[i__], b__[i__], c__[i__]);                          \
    o__; })
#define CNORM_MAD_f32_32 CNORM_FMA_LANES
#define CNORM_MAD_f32_16 CNORM_FMA_LANES
#endif
#ifdef CNORM_HAVE_V64
#define CNORM_MAD_f32_64(a, b, c)                                               \
    ((cnorm_vf32_64)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#endif
#define CNORM_SILU_F32_V(W, v) __extension__({ cnorm_vf32_##W o_;                             \
    CNORM_SILU_EXPAND(o_, cnorm_vf32_##W, cnorm_vi32_##W, cnorm_vu32_##W, v, CNORM_SEL_i32_##W,  \
                      CNORM_CONST_f32_##W, CNORM_MAD_f32_##W, CNORM_SILU_ARGS_F32); o_; })
#define CNORM_SILU_F64_V(W, v) __extension__({ cnorm_vf64_##W o_;                             \
    CNORM_SILU_EXPAND(o_, cnorm_vf64_##W, cnorm_vi64_##W, cnorm_vu64_##W, v, CNORM_SEL_i64_##W,  \
                      CNORM_CONST_f64_##W, CNORM_MAD_f64, CNORM_SILU_ARGS_F64); o_; })
#ifdef CNORM_HAVE_V64
#define CNORM_ID_f32_64 CNORM_ID_V
#define CNORM_ID_f64_64 CNORM_ID_V
#define CNORM_SEL_i32_64(m, a, b) CNORM_SEL_V(i32, 64, m, a, b)
#define CNORM_SEL_i64_64(m, a, b) CNORM_SEL_V(i64, 64, m, a, b)
#define CNORM_CONST_f32_64(c) ((cnorm_vf32_64){0} + (c))
#define CNORM_CONST_f64_64(c) ((cnorm_vf64_64){0} + (c))
typedef uint32_t cnorm_vu32_64 __attribute__((vector_size(64)));
typedef uint64_t cnorm_vu64_64 __attribute__((vector_size(64)));
#define CNORM_SILU_f32_64(v) CNORM_SILU_F32_V(64, v)
#define CNORM_SILU_f64_64(v) CNORM_SILU_F64_V(64, v)
#endif
#define CNORM_SILU_f32_32(v) CNORM_SILU_F32_V(32, v)
#define CNORM_SILU_f32_16(v) CNORM_SILU_F32_V(16, v)
#define CNORM_SILU_f64_32(v) CNORM_SILU_F64_V(32, v)
#define CNORM_SILU_f64_16(v) CNORM_SILU_F64_V(16, v)
#endif

/* Activation codes, as the kernels pass them. */
#define CNORM_ACT_NONE 0
#define CNORM_ACT_RELU 1
#define CNORM_ACT_SILU 2
#define CNORM_LOOP_BY_ACT(S, C, y, n, stream, BODY, act)                        \
    do {                                                                        \
        if ((act) == CNORM_ACT_RELU)                                            \
            CNORM_OUTPUT_LOOP_ACT(S, C, y, n, stream, BODY, RELU);              \
        else if ((act) == CNORM_ACT_SILU)                                       \
            CNORM_OUTPUT_LOOP_ACT(S, C, y, n, stream, BODY, SILU);              \
        else                                                                    \
            CNORM_OUTPUT_LOOP_ACT(S, C, y, n, stream, BODY, ID);                \
    } while (0)

/* ---- batch norm: y = ((x - hi) - lo) * s + b, per run (one channel) ------- */
#define CNORM_AFFINE(i, LD, LDX, ST, ACT) ST(y + i, ACT(((LDX(x + i) - hi) - lo) * s + b))

/* ---- batch norm, row-major: the same with per-column coefficients -------- */
#define CNORM_AFFINE_COLS(i, LD, LDX, ST, ACT)                                  \
    ST(y + i, ACT(((LDX(x + i) - LD(hi + i)) - LD(lo + i)) * LD(s + i) + LD(b + i)))

/* ---- batch-norm backward: dx = (g * a - (x - hi) * bc) - cc, or g * a ----- */
#define CNORM_GRAD(i, LD, LDX, ST, ACT) ST(dx + i, (LDX(g + i) * a - (LDX(x + i) - hi) * bc) - cc)
#define CNORM_GRAD_FIXED(i, LD, LDX, ST, ACT) ST(dx + i, LDX(g + i) * a)
#define CNORM_GRAD_COLS(i, LD, LDX, ST, ACT)                                    \
    ST(dx + i, (LDX(g + i) * LD(a + i) - (LDX(x + i) - LD(hi + i)) * LD(bc + i)) - LD(cc + i))
#define CNORM_GRAD_COLS_FIXED(i, LD, LDX, ST, ACT) ST(dx + i, LDX(g + i) * LD(a + i))

/* ---- layer norm: y = ((x - hi) - lo) * r [* w] [+ b] ---------------------- */
#define CNORM_LN_WB(i, LD, LDX, ST, ACT) ST(y + i, ACT((((LDX(x + i) - hi) - lo) * r) * LD(w + i) + LD(b + i)))
#define CNORM_LN_W(i, LD, LDX, ST, ACT) ST(y + i, ACT((((LDX(x + i) - hi) - lo) * r) * LD(w + i)))
#define CNORM_LN_B(i, LD, LDX, ST, ACT) ST(y + i, ACT(((LDX(x + i) - hi) - lo) * r + LD(b + i)))
#define CNORM_LN(i, LD, LDX, ST, ACT) ST(y + i, ACT(((LDX(x + i) - hi) - lo) * r))

/* ---- layer-norm backward: dx = ((g * w) * ra - ((x - hi) - lo) * rb) - rc - */
#define CNORM_LN_DX(i, LD, LDX, ST, ACT)                                        \
    ST(dx + i, ((LDX(g + i) * LD(w + i)) * ra - ((LDX(x + i) - hi) - lo) * rb) - rc)

/* ---- fused add-norm's prologue: h = x + r, rounded once to the storage type -- */
#define CNORM_ADD(i, LD, LDX, ST, ACT) ST(h + i, LDX(x + i) + LDX(r + i))
/* ---- a copy, streamed or not (the values pass through unchanged) ---------- */
#define CNORM_COPY(i, LD, LDX, ST, ACT) ST(y + i, LDX(x + i))

#define CNORM_DEFINE_OUTPUTS(S, T, PT, C)                                              \
static inline void cnorm_add_##S(const T *x, const T *r, T *h, ptrdiff_t n)        \
{                                                                               \
    CNORM_OUTPUT_LOOP(S, C, h, n, 0, CNORM_ADD);                                \
}                                                                               \
static inline void cnorm_copy_##S(const T *x, T *y, ptrdiff_t n, int stream)    \
{                                                                               \
    CNORM_OUTPUT_LOOP(S, C, y, n, stream, CNORM_COPY);                          \
}                                                                               \
static inline void cnorm_affine_##S(const T *x, T *y, ptrdiff_t n, PT hi, PT lo, PT s, \
                                    PT b, int act, int stream)                   \
{                                                                               \
    CNORM_LOOP_BY_ACT(S, C, y, n, stream, CNORM_AFFINE, act);                   \
}                                                                               \
static inline void cnorm_affine_cols_##S(const T *x, T *y, ptrdiff_t n,         \
                                         const PT *hi, const PT *lo, const PT *s,  \
                                         const PT *b, int act, int stream)       \
{                                                                               \
    CNORM_LOOP_BY_ACT(S, C, y, n, stream, CNORM_AFFINE_COLS, act);              \
}                                                                               \
static inline void cnorm_grad_##S(const T *g, const T *x, T *dx, ptrdiff_t n,   \
                                  PT hi, PT a, PT bc, PT cc, int training,          \
                                  int stream)                                   \
{                                                                               \
    if (training)                                                               \
        CNORM_OUTPUT_LOOP(S, C, dx, n, stream, CNORM_GRAD);                     \
    else                                                                        \
        CNORM_OUTPUT_LOOP(S, C, dx, n, stream, CNORM_GRAD_FIXED);               \
}                                                                               \
static inline void cnorm_grad_cols_##S(const T *g, const T *x, T *dx,           \
                                       ptrdiff_t n, const PT *hi, const PT *a,    \
                                       const PT *bc, const PT *cc, int training,  \
                                       int stream)                              \
{                                                                               \
    if (training)                                                               \
        CNORM_OUTPUT_LOOP(S, C, dx, n, stream, CNORM_GRAD_COLS);                \
    else                                                                        \
        CNORM_OUTPUT_LOOP(S, C, dx, n, stream, CNORM_GRAD_COLS_FIXED);          \
}                                                                               \
static inline void cnorm_ln_affine_##S(const T *x, T *y, ptrdiff_t n, PT hi,     \
                                       PT lo, PT r, const PT *w, const PT *b,       \
                                       int act, int stream)                     \
{                                                                               \
    if (w != NULL && b != NULL)                                                 \
        CNORM_LOOP_BY_ACT(S, C, y, n, stream, CNORM_LN_WB, act);                \
    else if (w != NULL)                                                         \
        CNORM_LOOP_BY_ACT(S, C, y, n, stream, CNORM_LN_W, act);                 \
    else if (b != NULL)                                                         \
        CNORM_LOOP_BY_ACT(S, C, y, n, stream, CNORM_LN_B, act);                 \
    else                                                                        \
        CNORM_LOOP_BY_ACT(S, C, y, n, stream, CNORM_LN, act);                   \
}                                                                               \
static inline void cnorm_ln_dx_##S(const T *g, const T *x, const PT *w, T *dx,   \
                                   ptrdiff_t n, PT hi, PT lo, PT ra, PT rb, PT rc,   \
                                   int stream)                                  \
{                                                                               \
    CNORM_OUTPUT_LOOP(S, C, dx, n, stream, CNORM_LN_DX);                        \
}

CNORM_DEFINE_OUTPUTS(f32, float, float, f32)
CNORM_DEFINE_OUTPUTS(f64, double, double, f64)
CNORM_DEFINE_OUTPUTS(f16, cnorm_f16, float, f32)
CNORM_DEFINE_OUTPUTS(bf16, cnorm_bf16, float, f32)

/* The loops by the type of their first data pointer (see _dtypes.h). */
#define cnorm_add(x, ...) CNORM_BY_TYPE(cnorm_add, x)(x, __VA_ARGS__)
#define cnorm_copy(x, ...) CNORM_BY_TYPE(cnorm_copy, x)(x, __VA_ARGS__)
#define cnorm_affine(x, ...) CNORM_BY_TYPE(cnorm_affine, x)(x, __VA_ARGS__)
#define cnorm_affine_cols(x, ...) CNORM_BY_TYPE(cnorm_affine_cols, x)(x, __VA_ARGS__)
#define cnorm_grad(g, ...) CNORM_BY_TYPE(cnorm_grad, g)(g, __VA_ARGS__)
#define cnorm_grad_cols(g, ...) CNORM_BY_TYPE(cnorm_grad_cols, g)(g, __VA_ARGS__)
#define cnorm_ln_affine(x, ...) CNORM_BY_TYPE(cnorm_ln_affine, x)(x, __VA_ARGS__)
#define cnorm_ln_dx(g, ...) CNORM_BY_TYPE(cnorm_ln_dx, g)(g, __VA_ARGS__)


#endif
