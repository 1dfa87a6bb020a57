"""Tail latency of cnorm next to a busy neighbour: a process spinning on one core.

    python bench/tails.py [--calls 300] [--case bn_train,ln_forward] [--neighbour-cpu 1]
                          [--no-neighbour] [--torch/--no-torch]

For each case, times `calls` calls one by one (after a warm-up) for cnorm on 1 and
on 2 threads and for torch (when installed, on the same thread counts), while a
neighbour process spins on CPU `--neighbour-cpu` (pinned there), and prints the
median, 95th percentile and maximum per call in ms.  Outputs are allocated by each
call, as a user writes it.  The configurations take turns in rounds of 25 calls,
so that a slow spell of the machine hits them alike.

Cases: bn_train, batch_norm(training=True) on (8, 256, 28, 28) float32 with running
statistics; ln_forward, layer_norm on (64, 4096) float32 with weight and bias.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import time

import numpy as np

import cnorm
from cnorm.bench import _torch as optional_torch

CASES = {"bn_train": (8, 256, 28, 28), "ln_forward": (64, 4096)}


def _spin(cpu):
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    while True:
        pass


def make_calls(case, torch):
    rng = np.random.default_rng(0)
    shape = CASES[case]
    x = rng.standard_normal(shape, dtype=np.float32)
    c = shape[1] if case == "bn_train" else shape[-1]
    w = rng.uniform(0.5, 1.5, c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    if case == "bn_train":
        def ours():
            return cnorm.batch_norm(x, w, b, rm, rv, training=True)
    else:
        def ours():
            return cnorm.layer_norm(x, c, w, b)
    calls = {"cnorm": ours}
    if torch is not None:
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
        F = torch.nn.functional
        if case == "bn_train":
            calls["torch"] = lambda: F.batch_norm(tx, trm, trv, tw, tb, training=True)
        else:
            calls["torch"] = lambda: F.layer_norm(tx, (c,), tw, tb)
    return calls


def measure(calls, threads, n, torch, block=25):
    """{(impl, threads): [seconds per call]}, the configurations taking turns."""
    configs = [(impl, t) for impl in calls for t in threads]
    times = {cfg: [] for cfg in configs}

    def set_threads(impl, t):
        if impl == "torch":
            torch.set_num_threads(t)
        else:
            cnorm.set_num_threads(t)

    for impl, t in configs:                      # warm-up
        set_threads(impl, t)
        for _ in range(20):
            calls[impl]()
    clock = time.perf_counter
    while any(len(v) < n for v in times.values()):
        for impl, t in configs:
            set_threads(impl, t)
            f = calls[impl]
            out = times[(impl, t)]
            for _ in range(min(block, n - len(out))):
                t0 = clock()
                f()
                out.append(clock() - t0)
    cnorm.set_num_threads(None)
    return times


def summary(ts):
    ts = sorted(ts)
    p95 = ts[min(len(ts) - 1, int(round(0.95 * (len(ts) - 1))))]
    return statistics.median(ts) * 1e3, p95 * 1e3, ts[-1] * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--case", default="bn_train,ln_forward")
    p.add_argument("--neighbour-cpu", type=int, default=1)
    p.add_argument("--no-neighbour", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--threads", default="1,2")
    a = p.parse_args(argv)
    torch = None if a.no_torch else optional_torch()    # None when not installed
    threads = [int(t) for t in a.threads.split(",")]
    neighbour = None
    if not a.no_neighbour:
        neighbour = mp.get_context("spawn").Process(target=_spin, args=(a.neighbour_cpu,),
                                                    daemon=True)
        neighbour.start()
        time.sleep(0.5)
    try:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"cnorm {cnorm.__version__}, {cpus} CPUs, neighbour: "
              f"{'none' if neighbour is None else f'spinning on CPU {a.neighbour_cpu}'}, "
              f"{a.calls} calls per configuration")
        print(f"{'case':12s} {'impl':6s} {'threads':>7s} {'median ms':>10s} {'p95 ms':>9s} "
              f"{'max ms':>9s} {'p95 / 1-thread p95':>19s}")
        for case in a.case.split(","):
            times = measure(make_calls(case, torch), threads, a.calls, torch)
            for (impl, t), ts in times.items():
                med, p95, mx = summary(ts)
                ref = summary(times[(impl, threads[0])])[1]
                print(f"{case:12s} {impl:6s} {t:7d} {med:10.3f} {p95:9.3f} {mx:9.3f} "
                      f"{p95 / ref:19.2f}")
    finally:
        if neighbour is not None:
            neighbour.terminate()
            neighbour.join()


if __name__ == "__main__":
    main()
