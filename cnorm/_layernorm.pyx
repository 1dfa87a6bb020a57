"""Layer-normalization kernels, compiled for any CPU of the target architecture."""

include "_layernorm_kernels.pxi"
