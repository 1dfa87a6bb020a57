"""cnorm/_lanes.h: the vector-extension loops and their plain-C fallback agree bit for bit.

The kernels use the vector version wherever the compiler is GCC or Clang; the
fallback is what any other compiler gets.  Both are compiled here into one
small library (the fallback with CNORM_LANES_SCALAR) and called through ctypes.
"""

import ctypes
import math
import os
import shutil
import subprocess
import sysconfig

import numpy as np
import pytest

import cnorm

HEADER_DIR = os.path.dirname(cnorm.__file__)

DRIVER = r"""
#include "_lanes.h"
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define WRAP(T, S)                                                                   \
double CAT(welford_##S##_, SUFFIX)(const T *x, ptrdiff_t n, double k, double *mu,    \
                                   double *m2)                                       \
{ return cnorm_welford_##S(x, n, k, mu, m2); }                                       \
void CAT(dot2_##S##_, SUFFIX)(const T *g, const T *x, ptrdiff_t n, double m,         \
                              double *a, double *c, ptrdiff_t ahead)                 \
{ cnorm_dot2_##S(g, x, n, m, a, c, ahead); }                                         \
void CAT(sum2_##S##_, SUFFIX)(const T *x, ptrdiff_t n, double s, double *a, double *q, \
                              ptrdiff_t ahead)                                       \
{ cnorm_sum2_##S(x, n, s, a, q, ahead); }                                            \
void CAT(sumsq_##S##_, SUFFIX)(const T *x, ptrdiff_t n, double *q)                    \
{ cnorm_sumsq_##S(x, n, q); }                                                         \
void CAT(grad_##S##_, SUFFIX)(const T *g, const T *x, const T *w, ptrdiff_t n,       \
                              double m, double r, double *sums, double *dw,          \
                              double *db)                                            \
{ cnorm_row_grad_sums_##S(g, x, w, n, m, r, sums, dw, db); }                        \
void CAT(grad2_##S##_, SUFFIX)(const T *g, const T *x, const T *g1, const T *x1,     \
                               const T *w, ptrdiff_t n, double m, double r,          \
                               double m1, double r1, double *sums, double *sums1,    \
                               double *dw, double *db)                               \
{ cnorm_row_grad_sums2_##S(g, x, g1, x1, w, n, m, r, m1, r1, sums, sums1, dw, db); }
#define WRAP_COLUMNS(T, S)                                                           \
void CAT(col_sum2_##S##_, SUFFIX)(const T *x, const double *f, double *s, double *q,  \
                                  ptrdiff_t n)                                       \
{ cnorm_col_sum2_##S(x, f, s, q, n); }                                               \
void CAT(col_sum2_x4_##S##_, SUFFIX)(const T *x, ptrdiff_t ld, const double *f,      \
                                     double *s, double *q, ptrdiff_t n)              \
{ cnorm_col_sum2_x4_##S(x, ld, f, s, q, n); }                                        \
void CAT(col_welford_x4_##S##_, SUFFIX)(const T *x, ptrdiff_t ld, const double *r,   \
                                        double *mu, double *m2, ptrdiff_t n)         \
{ cnorm_col_welford_x4_##S(x, ld, r, mu, m2, n); }                                   \
void CAT(col_dot2_x4_##S##_, SUFFIX)(const T *g, const T *x, ptrdiff_t ld,           \
                                     const double *mu, double *a, double *b,         \
                                     ptrdiff_t n)                                    \
{ cnorm_col_dot2_x4_##S(g, x, ld, mu, a, b, n); }
WRAP(float, f32)
WRAP(double, f64)
WRAP_COLUMNS(float, f32)
WRAP_COLUMNS(double, f64)
WRAP_COLUMNS(cnorm_f16, f16)
"""


def _compiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) to build the _lanes.h test library")
    return cc


def _build(tmp_path_factory, name, driver, builds):
    """Compile driver once per (suffix, flags) build into one shared library."""
    cc = _compiler()
    d = tmp_path_factory.mktemp(name)
    src = d / "driver.c"
    src.write_text(driver)
    objs = []
    for suffix, extra in builds:
        obj = d / f"{suffix}.o"
        subprocess.run([cc, "-O3", "-ffp-contract=off", "-fPIC", "-c", str(src), "-o", str(obj),
                        f"-I{HEADER_DIR}", f"-DSUFFIX={suffix}", *extra], check=True)
        objs.append(str(obj))
    so = d / f"{name}.so"
    subprocess.run([cc, "-shared", "-o", str(so), *objs], check=True)
    return ctypes.CDLL(str(so))


def _is_x86():
    import platform
    return platform.machine().lower() in ("x86_64", "amd64")


def _cpu_has_v4():
    from cnorm._openmp import cpu_has_v4
    return cpu_has_v4()


# the lane loops' builds: 8-lane vectors (x86-64-v4, where this CPU runs it), 4-lane
# vectors (x86-64-v3, or the target's baseline), and plain C; "vec" is the one every
# case also checks against the formulas
LANE_BUILDS = ([("vec", ["-march=x86-64-v3"] if _is_x86() else [])]
               + ([("v4", ["-march=x86-64-v4", "-mprefer-vector-width=512"])]
                  if _is_x86() and _cpu_has_v4() else [])
               + [("scalar", ["-DCNORM_LANES_SCALAR"])])


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return _build(tmp_path_factory, "lanes", DRIVER, LANE_BUILDS)


def _p(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def _run(lib, name, suffix, *args):
    f = getattr(lib, f"{name}_{suffix}")
    f.argtypes = [ctypes.c_void_p if isinstance(a, np.ndarray) else
                  (ctypes.c_double if isinstance(a, float) else ctypes.c_ssize_t) for a in args]
    f.restype = ctypes.c_double
    return f(*[_p(a) if isinstance(a, np.ndarray) else a for a in args])


@pytest.mark.parametrize("dtype,tag", [(np.float32, "f32"), (np.float64, "f64")])
@pytest.mark.parametrize("n", [0, 5, 16, 37, 1000])
def test_vector_and_fallback_agree_bitwise(lib, dtype, tag, n):
    rng = np.random.default_rng(n)
    g = rng.standard_normal(n).astype(dtype)
    x = (rng.standard_normal(n) * 1e-2 + 1e4).astype(dtype)
    w = rng.standard_normal(n).astype(dtype)
    out = {}
    # g and x each twice over, so that a loop told to prefetch the next run (`ahead`
    # = n: the second copy) asks only for bytes of the buffer
    g2, x2 = np.concatenate([g, g]), np.concatenate([x, x])
    for suffix in [b for b, _ in LANE_BUILDS]:
        mu, m2 = np.full(16, 1e4), np.zeros(16)
        k = _run(lib, f"welford_{tag}", suffix, x, n - n % 16, 3.0, mu, m2)
        a, c = np.arange(16.0), np.zeros(16)
        _run(lib, f"dot2_{tag}", suffix, g2, x2, n, 1e4, a, c, 0)
        a2, c2 = np.arange(16.0), np.zeros(16)
        _run(lib, f"dot2_{tag}", suffix, g2, x2, n, 1e4, a2, c2, n)
        sa, sq = np.arange(16.0), np.ones(16)
        _run(lib, f"sum2_{tag}", suffix, x2, n, 1e4, sa, sq, 0)
        sa2, sq2 = np.arange(16.0), np.ones(16)
        _run(lib, f"sum2_{tag}", suffix, x2, n, 1e4, sa2, sq2, n)
        for v, v2 in [(a, a2), (c, c2), (sa, sa2), (sq, sq2)]:     # prefetching changes no bit
            assert v.tobytes() == v2.tobytes(), suffix
        z, zq = np.zeros(16), np.full(16, 0.5)
        _run(lib, f"sum2_{tag}", suffix, g, n, 0.0, z, zq, 0)
        rq = np.full(16, 0.5)
        _run(lib, f"sumsq_{tag}", suffix, g, n, rq)
        assert rq.tobytes() == zq.tobytes()     # RMS norm's sums are sum2's, unshifted
        sums, dw, db = np.zeros(2), np.ones(n), np.full(n, 2.0)
        _run(lib, f"grad_{tag}", suffix, g, x, w, n, 1e4, 0.5, sums, dw, db)
        out[suffix] = [np.array([k]), mu, m2, a, c, sa, sq, sums, dw, db, rq]
    for build in out:
        for v, s in zip(out["vec"], out[build]):
            np.testing.assert_array_equal(v.view(np.int64), s.view(np.int64), err_msg=build)
    # and the loops did something: the Welford count moved by one per step of 16,
    # and the shifted sums are those of x - 1e4
    assert out["vec"][0][0] == 3.0 + (n - n % 16) // 16
    d = x.astype(np.float64) - 1e4
    np.testing.assert_allclose(out["vec"][5].sum(), np.arange(16.0).sum() + d.sum(), rtol=1e-12)
    np.testing.assert_allclose(out["vec"][6].sum(), 16.0 + (d * d).sum(), rtol=1e-12)


@pytest.mark.parametrize("dtype,tag", [(np.float32, "f32"), (np.float64, "f64")])
@pytest.mark.parametrize("n", [0, 3, 8, 37, 128, 1000])
def test_two_row_grad_sums_are_two_one_row_calls(lib, dtype, tag, n):
    # layer-norm backward takes rows in pairs: each row's sums, and dw and db with row 0's
    # term added before row 1's, bit for bit what two one-row calls give, in every build
    rng = np.random.default_rng(n + 1)
    g = rng.standard_normal((2, n)).astype(dtype)
    x = (rng.standard_normal((2, n)) * 1e-2 + 1e4).astype(dtype)
    w = rng.standard_normal(n).astype(dtype)
    for suffix in [b for b, _ in LANE_BUILDS]:
        s0, s1, dw, db = np.zeros(2), np.zeros(2), rng.standard_normal(n), np.ones(n)
        t0, t1, dw2, db2 = np.zeros(2), np.zeros(2), dw.copy(), db.copy()
        _run(lib, f"grad_{tag}", suffix, g[0].copy(), x[0].copy(), w, n, 1e4, 0.5, s0, dw, db)
        _run(lib, f"grad_{tag}", suffix, g[1].copy(), x[1].copy(), w, n, 1e4 + 1e-3, 0.25, s1,
             dw, db)
        _run(lib, f"grad2_{tag}", suffix, g[0].copy(), x[0].copy(), g[1].copy(), x[1].copy(), w,
             n, 1e4, 0.5, 1e4 + 1e-3, 0.25, t0, t1, dw2, db2)
        for a, b in ((s0, t0), (s1, t1), (dw, dw2), (db, db2)):
            np.testing.assert_array_equal(a.view(np.int64), b.view(np.int64), err_msg=suffix)
        if n:
            assert s0[0] != 0 and s1[0] != 0 and not np.array_equal(s0, s1)


@pytest.mark.parametrize("dtype,tag", [(np.float32, "f32"), (np.float64, "f64"),
                                       (np.float16, "f16")])
@pytest.mark.parametrize("n", [1, 7, 16, 37])
def test_four_row_column_loops_match_their_formulas(lib, dtype, tag, n):
    # The row-major batch-norm kernels take four rows of column sums at a time;
    # each column's terms are added in a fixed tree, and Welford's four updates
    # are the one-row updates in turn, so every build gives the formula's bits.
    # float16 takes explicit F16C vectors in the vector builds and integer code in
    # the plain one; so does the one-row column sum checked first.
    rng = np.random.default_rng(n)
    ld = n + 3                                            # rows with a gap after them
    # sums small enough that a different order of the four terms shows in the bits
    x = (rng.standard_normal((4, ld)) * 3).astype(dtype)
    g = rng.standard_normal((4, ld)).astype(dtype)
    xs, gs = x[:, :n].astype(np.float64), g[:, :n].astype(np.float64)
    f = xs[0] + rng.standard_normal(n) * 1e-3
    r = 1.0 / np.array([4.0, 5.0, 6.0, 7.0])
    s0, q0 = rng.standard_normal(n) * 1e-9, rng.random(n) * 1e-9
    mu0 = rng.standard_normal(n)
    d = xs - f
    want_s = s0 + ((d[0] + d[1]) + (d[2] + d[3]))
    want_q = q0 + ((d[0] * d[0] + d[1] * d[1]) + (d[2] * d[2] + d[3] * d[3]))
    want_mu, want_m2 = mu0.copy(), q0.copy()
    for j in range(4):
        dj = xs[j] - want_mu
        want_mu = want_mu + dj * r[j]
        want_m2 = want_m2 + dj * (xs[j] - want_mu)
    e = xs - mu0
    want_a = s0 + ((gs[0] + gs[1]) + (gs[2] + gs[3]))
    want_b = q0 + ((gs[0] * e[0] + gs[1] * e[1]) + (gs[2] * e[2] + gs[3] * e[3]))
    want_s1, want_q1 = s0 + d[0], q0 + d[0] * d[0]
    for suffix in [b for b, _ in LANE_BUILDS]:
        s, q = s0.copy(), q0.copy()
        _run(lib, f"col_sum2_{tag}", suffix, x, f, s, q, n)
        np.testing.assert_array_equal(s.view(np.int64), want_s1.view(np.int64), err_msg=suffix)
        np.testing.assert_array_equal(q.view(np.int64), want_q1.view(np.int64), err_msg=suffix)
        s, q = s0.copy(), q0.copy()
        _run(lib, f"col_sum2_x4_{tag}", suffix, x, ld, f, s, q, n)
        mu, m2 = mu0.copy(), q0.copy()
        _run(lib, f"col_welford_x4_{tag}", suffix, x, ld, r, mu, m2, n)
        a, b = s0.copy(), q0.copy()
        _run(lib, f"col_dot2_x4_{tag}", suffix, g, x, ld, mu0, a, b, n)
        for got, want in ((s, want_s), (q, want_q), (mu, want_mu), (m2, want_m2), (a, want_a),
                          (b, want_b)):
            np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64), err_msg=suffix)


# ---------------------------------------------------------------------------
# cnorm/_elementwise.h: the output loops, with plain and streaming stores
# ---------------------------------------------------------------------------

EW_DRIVER = r"""
#include "_elementwise.h"
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define WRAP(T, S)                                                                   \
void CAT(affine_##S##_, SUFFIX)(const T *x, T *y, ptrdiff_t n, double hi, double lo,   \
                                double s, double b, int act, int stream)             \
{ cnorm_affine_##S(x, y, n, (T)hi, (T)lo, (T)s, (T)b, act, stream); }               \
void CAT(affine_cols_##S##_, SUFFIX)(const T *x, T *y, ptrdiff_t n, const T *hi,       \
                                     const T *lo, const T *s, const T *b, int act,   \
                                     int stream)                                     \
{ cnorm_affine_cols_##S(x, y, n, hi, lo, s, b, act, stream); }                       \
void CAT(grad_##S##_, SUFFIX)(const T *g, const T *x, T *dx, ptrdiff_t n, double hi,   \
                              double a, double bc, double cc, int training,          \
                              int stream)                                            \
{ cnorm_grad_##S(g, x, dx, n, (T)hi, (T)a, (T)bc, (T)cc, training, stream); }        \
void CAT(grad_cols_##S##_, SUFFIX)(const T *g, const T *x, T *dx, ptrdiff_t n,         \
                                   const T *hi, const T *a, const T *bc,             \
                                   const T *cc, int training, int stream)            \
{ cnorm_grad_cols_##S(g, x, dx, n, hi, a, bc, cc, training, stream); }               \
void CAT(ln_affine_##S##_, SUFFIX)(const T *x, T *y, ptrdiff_t n, double hi,           \
                                   double lo, double r, const T *w, const T *b,      \
                                   int act, int stream)                              \
{ cnorm_ln_affine_##S(x, y, n, (T)hi, (T)lo, (T)r, w, b, act, stream); }             \
void CAT(ln_dx_##S##_, SUFFIX)(const T *g, const T *x, const T *w, T *dx, ptrdiff_t n, \
                               double hi, double lo, double ra, double rb, double rc, \
                               int stream)                                           \
{ cnorm_ln_dx_##S(g, x, w, dx, n, (T)hi, (T)lo, (T)ra, (T)rb, (T)rc, stream);        \
  cnorm_stream_fence(); }
WRAP(float, f32)
WRAP(double, f64)
"""

# every build of the loops: AVX-512 (x86-64-v4, where this CPU runs it), AVX2
# (x86-64-v3), the x86-64 baseline (SSE2 streaming stores), and the plain-C
# fallback of other compilers
EW_BUILDS = ((([("v4", ["-march=x86-64-v4"])] if _cpu_has_v4() else [])
              + [("v3", ["-march=x86-64-v3"]), ("sse2", [])]) if _is_x86() else [("vec", [])]) + [
    ("scalar", ["-DCNORM_LANES_SCALAR"])]


@pytest.fixture(scope="module")
def ew_lib(tmp_path_factory):
    return _build(tmp_path_factory, "elementwise", EW_DRIVER, EW_BUILDS)


def _ew_call(lib, name, *args):
    f = getattr(lib, name)
    types = []
    for a in args:
        if a is None or isinstance(a, np.ndarray):
            types.append(ctypes.c_void_p)
        elif isinstance(a, float):
            types.append(ctypes.c_double)
        elif isinstance(a, ctypes.c_ssize_t):   # a length
            types.append(ctypes.c_ssize_t)
        else:                                   # a flag
            types.append(ctypes.c_int)
    f.argtypes = types
    f.restype = None
    f(*[None if a is None else (_p(a) if isinstance(a, np.ndarray) else a) for a in args])


def fma32(a, b, c):
    """float32 a * b + c rounded once (to nearest, ties to even), as an FMA does.

    The product is exact in float64, and the float64 sum s is off from the exact
    sum by e (TwoSum).  Rounding s to float32 is then right unless s lies exactly
    halfway between two float32 values while e is not 0: the tie goes the way e
    points."""
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    e = (p - (s - bb)) + (c - bb)
    r = s.astype(np.float32)
    r64 = r.astype(np.float64)
    other = np.nextafter(r, np.where(s > r64, np.float32(np.inf), np.float32(-np.inf)))
    tie = (s != r64) & (2 * s == r64 + other.astype(np.float64)) & (e != 0)
    toward = np.sign(other.astype(np.float64) - s) == np.sign(e)
    return np.where(tie & toward, other, r)


def test_fma32_rounds_once():
    """fma32 against exact rational arithmetic, ties and near-ties included."""
    from fractions import Fraction
    rng = np.random.default_rng(5)
    a = rng.standard_normal(3000).astype(np.float32)
    b = rng.standard_normal(3000).astype(np.float32)
    c = rng.standard_normal(3000).astype(np.float32)
    # float64 sums that land on a float32 midpoint: a * b = -+1 + 2**-46 or 1 - 2**-46
    # with c = 2**24 + 2 (where float32's spacing is 2) leaves the sum 2**24 + 1 or
    # 2**24 + 3 in float64, and where the exact sum lies decides (float32 rounding of
    # the float64 sum alone gets the first three wrong); a true tie goes to even
    u = np.float32(1 + 2 ** -23)
    d = np.float32(1 - 2 ** -23)
    big = np.float32(2 ** 24 + 2)
    a[:4], b[:4], c[:4] = [u, -u, u, 1], [d, d, -d, 1], [big, big, -big, big]
    got = fma32(a, b, c)
    assert got[0] == big and got[1] == big and got[2] == -big and got[3] == big + 2
    assert ((a[:3].astype(np.float64) * b[:3] + c[:3]).astype(np.float32) != got[:3]).all()
    for x, y, z, g in zip(a, b, c, got):
        exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        near = np.float32(float(exact))
        cands = [np.nextafter(near, np.float32(-np.inf)), near,
                 np.nextafter(near, np.float32(np.inf))]
        dist = [abs(Fraction(float(v)) - exact) for v in cands]
        best = min(dist)
        ok = [v for v, d in zip(cands, dist) if d == best]
        want = ok[0] if len(ok) == 1 else [v for v in ok if not (v.view(np.uint32) & 1)][0]
        assert g == want, (x, y, z, g, want)


def silu_bits(v):
    """SiLU as _elementwise.h computes it, in NumPy's IEEE operations of v's type and in
    the same order: v / (exp(-v) + 1), exp by Cody-Waite reduction, a Taylor
    polynomial by Horner's scheme and 2**k from its bits; each a * b + c one fused
    multiply-add for float32 (fma32), a product and a sum for float64."""
    t = v.dtype.type
    f32 = v.dtype == np.float32
    it, ut = (np.int32, np.uint32) if f32 else (np.int64, np.uint64)
    lo_, hi_, log2e, magic, ln2hi, ln2lo, bias, shift = (
        (-87.0, 89.0, 1.44269504088896341, 12582912.0, 0.693145751953125,
         1.428606765330187045e-06, 127, 23) if f32 else
        (-708.0, 710.0, 1.4426950408889634074, 6755399441055744.0, 6.93147180369123816490e-01,
         1.90821492927058770002e-10, 1023, 52))
    coef = ([1.0, 1.0, 0.5, 1.6666667163372e-1, 4.1666667908430e-2, 8.3333337679505e-3,
             1.3888889225200e-3, 1.9841270113830e-4] if f32 else
            [1.0, 1.0, 0.5] + [1.0 / math.factorial(k) for k in range(3, 14)])
    def mad(x, y, z):
        return fma32(x, y, z) if f32 else x * y + z

    with np.errstate(all="ignore"):
        a = -v
        a = np.where(a < t(lo_), t(lo_), a)
        a = np.where(a > t(hi_), t(hi_), a)
        tt = mad(a, t(log2e), t(magic))
        k = tt - t(magic)
        r = mad(-k, t(ln2hi), a)
        r = mad(-k, t(ln2lo), r)
        p = t(coef[-1])
        for c in coef[-2::-1]:
            p = mad(r, p, t(c))
        kb = tt.view(it) - np.array(magic, v.dtype).view(it)
        scale = ((kb + bias).astype(ut) << ut(shift)).view(v.dtype)
        return v / mad(p, scale, t(1))


def test_silu_bits_is_silu():
    """The bit-level model of the kernels' SiLU is SiLU, to 3 ulp (of a long-double
    reference), with NaN, inf and the far tails as documented."""
    for dtype in (np.float32, np.float64):
        v = np.linspace(-80, 80, 200001).astype(dtype)
        got = silu_bits(v)
        wide = v.astype(np.longdouble)
        want = wide / (1 + np.exp(-wide))
        assert (np.abs(got - want) <= 3 * np.spacing(np.abs(want.astype(dtype)))).all()
        edge = silu_bits(np.array([np.nan, np.inf, -np.inf, 1e4, -1e4, 0.0], dtype))
        assert np.isnan(edge[0]) and edge[1] == np.inf and np.isnan(edge[2])
        assert edge[3] == dtype(1e4) and edge[4] == 0 and edge[5] == 0


def _special(rng, n, dtype):
    """Normal values with NaN, +-inf, -0.0 and +0.0 sprinkled in."""
    v = rng.standard_normal(n).astype(dtype)
    picks = rng.integers(0, n, size=min(n, 8)) if n else []
    for i, s in zip(picks, [np.nan, np.inf, -np.inf, -0.0, 0.0, np.nan, -0.0, 1e30]):
        v[i] = s
    return v


@pytest.mark.parametrize("dtype,tag", [(np.float32, "f32"), (np.float64, "f64")])
@pytest.mark.parametrize("n", [0, 3, 8, 37, 1029])
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4])
def test_output_loops_agree_bitwise(ew_lib, dtype, tag, n, offset):
    """Every build, with plain and streaming stores, at any offset of the output from
    a 32-byte boundary, gives the formula's bits (NumPy's elementwise ops in the
    data's type, in the same order), and writes nothing outside the output."""
    rng = np.random.default_rng(n * 10 + offset)
    t = dtype
    x, g = _special(rng, n, t), _special(rng, n, t)
    length, n = n, ctypes.c_ssize_t(n)
    c0, c1, c2, c3 = (rng.standard_normal(length).astype(t) for _ in range(4))
    hi, lo, s, b, r = (float(t(v)) for v in rng.standard_normal(5))
    T = {k: t(v) for k, v in dict(hi=hi, lo=lo, s=s, b=b, r=r).items()}
    with np.errstate(all="ignore"):
        affine = ((x - T["hi"]) - T["lo"]) * T["s"] + T["b"]
        affine_cols = ((x - c0) - c1) * c2 + c3
        ln = ((x - T["hi"]) - T["lo"]) * T["s"]
        # (expected, function, arguments with Y for the output)
        cases = {
            "affine": (affine, "affine", (x, "Y", n, hi, lo, s, b, 0)),
            "affine relu": (np.where(affine < 0, t(0), affine), "affine", (x, "Y", n, hi, lo, s, b, 1)),
            # y = x exactly: ReLU keeps -0.0 and NaN, as torch.relu does
            "relu": (np.where(x < 0, t(0), x), "affine", (x, "Y", n, 0.0, 0.0, 1.0, -0.0, 1)),
            "affine_cols": (affine_cols, "affine_cols", (x, "Y", n, c0, c1, c2, c3, 0)),
            "affine_cols relu": (np.where(affine_cols < 0, t(0), affine_cols), "affine_cols",
                                 (x, "Y", n, c0, c1, c2, c3, 1)),
            "grad": ((g * T["s"] - (x - T["hi"]) * T["b"]) - T["r"], "grad",
                     (g, x, "Y", n, hi, s, b, r, 1)),
            "grad fixed": (g * T["s"], "grad", (g, x, "Y", n, hi, s, b, r, 0)),
            "grad_cols": ((g * c1 - (x - c0) * c2) - c3, "grad_cols", (g, x, "Y", n, c0, c1, c2, c3, 1)),
            "grad_cols fixed": (g * c1, "grad_cols", (g, x, "Y", n, c0, c1, c2, c3, 0)),
            "affine silu": (silu_bits(affine), "affine", (x, "Y", n, hi, lo, s, b, 2)),
            "silu": (silu_bits(x * t(1) + t(0)), "affine", (x, "Y", n, 0.0, 0.0, 1.0, 0.0, 2)),
            "affine_cols silu": (silu_bits(affine_cols), "affine_cols",
                                 (x, "Y", n, c0, c1, c2, c3, 2)),
            "ln w b": (ln * c0 + c1, "ln_affine", (x, "Y", n, hi, lo, s, c0, c1, 0)),
            "ln w": (ln * c0, "ln_affine", (x, "Y", n, hi, lo, s, c0, None, 0)),
            "ln b": (ln + c1, "ln_affine", (x, "Y", n, hi, lo, s, None, c1, 0)),
            "ln": (ln, "ln_affine", (x, "Y", n, hi, lo, s, None, None, 0)),
            "ln w b relu": (np.where(ln * c0 + c1 < 0, t(0), ln * c0 + c1), "ln_affine",
                            (x, "Y", n, hi, lo, s, c0, c1, 1)),
            "ln w silu": (silu_bits(ln * c0), "ln_affine", (x, "Y", n, hi, lo, s, c0, None, 2)),
            "ln silu": (silu_bits(ln), "ln_affine", (x, "Y", n, hi, lo, s, None, None, 2)),
            "ln_dx": (((g * c0) * T["s"] - ((x - T["hi"]) - T["lo"]) * T["b"]) - T["r"], "ln_dx",
                      (g, x, c0, "Y", n, hi, lo, s, b, r)),
        }
    assert length == 0 or not np.array_equal(affine, x)     # the loops do change the data
    itemsize = np.dtype(t).itemsize
    for suffix, _ in EW_BUILDS:
        for stream in (0, 1):
            for key, (expect, fn, args) in cases.items():
                # the output `offset` elements past a 64-byte boundary of a larger buffer
                buf = np.full(length + 2 * 64 // itemsize, 7.0, t)
                start = (-buf.ctypes.data % 64) // itemsize + offset
                y = buf[start:start + length]
                _ew_call(ew_lib, f"{fn}_{tag}_{suffix}",
                         *[y if isinstance(a, str) else a for a in args], stream)
                np.testing.assert_array_equal(y.view(f"i{itemsize}"), expect.view(f"i{itemsize}"),
                                              err_msg=f"{key}, {suffix} build, stream={stream}")
                assert (buf[:start] == 7).all() and (buf[start + length:] == 7).all(), key
