"""cnorm against cnorm/_reference.py, the tests' float64 NumPy oracle.

    python bench/vs_reference.py [--threads N] [--dtype D] [--json PATH]

For every benchmark shape and dtype, and each pass (BN training, inference
and backward; LN forward and backward), prints how many times faster cnorm is
than the reference, and the ceiling: how many times faster than the
reference the fastest single pass over the same data is, one read of the
inputs and one write of an output of x's size.  No implementation of the pass
can beat that pass by much, so a speedup bar above the ceiling cannot be met
on the machine at hand, however the kernel is written.

The single pass is the fastest of np.copy(x) and cnorm's batch-norm inference
pass over the same data (forward passes), or of np.add(dy, x) and cnorm's
fixed-statistics batch-norm backward (backward passes, which read two
arrays).  Every function allocates its result, as the reference does.  Calls are
interleaved (one reference call, then enough of the others to take about as
long), and each time is a median over the rounds.  The benchmark proper
(python -m cnorm.bench) compares against the vectorised NumPy a user would
write instead.
"""

import argparse
import json
import time

import numpy as np

import cnorm
from cnorm import _reference as ref
from cnorm.bench import BN_CASES, LN_CASES

BAR = 20.0      # issue 2's "at least 20x faster than the NumPy reference"


def per_call(f, k):
    t0 = time.perf_counter()
    for _ in range(k):
        f()
    return (time.perf_counter() - t0) / k


def interleaved(slow, fast, budget):
    """Median seconds per call of slow and of each function in fast (a dict),
    in rounds of one slow call and about as long a run of each fast one."""
    slow()
    t_slow = per_call(slow, 1)
    ks = {}
    for name, f in fast.items():
        f()
        ks[name] = max(1, int(t_slow / max(per_call(f, 1), 1e-7)))
    ts = {"slow": []} | {name: [] for name in fast}
    rounds = max(5, int(budget / max(3 * t_slow, 1e-6)))
    for _ in range(rounds):
        ts["slow"].append(per_call(slow, 1))
        for name, f in fast.items():
            ts[name].append(per_call(f, ks[name]))
    return {name: float(np.median(v)) for name, v in ts.items()}


def compare(kind, slow, fast, floors, budget):
    """{"speedup", "ceiling"} of fast over slow; the ceiling uses the fastest floor."""
    t = interleaved(slow, {"cnorm": fast} | floors, budget)
    return {"pass": kind, "speedup": t["slow"] / t["cnorm"],
            "ceiling": t["slow"] / min(t[name] for name in floors)}


def cell(r):
    mark = "" if r["speedup"] >= BAR else (" <" if r["ceiling"] >= BAR else " !")
    return f"{r['pass']} {r['speedup']:6.1f}x (ceiling {r['ceiling']:6.1f}x){mark:2}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", choices=["float32", "float64", "all"], default="all")
    p.add_argument("--budget", type=float, default=0.6, help="seconds per comparison (default 0.6)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    a = p.parse_args(argv)
    if a.threads is not None:
        cnorm.set_num_threads(a.threads)
    dtypes = ["float32", "float64"] if a.dtype == "all" else [a.dtype]
    rng = np.random.default_rng(0)
    print(f"threads: {cnorm.get_num_threads()}; speedup of cnorm over cnorm/_reference.py, and the "
          f"ceiling (a single read-and-write pass over the reference)")
    print(f"  <: below {BAR:g}x although the ceiling allows it;  "
          f"!: below {BAR:g}x and so is the ceiling (no pass can reach it here)")
    results = []
    for name in dtypes:
        dt = np.dtype(name)
        for shape, ax in BN_CASES:
            x = rng.standard_normal(shape).astype(dt)
            dy = rng.standard_normal(shape).astype(dt)
            c = shape[ax]
            w, b = np.ones(c, dt), np.zeros(c, dt)
            rm, rv = np.zeros(c, dt), np.ones(c, dt)
            o = cnorm.batch_norm_forward(x, w, b, axis=ax)
            one_pass = {"copy": lambda: np.copy(x),
                        "inference": lambda: cnorm.batch_norm(x, w, b, rm, rv, axis=ax)}
            grad_pass = {"add": lambda: np.add(dy, x),
                         "fixed-statistics backward": lambda: cnorm.batch_norm_backward(
                             dy, x, o.mean, o.invstd, w, training=False, axis=ax)}
            rows = [compare("train", lambda: ref.batch_norm_train(x, w, b, axis=ax),
                            lambda: cnorm.batch_norm_forward(x, w, b, rm, rv, axis=ax),
                            one_pass, a.budget),
                    compare("infer", lambda: ref.batch_norm_infer(x, rm, rv, w, b, axis=ax),
                            lambda: cnorm.batch_norm(x, w, b, rm, rv, axis=ax),
                            one_pass, a.budget),
                    compare("backward",
                            lambda: ref.batch_norm_backward(dy, x, o.mean, o.invstd, w, axis=ax),
                            lambda: cnorm.batch_norm_backward(dy, x, o.mean, o.invstd, w, axis=ax),
                            grad_pass, a.budget)]
            case = "x".join(map(str, shape)) + ("" if ax == 1 else f" axis={ax}")
            print(f"BN {name:<8} {case:<22} " + "  ".join(cell(r) for r in rows), flush=True)
            results += [{"op": "BN", "dtype": name, "shape": list(shape), "axis": ax} | r
                        for r in rows]
        for shape in LN_CASES:
            x = rng.standard_normal(shape).astype(dt)
            dy = rng.standard_normal(shape).astype(dt)
            h = shape[-1]
            w, b = np.ones(h, dt), np.zeros(h, dt)
            o = cnorm.layer_norm_forward(x, h, w, b)
            # single passes over the same (rows, h) data: batch norm with fixed
            # statistics per column
            one_pass = {"copy": lambda: np.copy(x),
                        "inference": lambda: cnorm.batch_norm(x, w, b, b, w, axis=-1)}
            grad_pass = {"add": lambda: np.add(dy, x),
                         "fixed-statistics backward": lambda: cnorm.batch_norm_backward(
                             dy, x, b, w, w, training=False, axis=-1)}
            rows = [compare("forward", lambda: ref.layer_norm(x, (h,), w, b),
                            lambda: cnorm.layer_norm(x, h, w, b), one_pass, a.budget),
                    compare("backward", lambda: ref.layer_norm_backward(dy, x, o.mean, o.rstd, w),
                            lambda: cnorm.layer_norm_backward(dy, x, o.mean, o.rstd, w),
                            grad_pass, a.budget)]
            case = "x".join(map(str, shape))
            print(f"LN {name:<8} {case:<22} " + "  ".join(cell(r) for r in rows), flush=True)
            results += [{"op": "LN", "dtype": name, "shape": list(shape), "axis": -1} | r
                        for r in rows]
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": cnorm.get_num_threads(), "bar": BAR, "results": results}, f,
                      indent=1)
    return results


if __name__ == "__main__":
    main()
