"""``python -m cnorm.bench``: cnorm against NumPy (and PyTorch and ONNX Runtime when installed).

Prints a header (versions, threads, OpenMP, CPU, load average, kernel ISA),
the machine's copy bandwidth measured in the same run, and one row per case:

- ``cnorm ms``, ``numpy ms``: median seconds per call, in ms;
- ``vs numpy``, ``vs torch``, ``vs ORT``: the other's median over cnorm's (ONNX
  Runtime: a one-node InferenceSession, as many intra-op threads, spinning off,
  for the forward ops it has);
- ``spread``: (max - min) / median of cnorm's samples;
- ``GB/s``: cnorm's effective bandwidth, bytes of inputs read plus outputs
  written, once, over its median time;
- ``%copy``: that bandwidth as a percentage of the copy bandwidth, or
  ``(cache)`` when the bytes moved fit in the last-level cache, where the
  figure is not a fraction of memory bandwidth (and can exceed 1000%);
- flags: ``unstable (...)`` names each implementation whose spread exceeds
  ``UNSTABLE_SPREAD``; ``busy`` says that other processes kept CPUs busy
  (from /proc/stat) while the case ran, which can slow every sample alike (an
  OpenMP thread that lost its core holds up the whole parallel region for a
  scheduler tick) and so show no spread.  Either way the row is unreliable.

The header warns when the machine is busy (a load average that leaves fewer
free CPUs than the benchmark's threads); the copy bandwidth is measured again
at the end, with a warning when the two figures disagree by more than
``BANDWIDTH_DRIFT``.  ``--json`` records all of it, each implementation's
samples included.

Timing: each implementation is auto-scaled (enough calls per sample for a
sample to last 5, 10 or 30 ms with ``--quick``, by default, with ``--full``),
then samples of the implementations of one case are interleaved round by
round, so that drift on a shared machine hits all of them alike.  The median
of the samples is reported.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import cnorm
from cnorm import _baselines as nb
from cnorm import _bench_ops as ops_new
from cnorm import _dispatch
from cnorm._dispatch import _cache_bytes, isa
from cnorm._openmp import parallel_copy
from cnorm.batchnorm import _kernels

OPS = ("bn_train", "bn_infer", "bn_backward", "ln_forward", "ln_backward", "gn_forward",
       "gn_backward", "gn_silu", "in_forward", "in_backward", "rms_forward", "rms_backward",
       "add_ln", "add_rms")

# (op, shape, axis): the cases of the issue tracker's performance table.
BN_CASES = [
    ((32, 64, 56, 56), 1),
    ((8, 256, 28, 28), 1),
    ((64, 512, 7, 7), 1),
    ((256, 1024), 1),
    ((32, 56, 56, 64), -1),
]
BN_INFER_ONLY = [((1, 64, 56, 56), 1)]
BN_TRAIN_ONLY = [((1, 64, 7, 7), 1)]     # the whole-call cost of a batch-1 training step
LN_CASES = [(4096, 768), (4096, 1024), (16384, 128), (64, 4096)]
LN_FORWARD_ONLY = [(1, 768)]   # the whole-call cost of a tiny input

# A row is unstable when (max - min) / median of an implementation's samples
# exceeds this: a 4 ms scheduler tick lost in a 10 ms sample (the default) adds
# 40%, while a quiet machine's interleaved samples stay within about 10%.
UNSTABLE_SPREAD = 0.3
# The copy bandwidths measured at the start and at the end of a run disagree
# when the larger exceeds the smaller by more than this fraction.
BANDWIDTH_DRIFT = 0.25
# A row is busy when other processes (from /proc/stat) left fewer free CPUs than
# its threads, less this: one CPU-bound process sharing the benchmark's cores
# gets about 1/(threads + 1) of each core, 0.7 CPU on 2, while a quiet machine
# measures under 0.1.
BUSY_MARGIN = 0.25


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_torch_error = None  # why an installed torch failed to import, for the header


def _torch():
    global _torch_error
    _torch_error = None
    if os.environ.get("CNORM_BENCH_NO_TORCH") == "1":
        return None
    try:
        import torch
    except ImportError as e:
        if e.name != "torch":  # installed, but broken: say so rather than "not installed"
            _torch_error = f"{type(e).__name__}: {e}"
        return None
    return torch


def _time_calls(f, loops):
    t0 = time.perf_counter()
    for _ in range(loops):
        f()
    return (time.perf_counter() - t0) / loops


def measure_samples(funcs, min_time=0.02, rounds=7):
    """Seconds per call of each sample (a list of ``rounds``) for each callable in ``funcs``."""
    loops = {}
    for name, f in funcs.items():
        f()  # warm up: first-touch pages, thread pools
        n = 1
        while True:
            t = _time_calls(f, n) * n
            if t >= min_time or n >= 1 << 20:
                break
            n = max(n * 2, int(n * min_time / max(t, 1e-9) * 1.2))
        loops[name] = n
    samples = {name: [] for name in funcs}
    names = list(funcs)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            funcs[name]()  # one untimed call: let another runtime's spinning threads settle
            samples[name].append(_time_calls(funcs[name], loops[name]))
    return samples


def measure(funcs, min_time=0.02, rounds=7):
    """Median seconds per call for each callable in ``funcs`` (a dict)."""
    samples = measure_samples(funcs, min_time, rounds)
    return {name: float(np.median(v)) for name, v in samples.items()}


def spread(samples):
    """(max - min) / median of a list of sample times."""
    return float((max(samples) - min(samples)) / np.median(samples))


def copy_bandwidth(nbytes=64 << 20, min_time=0.02, rounds=7):
    """Bytes per second (read + write) of a memcpy on cnorm's threads, 64 MiB at a time."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    t = measure({"copy": lambda: parallel_copy(src, dst)}, min_time, rounds)["copy"]
    return 2 * src.nbytes / t


def _bn_case(op, shape, axis, dtype, torch, rng, ort=None, threads=1, given_out=False):
    """given_out: cnorm and torch write into outputs allocated once (cnorm's out=,
    torch's .out overloads), as a loop that reuses its buffers calls them."""
    x = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    w = (1 + 0.1 * rng.standard_normal(c)).astype(dtype)
    b = (0.1 * rng.standard_normal(c)).astype(dtype)
    rm = np.zeros(c, ops_new.own(w).dtype)       # float32 for half-precision x, as torch keeps
    rv = np.ones(c, rm.dtype)
    cw, cb = ops_new.own(w), ops_new.own(b)
    y = np.empty_like(x) if given_out else None
    funcs = {}
    if op == "bn_train":
        funcs["cnorm"] = lambda: cnorm.batch_norm_forward(x, cw, cb, rm, rv, axis=axis, out=y)
        funcs["numpy"] = lambda: nb.batch_norm_train(x, w, b, axis=axis)
        nbytes = 2 * x.nbytes
    elif op == "bn_infer":
        funcs["cnorm"] = lambda: cnorm.batch_norm(x, cw, cb, rm, rv, axis=axis, out=y)
        funcs["numpy"] = lambda: nb.batch_norm_infer(x, w, b, rm, rv, axis=axis)
        nbytes = 2 * x.nbytes
    else:
        dy = rng.standard_normal(shape).astype(dtype)
        fwd = cnorm.batch_norm_forward(x, cw, cb, axis=axis)
        funcs["cnorm"] = lambda: cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, cw,
                                                           axis=axis, out=y)
        funcs["numpy"] = lambda: nb.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, axis=axis)
        nbytes = 3 * x.nbytes
    if torch is not None:
        # torch's batch norm takes half x with float32 parameters and statistics (its
        # mixed precision), as cnorm does; other dtypes are the same arrays either way
        t = {k: ops_new.tensor(torch, v)
             for k, v in dict(x=x, w=cw, b=cb, rm=rm.copy(), rv=rv.copy()).items()}
        if axis % len(shape) != 1:  # channels-last: the same memory seen as NCHW channels_last
            perm = (0, len(shape) - 1) + tuple(range(1, len(shape) - 1))
            t["x"] = t["x"].permute(*perm)
        native = torch.ops.aten.native_batch_norm
        kw = {}
        if given_out:   # y's memory, seen as torch sees x; statistics of the parameters' dtype
            ty = ops_new.tensor(torch, y)
            ty = ty.permute(*perm) if axis % len(shape) != 1 else ty
            stats = [torch.empty(c, dtype=t["w"].dtype) for _ in range(2)]
            if op == "bn_backward":
                kw = dict(out0=ty, out1=stats[0], out2=stats[1])
            else:
                kw = dict(out=ty, save_mean=stats[0], save_invstd=stats[1])
            native = native.out
        if op in ("bn_train", "bn_infer"):
            training = op == "bn_train"
            funcs["torch"] = lambda: native(t["x"], t["w"], t["b"], t["rm"], t["rv"], training,
                                            0.1, 1e-5, **kw)
        else:
            tdy = ops_new.tensor(torch, dy)
            if axis % len(shape) != 1:
                tdy = tdy.permute(*perm)
            sm, si = torch.from_numpy(fwd.mean), torch.from_numpy(fwd.invstd)
            bwd = torch.ops.aten.native_batch_norm_backward
            bwd = bwd.out if given_out else bwd
            funcs["torch"] = lambda: bwd(tdy, t["x"], t["w"], t["rm"], t["rv"], sm, si, True,
                                         1e-5, [True, True, True], **kw)
    if ort is not None and op == "bn_infer" and not given_out:   # ORT allocates its outputs
        s = ops_new.bn_ort(ort, x, w, b, rm, rv, axis, dtype, threads)
        if s is not None:
            funcs["ort"] = s
    return funcs, nbytes


def _ln_case(op, shape, dtype, torch, rng, ort=None, threads=1, given_out=False):
    """given_out: as in _bn_case."""
    x = rng.standard_normal(shape).astype(dtype)
    h = shape[-1]
    w = (1 + 0.1 * rng.standard_normal(h)).astype(dtype)
    b = (0.1 * rng.standard_normal(h)).astype(dtype)
    cw, cb = ops_new.own(w), ops_new.own(b)
    y = np.empty_like(x) if given_out else None
    funcs = {}
    if op == "ln_forward":
        funcs["cnorm"] = lambda: cnorm.layer_norm(x, h, cw, cb, out=y)
        funcs["numpy"] = lambda: nb.layer_norm(x, (h,), w, b)
        nbytes = 2 * x.nbytes
    else:
        dy = rng.standard_normal(shape).astype(dtype)
        fwd = cnorm.layer_norm_forward(x, h, cw, cb)
        funcs["cnorm"] = lambda: cnorm.layer_norm_backward(dy, x, fwd.mean, fwd.rstd, cw, out=y)
        funcs["numpy"] = lambda: nb.layer_norm_backward(dy, x, fwd.mean, fwd.rstd, w)
        nbytes = 3 * x.nbytes
    if torch is not None:
        tx, tw, tb = (ops_new.tensor(torch, v) for v in (x, w, b))
        kw = {}
        if given_out:
            rows = (x.size // h, 1)
            kw = dict(out0=ops_new.tensor(torch, y))
            if op == "ln_forward":   # the statistics: (rows, 1), float32 for half x
                kw.update(out1=torch.empty(rows, dtype=tw.dtype), out2=torch.empty(rows, dtype=tw.dtype))
            else:
                kw.update(out1=torch.empty_like(tw), out2=torch.empty_like(tb))
        if op == "ln_forward" and shape[0] == 1 and not given_out:
            import torch.nn.functional as F   # tiny input: the whole functional call
            funcs["torch"] = lambda: F.layer_norm(tx, (h,), tw, tb)
        elif op == "ln_forward":
            fwd_op = torch.ops.aten.native_layer_norm
            fwd_op = fwd_op.out if given_out else fwd_op
            funcs["torch"] = lambda: fwd_op(tx, [h], tw, tb, 1e-5, **kw)
        else:
            tdy = ops_new.tensor(torch, dy)
            _, tm, tr = torch.ops.aten.native_layer_norm(tx, [h], tw, tb, 1e-5)
            bwd = torch.ops.aten.native_layer_norm_backward
            bwd = bwd.out if given_out else bwd
            funcs["torch"] = lambda: bwd(tdy, tx, [h], tm, tr, tw, tb, [True, True, True], **kw)
    if ort is not None and op == "ln_forward" and not given_out:
        s = ops_new.ln_ort(ort, x, w, b, dtype, threads)
        if s is not None:
            funcs["ort"] = s
    return funcs, nbytes


def cases(ops, dtypes):
    """(op, shape, axis, dtype) for every case to run, in order."""
    out = []
    for dtype in dtypes:
        for op in ops:
            if op.startswith("bn_"):
                shapes = BN_CASES + {"bn_infer": BN_INFER_ONLY,
                                     "bn_train": BN_TRAIN_ONLY}.get(op, [])
            elif op.startswith("ln_"):
                shapes = [(s, -1) for s in LN_CASES + (LN_FORWARD_ONLY if op == "ln_forward"
                                                       else [])]
            elif op == "gn_silu":
                shapes = ops_new.GN_SILU_CASES
            elif op.startswith("gn_"):
                shapes = ops_new.GN_CASES
            elif op.startswith("in_"):
                shapes = ops_new.IN_CASES
            elif op.startswith("add_"):
                shapes = [(s, -1) for s in ops_new.ADD_CASES]
            else:
                shapes = [(s, -1) for s in ops_new.RMS_CASES
                          if op == "rms_forward" or s[0] > 1]
            out += [(op, shape, axis, dtype) for shape, axis in shapes]
    return out


DTYPES = ("float32", "float64", "float16", "bfloat16")


def np_dtype(name):
    """The dtype named name; bfloat16 is ml_dtypes' (None when it is not installed)."""
    from cnorm._checks import bfloat16
    return bfloat16() if name == "bfloat16" else np.dtype(name)


def _probe(funcs):
    """funcs without the peers that fail on the case (torch or ORT without a kernel for
    the dtype, NumPy without a ufunc loop for it); cnorm's call must work."""
    funcs["cnorm"]()
    out = {}
    for k, f in funcs.items():
        try:
            if k != "cnorm":
                with np.errstate(all="ignore"):   # NumPy's float16 overflows: its problem
                    f()
        except Exception:       # noqa: BLE001 - any failure means: not comparable here
            continue
        out[k] = f
    return out


OUT_OPS = ("bn_train", "bn_infer", "bn_backward", "ln_forward", "ln_backward")


def _case(op, shape, axis, dtype, torch, ort, threads, rng, given_out=False):
    """The callables to time for one case, and the bytes it moves.  given_out: the
    outputs of the OUT_OPS are allocated once and passed in (other ops ignore it)."""
    dtype = np_dtype(dtype)
    if op.startswith("bn_"):
        return _bn_case(op, shape, axis, dtype, torch, rng, ort, threads, given_out)
    if op.startswith("ln_"):
        return _ln_case(op, shape, dtype, torch, rng, ort, threads, given_out)
    if op.startswith("gn_"):
        return ops_new.gn_case(op, shape, axis, dtype, torch, ort, threads, rng)
    if op.startswith("in_"):
        return ops_new.in_case(op, shape, axis, dtype, torch, ort, threads, rng)
    if op.startswith("add_"):
        return ops_new.add_case(op, shape, dtype, torch, ort, threads, rng)
    return ops_new.rms_case(op, shape, dtype, torch, ort, threads, rng)


def _fmt_case(op, shape, axis, dtype, given_out=False):
    channels = op.startswith(("bn_", "gn_", "in_"))
    layout = "x".join(map(str, shape)) + (f" ax{axis}" if channels and axis != 1 else "")
    layout += " out=" if given_out and op in OUT_OPS else ""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return f"{op:<12} {name:<8} {layout:<20}"


def _cpus_available():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load_average():
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _busy(other, cpus, threads, margin=0.5):
    """Whether other work (a load average, or CPUs used by other processes) leaves fewer free
    CPUs than the run's threads, less margin."""
    return other is not None and cpus - other < min(threads, cpus) - margin


try:
    _CLK_TCK = os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):
    _CLK_TCK = 100


def _cpu_snapshot():
    """(wall s, busy CPU s of the whole machine or None, CPU s of this process)."""
    wall, own = time.perf_counter(), time.process_time()
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy;
        # steal too (a hypervisor running another guest on this one's CPU).
        busy = (sum(v) - v[3] - v[4]) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        busy = None
    return wall, busy, own


def _other_cpus(a, b):
    """CPUs that processes other than this one kept busy, on average, between two snapshots."""
    if a[1] is None or b[1] is None or b[0] <= a[0]:
        return None
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]))


def _bandwidth_drift(start, end):
    """Whether two copy-bandwidth figures disagree by more than BANDWIDTH_DRIFT."""
    return max(start, end) > (1 + BANDWIDTH_DRIFT) * min(start, end)


def _header(torch, threads, bandwidth, load=None, cpus=None, ort=None):
    cpus = _cpus_available() if cpus is None else cpus
    load_s = "unknown" if load is None else f"{load:.2f}"
    lines = [
        f"cnorm {cnorm.__version__} (kernels: {isa(_kernels)}, prefetch bursts "
        f"{'on' if _dispatch.PREFETCH_BURSTS else 'off'}), numpy {np.__version__}, "
        f"torch {torch.__version__ if torch else _torch_error or 'not installed'}, "
        f"onnxruntime {ort[0].__version__ if ort else 'not installed'}",
        f"threads: {threads} (OpenMP {'on' if cnorm.openmp_enabled() else 'off'}), "
        f"python {platform.python_version()}",
        f"cpu: {_cpu_name()}, {os.cpu_count()} logical cores ({cpus} available), "
        f"load average {load_s} (1 min)",
        f"copy bandwidth (memcpy of 64 MiB on {threads} threads, read + write): "
        f"{bandwidth / 1e9:.1f} GB/s",
    ]
    if _busy(load, cpus, threads):
        lines.append(
            f"WARNING: machine busy: load average {load:.2f} on {cpus} CPUs leaves fewer than "
            f"{min(threads, cpus)} free for the benchmark's threads\n"
            f"         (a 1-minute average: it counts an earlier run too; see the busy flags and "
            f"the end)")
    return "\n".join(lines)


def _fmt_spread(x):
    return f"{'>999%':>7}" if x > 9.99 else f"{100 * x:6.0f}%"


def run(ops=OPS, dtypes=("float32", "float64", "float16"), threads=None, mode="default", json_path=None,
        plot_path=None, out=None, progress="stderr", given_out=False):
    """Run the benchmark and print the table; returns the list of result dicts.

    mode is "quick" (a smoke run), "default" (about two minutes on 2 cores) or
    "full" (longer samples, more rounds: steadier numbers).  The table goes to
    out (default sys.stdout), progress lines to progress (default sys.stderr;
    None for none).  given_out: cnorm and torch write the outputs of the OUT_OPS
    cases into arrays allocated once (``out=``, torch's ``.out`` overloads);
    otherwise every call allocates its outputs, as a plain call does.
    """
    out = sys.stdout if out is None else out
    progress = sys.stderr if progress == "stderr" else progress
    if threads is not None:
        cnorm.set_num_threads(threads)
    threads = cnorm.get_num_threads()
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    ort = ops_new.ort_module()
    min_time, rounds = {"quick": (0.005, 3), "default": (0.01, 5), "full": (0.03, 9)}[mode]
    load, cpus = _load_average(), _cpus_available()
    bandwidth = copy_bandwidth(min_time=min_time, rounds=rounds)
    llc = _cache_bytes() or 32 << 20  # unknown: a common per-core L3
    print(_header(torch, threads, bandwidth, load, cpus, ort), file=out)
    print("outputs: " + (f"given (out=), allocated once, in the {', '.join(OUT_OPS)} cases; "
                         f"allocated by each call elsewhere" if given_out
                         else "allocated by each call (--out: given)"), file=out)
    print(file=out)
    head = (f"{'case':<42} {'cnorm ms':>9} {'numpy ms':>9} {'vs numpy':>9} {'vs torch':>9} "
            f"{'vs ORT':>8} "
            f"{'spread':>7} {'GB/s':>6} {'%copy':>7}")
    print(head, file=out)
    print("-" * len(head), file=out)
    rng = np.random.default_rng(0)
    results = []
    todo = cases(ops, dtypes)
    start = _cpu_snapshot()
    for i, (op, shape, axis, dtype) in enumerate(todo):
        if progress is not None:
            print(f"[{i + 1}/{len(todo)}] {op} {shape} {dtype}", file=progress, flush=True)
        funcs, nbytes = _case(op, shape, axis, dtype, torch, ort, threads, rng, given_out)
        funcs = _probe(funcs)
        before = _cpu_snapshot()
        with np.errstate(all="ignore"):
            samples = measure_samples(funcs, min_time, rounds)
        other = _other_cpus(before, _cpu_snapshot())
        t = {k: float(np.median(v)) for k, v in samples.items()}
        r = dict(op=op, shape=list(shape), axis=axis, dtype=dtype, nbytes=nbytes,
                 threads=threads, given_out=given_out and op in OUT_OPS,
                 **{f"{k}_s": v for k, v in t.items()})
        for k, v in samples.items():
            r.update({f"{k}_min_s": min(v), f"{k}_max_s": max(v), f"{k}_spread": spread(v),
                      f"{k}_samples_s": list(v)})
        r["unstable_impls"] = [k for k in samples if r[f"{k}_spread"] > UNSTABLE_SPREAD]
        r["unstable"] = bool(r["unstable_impls"])
        r["other_cpus"] = other
        r["busy"] = _busy(other, cpus, threads, BUSY_MARGIN)
        r["speedup_numpy"] = t["numpy"] / t["cnorm"] if "numpy" in t else None
        r["speedup_torch"] = t["torch"] / t["cnorm"] if "torch" in t else None
        r["speedup_ort"] = t["ort"] / t["cnorm"] if "ort" in t else None
        r["gbps"] = nbytes / t["cnorm"] / 1e9
        r["pct_copy"] = 100 * nbytes / t["cnorm"] / bandwidth
        r["cache_resident"] = nbytes <= llc
        results.append(r)
        vs_torch = f"{r['speedup_torch']:8.2f}x" if r["speedup_torch"] else f"{'-':>9}"
        vs_ort = f"{r['speedup_ort']:7.2f}x" if r["speedup_ort"] else f"{'-':>8}"
        pct = f"{'(cache)':>7}" if r["cache_resident"] else f"{r['pct_copy']:6.0f}%"
        flags = [f"unstable ({', '.join(r['unstable_impls'])})"] if r["unstable"] else []
        if r["busy"]:
            flags.append(f"busy ({other:.1f} CPU elsewhere)")
        np_ms = f"{t['numpy'] * 1e3:9.3f}" if "numpy" in t else f"{'-':>9}"
        vs_np = f"{r['speedup_numpy']:8.1f}x" if "numpy" in t else f"{'-':>9}"
        print(f"{_fmt_case(op, shape, axis, dtype, given_out):<42} {t['cnorm'] * 1e3:9.3f} "
              f"{np_ms} {vs_np} {vs_torch} {vs_ort} "
              f"{_fmt_spread(r['cnorm_spread'])} {r['gbps']:6.1f} {pct}"
              f"{'  ' + ', '.join(flags) if flags else ''}", file=out, flush=True)
    other_run = _other_cpus(start, _cpu_snapshot())
    bandwidth_end = copy_bandwidth(min_time=min_time, rounds=rounds)
    drift = _bandwidth_drift(bandwidth, bandwidth_end)
    busy_run = _busy(other_run, cpus, threads, BUSY_MARGIN)
    busy = _busy(load, cpus, threads) or busy_run or drift
    print(file=out)
    mib = f"{llc / (1 << 20):g} MiB"
    print(f"spread    (max - min) / median of cnorm's {rounds} samples\n"
          f"unstable  an implementation's spread is over {100 * UNSTABLE_SPREAD:.0f}%: its median "
          f"and the ratios are unreliable\n"
          f"busy      other processes kept CPUs busy during the case: every sample may be slowed "
          f"alike\n"
          f"%copy     GB/s (inputs read + outputs written, once) over the copy bandwidth at the "
          f"start;\n"
          f"          (cache): the bytes moved fit in the {mib} last-level cache, so the figure "
          f"is no\n"
          f"          fraction of memory bandwidth (it can exceed 100%)", file=out)
    print(f"copy bandwidth at the end: {bandwidth_end / 1e9:.1f} GB/s "
          f"(start: {bandwidth / 1e9:.1f} GB/s)", file=out)
    if other_run is not None:
        print(f"other processes kept {other_run:.1f} of {cpus} CPUs busy on average during the "
              f"cases", file=out)
    if drift:
        print(f"WARNING: machine busy: the copy bandwidth changed by more than "
              f"{100 * BANDWIDTH_DRIFT:.0f}% during the run; other work competed for the "
              f"cores or memory.", file=out)
    if busy_run:
        print(f"WARNING: machine busy: other processes left fewer than {min(threads, cpus)} CPUs "
              f"free for the benchmark's threads.", file=out)
    n_bad = sum(r["unstable"] or r["busy"] for r in results)
    if n_bad:
        print(f"WARNING: {n_bad} of {len(results)} cases unstable or busy: rerun them on a quiet "
              f"machine.", file=out)
    if json_path:
        meta = dict(cnorm=cnorm.__version__, numpy=np.__version__,
                    torch=torch.__version__ if torch else None,
                    onnxruntime=ort[0].__version__ if ort else None, threads=threads,
                    openmp=cnorm.openmp_enabled(), cpu=_cpu_name(), kernels=isa(_kernels),
                    prefetch_bursts=_dispatch.PREFETCH_BURSTS,
                    copy_bandwidth=bandwidth, copy_bandwidth_end=bandwidth_end,
                    load_average=load, cpus_available=cpus, other_cpus=other_run, busy=busy,
                    llc_bytes=llc, rounds=rounds, unstable_spread=UNSTABLE_SPREAD,
                    given_out=given_out)
        with open(json_path, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)
    if plot_path:
        _plot(results, plot_path)
    return results


def _plot(results, path):
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'cnorm[plot]' (or matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [_fmt_case(r["op"], r["shape"], r["axis"], r["dtype"], r["given_out"]).strip()
              for r in results]
    y = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(results) + 1.5))
    ax.barh(y - 0.2, [r["speedup_numpy"] or 0 for r in results], 0.4, label="vs NumPy")
    if any(r["speedup_torch"] for r in results):
        ax.barh(y + 0.2, [r["speedup_torch"] or 0 for r in results], 0.4, label="vs torch")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=7, family="monospace")
    ax.invert_yaxis()
    ax.set_xlabel("speedup of cnorm (higher is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m cnorm.bench",
        description="Time cnorm against NumPy (and PyTorch when installed), interleaved in one "
                    "process, and print medians, speedups and effective bandwidth.")
    p.add_argument("--quick", action="store_true", help="fewer, shorter samples (a smoke run)")
    p.add_argument("--full", action="store_true",
                   help="longer samples and more rounds, for numbers to quote (several minutes)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for cnorm and torch (default: cnorm.get_num_threads())")
    p.add_argument("--dtype", default="all",
                   help="comma-separated subset of float32,float64,float16,bfloat16 (default: "
                        "all; bfloat16 needs ml_dtypes)")
    p.add_argument("--op", default="all",
                   help=f"comma-separated subset of {','.join(OPS)} (default: all)")
    p.add_argument("--out", action="store_true",
                   help=f"cnorm and torch write into outputs allocated once (out=) in the "
                        f"{', '.join(OUT_OPS)} cases; the ORT column is left out there "
                        f"(default: every call allocates its outputs)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="also write a PNG bar chart (needs matplotlib)")
    a = p.parse_args(argv)
    ops = OPS if a.op == "all" else tuple(s.strip() for s in a.op.split(","))
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        p.error(f"unknown --op {', '.join(unknown)}; choose from {', '.join(OPS)}")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be at least 1")
    dtypes = DTYPES if a.dtype == "all" else tuple(s.strip() for s in a.dtype.split(","))
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        p.error(f"unknown --dtype {', '.join(bad)}; choose from {', '.join(DTYPES)}")
    if "bfloat16" in dtypes and np_dtype("bfloat16") is None:
        if a.dtype != "all":
            p.error("--dtype bfloat16 needs ml_dtypes (pip install ml_dtypes)")
        dtypes = tuple(d for d in dtypes if d != "bfloat16")
    if a.quick and a.full:
        p.error("--quick and --full exclude each other")
    run(ops, dtypes, a.threads, "quick" if a.quick else "full" if a.full else "default", a.json,
        a.plot, given_out=a.out)


class _CallableModule(type(sys)):
    """Lets ``cnorm.bench(...)`` run the benchmark while ``cnorm.bench`` stays a module."""

    def __call__(self, *args, **kwargs):
        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    main()
