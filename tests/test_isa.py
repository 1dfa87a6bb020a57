"""The baseline, x86-64-v3 and x86-64-v4 builds of the kernels give bitwise identical results."""

import importlib
import importlib.util

import numpy as np
import pytest

import cnorm
from cnorm import _dispatch
from cnorm._checks import param_dtype
from cnorm._openmp import cpu_has_v3, cpu_has_v4

try:
    import ml_dtypes
except ImportError:      # pragma: no cover - ml_dtypes is in the test extras
    ml_dtypes = None

# every storage type: float16 converts with F16C in the v3 and v4 builds and with
# integer code in the baseline one
DTYPES = [np.float32, np.float64, np.float16,
          pytest.param(ml_dtypes.bfloat16 if ml_dtypes else None, id="bfloat16",
                       marks=pytest.mark.skipif(ml_dtypes is None, reason="needs ml_dtypes"))]


def _both(name):
    """The baseline build and every wider build this CPU runs."""
    if importlib.util.find_spec(f"cnorm.{name}_v3") is None:
        pytest.skip("this build has no x86-64-v3 kernels (not an x86-64 compiler)")
    if not cpu_has_v3():
        pytest.skip("this CPU cannot run the x86-64-v3 kernels")
    mods = [importlib.import_module(f"cnorm.{name}"), importlib.import_module(f"cnorm.{name}_v3")]
    if cpu_has_v4() and importlib.util.find_spec(f"cnorm.{name}_v4") is not None:
        mods.append(importlib.import_module(f"cnorm.{name}_v4"))
    return mods


def test_dispatch_picks_v3_where_supported_and_honours_the_override(monkeypatch):
    def built(level):
        return importlib.util.find_spec(f"cnorm._kernels_{level}") is not None

    widest = ("cnorm._kernels_v4" if cpu_has_v4() and built("v4") else
              "cnorm._kernels_v3" if cpu_has_v3() and built("v3") else "cnorm._kernels")
    assert _dispatch.kernels("_kernels").__name__ == widest
    monkeypatch.setenv("CNORM_ISA", "v3")
    assert _dispatch.kernels("_kernels").__name__ == (
        "cnorm._kernels_v3" if cpu_has_v3() and built("v3") else "cnorm._kernels")
    monkeypatch.setenv("CNORM_ISA", "baseline")
    assert _dispatch.kernels("_kernels").__name__ == "cnorm._kernels"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("shape,axis", [((8, 5, 9, 11), 1), ((64, 3, 300), 1), ((40, 7, 6, 13), -1),
                                        ((33, 70), 1)])
def test_batch_norm_builds_agree_bitwise(monkeypatch, shape, axis, method, dtype):
    mods = _both("_kernels")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    results = []
    for mod in mods:
        monkeypatch.setattr(cnorm.batchnorm, "_kernels", mod)
        rm, rv = np.zeros(c, param_dtype(np.dtype(dtype))), np.ones(c, param_dtype(np.dtype(dtype)))
        f = cnorm.batch_norm_forward(x, w, b, rm, rv, axis=axis, method=method)
        g = cnorm.batch_norm_backward(dy, x, f.mean, f.invstd, w, axis=axis)
        y = cnorm.batch_norm(x, w, b, rm, rv, axis=axis, relu=True)
        results.append([f.y, f.mean, f.invstd, rm, rv, *g, y])
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            assert a.tobytes() == e.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("shape", [(50, 77), (4, 6, 300), (3, 5000)])
def test_layer_norm_builds_agree_bitwise(monkeypatch, shape, method, dtype):
    mods = _both("_kernels")
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) + 10).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    h = shape[-1]
    w, b = rng.standard_normal(h).astype(dtype), rng.standard_normal(h).astype(dtype)
    results = []
    for mod in mods:
        monkeypatch.setattr(cnorm.layernorm, "_kernels", mod)
        f = cnorm.layer_norm_forward(x, h, w, b, method=method)
        g = cnorm.layer_norm_backward(dy, x, f.mean, f.rstd, w)
        results.append([f.y, f.mean, f.rstd, *g, cnorm.layer_norm(x, h, w, b)])
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            assert a.tobytes() == e.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((4, 32, 9, 11), 1), ((3, 7, 6, 32), -1), ((5, 64), 1)])
def test_group_instance_rms_norm_builds_agree_bitwise(monkeypatch, shape, axis, dtype):
    mods = _both("_kernels")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3 + 10).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    h = shape[-1]
    results = []
    for mod in mods:
        for module in (cnorm.groupnorm, cnorm.rmsnorm, cnorm.batchnorm):
            monkeypatch.setattr(module, "_kernels", mod)
        out = []
        for act in (None, "relu", "silu"):
            out.append(cnorm.group_norm(x, 4, w, b, axis=axis, activation=act))
            out.append(cnorm.rms_norm(x, h, activation=act))
            if x.ndim > 2:
                out.append(cnorm.instance_norm(x, w, b, axis=axis, activation=act))
        f = cnorm.group_norm_forward(x, 4, w, b, axis=axis)
        out += [*f, *cnorm.group_norm_backward(dy, x, f.mean, f.rstd, w, axis=axis)]
        r = cnorm.rms_norm_forward(x, h)
        out += [*r, *cnorm.rms_norm_backward(dy, x, r.rstd)]
        results.append(out)
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            assert a.tobytes() == e.tobytes()
