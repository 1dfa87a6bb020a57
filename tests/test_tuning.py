"""Per-CPU tuning (cnorm._dispatch.PREFETCH_BURSTS): chosen from the CPU's vendor or
CNORM_PREFETCH_BURSTS, applied to every kernel module dispatch imports, and
prefetches only, so results are bitwise the same either way."""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import cnorm
from cnorm import _dispatch
from cnorm._openmp import cpu_vendor

from test_isa import DTYPES      # every storage type, bfloat16 when ml_dtypes is there


def _proc_vendor():
    """The vendor /proc/cpuinfo names, or None where there is no such file or line."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def test_cpu_vendor_matches_proc_cpuinfo():
    vendor = cpu_vendor()
    assert vendor in ("intel", "amd", "other")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        assert vendor == "other"
        return
    proc = _proc_vendor()
    if proc is None:
        pytest.skip("no vendor_id in /proc/cpuinfo to compare with")
    assert vendor == {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(proc, "other")


@pytest.mark.parametrize("env,expected", [("0", False), ("1", True), (" 1 ", True)])
def test_environment_overrides_the_vendor_default(monkeypatch, env, expected):
    monkeypatch.setenv("CNORM_PREFETCH_BURSTS", env)
    assert _dispatch._prefetch_bursts() is expected


@pytest.mark.parametrize("env", [None, "", "yes", "2"])
def test_default_is_off_on_intel_only(monkeypatch, env):
    if env is None:
        monkeypatch.delenv("CNORM_PREFETCH_BURSTS", raising=False)
    else:
        monkeypatch.setenv("CNORM_PREFETCH_BURSTS", env)
    assert _dispatch._prefetch_bursts() is (cpu_vendor() != "intel")


def test_a_new_process_takes_the_setting_from_the_environment():
    code = "import cnorm._dispatch as d; print(d.PREFETCH_BURSTS)"
    for env, expected in (("0", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "CNORM_PREFETCH_BURSTS": env}, check=True)
        assert out.stdout.strip() == expected


def test_dispatch_hands_the_setting_to_the_module_it_imports(monkeypatch):
    module = _dispatch.kernels("_kernels")
    seen = []
    monkeypatch.setattr(module, "set_prefetch_bursts", seen.append)
    for value in (False, True):
        monkeypatch.setattr(_dispatch, "PREFETCH_BURSTS", value)
        assert _dispatch.kernels("_kernels") is module
        assert seen[-1] is value
    assert len(seen) == 2


def _both_ways(module, run):
    """run() with the bursts on, then off; the setting restored after."""
    try:
        module.set_prefetch_bursts(True)
        on = run()
        module.set_prefetch_bursts(False)
        off = run()
    finally:
        module.set_prefetch_bursts(_dispatch.PREFETCH_BURSTS)
    for a, c in zip(on, off, strict=True):
        assert a.dtype == c.dtype
        assert np.array_equal(a.view(np.uint8), c.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [384, 768, 1024])     # rows of 768 B to 8 KiB, both sides of 1-4 KiB
def test_the_setting_changes_no_bit_of_the_row_ops(dtype, H):
    rng = np.random.default_rng(H)
    x = (rng.standard_normal((70, H)) * 2 + 30).astype(dtype)
    r = rng.standard_normal((70, H)).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(H)).astype(dtype)
    b = (0.1 * rng.standard_normal(H)).astype(dtype)

    def run():
        f = cnorm.layer_norm_forward(x, (H,), w, b)
        rms = cnorm.rms_norm_forward(x, H, w)
        y, h = cnorm.add_layer_norm(x, r, (H,), w, b)
        ry, rh = cnorm.add_rms_norm(x, r, (H,), w)
        return [f.y, f.mean, f.rstd, rms.y, rms.rstd, y, h, ry, rh]

    _both_ways(_dispatch.kernels("_kernels"), run)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["two_pass", "welford"])
@pytest.mark.parametrize("shape", [(6, 16, 28, 28), (5, 8, 16, 16), (4, 8, 7, 7), (3, 4, 40, 40)])
def test_the_setting_changes_no_bit_of_the_plane_ops(dtype, method, shape):
    """Planes of 196 B to 6.4 KiB in float32: runs on both sides of 512 B - 4 KiB."""
    rng = np.random.default_rng(shape[2])
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 30).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
    b = (0.1 * rng.standard_normal(c)).astype(np.float32)

    def run():
        f = cnorm.batch_norm_forward(x, w, b, method=method)
        g = cnorm.batch_norm_backward(dy, x, f.mean, f.invstd, w)
        gn = cnorm.group_norm_forward(x, 2, w, b, method=method)
        return [f.y, f.mean, f.invstd, g.dx, g.dweight, g.dbias, gn.y, gn.mean, gn.rstd]

    _both_ways(_dispatch.kernels("_kernels"), run)
