"""A build without OpenMP reports one thread, whatever set_num_threads is given.

The thread-count module is compiled here without -fopenmp (as a
``CNORM_NO_OPENMP=1`` build compiles it) into a package of its own, and
driven in a subprocess.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import cnorm

SRC = Path(cnorm.__file__).parent


@pytest.fixture(scope="module")
def serial_pkg(tmp_path_factory):
    pytest.importorskip("Cython")
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    root = tmp_path_factory.mktemp("serial")
    pkg = root / "serialcnorm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("_openmp.pyx", "_openmp.pxd", "_stream.h"):
        shutil.copy(SRC / name, pkg / name)
    subprocess.run([sys.executable, "-m", "cython", "-3", "--module-name", "serialcnorm._openmp",
                    str(pkg / "_openmp.pyx"), "-o", str(pkg / "_openmp.c")],
                   check=True, capture_output=True)
    so = pkg / ("_openmp" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([cc, "-shared", "-fPIC", "-O1", f"-I{sysconfig.get_paths()['include']}",
                    f"-I{pkg}", str(pkg / "_openmp.c"), "-o", str(so)],
                   check=True, capture_output=True)
    return root


def _run(root, code, **env):
    full = dict(os.environ, PYTHONPATH=str(root), **env)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("omp_env", [{}, {"OMP_NUM_THREADS": "4"}])
def test_serial_build_reports_one_thread(serial_pkg, omp_env):
    out = _run(serial_pkg, """
        from serialcnorm import _openmp as m
        assert m.openmp_enabled() is False
        print(m.get_num_threads())
        m.set_num_threads(4)
        print(m.get_num_threads())
        m.set_num_threads(1)
        print(m.get_num_threads())
        for bad, exc in ((0, ValueError), (-1, ValueError), (True, TypeError), ("2", TypeError)):
            try:
                m.set_num_threads(bad)
            except exc as e:
                assert "n must" in str(e), e
            else:
                raise AssertionError(f"set_num_threads({bad!r}) did not raise")
        print(m.get_num_threads())
        """, **omp_env)
    assert out.split() == ["1", "1", "1", "1"]


def test_openmp_build_keeps_what_was_set():
    if not cnorm.openmp_enabled():
        pytest.skip("this build has no OpenMP")
    before = cnorm.get_num_threads()
    try:
        cnorm.set_num_threads(3)
        assert cnorm.get_num_threads() == 3
    finally:
        cnorm.set_num_threads(before)
