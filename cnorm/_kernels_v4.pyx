"""Every normalization kernel, compiled for x86-64-v4 (AVX-512) CPUs, chosen at import by cnorm._dispatch."""

include "_kernels_body.pxi"
