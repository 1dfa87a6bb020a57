"""cnorm.dask.moments on a (4_000_000, 64) float32 array in (250_000, 64) chunks, threaded
scheduler, beside dask's own mean and var and the scalers' fits (bench/dask_moments.py
prints the same comparison as one table).  The smoke run (--benchmark-disable) uses a
sixteenth of the rows."""

import numpy as np
import pytest

from dask_moments import implementations

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
pytest.importorskip("cnorm.dask")

IMPLS = ["cnorm.dask.moments", "dask mean + var", "dask-ml StandardScaler.fit",
         "sklearn StandardScaler.fit (NumPy)", "cnorm.dask.StandardScaler.fit"]


@pytest.fixture(scope="module")
def data(request):
    rows = 4_000_000 if not request.config.getoption("benchmark_disable") else 250_000
    chunk = 250_000 if rows == 4_000_000 else 15_625
    rng = np.random.default_rng(0)
    x = np.empty((rows, 64), dtype=np.float32)
    for i in range(0, rows, chunk):
        x[i:i + chunk] = rng.standard_normal((chunk, 64), dtype=np.float32) * 3 + 100
    return x, da.from_array(x, chunks=(chunk, 64))


@pytest.mark.parametrize("impl", IMPLS)
def test_dask_moments(benchmark, data, impl):
    x, X = data
    funcs = implementations(x, X)
    if impl not in funcs:
        pytest.skip(f"{impl.split()[0]} is not installed")
    benchmark.group = f"dask moments {x.shape} float32, chunks {X.chunksize}"
    benchmark.extra_info["bytes"] = x.nbytes
    with dask.config.set(scheduler="threads"):
        benchmark(funcs[impl])
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["GB/s"] = round(x.nbytes / stats.stats.median / 1e9, 2)
