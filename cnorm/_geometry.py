"""How each op sees x: the geometry its kernels take, from the shape and the op's axes.

Every op views x, C-contiguous, in one of the kernels' geometries:

- rows: an (R, H) matrix with statistics per row.  Row r uses parameter set
  r % Q of H / run parameters; `run` consecutive values share one.  Layer and
  RMS norm: Q = 1, run = 1.  Group norm, channels first: a row per (sample,
  group), Q = G, run = H*W.  Instance norm, channels first: a row per (sample,
  channel), Q = C, run = H.
- groups: (N, HW, C) with statistics per (sample, group of C / G columns):
  group and instance norm, channels last (or (N, C) input).
- batch norm's (N, C, M) with statistics per channel (cnorm.batchnorm).
"""

import math
from collections import namedtuple

Rows = namedtuple("Rows", ["R", "H", "Q", "run"])
Groups = namedtuple("Groups", ["N", "HW", "C", "G"])


prod = math.prod


def channel_geometry(shape, axis):
    """(N, C, M) of batch norm's view: the sizes before, at and after the channel axis."""
    return prod(shape[:axis]), shape[axis], prod(shape[axis + 1:])


def group_geometry(shape, axis, groups):
    """Rows or Groups for statistics per (sample, group of channels) of x of `shape`
    (axis 0 the samples, `axis` the channels, already in [0, ndim)); groups divides
    the channels.  Raises ValueError for a channel axis that is neither the second
    nor the last."""
    ndim = len(shape)
    n, c = shape[0], shape[axis]
    spatial = prod(shape[1:axis]) * prod(shape[axis + 1:])
    if axis == ndim - 1:
        return Groups(n, spatial, c, groups)
    if axis == 1:
        return Rows(n * groups, (c // groups) * spatial, groups, spatial)
    raise ValueError(f"axis must be 1 (channels first) or -1 (channels last) for an array of "
                     f"{ndim} dimensions, got {axis}")
