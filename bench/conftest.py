"""pytest-benchmark suites: one group per op x shape x dtype, implementations side by side.

    pytest bench/ --benchmark-only                       # time everything
    pytest bench/ --benchmark-only -k "bn_train and float32"
    pytest bench/ --benchmark-only --benchmark-json=run.json     # save a run
    pytest bench/ --benchmark-only --benchmark-autosave          # save under .benchmarks/
    pytest bench/ --benchmark-only --benchmark-compare           # compare with the last saved run
    pytest bench/ --benchmark-disable                    # smoke test: each case once, untimed

The cases and the NumPy/torch/ONNX Runtime baselines are the ones `python -m
cnorm.bench` uses (cnorm/bench.py, cnorm/_bench_ops.py, cnorm/_baselines.py).
torch and ONNX Runtime are included only when they can be imported.
"""

import numpy as np
import pytest

from cnorm.bench import _probe, np_dtype


def case_dtype(name):
    """The dtype named name (bfloat16: ml_dtypes'), or a skip without it."""
    dt = np_dtype(name)
    if dt is None:
        pytest.skip("bfloat16 needs ml_dtypes")
    return dt

@pytest.fixture
def run_case(benchmark):
    """Benchmark implementation `impl` of a case built by cnorm.bench; record GB/s."""

    def run(case_funcs, nbytes, impl, group):
        if impl == "torch" and impl not in case_funcs:
            pytest.skip("torch is not installed")
        case_funcs = _probe(case_funcs)
        if impl not in case_funcs:
            pytest.skip(f"{impl} has no kernel for this case")
        benchmark.group = group
        benchmark.extra_info["bytes"] = nbytes
        with np.errstate(all="ignore"):     # NumPy's float16 baselines overflow
            result = benchmark(case_funcs[impl])
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            benchmark.extra_info["GB/s"] = round(nbytes / stats.stats.median / 1e9, 2)
        return result

    return run


@pytest.fixture(scope="session")
def torch_module():
    """torch, or None when it cannot be imported (its cases are then skipped)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@pytest.fixture(autouse=True)
def _torch_case_needs_torch(request, torch_module):
    """Skip a torch case before it builds its data, when torch is absent (building the
    case first cost the smoke run about a sixth of its time here)."""
    spec = getattr(request.node, "callspec", None)
    if spec is not None and spec.params.get("impl") == "torch" and torch_module is None:
        pytest.skip("torch is not installed")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
