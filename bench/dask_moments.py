"""Per-feature moments of a (4_000_000, 64) float32 array in (250_000, 64) chunks, on
dask's threaded scheduler: cnorm.dask.moments against dask's own mean and var, and
scikit-learn's (or dask-ml's) StandardScaler fit where installed.

    python bench/dask_moments.py [--rows 4000000] [--repeat 5]

Each implementation runs `repeat` times, round-robin (so that a slow spell of the
machine hits all alike); the table gives each one's median and min, and the
ratios of the medians.
"""

import argparse
import statistics
import time

import numpy as np


def implementations(x, X):
    import dask

    import cnorm.dask as cd

    def cnorm_moments():
        m = cd.moments(X, 0)
        return dask.compute(m.mean, m.m2)

    def dask_mean_var():
        return dask.compute(X.mean(axis=0), X.var(axis=0))

    impls = {"cnorm.dask.moments": cnorm_moments, "dask mean + var": dask_mean_var}
    try:
        from dask_ml.preprocessing import StandardScaler as DaskMLScaler
        impls["dask-ml StandardScaler.fit"] = lambda: DaskMLScaler().fit(X)
    except ImportError:
        pass
    try:
        from sklearn.preprocessing import StandardScaler as SKScaler
        impls["sklearn StandardScaler.fit (NumPy)"] = lambda: SKScaler().fit(x)
    except ImportError:
        pass
    impls["cnorm.dask.StandardScaler.fit"] = lambda: cd.StandardScaler().fit(X)
    return impls


def main(argv=None):
    import dask
    import dask.array as da

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--chunk-rows", type=int, default=250_000)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x = np.empty((a.rows, a.features), dtype=np.float32)
    for i in range(0, a.rows, a.chunk_rows):     # in pieces: no float64 temporary of it all
        n = min(a.chunk_rows, a.rows - i)
        x[i:i + n] = rng.standard_normal((n, a.features), dtype=np.float32) * 3 + 100
    X = da.from_array(x, chunks=(a.chunk_rows, a.features))
    impls = implementations(x, X)
    times = {k: [] for k in impls}
    with dask.config.set(scheduler="threads"):
        for f in impls.values():                 # warm-up: imports, thread pools
            f()
        for _ in range(a.repeat):
            for k, f in impls.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    base = statistics.median(times["cnorm.dask.moments"])
    print(f"x: {x.shape} float32 ({x.nbytes / 1e9:.2f} GB) in ({a.chunk_rows}, {a.features}) "
          f"chunks, threaded scheduler, {a.repeat} rounds")
    print(f"{'implementation':38s} {'median s':>9s} {'min s':>9s} {'GB/s':>6s} "
          f"{'cnorm faster by':>16s}")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"{k:38s} {med:9.3f} {min(ts):9.3f} {x.nbytes / med / 1e9:6.1f} "
              f"{med / base:15.2f}x")


if __name__ == "__main__":
    main()
