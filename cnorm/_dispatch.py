"""Pick the kernel build for this CPU.

Each kernel module is compiled twice (see setup.py): ``NAME`` for any CPU of
the target architecture and ``NAME_v3`` for x86-64-v3 (AVX2 + FMA).  Both
come from the same source with ``-ffp-contract=off``, so they give bitwise
identical results; v3 is simply faster.  Set ``CNORM_ISA=baseline`` to force
the portable build.
"""

import glob
import importlib
import os

from cnorm._openmp import cpu_has_v3, llc_bytes


def kernels(name):
    """Import ``cnorm.NAME_v3`` where the CPU supports it, else ``cnorm.NAME``."""
    if os.environ.get("CNORM_ISA", "auto").lower() != "baseline" and cpu_has_v3():
        try:
            return importlib.import_module(f"cnorm.{name}_v3")
        except ImportError:
            pass
    return importlib.import_module(f"cnorm.{name}")


def isa(module):
    """'x86-64-v3' or 'baseline', for the given kernel module."""
    return "x86-64-v3" if module.__name__.endswith("_v3") else "baseline"


def _cache_bytes():
    """Bytes of the largest cache one core can use, or 0 when unknown.

    Linux's cache topology in sysfs first: glibc's sysconf reports the L3 of
    the whole socket on AMD EPYC (256 MiB here), while a core sees only its own
    complex's (32 MiB).  sysconf (cnorm._openmp.llc_bytes) is the fallback.
    """
    best = (0, 0)
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(d, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(d, "level")) as f:
                level = int(f.read())
            with open(os.path.join(d, "size")) as f:
                size = f.read().strip()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
            size = int(size.rstrip("KMG")) * scale
        except (OSError, ValueError):
            continue
        best = max(best, (level, size))
    return best[1] or llc_bytes()


def _stream_threshold():
    env = os.environ.get("CNORM_STREAM_BYTES")
    if env:
        return int(env)
    return _cache_bytes() or 32 << 20


# Outputs are written with streaming (non-temporal) stores when the bytes a
# call moves exceed the last-level cache: they would not stay in cache anyway,
# and writing around it saves reading each destination line first.  The
# threshold is the whole LLC by measurement on a 32 MiB L3 (torch/cnorm,
# streamed vs not): BN train (32, 64, 56, 56), 51 MB moved, +2..11%; BN
# backward on it, 77 MB, +10%; channels-last BN train, 51 MB, +4..13%; LN
# (4096, 1024), 34 MB, +4%; but LN (4096, 768), 25 MB, -4..8% and LN
# (16384, 128), 17 MB, -8% (they stay partly in cache between calls), and BN
# (8, 256, 28, 28), 13 MB, -12%.  LN backward (4096, 768) and (4096, 1024),
# 38 and 50 MB: +10..14%.
STREAM_BYTES = _stream_threshold()


def stream_stores(nbytes):
    """Whether a call that moves nbytes should write its output with streaming stores."""
    return nbytes > STREAM_BYTES
