"""How each op sees x: the geometry its kernels take, from the shape and the op's axes.

Every op views x, C-contiguous, in one of the kernels' geometries:

- planes: (P, Q, S) with statistics per segment q, the P blocks of S values at
  x[p, q, :].  Segment q uses parameter set q % Qp, of S / run parameters, one
  per `run` consecutive values of each block.  Batch norm with runs of 16 or
  more (cnorm.batchnorm, P = N, Q = Qp = C, S = run = M); group norm, channels
  first (P = 1, Q = N*G, S = C/G * HW, Qp = G, run = HW); instance norm,
  channels first (P = 1, Q = N*C, S = HW, Qp = C, run = HW).
- rows: an (R, H) matrix with statistics per row and a parameter per position:
  layer and RMS norm (cnorm.layernorm).
- column groups: N samples of an (HW, C) matrix with statistics per (sample,
  group of C / G consecutive columns), a parameter per `run` columns: group
  and instance norm channels last (or (N, C) input), run 1; batch norm
  channels last or with runs shorter than 16, as one sample of an (N, C*M)
  matrix with a group and a parameter per channel (G = C, run = M).
"""

import math
from collections import namedtuple

Planes = namedtuple("Planes", ["P", "Q", "S", "Qp", "run"])
Groups = namedtuple("Groups", ["N", "HW", "C", "G"])


prod = math.prod


def channel_geometry(shape, axis):
    """(N, C, M) of batch norm's view: the sizes before, at and after the channel axis."""
    return prod(shape[:axis]), shape[axis], prod(shape[axis + 1:])


def group_geometry(shape, axis, groups):
    """Planes or Groups for statistics per (sample, group of channels) of x of `shape`
    (axis 0 the samples, `axis` the channels, already in [0, ndim)); groups divides
    the channels.  Raises ValueError for a channel axis that is neither the second
    nor the last."""
    ndim = len(shape)
    n, c = shape[0], shape[axis]
    spatial = prod(shape[1:axis]) * prod(shape[axis + 1:])
    if axis == ndim - 1:
        return Groups(n, spatial, c, groups)
    if axis == 1:
        return Planes(1, n * groups, (c // groups) * spatial, groups, spatial)
    raise ValueError(f"axis must be 1 (channels first) or -1 (channels last) for an array of "
                     f"{ndim} dimensions, got {axis}")
