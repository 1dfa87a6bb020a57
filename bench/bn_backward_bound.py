"""What bounds batch-norm backward on (32, 64, 56, 56) float32: memory or arithmetic.

    python bench/bn_backward_bound.py [--calls 21] [--no-torch]

Times, on 1 and 2 threads (medians of `calls` calls, outputs allocated): the backward
(2 reads, 1 write), inference (1 read, 1 write), moments over (0, 2, 3) (the statistics
alone) and, with torch, torch.add(a, b, out=c) (2 reads, 1 write) on the same arrays.
A kernel bound by memory barely gains from a second thread and runs near the plain
streams' time; one bound by each core's arithmetic scales with the threads.
"""

import argparse
import time

import numpy as np

import cnorm
from cnorm.bench import _torch as optional_torch


def median_ms(f, calls):
    f()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=21)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--shape", default="32,64,56,56")
    a = p.parse_args(argv)
    torch = None if a.no_torch else optional_torch()
    shape = tuple(int(s) for s in a.shape.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    c = shape[1]
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    f = cnorm.batch_norm_forward(x, w, b)
    calls = {
        "backward (2R 1W)": lambda: cnorm.batch_norm_backward(dy, x, f.mean, f.invstd, w),
        "inference (1R 1W)": lambda: cnorm.batch_norm(x, w, b, rm, rv),
        "moments (1R)": lambda: cnorm.moments(x, axis=(0,) + tuple(range(2, x.ndim))),
    }
    if torch is not None:
        tx, tdy, to = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(np.empty_like(x))
        calls["torch add out= (2R 1W)"] = lambda: torch.add(tx, tdy, out=to)
    print(f"shape {shape} float32, medians of {a.calls} calls, ms")
    for name, call in calls.items():
        row = []
        for nt in (1, 2):
            cnorm.set_num_threads(nt)
            if torch is not None:
                torch.set_num_threads(nt)
            row.append(median_ms(call, a.calls))
        print(f"{name:26s} 1 thread {row[0]:7.3f}   2 threads {row[1]:7.3f}   "
              f"scaling {row[0] / row[1]:4.2f}x")
    cnorm.set_num_threads(None)


if __name__ == "__main__":
    main()
