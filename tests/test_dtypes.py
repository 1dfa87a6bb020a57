"""cnorm/_dtypes.h: the half-precision conversions of every build.

Each build's conversions (F16C in x86-64-v3 and v4, integer code in the
baseline and in the scalar fallback; vector and scalar forms) are compiled
into one small library and compared with NumPy's float16 casts and
ml_dtypes' bfloat16 casts: every float16 value up, and float32 values
(every exponent, halfway cases, subnormal results, overflow, NaN) down.
"""

import ctypes

import numpy as np
import pytest

from test_lanes import _build, _cpu_has_v4, _is_x86, _p

DRIVER = r"""
#include "_dtypes.h"
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
/* scalar forms */
void CAT(up_f16_, SUFFIX)(const cnorm_f16 *h, float *f, ptrdiff_t n)
{ for (ptrdiff_t i = 0; i < n; i++) f[i] = cnorm_f16_to_f32(h[i]); }
void CAT(down_f16_, SUFFIX)(const float *f, cnorm_f16 *h, ptrdiff_t n)
{ for (ptrdiff_t i = 0; i < n; i++) h[i] = cnorm_f16_from_f32(f[i]); }
void CAT(up_bf16_, SUFFIX)(const cnorm_bf16 *h, float *f, ptrdiff_t n)
{ for (ptrdiff_t i = 0; i < n; i++) f[i] = cnorm_bf16_to_f32(h[i]); }
void CAT(down_bf16_, SUFFIX)(const float *f, cnorm_bf16 *h, ptrdiff_t n)
{ for (ptrdiff_t i = 0; i < n; i++) h[i] = cnorm_bf16_from_f32(f[i]); }
/* vector forms, P = "v": 8 at a time (n a multiple of 8), P = "w": 16 at a time, the
 * x86-64-v4 build's forms, which its 64-byte loops use */
#define VFORMS(P, N, S, T)                                                          \
void CAT(P##up_##S##_, SUFFIX)(const T *h, float *f, ptrdiff_t n)                  \
{ for (ptrdiff_t i = 0; i < n; i += N) { cnorm_hf_##N v = cnorm_ldh_##S##_##N(h + i); \
                                         memcpy(f + i, &v, sizeof v); } }          \
void CAT(P##down_##S##_, SUFFIX)(const float *f, T *h, ptrdiff_t n)                \
{ for (ptrdiff_t i = 0; i < n; i += N) { cnorm_hf_##N v; memcpy(&v, f + i, sizeof v); \
                                         cnorm_sth_##S##_##N(h + i, v); } }
#if defined(__GNUC__) && !defined(CNORM_LANES_SCALAR)
VFORMS(v, 8, f16, cnorm_f16)
VFORMS(v, 8, bf16, cnorm_bf16)
#if defined(__AVX512F__)
VFORMS(w, 16, f16, cnorm_f16)
VFORMS(w, 16, bf16, cnorm_bf16)
#endif
#endif
"""

BUILDS = ((([("v4", ["-march=x86-64-v4"])] if _cpu_has_v4() else [])
           + [("v3", ["-march=x86-64-v3"]), ("base", [])]) if _is_x86() else [("base", [])]) + [
    ("scalar", ["-DCNORM_LANES_SCALAR"])]
VECTOR = [b for b, _ in BUILDS if b != "scalar"]


def _forms(build):
    """The conversion forms a build has: one value (""), 8 ("v"), 16 ("w", x86-64-v4)."""
    return [""] + (["v"] if build in VECTOR else []) + (["w"] if build == "v4" else [])


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return _build(tmp_path_factory, "dtypes", DRIVER, BUILDS)


def _call(lib, name, src, dst):
    f = getattr(lib, name)
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t]
    f.restype = None
    f(_p(src), _p(dst), src.size)
    return dst


def _float32_sweep():
    """float32 bit patterns: every exponent with mantissas at and around the half and
    bfloat16 rounding points, random ones, and the specials."""
    rng = np.random.default_rng(0)
    exps = np.arange(256, dtype=np.uint32) << 23
    # low bits around the rounding points of float16 (13 dropped bits) and bfloat16 (16)
    lows = np.array([0, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7fff, 0x8000,
                     0x8001, 0xffff, 0x10000, 0x18000, 0x7fffff, 0x400000, 0x7fe000],
                    dtype=np.uint32)
    highs = rng.integers(0, 1 << 23, 64, dtype=np.uint32) & ~np.uint32(0x1ffff)
    mant = (highs[:, None] | lows[None, :]).ravel()
    bits = (exps[:, None] | mant[None, :]).ravel()
    bits = np.concatenate([bits, rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64)
                           .astype(np.uint32)])
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    bits = bits[: bits.size - bits.size % 16]
    return bits.view(np.float32)


def _same_or_both_nan(got, want, dt, what):
    g, w = got.astype(np.float32), want.astype(np.float32)
    nan = np.isnan(w)
    assert np.array_equal(np.isnan(g), nan), what
    assert np.array_equal(np.signbit(g[nan]), np.signbit(w[nan])), f"{what}: NaN signs"
    assert g[~nan].view(np.uint32).tolist() == w[~nan].view(np.uint32).tolist(), what


@pytest.mark.parametrize("build", [b for b, _ in BUILDS])
def test_float16_up_is_exact_for_every_value(lib, build):
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    want = h.astype(np.float32)
    forms = [(f"{v}up_f16", build) for v in _forms(build)]
    for name, b in forms:
        got = _call(lib, f"{name}_{b}", h, np.empty(h.size, np.float32))
        _same_or_both_nan(got, want, np.float16, f"{name} {b}")
        nan = np.isnan(want)
        # a NaN keeps its payload and is quieted
        assert (got[nan].view(np.uint32) & 0x400000).all()


@pytest.mark.parametrize("build", [b for b, _ in BUILDS])
def test_float16_down_rounds_to_nearest_even(lib, build):
    f = _float32_sweep()
    with np.errstate(over="ignore"):
        want = f.astype(np.float16)
    forms = [(f"{v}down_f16", build) for v in _forms(build)]
    for name, b in forms:
        got = _call(lib, f"{name}_{b}", f, np.empty(f.size, np.float16))
        _same_or_both_nan(got, want, np.float16, f"{name} {b}")


def test_float16_builds_agree_bit_for_bit_on_nan_payloads(lib):
    f = _float32_sweep()
    results = [_call(lib, f"down_f16_{b}", f, np.empty(f.size, np.uint16)) for b, _ in BUILDS]
    results += [_call(lib, f"{v}down_f16_{b}", f, np.empty(f.size, np.uint16))
                for b in VECTOR for v in _forms(b)[1:]]
    for r in results[1:]:
        assert np.array_equal(r, results[0])


@pytest.mark.parametrize("build", [b for b, _ in BUILDS])
def test_bfloat16_conversions_match_ml_dtypes(lib, build):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf = np.dtype(ml_dtypes.bfloat16)
    h = np.arange(1 << 16, dtype=np.uint16)
    up_want = (h.astype(np.uint32) << 16).view(np.float32)
    f = _float32_sweep()
    with np.errstate(invalid="ignore", over="ignore"):
        down_want = f.astype(bf)
    one = _call(lib, f"down_bf16_{build}", f, np.empty(f.size, np.uint16))
    for v in _forms(build):
        up = _call(lib, f"{v}up_bf16_{build}", h, np.empty(h.size, np.float32))
        assert np.array_equal(up.view(np.uint32), up_want.view(np.uint32)), f"{v}up {build}"
        down = _call(lib, f"{v}down_bf16_{build}", f, np.empty(f.size, np.uint16))
        _same_or_both_nan(down.view(bf), down_want, bf, f"{v}down {build}")
        # NaN payloads too: every form of every build gives the one-value form's bits
        assert np.array_equal(down, one), f"{v}down {build}: bits"
