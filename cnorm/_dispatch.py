"""Pick the kernel build for this CPU.

Each kernel module is compiled up to three times (see setup.py): ``NAME`` for
any CPU of the target architecture, ``NAME_v3`` for x86-64-v3 (AVX2 + FMA)
and ``NAME_v4`` for x86-64-v4 (AVX-512).  All come from the same source with
``-ffp-contract=off``, so they give bitwise identical results; the wider
builds are simply faster.  ``CNORM_ISA`` = ``baseline``, ``v3`` or ``v4``
caps the choice (``auto``, the default, takes the widest the CPU supports).
"""

import glob
import importlib
import os

from cnorm._openmp import cpu_has_v3, cpu_has_v4, cpu_vendor, llc_bytes

_LEVELS = {"baseline": 0, "v3": 3, "v4": 4, "auto": 4}


def kernels(name):
    """Import the widest build of ``cnorm.NAME`` that this CPU runs and CNORM_ISA allows,
    tuned for this CPU (see PREFETCH_BURSTS)."""
    module = _widest(name)
    if hasattr(module, "set_prefetch_bursts"):
        module.set_prefetch_bursts(PREFETCH_BURSTS)
    return module


def _widest(name):
    cap = _LEVELS.get(os.environ.get("CNORM_ISA", "auto").lower(), 4)
    for level, supported in ((4, cpu_has_v4), (3, cpu_has_v3)):
        if cap >= level and supported():
            try:
                return importlib.import_module(f"cnorm.{name}_v{level}")
            except ImportError:
                pass
    return importlib.import_module(f"cnorm.{name}")


def _prefetch_bursts():
    """Whether the kernels make two whole-row prefetch bursts (cnorm_prefetch_bursts in
    _stream.h): a 1-4 KiB layer-norm row's own output, asked for before its statistics
    passes, and a 512 B - 4 KiB run asked for whole as a run starts where the lane loop
    also asks for it step by step.  CNORM_PREFETCH_BURSTS = 0 or 1 when set, else on
    except on Intel CPUs.  On the Zen hosts of docs/performance.md the first hid the
    wait for y's lines (9933989: (4096, 768) float32 from 1.03x to 1.23x torch) and
    both were measured in place; on the Intel host the bursts stalled the loops, and
    layer-norm rows took 0.77-0.98x the time without them, batch-norm (8, 256, 28, 28)
    and (32, 128, 28, 28) 0.83-0.90x.  Prefetches only: the bits are the same."""
    env = os.environ.get("CNORM_PREFETCH_BURSTS", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return cpu_vendor() != "intel"


PREFETCH_BURSTS = _prefetch_bursts()


def isa(module):
    """'x86-64-v4', 'x86-64-v3' or 'baseline', for the given kernel module."""
    for level in ("v4", "v3"):
        if module.__name__.endswith(f"_{level}"):
            return f"x86-64-{level}"
    return "baseline"


def _cache_bytes():
    """Bytes of the largest cache one core can use, or 0 when unknown.

    sysfs first: on AMD EPYC glibc's sysconf reports the whole socket's L3, not
    the core complex's.  sysconf (cnorm._openmp.llc_bytes) is the fallback.
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


def _stream_threshold(fraction=4):
    """The LLC's size over fraction, or CNORM_STREAM_BYTES when set."""
    env = os.environ.get("CNORM_STREAM_BYTES")
    if env:
        return int(env)
    return (_cache_bytes() or 32 << 20) // fraction


# Stream the output when a call moves more than a quarter of the LLC: writing
# around the cache saves reading each destination line, and keeps the inputs
# cached.  Layer-norm rows of at most 1 KiB never stream (_rows.pxi).
STREAM_BYTES = _stream_threshold()


def stream_stores(nbytes):
    """Whether a call that moves nbytes should write its output with streaming stores."""
    return nbytes > STREAM_BYTES


# Inference reads its input once: streaming keeps no input cached for a second pass of
# the call, and its output, plainly stored, stays in the LLC for the next op (and for
# the next call in a loop).  It streams only when input and output together exceed the
# LLC.  On the Zen 5 host, 2 threads, medians of four alternating processes, plain
# against streamed: (16, 64, 56, 56) 0.16-0.23 ms against 0.31-0.33, channels-last
# (2, 64, 64, 320) 0.19-0.22 against 0.27-0.28, (8, 56, 56, 64) 0.13-0.15 against
# 0.16-0.18, and (8, 256, 28, 28) the same (docs/performance.md).
ONE_PASS_STREAM_BYTES = _stream_threshold(1)


def stream_stores_one_pass(nbytes):
    """stream_stores for a call that reads its input once (batch-norm inference)."""
    return nbytes > ONE_PASS_STREAM_BYTES
