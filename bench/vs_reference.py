"""cnorm against cnorm/_reference.py, the tests' float64 NumPy oracle.

    python bench/vs_reference.py [--threads N]

Prints, per benchmark shape and dtype, how many times faster cnorm is than
the reference: BN training, inference and backward; LN forward and backward.
Each function's time is the median of enough calls to fill about 0.3 s
(at least three); the two are timed one after the other, not interleaved, so
quote these as rough ratios.  The benchmark proper (python -m cnorm.bench)
compares against the vectorised NumPy a user would write instead.
"""

import argparse
import time

import numpy as np

import cnorm
from cnorm import _reference as ref
from cnorm.bench import BN_CASES, LN_CASES


def median_time(f, budget=0.3):
    f()
    t0 = time.perf_counter()
    f()
    once = time.perf_counter() - t0
    ts = []
    for _ in range(max(3, int(budget / max(once, 1e-6)))):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def ratio(slow, fast):
    return median_time(slow) / median_time(fast)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads is not None:
        cnorm.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    print(f"threads: {cnorm.get_num_threads()}; speedup of cnorm over cnorm/_reference.py")
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        for shape, ax in BN_CASES:
            x = rng.standard_normal(shape).astype(dt)
            dy = rng.standard_normal(shape).astype(dt)
            c = shape[ax]
            w, b = np.ones(c, dt), np.zeros(c, dt)
            rm, rv = np.zeros(c, dt), np.ones(c, dt)
            o = cnorm.batch_norm_forward(x, w, b, axis=ax)
            r = [ratio(lambda: ref.batch_norm_train(x, w, b, axis=ax),
                       lambda: cnorm.batch_norm_forward(x, w, b, rm, rv, axis=ax)),
                 ratio(lambda: ref.batch_norm_infer(x, rm, rv, w, b, axis=ax),
                       lambda: cnorm.batch_norm(x, w, b, rm, rv, axis=ax)),
                 ratio(lambda: ref.batch_norm_backward(dy, x, o.mean, o.invstd, w, axis=ax),
                       lambda: cnorm.batch_norm_backward(dy, x, o.mean, o.invstd, w, axis=ax))]
            case = "x".join(map(str, shape)) + ("" if ax == 1 else f" axis={ax}")
            print(f"BN {name:<8} {case:<22} train {r[0]:6.1f}x  infer {r[1]:6.1f}x  "
                  f"backward {r[2]:6.1f}x", flush=True)
        for shape in LN_CASES:
            x = rng.standard_normal(shape).astype(dt)
            dy = rng.standard_normal(shape).astype(dt)
            h = shape[-1]
            w, b = np.ones(h, dt), np.zeros(h, dt)
            o = cnorm.layer_norm_forward(x, h, w, b)
            r = [ratio(lambda: ref.layer_norm(x, (h,), w, b), lambda: cnorm.layer_norm(x, h, w, b)),
                 ratio(lambda: ref.layer_norm_backward(dy, x, o.mean, o.rstd, w),
                       lambda: cnorm.layer_norm_backward(dy, x, o.mean, o.rstd, w))]
            case = "x".join(map(str, shape))
            print(f"LN {name:<8} {case:<22} forward {r[0]:6.1f}x  backward {r[1]:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
