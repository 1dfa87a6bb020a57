"""The sdist and the wheel: what they ship, and that an sdist installs and tests in a fresh venv.

This is the slowest test of the default run (one sdist build, one compile of the
kernels, one quick build of them, in a new virtual environment: about a minute on
two cores); it needs
the package registry that the README's install command needs too. The fresh
environment gets the sdist and pytest only: the test extras' own installation is
what the README's test command (and CI) already does, and the sdist tests that
need an extra skip without it.
"""

import os
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every file outside the package that the test and benchmark suites read.
NEEDED = ["LICENSE", "README.md", "pyproject.toml", "setup.py", "tests/conftest.py",
          "tests/stubtest_allowlist.txt", "bench/conftest.py", "bench/vs_reference.py",
          "bench/scaling.py", "examples/mlp_inference.py", "examples/transformer_block.py"]


def _sh(args, cwd, **kw):
    res = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{' '.join(map(str, args))} failed:\n{res.stdout[-3000:]}\n" \
                                f"{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    if not (ROOT / "setup.py").exists():
        pytest.skip("not a source checkout")
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    _sh([sys.executable, "-m", "build", "--sdist", "--outdir", out, ROOT], cwd=out)
    (path,) = out.glob("cnorm-*.tar.gz")
    return path


def test_sdist_ships_what_the_tests_need_and_no_generated_files(sdist):
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = _sh(["git", "ls-files", "cnorm", "tests", "bench", "examples"], cwd=ROOT).split() \
        if (ROOT / ".git").exists() else []
    missing = [n for n in NEEDED + tracked if n not in names]
    assert not missing, f"the sdist lacks {missing}"
    generated = sorted(n for n in names if n.endswith((".c", ".so", ".html", ".pyc")))
    assert not generated, f"the sdist ships generated files {generated}"


def test_sdist_installs_imports_and_tests_in_a_fresh_venv(sdist, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # A quick build (CNORM_QUICK=1: one baseline kernel module at -O1, no x86-64-v3/v4
    # variants) keeps this test at under half its time; the variants compile from the same
    # shipped sources, which the test above checks are all there, and CI's own install
    # builds all three.
    _sh([py, "-m", "pip", "install", "-q", sdist, "pytest"], cwd=tmp_path,
        env=dict(env, CNORM_QUICK="1"))

    # The installed package: importable from anywhere, kernels built, no generated C shipped.
    code = ("import cnorm, numpy as np, pathlib; from cnorm import _reference as r; "
            "x = np.random.default_rng(0).standard_normal((4, 8)); "
            "assert np.allclose(cnorm.layer_norm(x, 8), r.layer_norm(x, (8,))[0]); "
            "d = pathlib.Path(cnorm.__file__).parent; "
            "print(sorted(p.name for p in d.glob('*.c')), len(list(d.glob('*.so'))))")
    c_files, n_so = _sh([py, "-c", code], cwd=tmp_path, env=env).split()
    assert c_files == "[]" and int(n_so) >= 2      # _openmp and _kernels

    # The unpacked sdist's own tests run against the installed package.
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (src,) = tmp_path.glob("cnorm-*/")
    out = _sh([env_dir / "bin" / "pytest", "-q", "-p", "no:cacheprovider",
               "tests/test_errors.py", "tests/test_examples.py"], cwd=src, env=env)
    assert " passed" in out and "failed" not in out and "error" not in out
