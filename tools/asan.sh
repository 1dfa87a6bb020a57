#!/usr/bin/env bash
# Build cnorm with AddressSanitizer in a scratch copy of this checkout and run
# the test suite under it.  Usage: tools/asan.sh [pytest args...]
# Needs gcc's libasan (Debian: libasan8, installed with gcc) and the test
# extras (pip install -e ".[test]") in the current Python.  The build
# requirements of pyproject.toml ([build-system] requires: setuptools, Cython,
# numpy) are pip-installed into the current Python first where any is missing
# or too old, since the build runs there rather than in an isolated env.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
missing="$(python - "$here/pyproject.toml" <<'PY'
import sys, tomllib
from importlib.metadata import PackageNotFoundError, version
with open(sys.argv[1], "rb") as f:
    reqs = tomllib.load(f)["build-system"]["requires"]
try:
    from packaging.requirements import Requirement
except ImportError:                      # no packaging: install them all
    print(" ".join(reqs)); sys.exit()
out = []
for r in map(Requirement, reqs):
    try:
        if version(r.name) not in r.specifier:
            out.append(str(r))
    except PackageNotFoundError:
        out.append(str(r))
print(" ".join(out))
PY
)"
if [ -n "$missing" ]; then
    echo "asan: installing the build requirements $missing into $(python -c 'import sys; print(sys.prefix)')"
    # shellcheck disable=SC2086
    python -m pip install -q $missing
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$here" ls-files -z | (cd "$here" && xargs -0 cp --parents -t "$work")
cd "$work"
CNORM_SANITIZE=address python setup.py build_ext --inplace -q >/dev/null
libasan="$(gcc -print-file-name=libasan.so)"
# Python itself is not instrumented and keeps objects alive until exit, so
# leak reports would be noise: detect_leaks=0.  Anything else ASan finds
# aborts the run with a report.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
export CNORM_ISA="${CNORM_ISA:-auto}"
# tests/test_leaks.py measures resident memory, which ASan's quarantine of
# freed blocks inflates by design; the packaging and serial-build tests run
# pip and the compiler, which must not inherit LD_PRELOAD.  They run in the
# ordinary suite instead.
LD_PRELOAD="$libasan" PYTHONPATH="$work" python -m pytest -q -p no:cacheprovider \
    -o addopts="-m 'not slow'" --deselect tests/test_leaks.py::test_no_growth_over_many_calls \
    --ignore tests/test_packaging.py --ignore tests/test_serial_build.py tests "$@"
echo "asan: no findings (CNORM_ISA=$CNORM_ISA)"
