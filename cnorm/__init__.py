"""cnorm: batch and layer normalization for NumPy, with OpenMP-parallel Cython kernels."""

from cnorm._openmp import get_num_threads, openmp_enabled, set_num_threads
from cnorm.batchnorm import (
    BatchNormGrads, BatchNormOutput, batch_norm, batch_norm_backward, batch_norm_forward,
)
from cnorm.layernorm import (
    LayerNormGrads, LayerNormOutput, layer_norm, layer_norm_backward, layer_norm_forward,
)
from cnorm.layers import BatchNorm, LayerNorm, fold_batch_norm

__version__ = "0.1.0"


def __getattr__(name):
    # cnorm.bench is imported on first use: it is a command, not part of the hot API.
    if name == "bench":
        import importlib

        return importlib.import_module("cnorm.bench")
    raise AttributeError(f"module 'cnorm' has no attribute {name!r}")


__all__ = [
    "batch_norm",
    "batch_norm_forward",
    "batch_norm_backward",
    "BatchNormOutput",
    "BatchNormGrads",
    "layer_norm",
    "layer_norm_forward",
    "layer_norm_backward",
    "LayerNormOutput",
    "LayerNormGrads",
    "BatchNorm",
    "LayerNorm",
    "fold_batch_norm",
    "get_num_threads",
    "set_num_threads",
    "openmp_enabled",
    "bench",
]
