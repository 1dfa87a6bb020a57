"""Per-CPU tuning (cnorm._dispatch.OWN_ROW_PREFETCH): chosen from the CPU's vendor or
CNORM_OWN_ROW_PREFETCH, applied to every kernel module dispatch imports, and a
prefetch only, so results are bitwise the same either way."""

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
    monkeypatch.setenv("CNORM_OWN_ROW_PREFETCH", env)
    assert _dispatch._own_row_prefetch() is expected


@pytest.mark.parametrize("env", [None, "", "yes", "2"])
def test_default_is_off_on_intel_only(monkeypatch, env):
    if env is None:
        monkeypatch.delenv("CNORM_OWN_ROW_PREFETCH", raising=False)
    else:
        monkeypatch.setenv("CNORM_OWN_ROW_PREFETCH", env)
    assert _dispatch._own_row_prefetch() is (cpu_vendor() != "intel")


def test_a_new_process_takes_the_setting_from_the_environment():
    code = "import cnorm._dispatch as d; print(d.OWN_ROW_PREFETCH)"
    for env, expected in (("0", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "CNORM_OWN_ROW_PREFETCH": env}, check=True)
        assert out.stdout.strip() == expected


def test_dispatch_hands_the_setting_to_the_module_it_imports(monkeypatch):
    module = _dispatch.kernels("_kernels")
    seen = []
    monkeypatch.setattr(module, "set_own_row_prefetch", seen.append)
    for value in (False, True):
        monkeypatch.setattr(_dispatch, "OWN_ROW_PREFETCH", value)
        assert _dispatch.kernels("_kernels") is module
        assert seen[-1] is value
    assert len(seen) == 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [384, 768, 1024])     # rows of 768 B to 8 KiB, both sides of 1-4 KiB
def test_the_setting_changes_no_bit(dtype, H):
    module = _dispatch.kernels("_kernels")
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

    try:
        module.set_own_row_prefetch(True)
        on = run()
        module.set_own_row_prefetch(False)
        off = run()
    finally:
        module.set_own_row_prefetch(_dispatch.OWN_ROW_PREFETCH)
    for a, c in zip(on, off):
        assert a.dtype == c.dtype
        assert np.array_equal(a.view(np.uint8), c.view(np.uint8))

