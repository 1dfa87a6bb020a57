"""cnorm/_lanes.h: the vector-extension loops and their plain-C fallback agree bit for bit.

The kernels use the vector version wherever the compiler is GCC or Clang; the
fallback is what any other compiler gets.  Both are compiled here into one
small library (the fallback with CNORM_LANES_SCALAR) and called through ctypes.
"""

import ctypes
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
                              double *a, double *c)                                  \
{ cnorm_dot2_##S(g, x, n, m, a, c); }                                                \
void CAT(sum2_##S##_, SUFFIX)(const T *x, ptrdiff_t n, double s, double *a, double *q) \
{ cnorm_sum2_##S(x, n, s, a, q); }                                                    \
void CAT(grad_##S##_, SUFFIX)(const T *g, const T *x, const T *w, ptrdiff_t n,       \
                              double m, double r, double *sums, double *dw,          \
                              double *db)                                            \
{ cnorm_row_grad_sums_##S(g, x, w, n, m, r, sums, dw, db); }
WRAP(float, f32)
WRAP(double, f64)
"""


def _compiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) to build the _lanes.h test library")
    return cc


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cc = _compiler()
    d = tmp_path_factory.mktemp("lanes")
    src = d / "driver.c"
    src.write_text(DRIVER)
    objs = []
    for suffix, extra in (("vec", ["-march=x86-64-v3"] if _is_x86() else []),
                          ("scalar", ["-DCNORM_LANES_SCALAR"])):
        obj = d / f"{suffix}.o"
        subprocess.run([cc, "-O3", "-ffp-contract=off", "-fPIC", "-c", str(src), "-o", str(obj),
                        f"-I{HEADER_DIR}", f"-DSUFFIX={suffix}", *extra], check=True)
        objs.append(str(obj))
    so = d / "lanes.so"
    subprocess.run([cc, "-shared", "-o", str(so), *objs], check=True)
    return ctypes.CDLL(str(so))


def _is_x86():
    import platform
    return platform.machine().lower() in ("x86_64", "amd64")


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
    for suffix in ("vec", "scalar"):
        mu, m2 = np.full(16, 1e4), np.zeros(16)
        k = _run(lib, f"welford_{tag}", suffix, x, n - n % 16, 3.0, mu, m2)
        a, c = np.arange(16.0), np.zeros(16)
        _run(lib, f"dot2_{tag}", suffix, g, x, n, 1e4, a, c)
        sa, sq = np.arange(16.0), np.ones(16)
        _run(lib, f"sum2_{tag}", suffix, x, n, 1e4, sa, sq)
        sums, dw, db = np.zeros(2), np.ones(n), np.full(n, 2.0)
        _run(lib, f"grad_{tag}", suffix, g, x, w, n, 1e4, 0.5, sums, dw, db)
        out[suffix] = [np.array([k]), mu, m2, a, c, sa, sq, sums, dw, db]
    for v, s in zip(out["vec"], out["scalar"]):
        np.testing.assert_array_equal(v.view(np.int64), s.view(np.int64))
    # and the loops did something: the Welford count moved by one per step of 16,
    # and the shifted sums are those of x - 1e4
    assert out["vec"][0][0] == 3.0 + (n - n % 16) // 16
    d = x.astype(np.float64) - 1e4
    np.testing.assert_allclose(out["vec"][5].sum(), np.arange(16.0).sum() + d.sum(), rtol=1e-12)
    np.testing.assert_allclose(out["vec"][6].sum(), 16.0 + (d * d).sum(), rtol=1e-12)
