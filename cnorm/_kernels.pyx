"""Every normalization kernel, compiled for any CPU of the target architecture.

The kernels are written by reduction geometry, not by op: rows (statistics
per row of a C-contiguous matrix: layer, RMS, group and instance norm),
columns (statistics per column: batch norm's channels-last and (N, C)
layouts, channels-last group and instance norm), and batch norm's channel
planes.  cnorm/_dispatch.py picks this build or _kernels_v3 (x86-64-v3).
"""

include "_kernels_body.pxi"
