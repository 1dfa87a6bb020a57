"""Group norm (forward, backward, with SiLU), instance norm and RMS norm, with ONNX Runtime
where it has the op."""

import pytest

from cnorm import _bench_ops as ops
from cnorm.bench import DTYPES, cases
from conftest import case_dtype

IMPLS = ["cnorm", "numpy", "torch", "ort"]
CASES = [c for c in cases(("gn_forward", "gn_backward", "gn_silu", "in_forward", "in_backward",
                           "rms_forward", "rms_backward"), DTYPES)]


@pytest.fixture(scope="session")
def ort_module():
    return ops.ort_module()


def _case(op, shape, axis, dtype, torch, ort, rng):
    if op.startswith("gn_"):
        return ops.gn_case(op, shape, axis, dtype, torch, ort, 2, rng)
    if op.startswith("in_"):
        return ops.in_case(op, shape, axis, dtype, torch, ort, 2, rng)
    return ops.rms_case(op, shape, dtype, torch, ort, 2, rng)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,shape,axis,dtype", CASES,
                         ids=[f"{o}-{'x'.join(map(str, s))}-ax{a}-{d}" for o, s, a, d in CASES])
def test_new_ops(run_case, torch_module, ort_module, rng, op, shape, axis, dtype, impl):
    funcs, nbytes = _case(op, shape, axis, case_dtype(dtype), torch_module, ort_module, rng)
    if impl == "ort" and "ort" not in funcs:
        pytest.skip("ONNX Runtime is not installed or has no kernel for this case")
    run_case(funcs, nbytes, impl, f"{op} {shape} axis={axis} {dtype}")
