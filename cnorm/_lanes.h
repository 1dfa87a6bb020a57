/* float64 lane loops of the statistics and backward passes, in C.
 *
 * cnorm_row_grad_sums_*: the one pass over a row of layer-norm backward,
 *   sums[0] = sum(g*w), sums[1] = sum(g*w*(x - m))   (8 lanes, fixed tree)
 *   dw[i] += g*(x - m)*r, db[i] += g                  (column partials)
 * cnorm_row_grad_sums2_*: the same for two rows in one pass (the same bits)
 * cnorm_dot2_*: batch-norm backward's two sums over one run, in the 16 lanes
 *   of seq_dot: a[k] += g, c[k] += g*(x - m)
 * cnorm_sum2_* and cnorm_dot2_* take `ahead`: 0, or the elements from the run to
 *   the same positions of a later run, which they prefetch step by step as they
 *   go (see seq_ahead in _moments.pxd); it changes no result.  Both take any n,
 *   but the sequence and row loops pass whole steps only and keep a piece's tail
 *   in lanes of their own (sum2_piece in _moments.pxd)
 * cnorm_sumsq_*: RMS norm's sum of squares, in the 16 lanes of cnorm_sum2_*
 * cnorm_welford_*: Welford's update over whole steps of 16 values, one lane
 *   per position in the step, so that one division serves the 16 lanes
 * cnorm_col_*: the row-major batch-norm kernels' column statistics and sums,
 *   one row (col_sum2) or four rows (col_sum2_x4, col_welford_x4, col_dot2_x4)
 *   at a time; plain elementwise C loops that GCC vectorises across columns
 *
 * GCC does not vectorise these mixes of float loads and float64 lane sums
 * from plain loops (Cython's or C's), so the lanes are written as 4-wide
 * GCC vector-extension values.  Each lane's arithmetic is plain IEEE float64
 * and the final trees are fixed, so every build (SSE2 pairs or AVX2) and the
 * plain-C fallback (other compilers, or CNORM_LANES_SCALAR defined) give the
 * same bits: tests/test_lanes.py compiles both and compares them.
 */
#ifndef CNORM_LANES_H
#define CNORM_LANES_H

#include <stddef.h>
#include <string.h>

#include "_dtypes.h"
#if defined(__AVX__)
#include <immintrin.h>
#endif

#define CNORM_ROW_GRAD_SCALAR(S, i, lane)                                          \
    do {                                                                           \
        double gv_ = CNORM_LDT1_##S(g + i), xc_ = CNORM_LDT1_##S(x + i) - m;         \
        double gw_ = gv_ * (double)w[i];                                           \
        a[lane] += gw_;                                                            \
        c[lane] += gw_ * xc_;                                                      \
        dw[i] += gv_ * (xc_ * r);                                                  \
        db[i] += gv_;                                                              \
    } while (0)

#define CNORM_ROW_GRAD_FINISH                                                      \
    sums[0] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));   \
    sums[1] = ((c[0] + c[1]) + (c[2] + c[3])) + ((c[4] + c[5]) + (c[6] + c[7]));

/* Prefetch the bytes of the 16 values of step i of p + ahead (one line a 64 bytes):
 * _stream.h's cnorm_prefetch, without its empty-asm barrier (CNORM_KEEP), which has no
 * place inside the lane loops, and without _stream.h's system headers. */
#if defined(__GNUC__)
#define CNORM_AHEAD(p, i, ahead)                                                   \
    do {                                                                           \
        size_t o_;                                                                 \
        for (o_ = 0; o_ < 16 * sizeof *(p); o_ += 64)                              \
            __builtin_prefetch((const char *)((p) + (i) + (ahead)) + o_, 0, 3);    \
    } while (0)
#else
#define CNORM_AHEAD(p, i, ahead) ((void)0)
#endif

#if defined(__GNUC__) && !defined(CNORM_LANES_SCALAR)

typedef double cnorm_v4d __attribute__((vector_size(32)));

/* 4 values of type T at p, as float64 */
#define CNORM_LOAD4(p)                                                         \
    ((cnorm_v4d){(double)(p)[0], (double)(p)[1], (double)(p)[2], (double)(p)[3]})

/* The lane loops' vectors: CNORM_LW float64 lanes each, 8 in the x86-64-v4 build
 * (AVX-512) and 4 elsewhere.  Lane j always takes the same elements, so the width
 * changes no bit. */
#if defined(__AVX512F__)
#define CNORM_LW 8
typedef double cnorm_vwd __attribute__((vector_size(64)));
#define CNORM_LOADW(p)                                                         \
    ((cnorm_vwd){(double)(p)[0], (double)(p)[1], (double)(p)[2], (double)(p)[3],   \
                 (double)(p)[4], (double)(p)[5], (double)(p)[6], (double)(p)[7]})
#else
#define CNORM_LW 4
typedef cnorm_v4d cnorm_vwd;
#define CNORM_LOADW CNORM_LOAD4
#endif
#define CNORM_NW (16 / CNORM_LW)      /* vectors of the 16 lanes */

/* Loads of 4 and of CNORM_LW values of each storage type as float64 lanes. */
#define CNORM_LOAD4_CAST CNORM_LOAD4
#define CNORM_LOAD4_f32 CNORM_LOAD4
#define CNORM_LOAD4_f64 CNORM_LOAD4
#if defined(__AVX__)
#define CNORM_LOAD4_f16(p) ((cnorm_v4d)_mm256_cvtps_pd((__m128)cnorm_ldh_f16_4(p)))
#define CNORM_LOAD4_bf16(p) ((cnorm_v4d)_mm256_cvtps_pd((__m128)cnorm_ldh_bf16_4(p)))
#else
#define CNORM_LOAD4_f16(p) __builtin_convertvector(cnorm_ldh_f16_4(p), cnorm_v4d)
#define CNORM_LOAD4_bf16(p) __builtin_convertvector(cnorm_ldh_bf16_4(p), cnorm_v4d)
#endif
#define CNORM_LOADW_f32 CNORM_LOADW
#define CNORM_LOADW_f64 CNORM_LOADW
#if CNORM_LW == 8
/* one widening conversion of 8 float lanes (GCC's convertvector splits it in two) */
#define CNORM_LOADW_f16(p) ((cnorm_vwd)_mm512_cvtps_pd((__m256)cnorm_ldh_f16_8(p)))
#define CNORM_LOADW_bf16(p) ((cnorm_vwd)_mm512_cvtps_pd((__m256)cnorm_ldh_bf16_8(p)))
#else
#define CNORM_LOADW_f16 CNORM_LOAD4_f16
#define CNORM_LOADW_bf16 CNORM_LOAD4_bf16
#endif

#define CNORM_DEFINE_WELFORD(S, T, PT)                                          \
static inline double cnorm_welford_##S(const T *x, ptrdiff_t n, double k, double *mu,           \
                          double *m2)                                              \
{                                                                                  \
    cnorm_vwd M[CNORM_NW], Q[CNORM_NW];                                            \
    ptrdiff_t i;                                                                   \
    int q;                                                                         \
    memcpy(M, mu, sizeof M);                                                       \
    memcpy(Q, m2, sizeof Q);                                                       \
    for (i = 0; i + 16 <= n; i += 16) {                                            \
        double r;                                                                  \
        k += 1.0;                                                                  \
        r = 1.0 / k;                                                               \
        for (q = 0; q < CNORM_NW; q++) {                                           \
            cnorm_vwd v = CNORM_LOADW_##S(x + i + CNORM_LW * q);                       \
            cnorm_vwd d = v - M[q];                                                \
            M[q] += d * r;                                                         \
            Q[q] += d * (v - M[q]);                                                \
        }                                                                          \
    }                                                                              \
    memcpy(mu, M, sizeof M);                                                       \
    memcpy(m2, Q, sizeof Q);                                                       \
    return k;                                                                      \
}

#define CNORM_DEFINE_DOT2(S, T, PT)                                             \
static inline void cnorm_dot2_##S(const T *g, const T *x, ptrdiff_t n, double m,             \
                        double *a, double *c, ptrdiff_t ahead)                     \
{                                                                                  \
    cnorm_vwd A[CNORM_NW], C[CNORM_NW];                                            \
    ptrdiff_t nb = n - n % 16, i;                                                  \
    int q;                                                                         \
    memcpy(A, a, sizeof A);                                                        \
    memcpy(C, c, sizeof C);                                                        \
    for (i = 0; i < nb; i += 16) {                                                 \
        if (ahead) {                                                               \
            CNORM_AHEAD(g, i, ahead);                                              \
            CNORM_AHEAD(x, i, ahead);                                              \
        }                                                                          \
        for (q = 0; q < CNORM_NW; q++) {                                           \
            cnorm_vwd gq = CNORM_LOADW_##S(g + i + CNORM_LW * q);                      \
            A[q] += gq;                                                            \
            C[q] += gq * (CNORM_LOADW_##S(x + i + CNORM_LW * q) - m);                  \
        }                                                                          \
    }                                                                              \
    memcpy(a, A, sizeof A);                                                        \
    memcpy(c, C, sizeof C);                                                        \
    for (i = nb; i < n; i++) {                                                     \
        a[i - nb] += CNORM_LDT1_##S(g + i);                                                 \
        c[i - nb] += CNORM_LDT1_##S(g + i) * (CNORM_LDT1_##S(x + i) - m);                            \
    }                                                                              \
}

#define CNORM_DEFINE_SUM2(S, T, PT)                                             \
static inline void cnorm_sum2_##S(const T *x, ptrdiff_t n, double s, double *a, double *q,   \
                                  ptrdiff_t ahead)                                 \
{                                                                                  \
    cnorm_vwd A[CNORM_NW], Q[CNORM_NW];                                            \
    ptrdiff_t nb = n - n % 16, i;                                                  \
    int q_;                                                                        \
    memcpy(A, a, sizeof A);                                                        \
    memcpy(Q, q, sizeof Q);                                                        \
    for (i = 0; i < nb; i += 16) {                                                 \
        if (ahead)                                                                 \
            CNORM_AHEAD(x, i, ahead);                                              \
        for (q_ = 0; q_ < CNORM_NW; q_++) {                                        \
            cnorm_vwd d = CNORM_LOADW_##S(x + i + CNORM_LW * q_) - s;                  \
            A[q_] += d;                                                            \
            Q[q_] += d * d;                                                        \
        }                                                                          \
    }                                                                              \
    memcpy(a, A, sizeof A);                                                        \
    memcpy(q, Q, sizeof Q);                                                        \
    for (i = nb; i < n; i++) {                                                     \
        double d = CNORM_LDT1_##S(x + i) - s;                                               \
        a[i - nb] += d;                                                            \
        q[i - nb] += d * d;                                                        \
    }                                                                              \
}

/* RMS norm's statistic: q[k] += x**2 in the lanes of sum2 (whose q it equals for s = 0) */
#define CNORM_DEFINE_SUMSQ(S, T, PT)                                            \
static inline void cnorm_sumsq_##S(const T *x, ptrdiff_t n, double *q)                        \
{                                                                                  \
    cnorm_vwd Q[CNORM_NW];                                                         \
    ptrdiff_t nb = n - n % 16, i;                                                  \
    int q_;                                                                        \
    memcpy(Q, q, sizeof Q);                                                        \
    for (i = 0; i < nb; i += 16) {                                                 \
        for (q_ = 0; q_ < CNORM_NW; q_++) {                                        \
            cnorm_vwd d = CNORM_LOADW_##S(x + i + CNORM_LW * q_);                      \
            Q[q_] += d * d;                                                        \
        }                                                                          \
    }                                                                              \
    memcpy(q, Q, sizeof Q);                                                        \
    for (i = nb; i < n; i++) {                                                     \
        double d = CNORM_LDT1_##S(x + i);                                                   \
        q[i - nb] += d * d;                                                        \
    }                                                                              \
}

/* The 8 lanes of the row loops: CNORM_R8 vectors of CNORM_LW lanes (one AVX-512
 * vector in the x86-64-v4 build, two AVX2 vectors elsewhere); element i goes to
 * lane i % 8 either way. */
#define CNORM_R8 (8 / CNORM_LW)
#define CNORM_LOADW_CAST CNORM_LOADW

/* One row's share of a step over the CNORM_LW lanes at o: its lane sums A and C,
 * and its terms added to the dw and db lanes d and b (wq: the weights' lanes). */
#define CNORM_GRAD_STEP(S, gp, xp, mv, rv, wq, A, C, d, b, q, o)                \
    do {                                                                       \
        cnorm_vwd g_ = CNORM_LOADW_##S((gp) + (o));                            \
        cnorm_vwd x_ = CNORM_LOADW_##S((xp) + (o)) - (mv);                     \
        cnorm_vwd w_ = g_ * (wq);                                              \
        A[q] += w_;                                                            \
        C[q] += w_ * x_;                                                       \
        d += g_ * (x_ * (rv));                                                 \
        b += g_;                                                               \
    } while (0)

/* The vector steps of the row-gradient loops over w, dw and db (in scope, with i, q
 * and nb): each step of CNORM_LW lanes at o loads the weights' lanes wq and the dw
 * and db lanes d and b, runs STEPS (one CNORM_GRAD_STEP per row) and stores d and b. */
#define CNORM_GRAD_LANES(...)                                                   \
    for (i = 0; i < nb; i += 8) {                                               \
        for (q = 0; q < CNORM_R8; q++) {                                        \
            ptrdiff_t o = i + CNORM_LW * q;                                     \
            cnorm_vwd wq = CNORM_LOADW_CAST(w + o), d, b;                       \
            memcpy(&d, dw + o, sizeof d);                                       \
            memcpy(&b, db + o, sizeof b);                                       \
            __VA_ARGS__;                                                        \
            memcpy(dw + o, &d, sizeof d);                                       \
            memcpy(db + o, &b, sizeof b);                                       \
        }                                                                       \
    }

/* A row's tail after the vector steps (elements nb..n, into lanes 0..), then its sums
 * from its 8 lanes (A and C of the steps). */
#define CNORM_DEFINE_GRAD_TAIL(S, T, PT)                                        \
static inline void cnorm_grad_tail_##S(const T *g, const T *x, const PT *w, ptrdiff_t n,      \
                        ptrdiff_t nb, double m, double r, const void *lanes_a,              \
                        const void *lanes_c, double *sums, double *dw, double *db)          \
{                                                                                  \
    double a[8], c[8];                                                             \
    ptrdiff_t i;                                                                   \
    memcpy(a, lanes_a, sizeof a);                                                  \
    memcpy(c, lanes_c, sizeof c);                                                  \
    for (i = nb; i < n; i++)                                                       \
        CNORM_ROW_GRAD_SCALAR(S, i, i - nb);                                       \
    CNORM_ROW_GRAD_FINISH                                                          \
}

#define CNORM_DEFINE_ROW_GRAD_SUMS(S, T, PT)                                    \
CNORM_DEFINE_GRAD_TAIL(S, T, PT)                                                \
static inline void cnorm_row_grad_sums_##S(const T *g, const T *x, const PT *w, ptrdiff_t n,           \
                        double m, double r, double *sums, double *dw, double *db)  \
{                                                                                  \
    cnorm_vwd A[CNORM_R8] = {{0}}, C[CNORM_R8] = {{0}};                            \
    ptrdiff_t nb = n - n % 8, i;                                                   \
    int q;                                                                         \
    CNORM_GRAD_LANES(CNORM_GRAD_STEP(S, g, x, m, r, wq, A, C, d, b, q, o));         \
    cnorm_grad_tail_##S(g, x, w, n, nb, m, r, A, C, sums, dw, db);                 \
}

/* Two rows, r0 then r1, in one pass: each row's sums in its own lanes, as the one-row
 * loop computes them, and for every i dw[i] += (row 0's term), then (row 1's), in
 * that order: the same bits as two one-row calls, with dw and db read and written
 * once per pair of rows instead of once per row. */
#define CNORM_DEFINE_ROW_GRAD_SUMS2(S, T, PT)                                   \
static inline void cnorm_row_grad_sums2_##S(const T *g, const T *x, const T *g_1,           \
                        const T *x_1, const PT *w, ptrdiff_t n, double m, double r,          \
                        double m_1, double r_1, double *sums, double *sums_1,                \
                        double *dw, double *db)                                              \
{                                                                                  \
    cnorm_vwd A[CNORM_R8] = {{0}}, C[CNORM_R8] = {{0}};                            \
    cnorm_vwd E[CNORM_R8] = {{0}}, F[CNORM_R8] = {{0}};                            \
    ptrdiff_t nb = n - n % 8, i;                                                   \
    int q;                                                                         \
    CNORM_GRAD_LANES(CNORM_GRAD_STEP(S, g, x, m, r, wq, A, C, d, b, q, o);          \
                     CNORM_GRAD_STEP(S, g_1, x_1, m_1, r_1, wq, E, F, d, b, q, o));     \
    cnorm_grad_tail_##S(g, x, w, n, nb, m, r, A, C, sums, dw, db);                 \
    cnorm_grad_tail_##S(g_1, x_1, w, n, nb, m_1, r_1, E, F, sums_1, dw, db);       \
}

#else

#define CNORM_DEFINE_WELFORD(S, T, PT)                                          \
static inline double cnorm_welford_##S(const T *x, ptrdiff_t n, double k, double *mu,           \
                          double *m2)                                              \
{                                                                                  \
    ptrdiff_t i;                                                                   \
    int j;                                                                         \
    for (i = 0; i + 16 <= n; i += 16) {                                            \
        double r;                                                                  \
        k += 1.0;                                                                  \
        r = 1.0 / k;                                                               \
        for (j = 0; j < 16; j++) {                                                 \
            double v = CNORM_LD1_##S(x + i + j), d = v - mu[j];                                    \
            mu[j] += d * r;                                                        \
            m2[j] += d * (v - mu[j]);                                              \
        }                                                                          \
    }                                                                              \
    return k;                                                                      \
}

#define CNORM_DEFINE_DOT2(S, T, PT)                                             \
static inline void cnorm_dot2_##S(const T *g, const T *x, ptrdiff_t n, double m,             \
                        double *a, double *c, ptrdiff_t ahead)                     \
{                                                                                  \
    ptrdiff_t i;                                                                   \
    for (i = 0; i < n; i++) {                                                      \
        if (ahead && i % 16 == 0 && i + 16 <= n) {                                 \
            CNORM_AHEAD(g, i, ahead);                                              \
            CNORM_AHEAD(x, i, ahead);                                              \
        }                                                                          \
        a[i % 16] += CNORM_LD1_##S(g + i);                                                 \
        c[i % 16] += CNORM_LD1_##S(g + i) * (CNORM_LD1_##S(x + i) - m);                            \
    }                                                                              \
}

#define CNORM_DEFINE_SUM2(S, T, PT)                                             \
static inline void cnorm_sum2_##S(const T *x, ptrdiff_t n, double s, double *a, double *q,   \
                                  ptrdiff_t ahead)                                 \
{                                                                                  \
    ptrdiff_t i;                                                                   \
    for (i = 0; i < n; i++) {                                                      \
        if (ahead && i % 16 == 0 && i + 16 <= n)                                   \
            CNORM_AHEAD(x, i, ahead);                                              \
        double d = CNORM_LD1_##S(x + i) - s;                                               \
        a[i % 16] += d;                                                            \
        q[i % 16] += d * d;                                                        \
    }                                                                              \
}

#define CNORM_DEFINE_SUMSQ(S, T, PT)                                            \
static inline void cnorm_sumsq_##S(const T *x, ptrdiff_t n, double *q)                        \
{                                                                                  \
    ptrdiff_t i;                                                                   \
    for (i = 0; i < n; i++) {                                                      \
        double d = CNORM_LD1_##S(x + i);                                                   \
        q[i % 16] += d * d;                                                        \
    }                                                                              \
}

#define CNORM_DEFINE_ROW_GRAD_SUMS(S, T, PT)                                    \
static inline void cnorm_row_grad_sums_##S(const T *g, const T *x, const PT *w, ptrdiff_t n,           \
                        double m, double r, double *sums, double *dw, double *db)  \
{                                                                                  \
    double a[8] = {0.0}, c[8] = {0.0};                                             \
    ptrdiff_t nb = n - n % 8, i;                                                   \
    int j;                                                                         \
    for (i = 0; i < nb; i += 8)                                                    \
        for (j = 0; j < 8; j++)                                                    \
            CNORM_ROW_GRAD_SCALAR(S, i + j, j);                                       \
    for (i = nb; i < n; i++)                                                       \
        CNORM_ROW_GRAD_SCALAR(S, i, i - nb);                                          \
    CNORM_ROW_GRAD_FINISH                                                          \
}

#define CNORM_DEFINE_ROW_GRAD_SUMS2(S, T, PT)                                   \
static inline void cnorm_row_grad_sums2_##S(const T *g, const T *x, const T *g_1,           \
                        const T *x_1, const PT *w, ptrdiff_t n, double m, double r,          \
                        double m_1, double r_1, double *sums, double *sums_1,                \
                        double *dw, double *db)                                              \
{                                                                                  \
    cnorm_row_grad_sums_##S(g, x, w, n, m, r, sums, dw, db);                       \
    cnorm_row_grad_sums_##S(g_1, x_1, w, n, m_1, r_1, sums_1, dw, db);             \
}

#endif

/* The column loops below, one body each, by CNORM_COL_LOOP(S, n, BODY): BODY(c, VT,
 * LDX, LDD, STD) does columns c.. in values of type VT (double, or CNORM_LW float64
 * lanes), loading data with LDX and float64 sums with LDD, storing them with STD.
 * Most types take the plain loop, which GCC vectorises across columns; float16 in a
 * build with F16C takes steps of CNORM_LW columns in explicit vectors first, because
 * GCC vectorises float16's widening only as the integer code, which bound those
 * loops (the F16C instruction it would not vectorise).  Each lane does a column's
 * scalar operations in their order, and the widening is exact, so the bits are the
 * same either way. */
#define CNORM_COL_LD1(p) (*(p))
#define CNORM_COL_ST1(p, v) (*(p) = (v))
#define CNORM_COL_NOSTEPS(n, BODY) do { } while (0)
#if defined(__GNUC__) && !defined(CNORM_LANES_SCALAR) && defined(__F16C__)
#define CNORM_COL_LDV(p) __extension__({ cnorm_vwd v_; memcpy(&v_, (p), sizeof v_); v_; })
#define CNORM_COL_STV(p, v) do { cnorm_vwd t_ = (v); memcpy((p), &t_, sizeof t_); } while (0)
#define CNORM_COL_VSTEPS_f16(n, BODY)                                              \
    for (; c + CNORM_LW <= (n); c += CNORM_LW)                                     \
        BODY(c, cnorm_vwd, CNORM_LOADW_f16, CNORM_COL_LDV, CNORM_COL_STV)
#else
#define CNORM_COL_VSTEPS_f16 CNORM_COL_NOSTEPS
#endif
/* bfloat16's widening is a shift, which GCC vectorises well (explicit vectors
 * measured no faster) */
#define CNORM_COL_VSTEPS_bf16 CNORM_COL_NOSTEPS
#define CNORM_COL_VSTEPS_f32 CNORM_COL_NOSTEPS
#define CNORM_COL_VSTEPS_f64 CNORM_COL_NOSTEPS
#define CNORM_COL_LOOP(S, n, BODY)                                                 \
    do {                                                                           \
        ptrdiff_t c = 0;                                                           \
        CNORM_COL_VSTEPS_##S(n, BODY);                                             \
        for (; c < (n); c++)                                                       \
            BODY(c, double, CNORM_LD1_##S, CNORM_COL_LD1, CNORM_COL_ST1);          \
    } while (0)

/* One row of a block of column sums: s[c] += x[c] - f[c], q[c] += (x[c] - f[c])**2.
 * Elementwise, so every build gives the same bits; `restrict` spares GCC the
 * run-time aliasing checks it would otherwise repeat for every row. */
#define CNORM_COL_SUM2_BODY(c, VT, LDX, LDD, STD)                                  \
    do {                                                                           \
        VT d = LDX(x + (c)) - LDD(f + (c));                                        \
        STD(s + (c), LDD(s + (c)) + d);                                            \
        STD(q + (c), LDD(q + (c)) + d * d);                                        \
    } while (0)
#define CNORM_DEFINE_COL_SUM2(S, T, PT)                                         \
static inline void cnorm_col_sum2_##S(const T *restrict x, const double *restrict f,             \
                        double *restrict s, double *restrict q, ptrdiff_t n)       \
{                                                                                  \
    CNORM_COL_LOOP(S, n, CNORM_COL_SUM2_BODY);                                     \
}

/* Four rows (row stride ld) of the same column sums, added in a fixed tree:
 * s[c] += (d0 + d1) + (d2 + d3) and likewise for the squares, so that each
 * column's running sums are loaded and stored once per four rows, not once
 * per row (the stores were what bound the one-row loop). */
#define CNORM_COL_SUM2_X4_BODY(c, VT, LDX, LDD, STD)                               \
    do {                                                                           \
        VT f_ = LDD(f + (c));                                                      \
        VT d0 = LDX(x + (c)) - f_, d1 = LDX(x1 + (c)) - f_;                        \
        VT d2 = LDX(x2 + (c)) - f_, d3 = LDX(x3 + (c)) - f_;                       \
        STD(s + (c), LDD(s + (c)) + ((d0 + d1) + (d2 + d3)));                      \
        STD(q + (c), LDD(q + (c)) + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)));  \
    } while (0)
#define CNORM_DEFINE_COL_SUM2_X4(S, T, PT)                                      \
static inline void cnorm_col_sum2_x4_##S(const T *restrict x, ptrdiff_t ld,                         \
                        const double *restrict f, double *restrict s,              \
                        double *restrict q, ptrdiff_t n)                           \
{                                                                                  \
    const T *restrict x1 = x + ld, *restrict x2 = x + 2 * ld,                      \
            *restrict x3 = x + 3 * ld;                                             \
    CNORM_COL_LOOP(S, n, CNORM_COL_SUM2_X4_BODY);                                  \
}

/* Welford's update of column statistics by four rows in turn (row stride ld),
 * with r[j] = 1/(count after row j): the same operations, in the same order,
 * as four one-row updates, with each column's mean and M2 kept in registers. */
#define CNORM_COL_WELFORD_X4_BODY(c, VT, LDX, LDD, STD)                            \
    do {                                                                           \
        VT m = LDD(mu + (c)), a = LDD(m2 + (c)), v, d;                             \
        v = LDX(x + (c));  d = v - m; m = m + d * r0; a = a + d * (v - m);         \
        v = LDX(x1 + (c)); d = v - m; m = m + d * r1; a = a + d * (v - m);         \
        v = LDX(x2 + (c)); d = v - m; m = m + d * r2; a = a + d * (v - m);         \
        v = LDX(x3 + (c)); d = v - m; m = m + d * r3; a = a + d * (v - m);         \
        STD(mu + (c), m);                                                          \
        STD(m2 + (c), a);                                                          \
    } while (0)
#define CNORM_DEFINE_COL_WELFORD_X4(S, T, PT)                                   \
static inline void cnorm_col_welford_x4_##S(const T *restrict x, ptrdiff_t ld, const double *r,        \
                        double *restrict mu, double *restrict m2, ptrdiff_t n)     \
{                                                                                  \
    const T *restrict x1 = x + ld, *restrict x2 = x + 2 * ld,                      \
            *restrict x3 = x + 3 * ld;                                             \
    double r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];                             \
    CNORM_COL_LOOP(S, n, CNORM_COL_WELFORD_X4_BODY);                               \
}

/* Four rows of batch-norm backward's column sums: a[c] += g, b[c] += g*(x - mu[c]),
 * each added in a fixed tree as in the column sums above. */
#define CNORM_COL_DOT2_X4_BODY(c, VT, LDX, LDD, STD)                               \
    do {                                                                           \
        VT g0 = LDX(g + (c)), g1 = LDX(g + (c) + ld);                              \
        VT g2 = LDX(g + (c) + 2 * ld), g3 = LDX(g + (c) + 3 * ld);                 \
        VT m = LDD(mu + (c));                                                      \
        STD(a + (c), LDD(a + (c)) + ((g0 + g1) + (g2 + g3)));                      \
        STD(b + (c), LDD(b + (c))                                                  \
            + ((g0 * (LDX(x + (c)) - m) + g1 * (LDX(x + (c) + ld) - m))           \
               + (g2 * (LDX(x + (c) + 2 * ld) - m) + g3 * (LDX(x + (c) + 3 * ld) - m)))); \
    } while (0)
#define CNORM_DEFINE_COL_DOT2_X4(S, T, PT)                                      \
static inline void cnorm_col_dot2_x4_##S(const T *restrict g, const T *restrict x, ptrdiff_t ld,    \
                        const double *restrict mu, double *restrict a,             \
                        double *restrict b, ptrdiff_t n)                           \
{                                                                                  \
    CNORM_COL_LOOP(S, n, CNORM_COL_DOT2_X4_BODY);                                  \
}

/* Every helper for every storage type: (suffix, storage, parameter type). */
#define CNORM_DEFINE_LANES(S, T, PT)                                           \
    CNORM_DEFINE_COL_SUM2(S, T, PT)                                            \
    CNORM_DEFINE_COL_SUM2_X4(S, T, PT)                                         \
    CNORM_DEFINE_COL_WELFORD_X4(S, T, PT)                                      \
    CNORM_DEFINE_COL_DOT2_X4(S, T, PT)                                         \
    CNORM_DEFINE_WELFORD(S, T, PT)                                             \
    CNORM_DEFINE_DOT2(S, T, PT)                                                \
    CNORM_DEFINE_SUM2(S, T, PT)                                                \
    CNORM_DEFINE_SUMSQ(S, T, PT)                                               \
    CNORM_DEFINE_ROW_GRAD_SUMS(S, T, PT)                                       \
    CNORM_DEFINE_ROW_GRAD_SUMS2(S, T, PT)
CNORM_DEFINE_LANES(f32, float, float)
CNORM_DEFINE_LANES(f64, double, double)
CNORM_DEFINE_LANES(f16, cnorm_f16, float)
CNORM_DEFINE_LANES(bf16, cnorm_bf16, float)

/* The helpers by the type of their first data pointer (see _dtypes.h). */
#define cnorm_col_sum2(x, ...) CNORM_BY_TYPE(cnorm_col_sum2, x)(x, __VA_ARGS__)
#define cnorm_col_sum2_x4(x, ...) CNORM_BY_TYPE(cnorm_col_sum2_x4, x)(x, __VA_ARGS__)
#define cnorm_col_welford_x4(x, ...) CNORM_BY_TYPE(cnorm_col_welford_x4, x)(x, __VA_ARGS__)
#define cnorm_col_dot2_x4(g, ...) CNORM_BY_TYPE(cnorm_col_dot2_x4, g)(g, __VA_ARGS__)
#define cnorm_welford(x, ...) CNORM_BY_TYPE(cnorm_welford, x)(x, __VA_ARGS__)
#define cnorm_dot2(g, ...) CNORM_BY_TYPE(cnorm_dot2, g)(g, __VA_ARGS__)
#define cnorm_sum2(x, ...) CNORM_BY_TYPE(cnorm_sum2, x)(x, __VA_ARGS__)
#define cnorm_sumsq(x, ...) CNORM_BY_TYPE(cnorm_sumsq, x)(x, __VA_ARGS__)
#define cnorm_row_grad_sums(g, ...) CNORM_BY_TYPE(cnorm_row_grad_sums, g)(g, __VA_ARGS__)
#define cnorm_row_grad_sums2(g, ...) CNORM_BY_TYPE(cnorm_row_grad_sums2, g)(g, __VA_ARGS__)

#endif
