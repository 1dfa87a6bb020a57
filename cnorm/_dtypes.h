/* The storage types of cnorm's arrays, and how each is loaded into the
 * arithmetic type and stored back: the one place that knows about dtypes.
 *
 *   suffix  storage                 arithmetic   parameters / statistics
 *   f32     float                   float        float
 *   f64     double                  double       double
 *   f16     IEEE binary16 bits      float        float
 *   bf16    bfloat16 bits           float        float
 *
 * A half-precision value is converted exactly to float on load, and a float
 * result is rounded once, to nearest even, on store (NaN stays NaN, with its
 * sign and the top of its payload, quieted; too large gives inf).  The
 * x86-64-v3 and -v4 builds convert float16 with F16C instructions; other
 * builds use the integer code below, which gives the same bits
 * (tests/test_dtypes.py compares both over every float16 value and a sweep of
 * float32 ones).  bfloat16 is the top half of a float32, so no instruction set
 * helps or is needed.
 *
 * Loads are CNORM_LD1_<S>(p) (one value, as double; CNORM_LDT1_<S> and CNORM_LDT_<S>
 * for a lone value outside the loops GCC vectorises) and, in the vector builds,
 * cnorm_ldf_<S>_<W>(p): W bytes of float lanes (W/4 values) from storage of
 * type <S>; stores are cnorm_stf_<S>_<W>(p, v).  Two distinct struct types
 * keep float16 and bfloat16 apart in C's type checks and in Cython's fused
 * types.
 */
#ifndef CNORM_DTYPES_H
#define CNORM_DTYPES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

typedef struct { uint16_t bits; } cnorm_f16;
typedef struct { uint16_t bits; } cnorm_bf16;

/* ---- scalar conversions ------------------------------------------------- */

static inline float cnorm_f32_from_bits(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline uint32_t cnorm_bits_from_f32(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

/* float16 bits -> float32 bits, exactly.  Normal values move their exponent by
 * 127 - 15; subnormal ones (em < 0x400, value em * 2**-24) go through an exact
 * integer-to-float conversion, so that a denormals-are-zero mode cannot touch
 * them; inf and NaN keep their payload, and a NaN is quieted, as F16C does. */
static inline uint32_t cnorm_f16_to_f32_bits(uint32_t h)
{
    uint32_t em = h & 0x7fffu;
    uint32_t sub = cnorm_bits_from_f32((float)(int32_t)em * 0x1p-24f);
    uint32_t b = (em << 13) + 0x38000000u + (em >= 0x7c00u ? 0x38000000u : 0u);
    b = em < 0x400u ? sub : b;                  /* written without branches, so that */
    b |= em > 0x7c00u ? 0x400000u : 0u;         /* loops of it vectorise */
    return b | ((h & 0x8000u) << 16);
}

/* float32 bits -> float16 bits, rounded to nearest even.  Normal results
 * round by integer addition on the rebiased bits (a carry out of the
 * mantissa moves the exponent, up to inf); results below 2**-14 (half's
 * subnormals) are rounded by a float addition of 0.5, whose ulp is half's
 * subnormal step 2**-24 (float denormals round to 0 either way). */
static inline uint32_t cnorm_f32_to_f16_bits(uint32_t x)
{
    uint32_t s = (x >> 16) & 0x8000u, a = x & 0x7fffffffu, r;
    if (a > 0x7f800000u)
        r = 0x7e00u | ((a >> 13) & 0x3ffu);
    else if (a >= 0x47800000u)
        r = 0x7c00u;
    else if (a >= 0x38800000u)
        r = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
    else
        r = cnorm_bits_from_f32(cnorm_f32_from_bits(a) + 0.5f) - 0x3f000000u;
    return r | s;
}

static inline uint32_t cnorm_f32_to_bf16_bits(uint32_t x)
{
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (x >> 16) | 0x40u;
    return (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
}

/* Single float16 values widen with the integer code in every build: GCC
 * vectorises loops of it (the baseline build's column loops), where a scalar
 * F16C instruction would keep them scalar; builds with F16C run the column loops
 * in explicit F16C vectors instead (_lanes.h, CNORM_COL_LOOP), which are faster
 * than the vectorised integer code.  Single stores use F16C where the build has it. */
static inline float cnorm_f16_to_f32(cnorm_f16 h) { return cnorm_f32_from_bits(cnorm_f16_to_f32_bits(h.bits)); }
#if defined(__F16C__)
static inline cnorm_f16 cnorm_f16_from_f32(float f)
{
    cnorm_f16 h;
    h.bits = (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
    return h;
}
#else
static inline cnorm_f16 cnorm_f16_from_f32(float f)
{
    cnorm_f16 h;
    h.bits = (uint16_t)cnorm_f32_to_f16_bits(cnorm_bits_from_f32(f));
    return h;
}
#endif
static inline float cnorm_bf16_to_f32(cnorm_bf16 h) { return cnorm_f32_from_bits((uint32_t)h.bits << 16); }
static inline cnorm_bf16 cnorm_bf16_from_f32(float f)
{
    cnorm_bf16 h;
    h.bits = (uint16_t)cnorm_f32_to_bf16_bits(cnorm_bits_from_f32(f));
    return h;
}

/* One value as double, by storage suffix. */
#define CNORM_LD1_f32(p) ((double)*(p))
#define CNORM_LD1_f64(p) (*(p))
#define CNORM_LD1_f16(p) ((double)cnorm_f16_to_f32(*(p)))
#define CNORM_LD1_bf16(p) ((double)cnorm_bf16_to_f32(*(p)))
/* One value in the arithmetic type, and a store from it. */
#define CNORM_LDS_f32(p) (*(p))
#define CNORM_LDS_f64(p) (*(p))
#define CNORM_LDS_f16(p) cnorm_f16_to_f32(*(p))
#define CNORM_LDS_bf16(p) cnorm_bf16_to_f32(*(p))
/* A lone value in the arithmetic type, outside any loop GCC vectorises (the scalar
 * ends of the vector output loops and the lane loops' tails): F16C where the build has
 * it, one instruction where the integer widening takes a dozen (the same bits). */
#define CNORM_LDT_f32 CNORM_LDS_f32
#define CNORM_LDT_f64 CNORM_LDS_f64
#define CNORM_LDT_bf16 CNORM_LDS_bf16
#if defined(__F16C__)
#define CNORM_LDT_f16(p) _cvtsh_ss((p)->bits)
#else
#define CNORM_LDT_f16 CNORM_LDS_f16
#endif
#define CNORM_LDT1_f32 CNORM_LD1_f32
#define CNORM_LDT1_f64 CNORM_LD1_f64
#define CNORM_LDT1_bf16 CNORM_LD1_bf16
#define CNORM_LDT1_f16(p) ((double)CNORM_LDT_f16(p))
#define CNORM_STS_f32(p, v) (*(p) = (v))
#define CNORM_STS_f64(p, v) (*(p) = (v))
#define CNORM_STS_f16(p, v) (*(p) = cnorm_f16_from_f32(v))
#define CNORM_STS_bf16(p, v) (*(p) = cnorm_bf16_from_f32(v))

/* The variant of helper NAME for the storage type that pointer p points to. */
#define CNORM_BY_TYPE(NAME, p) _Generic((p),                                    \
    float *: NAME##_f32, const float *: NAME##_f32,                             \
    double *: NAME##_f64, const double *: NAME##_f64,                           \
    cnorm_f16 *: NAME##_f16, const cnorm_f16 *: NAME##_f16,                     \
    cnorm_bf16 *: NAME##_bf16, const cnorm_bf16 *: NAME##_bf16)

/* ---- vector conversions (GCC vector extensions) --------------------------- */
#if defined(__GNUC__) && !defined(CNORM_LANES_SCALAR)

#define CNORM_HALF_VECTORS(N)                                                   \
typedef float cnorm_hf_##N __attribute__((vector_size(4 * N)));                 \
typedef uint32_t cnorm_hu_##N __attribute__((vector_size(4 * N)));              \
typedef int32_t cnorm_hi_##N __attribute__((vector_size(4 * N)));               \
typedef uint16_t cnorm_hh_##N __attribute__((vector_size(2 * N)));
CNORM_HALF_VECTORS(4)
CNORM_HALF_VECTORS(8)
#if defined(__AVX512F__)
CNORM_HALF_VECTORS(16)
#endif

/* The integer forms of the scalar code above, lane by lane (a comparison gives
 * all-ones lanes, hence the & masks). */
#define CNORM_F16_TO_F32_V(N, h16, out)                                         \
    do {                                                                        \
        cnorm_hu_##N h_ = __builtin_convertvector((h16), cnorm_hu_##N);         \
        cnorm_hu_##N em_ = h_ & 0x7fffu;                                        \
        cnorm_hf_##N sf_ = __builtin_convertvector((cnorm_hi_##N)em_, cnorm_hf_##N) * 0x1p-24f; \
        cnorm_hu_##N sub_, b_, isub_, isinf_, isnan_;                           \
        memcpy(&sub_, &sf_, sizeof sub_);                                       \
        isub_ = (cnorm_hu_##N)(em_ < 0x400u);                                   \
        isinf_ = (cnorm_hu_##N)(em_ >= 0x7c00u);                                \
        isnan_ = (cnorm_hu_##N)(em_ > 0x7c00u);                                 \
        b_ = ((em_ << 13) + 0x38000000u + (isinf_ & 0x38000000u)) | (isnan_ & 0x400000u); \
        b_ = (isub_ & sub_) | (~isub_ & b_);                                    \
        b_ |= (h_ & 0x8000u) << 16;                                             \
        memcpy(&(out), &b_, sizeof b_);                                         \
    } while (0)

#define CNORM_F32_TO_F16_V(N, f, out16)                                         \
    do {                                                                        \
        cnorm_hu_##N x_, a_, s_, r_, rn_, rs_, isnan_, isinf_, isnorm_;         \
        cnorm_hf_##N af_;                                                       \
        memcpy(&x_, &(f), sizeof x_);                                           \
        s_ = (x_ >> 16) & 0x8000u;                                              \
        a_ = x_ & 0x7fffffffu;                                                  \
        memcpy(&af_, &a_, sizeof af_);                                          \
        af_ = af_ + 0.5f;                                                       \
        memcpy(&rs_, &af_, sizeof rs_);                                         \
        rs_ -= 0x3f000000u;                                                     \
        rn_ = (a_ - 0x38000000u + 0xfffu + ((a_ >> 13) & 1u)) >> 13;            \
        isnan_ = (cnorm_hu_##N)(a_ > 0x7f800000u);                              \
        isinf_ = (cnorm_hu_##N)(a_ >= 0x47800000u);                             \
        isnorm_ = (cnorm_hu_##N)(a_ >= 0x38800000u);                            \
        r_ = (isnorm_ & rn_) | (~isnorm_ & rs_);                                \
        r_ = (isinf_ & 0x7c00u) | (~isinf_ & r_);                               \
        r_ = (isnan_ & (0x7e00u | ((a_ >> 13) & 0x3ffu))) | (~isnan_ & r_);     \
        (out16) = __builtin_convertvector(r_ | s_, cnorm_hh_##N);               \
    } while (0)

#define CNORM_BF16_TO_F32_V(N, h16, out)                                        \
    do {                                                                        \
        cnorm_hu_##N b_ = __builtin_convertvector((h16), cnorm_hu_##N) << 16;   \
        memcpy(&(out), &b_, sizeof b_);                                         \
    } while (0)

#define CNORM_F32_TO_BF16_V(N, f, out16)                                        \
    do {                                                                        \
        cnorm_hu_##N x_, r_, isnan_;                                            \
        memcpy(&x_, &(f), sizeof x_);                                           \
        isnan_ = (cnorm_hu_##N)((x_ & 0x7fffffffu) > 0x7f800000u);              \
        r_ = (x_ + 0x7fffu + ((x_ >> 16) & 1u)) >> 16;                          \
        r_ = (isnan_ & ((x_ >> 16) | 0x40u)) | (~isnan_ & r_);                  \
        (out16) = __builtin_convertvector(r_, cnorm_hh_##N);                    \
    } while (0)

/* N values of storage S at p as N float lanes, and back.  F16C where the build
 * has it, the integer forms otherwise; the same bits either way. */
#define CNORM_HALF_IO(N)                                                        \
static inline void cnorm_ldh_bf16_int_##N##_(const cnorm_bf16 *p, cnorm_hf_##N *f)  \
{                                                                               \
    cnorm_hh_##N h;                                                             \
    memcpy(&h, p, sizeof h);                                                    \
    CNORM_BF16_TO_F32_V(N, h, *f);                                              \
}                                                                               \
static inline void cnorm_sth_bf16_int_##N##_(cnorm_bf16 *p, const cnorm_hf_##N *f)  \
{                                                                               \
    cnorm_hh_##N h;                                                             \
    CNORM_F32_TO_BF16_V(N, *f, h);                                              \
    memcpy(p, &h, sizeof h);                                                    \
}                                                                               \
static inline void cnorm_ldh_f16_int_##N##_(const cnorm_f16 *p, cnorm_hf_##N *f) \
{                                                                               \
    cnorm_hh_##N h;                                                             \
    memcpy(&h, p, sizeof h);                                                    \
    CNORM_F16_TO_F32_V(N, h, *f);                                               \
}                                                                               \
static inline void cnorm_sth_f16_int_##N##_(cnorm_f16 *p, const cnorm_hf_##N *f) \
{                                                                               \
    cnorm_hh_##N h;                                                             \
    CNORM_F32_TO_F16_V(N, *f, h);                                               \
    memcpy(p, &h, sizeof h);                                                    \
}
CNORM_HALF_IO(4)
CNORM_HALF_IO(8)
#if defined(__AVX512F__)
CNORM_HALF_IO(16)
#endif

/* bfloat16 with the AVX2 and AVX-512 builds' widening loads and narrowing
 * stores (the generic forms above compile to shuffles): the same bits. */
#if defined(__AVX2__)
static inline void cnorm_ldbf_4_(const cnorm_bf16 *p, cnorm_hf_4 *f)
{
    *f = (cnorm_hf_4)_mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i *)p)), 16);
}
static inline void cnorm_ldbf_8_(const cnorm_bf16 *p, cnorm_hf_8 *f)
{
    *f = (cnorm_hf_8)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
}
/* 8 float lanes rounded to bfloat16, stored: the bits plus 0x7fff and the lowest kept
 * bit carry into the high half (round to nearest even, up to inf); a NaN instead keeps
 * its high half with the quiet bit set (an unordered compare and a blend).  One byte
 * shuffle gathers the high halves of each 128-bit lane, and one qword permutation
 * joins them. */
static inline void cnorm_stbf_8_(cnorm_bf16 *p, const cnorm_hf_8 *f)
{
    const __m256i hi = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
                                        2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256 v = (__m256)*f;
    __m256i x = _mm256_castps_si256(v);
    __m256i t = _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)),
                                 _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1)));
    __m256 isnan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    t = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(t),
                                             _mm256_castsi256_ps(_mm256_or_si256(x, _mm256_set1_epi32(0x400000))),
                                             isnan));
    t = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(t, hi), 0x08);
    _mm_storeu_si128((__m128i *)p, _mm256_castsi256_si128(t));
}
#define cnorm_ldh_bf16_4_ cnorm_ldbf_4_
#define cnorm_ldh_bf16_8_ cnorm_ldbf_8_
#define cnorm_sth_bf16_8_ cnorm_stbf_8_
#if defined(__AVX512F__)
/* Word i to the high half of lane i, the low halves zeroed: one vpermw. */
static inline void cnorm_ldbf_16_(const cnorm_bf16 *p, cnorm_hf_16 *f)
{
    const __m512i up = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0,
                                        7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
    __m512i h = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p));
    *f = (cnorm_hf_16)_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, up, h);
}
static inline void cnorm_ldbf_8v_(const cnorm_bf16 *p, cnorm_hf_8 *f)
{
    const __m256i up = _mm256_set_epi16(7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
    __m256i h = _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p));
    *f = (cnorm_hf_8)_mm256_maskz_permutexvar_epi16(0xAAAAu, up, h);
}
#undef cnorm_ldh_bf16_8_
#define cnorm_ldh_bf16_8_ cnorm_ldbf_8v_
/* The rounded values are the high halves of t (NaN: of x with its quiet bit set),
 * gathered by one word permutation (vpmovdw, two uops, was half the loop).  The NaN
 * lanes are a mask register from one unordered compare, and x | 0x400000 is written
 * into them by one masked OR: 7 vector operations for 16 values, where the same
 * formula in vector-extension code compiled to 11 (the mask turned into a vector,
 * then two ternary-logic blends). */
static inline void cnorm_stbf_16_(cnorm_bf16 *p, const cnorm_hf_16 *f)
{
    const __m512i odd = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                         31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5,
                                         3, 1);
    __m512 v;
    __m512i x, t;
    __mmask16 isnan;
    memcpy(&v, f, sizeof v);
    x = _mm512_castps_si512(v);
    isnan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    t = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)),
                         _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1)));
    t = _mm512_mask_or_epi32(t, isnan, x, _mm512_set1_epi32(0x400000));
    _mm256_storeu_si256((__m256i *)p,
                        _mm512_castsi512_si256(_mm512_permutexvar_epi16(odd, t)));
}
#define cnorm_ldh_bf16_16_ cnorm_ldbf_16_
#define cnorm_sth_bf16_16_ cnorm_stbf_16_
#endif
#endif

#if defined(__F16C__)
static inline void cnorm_ldh_f16_4_(const cnorm_f16 *p, cnorm_hf_4 *f)
{
    *f = (cnorm_hf_4)_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p));
}
static inline void cnorm_sth_f16_4_(cnorm_f16 *p, const cnorm_hf_4 *f)
{
    _mm_storel_epi64((__m128i *)p, _mm_cvtps_ph((__m128)*f, _MM_FROUND_TO_NEAREST_INT));
}
static inline void cnorm_ldh_f16_8_(const cnorm_f16 *p, cnorm_hf_8 *f)
{
    *f = (cnorm_hf_8)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline void cnorm_sth_f16_8_(cnorm_f16 *p, const cnorm_hf_8 *f)
{
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph((__m256)*f, _MM_FROUND_TO_NEAREST_INT));
}
#if defined(__AVX512F__)
static inline void cnorm_ldh_f16_16_(const cnorm_f16 *p, cnorm_hf_16 *f)
{
    *f = (cnorm_hf_16)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline void cnorm_sth_f16_16_(cnorm_f16 *p, const cnorm_hf_16 *f)
{
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph((__m512)*f, _MM_FROUND_TO_NEAREST_INT));
}
#endif
#else
#define cnorm_ldh_f16_4_ cnorm_ldh_f16_int_4_
#define cnorm_ldh_f16_8_ cnorm_ldh_f16_int_8_
#define cnorm_sth_f16_4_ cnorm_sth_f16_int_4_
#define cnorm_sth_f16_8_ cnorm_sth_f16_int_8_
#endif

/* the integer forms wherever no instruction-set form was defined above */
#ifndef cnorm_ldh_bf16_4_
#define cnorm_ldh_bf16_4_ cnorm_ldh_bf16_int_4_
#endif
#ifndef cnorm_ldh_bf16_8_
#define cnorm_ldh_bf16_8_ cnorm_ldh_bf16_int_8_
#endif
#define cnorm_sth_bf16_4_ cnorm_sth_bf16_int_4_
#ifndef cnorm_sth_bf16_8_
#define cnorm_sth_bf16_8_ cnorm_sth_bf16_int_8_
#endif

/* As expressions and statements (functions that take or return vectors wider
 * than the baseline's registers draw GCC's -Wpsabi notes). */
#define CNORM_LDH(S, N, p) __extension__({ cnorm_hf_##N f_; cnorm_ldh_##S##_##N##_((p), &f_); f_; })
#define CNORM_STH(S, N, p, v) do { cnorm_hf_##N f_ = (v); cnorm_sth_##S##_##N##_((p), &f_); } while (0)
#define cnorm_ldh_f16_4(p) CNORM_LDH(f16, 4, p)
#define cnorm_ldh_f16_8(p) CNORM_LDH(f16, 8, p)
#define cnorm_ldh_f16_16(p) CNORM_LDH(f16, 16, p)
#define cnorm_ldh_bf16_4(p) CNORM_LDH(bf16, 4, p)
#define cnorm_ldh_bf16_8(p) CNORM_LDH(bf16, 8, p)
#define cnorm_ldh_bf16_16(p) CNORM_LDH(bf16, 16, p)
#define cnorm_sth_f16_4(p, v) CNORM_STH(f16, 4, p, v)
#define cnorm_sth_f16_8(p, v) CNORM_STH(f16, 8, p, v)
#define cnorm_sth_f16_16(p, v) CNORM_STH(f16, 16, p, v)
#define cnorm_sth_bf16_4(p, v) CNORM_STH(bf16, 4, p, v)
#define cnorm_sth_bf16_8(p, v) CNORM_STH(bf16, 8, p, v)
#define cnorm_sth_bf16_16(p, v) CNORM_STH(bf16, 16, p, v)

#endif /* vector builds */

#endif
