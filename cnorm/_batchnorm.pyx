"""Batch-normalization kernels, compiled for any CPU of the target architecture."""

include "_batchnorm_kernels.pxi"
