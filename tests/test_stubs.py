"""The .pyi stubs of the compiled modules match what the modules export (mypy.stubtest)."""

import importlib.util
import os
import subprocess
import sys

import pytest

import cnorm
from cnorm._openmp import cpu_has_v3, cpu_has_v4

COMPILED = ["cnorm._openmp", "cnorm._kernels"]
# stubtest imports each module: a wider build than this CPU runs would die of an
# illegal instruction, so those are left out (their stubs re-export _kernels.pyi)
RUNNABLE = {"v3": cpu_has_v3, "v4": cpu_has_v4}


def _built(name):
    return importlib.util.find_spec(name) is not None


def test_stubs_match_compiled_modules(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the test extras: pip install '.[test]'")
    modules = COMPILED + [f"{m}_{v}" for m in COMPILED[1:] for v in ("v3", "v4")
                          if RUNNABLE[v]() and _built(f"{m}_{v}")]
    allowlist = os.path.join(os.path.dirname(__file__), "stubtest_allowlist.txt")
    # Import cnorm from where this test imported it (the installed package, or a
    # checkout built in place), and run from an empty folder: python -m puts the
    # working directory first on the path, where a source checkout would shadow
    # the installed, compiled package.
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(cnorm.__file__)))
    res = subprocess.run([sys.executable, "-m", "mypy.stubtest", *modules, "--allowlist", allowlist],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Success" in res.stdout


def test_package_is_typed():
    assert os.path.exists(os.path.join(os.path.dirname(cnorm.__file__), "py.typed"))
