#!/usr/bin/env bash
# Build cnorm with AddressSanitizer in a scratch copy of this checkout and run
# the test suite under it.  Usage: tools/asan.sh [pytest args...]
# Needs gcc's libasan (Debian: libasan8, installed with gcc) and the test
# extras (pip install ".[test]") in the current Python.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
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
# freed blocks inflates by design; it runs in the ordinary suite instead.
LD_PRELOAD="$libasan" PYTHONPATH="$work" python -m pytest -q -p no:cacheprovider \
    -o addopts="-m 'not slow'" --deselect tests/test_leaks.py::test_no_growth_over_many_calls \
    tests "$@"
echo "asan: no findings (CNORM_ISA=$CNORM_ISA)"
