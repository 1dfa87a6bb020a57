"""Standardise a dataset larger than one chunk on a distributed.LocalCluster with
cnorm.dask.StandardScaler, and check it against the data's own statistics.

    python examples/dask_standardize.py [--rows 2000000] [--features 64] [--chunk-rows 125000]

The data is generated on the workers (dask.array.random), so it never exists in
this process.  The scaler's fit reads each chunk once (cnorm.moments on each
chunk, the partials merged with Chan's formula), where scikit-learn's and
dask-ml's scalers make two passes.  Then it fits again shard by shard with
partial_fit, as a stream of data arriving in pieces would be fitted, and shows that
both fits agree.  Needs dask and distributed (pip install "cnorm[dask]" distributed).
"""

import argparse
import time

import numpy as np


def main(argv=None):
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import cnorm.dask as cd

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--chunk-rows", type=int, default=125_000)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)

    # loopback only; one thread per worker process, so that each chunk call gets one core
    with LocalCluster(n_workers=a.workers, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        print(f"dashboard: {client.dashboard_link}")
        rs = da.random.RandomState(0)
        offsets = np.linspace(-1e3, 1e3, a.features)          # far-from-zero features
        X = (rs.standard_normal((a.rows, a.features), chunks=(a.chunk_rows, a.features))
             * 0.5 + offsets).astype(np.float32)
        X = X.persist()                                        # generated once, on the workers
        wait(X)
        client.run(lambda: __import__("cnorm.dask"))           # each worker imports cnorm once
        nchunks = X.numblocks[0]
        print(f"data: {X.shape} float32, {X.nbytes / 1e9:.2f} GB in {nchunks} chunks of "
              f"{a.chunk_rows} rows, on {a.workers} workers")

        t = time.perf_counter()
        scaler = cd.StandardScaler().fit(X)
        t_fit = time.perf_counter() - t
        print(f"fit (one pass): {t_fit * 1e3:.1f} ms")

        t = time.perf_counter()
        stream = cd.StandardScaler()
        for i in range(nchunks):                               # shard by shard
            stream.partial_fit(X.blocks[i])
        t_stream = time.perf_counter() - t
        print(f"partial_fit over {nchunks} shards: {t_stream * 1e3:.1f} ms")

        t = time.perf_counter()
        Z = scaler.transform(X)
        zm = cd.moments(Z, 0)
        z_mean, z_m2 = dask.compute(zm.mean, zm.m2)
        t_check = time.perf_counter() - t
        z_std = np.sqrt(z_m2 / zm.count)
        print(f"transform + moments of the result: {t_check * 1e3:.1f} ms")

        t = time.perf_counter()
        d_mean, d_var = dask.compute(X.mean(axis=0), X.var(axis=0))
        t_dask = time.perf_counter() - t
        print(f"dask's own mean and var, for comparison: {t_dask * 1e3:.1f} ms")
        X64 = X.astype(np.float64)                             # the yardstick: float64 sums
        r_mean, r_var = dask.compute(X64.mean(axis=0), X64.var(axis=0))

    print(f"samples seen: {scaler.n_samples_seen_}, features: {scaler.n_features_in_}")
    # against dask's mean and var of the data upcast to float64
    for name, mean, var in (("cnorm.dask", scaler.mean_, scaler.var_),
                            ("dask on float32", d_mean, d_var)):
        print(f"{name:16s} max |mean - ref| / std = "
              f"{np.max(np.abs(mean - r_mean) / np.sqrt(r_var)):.1e}, "
              f"max |var / ref - 1| = {np.max(np.abs(var / r_var - 1)):.1e}")
    print(f"max |fit - partial_fit| relative = "
          f"{np.max(np.abs(stream.var_ / scaler.var_ - 1)):.2e}")
    print(f"standardised: max |mean| = {np.max(np.abs(z_mean)):.2e}, "
          f"max |std - 1| = {np.max(np.abs(z_std - 1)):.2e}")
    ok = (stream.n_samples_seen_ == scaler.n_samples_seen_ == a.rows
          and np.allclose(stream.var_, scaler.var_, rtol=1e-6)
          and np.allclose(scaler.var_, r_var, rtol=1e-6)
          and np.max(np.abs(z_mean)) < 1e-2 and np.max(np.abs(z_std - 1)) < 1e-2)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
