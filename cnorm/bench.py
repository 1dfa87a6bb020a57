"""``python -m cnorm.bench``: cnorm against NumPy (and PyTorch when installed).

Prints a header (versions, threads, OpenMP, CPU, kernel ISA), the machine's
copy bandwidth measured in the same run, and one row per case: cnorm's
median time, NumPy's, the speedups over NumPy and over torch, cnorm's
effective bandwidth (bytes of inputs read plus outputs written, once) and
that bandwidth as a percentage of the copy bandwidth.

Timing: each implementation is auto-scaled (enough calls per sample for a
sample to last ``--min-time`` seconds), then samples of the implementations
of one case are interleaved round by round, so that drift on a shared
machine hits all of them alike.  The median of the samples is reported.
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
from cnorm._dispatch import isa
from cnorm._openmp import parallel_copy
from cnorm.batchnorm import _batchnorm

OPS = ("bn_train", "bn_infer", "bn_backward", "ln_forward", "ln_backward")

# (op, shape, axis): the cases of the issue tracker's performance table.
BN_CASES = [
    ((32, 64, 56, 56), 1),
    ((8, 256, 28, 28), 1),
    ((64, 512, 7, 7), 1),
    ((256, 1024), 1),
    ((32, 56, 56, 64), -1),
]
BN_INFER_ONLY = [((1, 64, 56, 56), 1)]
LN_CASES = [(4096, 768), (4096, 1024), (16384, 128), (64, 4096)]
LN_FORWARD_ONLY = [(1, 768)]   # the whole-call cost of a tiny input


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch():
    if os.environ.get("CNORM_BENCH_NO_TORCH") == "1":
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def _time_calls(f, loops):
    t0 = time.perf_counter()
    for _ in range(loops):
        f()
    return (time.perf_counter() - t0) / loops


def measure(funcs, min_time=0.02, rounds=7):
    """Median seconds per call for each callable in ``funcs`` (a dict)."""
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
    return {name: float(np.median(v)) for name, v in samples.items()}


def copy_bandwidth(nbytes=64 << 20, min_time=0.02, rounds=7):
    """Bytes per second (read + write) of a memcpy on cnorm's threads, 64 MiB at a time."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    t = measure({"copy": lambda: parallel_copy(src, dst)}, min_time, rounds)["copy"]
    return 2 * src.nbytes / t


def _bn_case(op, shape, axis, dtype, torch, rng):
    x = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    w = (1 + 0.1 * rng.standard_normal(c)).astype(dtype)
    b = (0.1 * rng.standard_normal(c)).astype(dtype)
    rm = np.zeros(c, dtype)
    rv = np.ones(c, dtype)
    funcs = {}
    if op == "bn_train":
        funcs["cnorm"] = lambda: cnorm.batch_norm_forward(x, w, b, rm, rv, axis=axis)
        funcs["numpy"] = lambda: nb.batch_norm_train(x, w, b, axis=axis)
        nbytes = 2 * x.nbytes
    elif op == "bn_infer":
        funcs["cnorm"] = lambda: cnorm.batch_norm(x, w, b, rm, rv, axis=axis)
        funcs["numpy"] = lambda: nb.batch_norm_infer(x, w, b, rm, rv, axis=axis)
        nbytes = 2 * x.nbytes
    else:
        dy = rng.standard_normal(shape).astype(dtype)
        fwd = cnorm.batch_norm_forward(x, w, b, axis=axis)
        funcs["cnorm"] = lambda: cnorm.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, axis=axis)
        funcs["numpy"] = lambda: nb.batch_norm_backward(dy, x, fwd.mean, fwd.invstd, w, axis=axis)
        nbytes = 3 * x.nbytes
    if torch is not None:
        t = {k: torch.from_numpy(v) for k, v in dict(x=x, w=w, b=b, rm=rm.copy(), rv=rv.copy()).items()}
        if axis % len(shape) != 1:  # channels-last: the same memory seen as NCHW channels_last
            perm = (0, len(shape) - 1) + tuple(range(1, len(shape) - 1))
            t["x"] = t["x"].permute(*perm)
        native = torch.ops.aten.native_batch_norm
        if op == "bn_train":
            funcs["torch"] = lambda: native(t["x"], t["w"], t["b"], t["rm"], t["rv"], True, 0.1, 1e-5)
        elif op == "bn_infer":
            funcs["torch"] = lambda: native(t["x"], t["w"], t["b"], t["rm"], t["rv"], False, 0.1, 1e-5)
        else:
            tdy = torch.from_numpy(dy)
            if axis % len(shape) != 1:
                tdy = tdy.permute(*perm)
            sm, si = torch.from_numpy(fwd.mean), torch.from_numpy(fwd.invstd)
            funcs["torch"] = lambda: torch.ops.aten.native_batch_norm_backward(
                tdy, t["x"], t["w"], t["rm"], t["rv"], sm, si, True, 1e-5, [True, True, True])
    return funcs, nbytes


def _ln_case(op, shape, dtype, torch, rng):
    x = rng.standard_normal(shape).astype(dtype)
    h = shape[-1]
    w = (1 + 0.1 * rng.standard_normal(h)).astype(dtype)
    b = (0.1 * rng.standard_normal(h)).astype(dtype)
    funcs = {}
    if op == "ln_forward":
        funcs["cnorm"] = lambda: cnorm.layer_norm(x, h, w, b)
        funcs["numpy"] = lambda: nb.layer_norm(x, (h,), w, b)
        nbytes = 2 * x.nbytes
    else:
        dy = rng.standard_normal(shape).astype(dtype)
        fwd = cnorm.layer_norm_forward(x, h, w, b)
        funcs["cnorm"] = lambda: cnorm.layer_norm_backward(dy, x, fwd.mean, fwd.rstd, w)
        funcs["numpy"] = lambda: nb.layer_norm_backward(dy, x, fwd.mean, fwd.rstd, w)
        nbytes = 3 * x.nbytes
    if torch is not None:
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        if op == "ln_forward" and shape[0] == 1:   # tiny input: the whole functional call
            import torch.nn.functional as F
            funcs["torch"] = lambda: F.layer_norm(tx, (h,), tw, tb)
        elif op == "ln_forward":
            funcs["torch"] = lambda: torch.ops.aten.native_layer_norm(tx, [h], tw, tb, 1e-5)
        else:
            tdy = torch.from_numpy(dy)
            _, tm, tr = torch.ops.aten.native_layer_norm(tx, [h], tw, tb, 1e-5)
            funcs["torch"] = lambda: torch.ops.aten.native_layer_norm_backward(
                tdy, tx, [h], tm, tr, tw, tb, [True, True, True])
    return funcs, nbytes


def cases(ops, dtypes):
    """(op, shape, axis, dtype) for every case to run, in order."""
    out = []
    for dtype in dtypes:
        for op in ops:
            if op.startswith("bn_"):
                shapes = BN_CASES + (BN_INFER_ONLY if op == "bn_infer" else [])
                out += [(op, shape, axis, dtype) for shape, axis in shapes]
            else:
                shapes = LN_CASES + (LN_FORWARD_ONLY if op == "ln_forward" else [])
                out += [(op, shape, -1, dtype) for shape in shapes]
    return out


def _fmt_case(op, shape, axis, dtype):
    layout = "x".join(map(str, shape)) + (f" ax{axis}" if op.startswith("bn_") and axis != 1 else "")
    return f"{op:<12} {np.dtype(dtype).name:<8} {layout:<20}"


def _header(torch, threads, bandwidth):
    lines = [
        f"cnorm {cnorm.__version__} (kernels: {isa(_batchnorm)}), numpy {np.__version__}, "
        f"torch {torch.__version__ if torch else 'not installed'}",
        f"threads: {threads} (OpenMP {'on' if cnorm.openmp_enabled() else 'off'}), "
        f"python {platform.python_version()}",
        f"cpu: {_cpu_name()}, {os.cpu_count()} logical cores",
        f"copy bandwidth (memcpy of 64 MiB on {threads} threads, read + write): "
        f"{bandwidth / 1e9:.1f} GB/s",
    ]
    return "\n".join(lines)


def run(ops=OPS, dtypes=("float32", "float64"), threads=None, mode="default", json_path=None,
        plot_path=None, out=None, progress="stderr"):
    """Run the benchmark and print the table; returns the list of result dicts.

    mode is "quick" (a smoke run), "default" (about a minute on 2 cores) or
    "full" (longer samples, more rounds: steadier numbers).  The table goes to
    out (default sys.stdout), progress lines to progress (default sys.stderr;
    None for none).
    """
    out = sys.stdout if out is None else out
    progress = sys.stderr if progress == "stderr" else progress
    if threads is not None:
        cnorm.set_num_threads(threads)
    threads = cnorm.get_num_threads()
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    min_time, rounds = {"quick": (0.005, 3), "default": (0.01, 5), "full": (0.03, 9)}[mode]
    bandwidth = copy_bandwidth(min_time=min_time, rounds=rounds)
    print(_header(torch, threads, bandwidth), file=out)
    print(file=out)
    head = (f"{'case':<42} {'cnorm ms':>9} {'numpy ms':>9} {'vs numpy':>9} {'vs torch':>9} "
            f"{'GB/s':>6} {'%copy':>6}")
    print(head, file=out)
    print("-" * len(head), file=out)
    rng = np.random.default_rng(0)
    results = []
    todo = cases(ops, dtypes)
    for i, (op, shape, axis, dtype) in enumerate(todo):
        if progress is not None:
            print(f"[{i + 1}/{len(todo)}] {op} {shape} {dtype}", file=progress, flush=True)
        if op.startswith("bn_"):
            funcs, nbytes = _bn_case(op, shape, axis, dtype, torch, rng)
        else:
            funcs, nbytes = _ln_case(op, shape, dtype, torch, rng)
        t = measure(funcs, min_time, rounds)
        r = dict(op=op, shape=list(shape), axis=axis, dtype=dtype, nbytes=nbytes,
                 threads=threads, **{f"{k}_s": v for k, v in t.items()})
        r["speedup_numpy"] = t["numpy"] / t["cnorm"]
        r["speedup_torch"] = t["torch"] / t["cnorm"] if "torch" in t else None
        r["gbps"] = nbytes / t["cnorm"] / 1e9
        r["pct_copy"] = 100 * nbytes / t["cnorm"] / bandwidth
        results.append(r)
        vs_torch = f"{r['speedup_torch']:8.2f}x" if r["speedup_torch"] else f"{'-':>9}"
        print(f"{_fmt_case(op, shape, axis, dtype):<42} {t['cnorm'] * 1e3:9.3f} "
              f"{t['numpy'] * 1e3:9.3f} {r['speedup_numpy']:8.1f}x {vs_torch} "
              f"{r['gbps']:6.1f} {r['pct_copy']:5.0f}%", file=out, flush=True)
    if json_path:
        meta = dict(cnorm=cnorm.__version__, numpy=np.__version__,
                    torch=torch.__version__ if torch else None, threads=threads,
                    openmp=cnorm.openmp_enabled(), cpu=_cpu_name(), kernels=isa(_batchnorm),
                    copy_bandwidth=bandwidth)
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
    labels = [_fmt_case(r["op"], r["shape"], r["axis"], r["dtype"]).strip() for r in results]
    y = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(results) + 1.5))
    ax.barh(y - 0.2, [r["speedup_numpy"] for r in results], 0.4, label="vs NumPy")
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
    p.add_argument("--dtype", choices=["float32", "float64", "all"], default="all")
    p.add_argument("--op", default="all",
                   help=f"comma-separated subset of {','.join(OPS)} (default: all)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="also write a PNG bar chart (needs matplotlib)")
    a = p.parse_args(argv)
    ops = OPS if a.op == "all" else tuple(s.strip() for s in a.op.split(","))
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        p.error(f"unknown --op {', '.join(unknown)}; choose from {', '.join(OPS)}")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be at least 1")
    dtypes = ("float32", "float64") if a.dtype == "all" else (a.dtype,)
    if a.quick and a.full:
        p.error("--quick and --full exclude each other")
    run(ops, dtypes, a.threads, "quick" if a.quick else "full" if a.full else "default", a.json,
        a.plot)


class _CallableModule(type(sys)):
    """Lets ``cnorm.bench(...)`` run the benchmark while ``cnorm.bench`` stays a module."""

    def __call__(self, *args, **kwargs):
        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    main()
