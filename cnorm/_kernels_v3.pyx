"""Every normalization kernel, compiled for x86-64-v3 (AVX2, FMA) CPUs, chosen at import by cnorm._dispatch."""

include "_kernels_body.pxi"
