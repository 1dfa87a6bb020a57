"""cnorm: batch, layer, group, instance and RMS normalization for NumPy, with OpenMP kernels."""

try:
    from cnorm._openmp import get_num_threads, openmp_enabled, set_num_threads
except ModuleNotFoundError as e:     # a source checkout whose kernels were never built
    if e.name != "cnorm._openmp":
        raise
    raise ImportError(
        f"cnorm was imported from {__path__[0]}, which has no compiled kernels. This is a "
        "source checkout that shadows any installed cnorm: run from another directory, or "
        "build in place with `pip install -e .`") from e
from cnorm.addnorm import AddNormOutput, add_layer_norm, add_rms_norm
from cnorm.batchnorm import (
    BatchNormGrads, BatchNormOutput, batch_norm, batch_norm_backward, batch_norm_forward,
)
from cnorm.groupnorm import (
    GroupNormGrads, GroupNormOutput, InstanceNormGrads, InstanceNormOutput, group_norm,
    group_norm_backward, group_norm_forward, instance_norm, instance_norm_backward,
    instance_norm_forward,
)
from cnorm.layernorm import (
    LayerNormGrads, LayerNormOutput, layer_norm, layer_norm_backward, layer_norm_forward,
)
from cnorm.layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm, fold_batch_norm
from cnorm.stats import Moments, moments
from cnorm.rmsnorm import (
    RMSNormGrads, RMSNormOutput, rms_norm, rms_norm_backward, rms_norm_forward,
)

__version__ = "0.1.0"


def __getattr__(name):
    # cnorm.bench is imported on first use: it is a command, not part of the hot API;
    # cnorm.dask needs dask, an optional dependency.
    if name in ("bench", "dask"):
        import importlib

        return importlib.import_module(f"cnorm.{name}")
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
    "group_norm",
    "group_norm_forward",
    "group_norm_backward",
    "GroupNormOutput",
    "GroupNormGrads",
    "instance_norm",
    "instance_norm_forward",
    "instance_norm_backward",
    "InstanceNormOutput",
    "InstanceNormGrads",
    "rms_norm",
    "rms_norm_forward",
    "rms_norm_backward",
    "RMSNormOutput",
    "RMSNormGrads",
    "add_layer_norm",
    "add_rms_norm",
    "AddNormOutput",
    "BatchNorm",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm",
    "RMSNorm",
    "fold_batch_norm",
    "moments",
    "Moments",
    "get_num_threads",
    "set_num_threads",
    "openmp_enabled",
    "bench",
]
