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
    return (_cache_bytes() or 32 << 20) // 4


# Outputs are written with streaming (non-temporal) stores when the bytes a
# call moves exceed a quarter of the last-level cache: writing around the
# cache saves reading each destination line first, and leaves the inputs in
# cache.  Measured on a 32 MiB L3 with the stores made straight from the
# registers (cnorm/_elementwise.h), torch/cnorm streamed at 8 MB against not
# below 32 MiB, medians of 5-7 alternating processes: LN forward (4096, 768),
# 25 MB moved, 1.34 -> 1.70; (2048, 768), 13 MB, 1.20 -> 1.50; (8192, 512),
# 34 MB, 1.31 -> 1.66; LN backward (4096, 512), 25 MB, 1.10 -> 1.26, and
# (2048, 1024), 1.01 -> 1.17; BN train and backward (8, 256, 28, 28), 13 and
# 19 MB, unchanged.  Layer-norm rows of at most 1 KiB are never streamed (see
# _layernorm_kernels.pxi).  With the earlier buffer-and-copy streaming, the
# threshold had to be the whole LLC.
STREAM_BYTES = _stream_threshold()


def stream_stores(nbytes):
    """Whether a call that moves nbytes should write its output with streaming stores."""
    return nbytes > STREAM_BYTES
