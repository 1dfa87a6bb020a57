"""Layer norm: forward and backward."""

import pytest

from cnorm.bench import DTYPES, LN_CASES, LN_FORWARD_ONLY, _ln_case
from conftest import case_dtype

IMPLS = ["cnorm", "numpy", "torch"]
CASES = [(op, shape, dtype)
         for dtype in DTYPES
         for op in ("ln_forward", "ln_backward")
         for shape in LN_CASES + (LN_FORWARD_ONLY if op == "ln_forward" else [])]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,shape,dtype", CASES,
                         ids=[f"{o}-{'x'.join(map(str, s))}-{d}" for o, s, d in CASES])
def test_layer_norm(run_case, torch_module, rng, op, shape, dtype, impl):
    funcs, nbytes = _ln_case(op, shape, case_dtype(dtype), torch_module, rng)
    run_case(funcs, nbytes, impl, f"{op} {shape} {dtype}")
