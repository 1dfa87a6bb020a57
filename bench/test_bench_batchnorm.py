"""Batch norm: training forward, inference forward and backward."""

import pytest

from cnorm.bench import BN_CASES, BN_INFER_ONLY, BN_TRAIN_ONLY, DTYPES, _bn_case
from conftest import case_dtype

IMPLS = ["cnorm", "numpy", "torch"]
CASES = [(op, shape, axis, dtype)
         for dtype in DTYPES
         for op in ("bn_train", "bn_infer", "bn_backward")
         for shape, axis in BN_CASES + {"bn_infer": BN_INFER_ONLY,
                                        "bn_train": BN_TRAIN_ONLY}.get(op, [])]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,shape,axis,dtype", CASES,
                         ids=[f"{o}-{'x'.join(map(str, s))}-ax{a}-{d}" for o, s, a, d in CASES])
def test_batch_norm(run_case, torch_module, rng, op, shape, axis, dtype, impl):
    funcs, nbytes = _bn_case(op, shape, axis, case_dtype(dtype), torch_module, rng)
    run_case(funcs, nbytes, impl, f"{op} {shape} axis={axis} {dtype}")
