"""Pick the kernel build for this CPU.

Each kernel module is compiled twice (see setup.py): ``NAME`` for any CPU of
the target architecture and ``NAME_v3`` for x86-64-v3 (AVX2 + FMA).  Both
come from the same source with ``-ffp-contract=off``, so they give bitwise
identical results; v3 is simply faster.  Set ``CNORM_ISA=baseline`` to force
the portable build.
"""

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


def _stream_threshold():
    env = os.environ.get("CNORM_STREAM_BYTES")
    if env:
        return int(env)
    return (llc_bytes() or 32 << 20) // 2


# Outputs are written with streaming (non-temporal) stores when the bytes a
# call moves exceed half the last-level cache: they would not stay in cache
# anyway, and writing around it saves reading each destination line first.
# Half, by measurement on a 32 MiB LLC: layer norm (4096, 768) float32, 25 MB
# moved, is 7% faster streamed; batch norm (8, 256, 28, 28), 13 MB, is 12%
# slower streamed.
STREAM_BYTES = _stream_threshold()


def stream_stores(nbytes):
    """Whether a call that moves nbytes should write its output with streaming stores."""
    return nbytes > STREAM_BYTES
