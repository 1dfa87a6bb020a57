"""One contract for every op, checked over a table of ops.

Each op in OPS says how to build its arguments for a shape, how to call its
plain function, its forward (y and statistics) and its backward, the float64
reference in cnorm/_reference.py that each must match, and its geometry: the
cases, (id, shape, layout[, threads]) with layout the channel axis or the
normalized_shape.  The cases include the shapes that take each kernel path
(prime and size-1 dimensions, runs longer than a CHUNK of 4096 values, many
channels, inputs large enough to be split over threads, which the case's
thread count then does).  Every op is checked, for every case, against the
reference (every dtype, method and affine variant), for stride patterns and
out= buffers (bitwise), thread counts and streaming stores (bitwise), inputs
left alone, activations, non-finite and constant groups; and, on small
cases, for array-like arguments, dtype casts, eps and central finite
differences.  tests/test_errors.py has the error table.  What is specific to
one op (running statistics, inference, fast paths, normalized_shape, method
None's choice, accuracy at the edges, torch) stays in the op's own file.
"""

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import cnorm
import cnorm._dispatch
import cnorm.batchnorm
import cnorm.groupnorm
import cnorm.layernorm
import cnorm.rmsnorm
from cnorm import _reference as R
from conftest import threads

TOL = {np.float32: 2e-5, np.float64: 1e-11}
DTYPES = [np.float32, np.float64]
METHODS = (None, "two_pass", "welford")
THREADS = (1, 2, 3, 4)


@dataclass
class Op:
    name: str
    cases: list                # (id, shape, layout[, threads])
    call: Callable             # (x, layout, p, activation=None, method=None, out=None) -> y
    forward: Callable          # (x, layout, p, method=None, out=None) -> (y, *stats)
    ref_forward: Callable      # (x, layout, p) -> (y, *stats)
    backward: Callable         # (dy, x, stats, layout, p, out=None) -> grads
    ref_backward: Callable     # (dy, x, stats, layout, p) -> grads
    params: Callable           # (rng, x, layout, dtype) -> dict: "w", "b" (and "eps")
    types: tuple               # the named tuples of forward and backward
    fd_cases: list             # small (shape, layout) for finite differences
    methods: tuple = METHODS
    affine: tuple = ("both", "none", "weight", "bias")
    centred: bool = True       # subtracts the mean: a constant group gives exactly the bias

    def __post_init__(self):
        self.cases = [c if len(c) == 4 else (*c, 1) for c in self.cases]

    @property
    def kernels(self):
        """The methods that are distinct kernels (None is one of them)."""
        return [m for m in self.methods if m is not None] or [None]


def _channel_params(rng, x, axis, dt):
    c = x.shape[axis]
    return dict(w=rng.uniform(0.5, 2, c).astype(dt), b=rng.uniform(-1, 1, c).astype(dt))


def _ln_params(rng, x, ns, dt):
    ns = (ns,) if np.ndim(ns) == 0 else tuple(ns)
    return dict(w=rng.uniform(0.5, 2, ns).astype(dt), b=rng.uniform(-1, 1, ns).astype(dt))


def _groups(x, axis):
    """Group norm's num_groups for x: 4 when C % 4 == 0, 1 when C % 4 == 2, else C."""
    c = np.shape(x)[axis]
    return 4 if c % 4 == 0 else 1 if c % 2 == 0 else c


def _eps(p, default=1e-5):
    return p.get("eps", default)


def _bn_forward(x, a, p, m=None, out=None):
    return cnorm.batch_norm_forward(x, p["w"], p["b"], eps=_eps(p), axis=a, method=m, out=out)


def _bn_ref(x, a, p):
    y, mean, _, invstd = R.batch_norm_train(x, p["w"], p["b"], eps=_eps(p), axis=a)
    return y, mean, invstd


OPS = [
    Op("batch_norm",
       # "rows" below M = 16 values a channel run, "planar" from 16; in planar, fixed
       # CHUNK pieces of a channel in parallel when C < 4 * threads and C % threads != 0
       [("NCHW", (6, 5, 7, 3), 1), ("NCL", (4, 9, 40), 1), ("NHWC", (8, 6, 5, 12), -1),
        ("NC", (33, 7), 1), ("NC-16", (16, 5), 1),
        ("NC-col-tiles", (70, 1100), 1, 2),          # rows: 2 column tiles, 2 row groups
        ("NC-row-blocks", (3000, 3), 1),             # rows: several two-pass row blocks
        ("NC-row-groups", (30000, 3), 1, 2),         # rows: 2 row groups on 2 threads
        ("NCL-rows", (6, 4, 3), 1), ("NCL-prime", (4, 3, 37), 1), ("NCHW-prime", (3, 4, 9, 11), 1),
        ("NCHW-8x8", (2, 3, 8, 8), 1),               # planar, M = 64
        ("NCDHW", (2, 3, 4, 5, 6), 1), ("NHWC-7", (4, 5, 6, 7), -1),
        ("axis2", (3, 4, 5, 6), 2), ("axis-2", (3, 4, 5, 6), -2), ("size-1", (1, 3, 1, 5), 1),
        ("long-channel", (2, 3, 5000), 1),           # 10000 values a channel > CHUNK
        ("few-C1", (2, 1, 40000), 1, 2),             # the few-channels path, 20 chunks
        ("few-C3", (4, 3, 6000), 1, 2), ("few-C5", (4, 5, 4000), 1, 2),
        ("few-C3-3threads", (8, 3, 4500), 1, 3),     # C % 3 == 0: whole channels
        ("whole-C64", (2, 64, 32, 32), 1, 2),        # many channels, whole channels a thread
        ("planar-M49", (4, 512, 7, 7), 1, 2),
        ("NC-cl-64", (1024, 64), -1, 2), ("NHWC-24", (4, 32, 32, 24), -1, 2)],
       lambda x, a, p, act=None, m=None, out=None: cnorm.batch_norm(
           x, p["w"], p["b"], training=True, eps=_eps(p), axis=a, method=m, activation=act,
           out=out),
       _bn_forward, _bn_ref,
       lambda dy, x, s, a, p, out=None: cnorm.batch_norm_backward(dy, x, s[0], s[1], p["w"],
                                                                  axis=a, out=out),
       lambda dy, x, s, a, p: R.batch_norm_backward(dy, x, s[0], s[1], p["w"], axis=a),
       _channel_params, (cnorm.BatchNormOutput, cnorm.BatchNormGrads),
       [((3, 2, 4), 1), ((3, 2, 4), -1)]),
    Op("layer_norm",
       # rows of H values; statistics in CHUNK blocks of a row; dweight and dbias summed
       # over row blocks of at least 65536 values
       [("3d", (5, 7, 24), 24), ("4d-two", (3, 4, 6, 10), (6, 10)), ("2d-300", (9, 300), 300),
        ("3d-two-small", (4, 2, 3), (2, 3)), ("1d", (37,), 37), ("2d-int", (16, 5), 5),
        ("2d-tuple", (16, 5), (5,)), ("2d-H1", (7, 1), 1),
        ("2d-whole", (6, 9), (6, 9)),                # one sample: 0-d statistics
        ("3d-int", (4, 3, 37), 37), ("3d-two", (4, 3, 37), (3, 37)),
        ("4d-one", (3, 4, 9, 11), (11,)), ("4d-three", (3, 4, 9, 11), (4, 9, 11)),
        ("one-row", (1, 50), 50), ("9x1024", (9, 1024), 1024),
        ("multi-chunk", (7, 10000), 10000, 2),       # 3 statistics blocks a row
        ("multi-chunk-3d", (2, 4, 2500), (4, 2500)),
        ("multi-chunk-16", (16, 10000), 10000, 2),   # 3 row blocks of dweight partials
        ("threads", (600, 128), 128, 2), ("threads-4d", (5, 40, 4, 100), (4, 100), 2),
        ("100x768", (100, 768), 768, 2),
        ("H16-2-blocks", (8000, 16), 16, 2),         # 4096 rows a block: 2 blocks
        ("H1-2-blocks", (70000, 1), 1, 2)],          # 65536 rows a block: 2 blocks
       lambda x, ns, p, act=None, m=None, out=None: cnorm.layer_norm(
           x, ns, p["w"], p["b"], eps=_eps(p), method=m, activation=act, out=out),
       lambda x, ns, p, m=None, out=None: cnorm.layer_norm_forward(
           x, ns, p["w"], p["b"], eps=_eps(p), method=m, out=out),
       lambda x, ns, p: R.layer_norm(x, ns, p["w"], p["b"], eps=_eps(p)),
       lambda dy, x, s, ns, p, out=None: cnorm.layer_norm_backward(dy, x, s[0], s[1], p["w"],
                                                                   out=out),
       lambda dy, x, s, ns, p: R.layer_norm_backward(dy, x, s[0], s[1], p["w"]),
       _ln_params, (cnorm.LayerNormOutput, cnorm.LayerNormGrads),
       [((3, 4), 4), ((2, 3, 4), (3, 4))]),
    Op("group_norm",
       [("NCHW", (6, 8, 5, 3), 1), ("NCL", (3, 12, 70), 1), ("NHWC", (5, 4, 6, 8), -1),
        ("NC", (7, 8), 1), ("NLC", (2, 9, 12), -1),
        ("one-group", (3, 6, 7, 11), 1), ("prime", (5, 7, 13), 1), ("size-1", (1, 8, 1, 9), 1),
        ("NC-many", (8, 2048), 1),
        ("long-runs", (2, 8, 9000), 1, 2),           # 18000 values a group > CHUNK
        ("many-channels", (4, 64, 400), 1, 2), ("NLC-long", (2, 4100, 12), -1, 2)],
       lambda x, a, p, act=None, m=None, out=None: cnorm.group_norm(
           x, _groups(x, a), p["w"], p["b"], eps=_eps(p), axis=a, method=m, activation=act,
           out=out),
       lambda x, a, p, m=None, out=None: cnorm.group_norm_forward(
           x, _groups(x, a), p["w"], p["b"], eps=_eps(p), axis=a, method=m, out=out),
       lambda x, a, p: R.group_norm(x, _groups(x, a), p["w"], p["b"], eps=_eps(p), axis=a),
       lambda dy, x, s, a, p, out=None: cnorm.group_norm_backward(dy, x, s[0], s[1], p["w"],
                                                                  axis=a, out=out),
       lambda dy, x, s, a, p: R.group_norm_backward(dy, x, s[0], s[1], p["w"], axis=a),
       _channel_params, (cnorm.GroupNormOutput, cnorm.GroupNormGrads),
       [((2, 8, 3), 1), ((2, 3, 6), -1)]),
    Op("instance_norm",
       [("NCHW", (6, 5, 7, 3), 1), ("NCL-300", (4, 3, 300), 1), ("NHWC", (5, 4, 6, 7), -1),
        ("NCL-2", (2, 9, 2), 1), ("size-1", (1, 3, 1, 37), 1), ("prime", (3, 7, 11, 13), 1),
        ("long-runs", (4, 3, 6000), 1, 2),           # 6000 values a channel > CHUNK
        ("many-channels", (2, 512, 100), 1, 2), ("NLC-long", (2, 5000, 7), -1, 2)],
       lambda x, a, p, act=None, m=None, out=None: cnorm.instance_norm(
           x, p["w"], p["b"], eps=_eps(p), axis=a, method=m, activation=act, out=out),
       lambda x, a, p, m=None, out=None: cnorm.instance_norm_forward(
           x, p["w"], p["b"], eps=_eps(p), axis=a, method=m, out=out),
       lambda x, a, p: R.instance_norm(x, p["w"], p["b"], eps=_eps(p), axis=a),
       lambda dy, x, s, a, p, out=None: cnorm.instance_norm_backward(dy, x, s[0], s[1], p["w"],
                                                                     axis=a, out=out),
       lambda dy, x, s, a, p: R.instance_norm_backward(dy, x, s[0], s[1], p["w"], axis=a),
       _channel_params, (cnorm.InstanceNormOutput, cnorm.InstanceNormGrads),
       [((2, 3, 4), 1), ((2, 4, 3), -1)]),
    Op("rms_norm",
       [("3d", (5, 7, 24), 24), ("4d-two", (3, 4, 6, 10), (6, 10)), ("2d-300", (9, 300), 300),
        ("one-row-4096", (1, 4096), 4096), ("1d", (37,), 37), ("2d-H1", (7, 1), 1),
        ("2d-whole", (6, 9), (6, 9)), ("prime", (3, 5, 7), (5, 7)),
        ("multi-chunk", (7, 10000), 10000, 2), ("threads", (600, 128), 128, 2),
        ("100x768", (100, 768), 768, 2)],
       lambda x, ns, p, act=None, m=None, out=None: cnorm.rms_norm(
           x, ns, p["w"], eps=_eps(p, 1e-6), activation=act, out=out),
       lambda x, ns, p, m=None, out=None: cnorm.rms_norm_forward(x, ns, p["w"],
                                                                 eps=_eps(p, 1e-6), out=out),
       lambda x, ns, p: R.rms_norm(x, ns, p["w"], eps=_eps(p, 1e-6)),
       lambda dy, x, s, ns, p, out=None: cnorm.rms_norm_backward(dy, x, s[0], p["w"], out=out),
       lambda dy, x, s, ns, p: R.rms_norm_backward(dy, x, s[0], p["w"]),
       _ln_params, (cnorm.RMSNormOutput, cnorm.RMSNormGrads),
       [((3, 4), 4), ((2, 3, 4), (3, 4))],
       methods=(None,),           # no variance: there is no method to choose
       affine=("both", "none"),   # no bias
       centred=False),            # a constant row normalises to its sign, not to 0
]
OP = {op.name: op for op in OPS}


def _param(op, case):
    cid, shape, layout, nt = case
    return pytest.param(op, shape, layout, nt, id=f"{op.name}-{cid}")


CASES = [_param(op, case) for op in OPS for case in op.cases]
# the first cases of each op: the small ones, for the argument conversions
FIRST_CASES = [_param(op, case) for op in OPS for case in op.cases[:2]]
CENTRED_CASES = [c for c in CASES if c.values[0].centred]


def _data(rng, shape, dt, offset=3.0):
    return (offset + 2.0 * rng.standard_normal(shape)).astype(dt)


def _close(got, want, dt, what, scale=1.0):
    """Close to want, relative to the largest finite magnitude of want (or scale)."""
    want = np.asarray(want, np.float64)
    finite = want[np.isfinite(want)]
    scale = max(scale, float(np.abs(finite).max())) if finite.size else scale
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=TOL[dt],
                               atol=TOL[dt] * scale, err_msg=what)


def _same(got, want, what):
    """Bitwise equality, and the same dtype and shape."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.shape, want.shape)
    assert got.tobytes() == want.tobytes(), \
        f"{what}: differs in {np.count_nonzero(got != want)} places"


def _all_same(got, want, what):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        _same(g, w, f"{what}, result {i}")


def _affine(p, which):
    return dict(p, w=p["w"] if which in ("both", "weight") else None,
                b=p["b"] if which in ("both", "bias") else None)


def _views(a):
    """a's values in other memory layouts: stepped axes (the first reversed), a slice of a
    larger buffer, reversed axes, Fortran order, axes permuted in memory."""
    nd = a.ndim
    rev = (slice(None, None, -1),) * nd
    views = []
    big = np.zeros(tuple(2 * s + 1 for s in a.shape), a.dtype)
    views.append(("strided", big[(slice(1, None, 2),) * nd]))
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    views.append(("stepped-reversed", big[(slice(None, None, -2),) + (slice(None, None, 2),) *
                                          (nd - 1)]))
    views.append(("reversed-first", np.ascontiguousarray(a[::-1])[::-1]))
    views.append(("reversed-last", np.ascontiguousarray(a[..., ::-1])[..., ::-1]))
    views.append(("reversed-all", np.ascontiguousarray(a[rev])[rev]))
    views.append(("fortran", np.asfortranarray(a)))
    if nd >= 3:
        views.append(("swapped-0-1", np.ascontiguousarray(a.swapaxes(0, 1)).swapaxes(0, 1)))
        views.append(("last-outermost", np.moveaxis(np.ascontiguousarray(np.moveaxis(a, -1, 0)),
                                                    0, -1)))
        views.append(("second-innermost", np.moveaxis(
            np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)))
    out = []
    for name, v in views:
        v[...] = a
        if not v.flags.c_contiguous:
            out.append((name, v))
    return out


def _strided_copy(a):
    """a's values in a non-contiguous view (every other element of a buffer)."""
    return np.stack([a, a], axis=-1)[..., 0]


def _group_masks(op, x, layout, p, pos):
    """Boolean masks of y and of each statistic for the group that holds x[pos]: where the
    reference turns NaN when x[pos] is NaN."""
    xn = np.array(x, dtype=np.float64)
    xn[pos] = np.nan
    with np.errstate(invalid="ignore"):
        masks = [np.isnan(r) for r in op.ref_forward(xn, layout, p)]
    assert masks[0][pos]
    return masks


def _stream(monkeypatch, on):
    """Streaming stores for every call (on), or for none."""
    monkeypatch.setattr(cnorm._dispatch, "STREAM_BYTES", 0 if on else 1 << 62)
    monkeypatch.setattr(cnorm._dispatch, "ONE_PASS_STREAM_BYTES", 0 if on else 1 << 62)
    monkeypatch.setattr(cnorm.groupnorm, "STREAMS", on)    # group norm streams only if asked
    assert cnorm._dispatch.stream_stores(1) == on
    assert cnorm._dispatch.stream_stores_one_pass(1) == on


# ---------------------------------------------------------------------------
# Against the reference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op,shape,layout,nt", CASES)
def test_forward_and_backward_match_the_reference(rng, op, shape, layout, nt, dt):
    x = _data(rng, shape, dt)
    p = op.params(rng, x, layout, dt)
    before = x.copy()
    with threads(nt):
        for which in op.affine:
            pa = _affine(p, which)
            want = op.ref_forward(x, layout, pa)
            for method in op.methods:
                what = f"{op.name} {which} method={method}"
                got = op.forward(x, layout, pa, method)
                assert type(got) is op.types[0], what
                assert len(got) == len(want)
                for g, w, nm in zip(got, want, got._fields):
                    assert type(g) is np.ndarray, (what, nm)
                    assert g.dtype == dt and g.shape == np.shape(w), (what, nm)
                    _close(g, w, dt, f"{what} {nm}")
                # the plain function runs the same kernel: the same bits
                _same(op.call(x, layout, pa, m=method), got.y, f"{what}: plain function")
        stats = got[1:]
        for weighted in (True, False):
            pw = p if weighted else _affine(p, "none")
            dy = rng.standard_normal(shape).astype(dt)
            grads = op.backward(dy, x, stats, layout, pw)
            assert type(grads) is op.types[1]
            want = op.ref_backward(dy, x, stats, layout, pw)
            assert len(grads) == len(want)
            # dx is a difference of terms dy * weight * rstd: they set its rounding
            terms = (np.abs(dy).max() * np.abs(stats[-1]).max() *
                     (np.abs(pw["w"]).max() if weighted else 1.0))
            for g, w, nm, scale in zip(grads, want, grads._fields, [terms, 1.0, 1.0]):
                what = f"{op.name} backward weighted={weighted} {nm}"
                assert g.dtype == dt and g.shape == np.shape(w), what
                _close(g, w, dt, what, scale)
    assert np.array_equal(x, before), "x was modified"


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op,shape,layout,nt", CASES)
def test_activation_is_applied_to_the_normalised_output(rng, op, shape, layout, nt, dt,
                                                        activation):
    x = _data(rng, shape, dt)
    p = op.params(rng, x, layout, dt)
    y = op.ref_forward(x, layout, p)[0]
    with threads(nt):
        got = op.call(x, layout, p, activation)
        plain = op.call(x, layout, p)
    assert got.dtype == dt
    _close(got, R.activation(y, activation), dt, f"{op.name} {activation}")
    if activation == "relu":            # fused into the same pass: max(y, 0) of the same y
        assert np.array_equal(got, np.maximum(plain, 0))


@pytest.mark.parametrize("eps", [0.0, 0, 1e-3, 0.5, 2, np.float32(1e-2)],
                         ids=["0.0", "int0", "1e-3", "0.5", "int2", "np.float32"])
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_eps(rng, op, dt, eps):
    _, shape, layout, _ = op.cases[0]
    x = _data(rng, shape, dt)
    p = dict(op.params(rng, x, layout, dt), eps=eps)
    want = op.ref_forward(x, layout, dict(p, eps=float(eps)))
    for method in op.methods:
        got = op.forward(x, layout, p, method)
        for g, w, nm in zip(got, want, got._fields):
            _close(g, w, dt, f"{op.name} eps={eps!r} method={method} {nm}")
        _same(op.call(x, layout, p, m=method), got.y, f"eps={eps!r} method={method}")


# ---------------------------------------------------------------------------
# Central finite differences, in float64
# ---------------------------------------------------------------------------

def _bn_infer_params(rng, x, axis, dt):
    c = x.shape[axis]
    return dict(_channel_params(rng, x, axis, dt), rm=rng.uniform(-1, 1, c).astype(dt),
                rv=rng.uniform(0.5, 2, c).astype(dt))


# batch norm's inference mode: fixed statistics, so a different gradient
BN_INFERENCE = Op(
    "batch_norm_inference", [],
    lambda x, a, p, act=None, m=None, out=None: cnorm.batch_norm(
        x, p["w"], p["b"], p["rm"], p["rv"], training=False, axis=a, activation=act, out=out),
    lambda x, a, p, m=None, out=None: (None, p["rm"], 1.0 / np.sqrt(p["rv"] + 1e-5)),
    None,
    lambda dy, x, s, a, p, out=None: cnorm.batch_norm_backward(
        dy, x, s[0], s[1], p["w"], training=False, axis=a, out=out),
    None, _bn_infer_params, (None, cnorm.BatchNormGrads), [((3, 2, 4), 1), ((3, 2, 4), -1)])

FD_CASES = [pytest.param(op, shape, layout, id=f"{op.name}-{'x'.join(map(str, shape))}-{layout}")
            for op in OPS + [BN_INFERENCE] for shape, layout in op.fd_cases]


def finite_differences(loss, arr, h=1e-5):
    """Central differences of loss() with respect to each element of arr (changed in place
    and restored)."""
    num = np.empty(arr.shape)
    flat = arr.reshape(-1)
    assert np.shares_memory(flat, arr)
    for i in range(flat.size):
        v = flat[i]
        flat[i] = v + h
        lp = loss()
        flat[i] = v - h
        lm = loss()
        flat[i] = v
        num.reshape(-1)[i] = (lp - lm) / (2 * h)
    return num


def _fd_close(analytic, numeric, what):
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8, err_msg=what)


@pytest.mark.parametrize("weighted", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("op,shape,layout", FD_CASES)
def test_backward_matches_central_finite_differences(rng, op, shape, layout, weighted):
    """loss = sum(y * r) for a random r: dloss/dx is backward(r, ...).dx, and likewise for
    weight and bias; without them, dweight and dbias are the gradients at weight 1, bias 0."""
    x = rng.standard_normal(shape) * 1.5 + 0.5
    p = op.params(rng, x, layout, np.float64)
    r = rng.standard_normal(shape)
    if not weighted:
        p["w"], p["b"] = np.ones_like(p["w"]), np.zeros_like(p["b"])
    pv = p if weighted else dict(p, w=None, b=None)

    def loss(q):
        return lambda: math.fsum((op.call(x, layout, q) * r).ravel())

    stats = op.forward(x, layout, pv)[1:]
    grads = op.backward(r, x, stats, layout, pv)
    _fd_close(grads[0], finite_differences(loss(pv), x), f"{op.name} dx")
    _fd_close(grads[1], finite_differences(loss(p), p["w"]), f"{op.name} dweight")
    if len(grads) > 2:
        _fd_close(grads[2], finite_differences(loss(p), p["b"]), f"{op.name} dbias")


# ---------------------------------------------------------------------------
# Memory: strides, out=, inputs left alone, results new
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op,shape,layout,nt", CASES)
def test_any_strides_give_the_contiguous_bits(rng, op, shape, layout, nt, dt):
    x = _data(rng, shape, dt)
    p = op.params(rng, x, layout, dt)
    dy = rng.standard_normal(shape).astype(dt)
    views = list(zip(_views(x), _views(dy)))
    assert views
    with threads(nt):
        base = {m: op.forward(x, layout, p, m) for m in op.kernels}
        gbase = op.backward(dy, x, base[op.kernels[0]][1:], layout, p)
        ybase = op.call(x, layout, p)
        for (name, v), (_, dv) in views:
            assert np.array_equal(v, x) and np.array_equal(dv, dy)
            for m in op.kernels:
                got = op.forward(v, layout, p, m)
                _all_same(got, base[m], f"{name} method={m}")
                assert all(a.flags.c_contiguous for a in got), name
            _same(op.call(v, layout, p), ybase, f"{name}: plain function")
            stats = base[op.kernels[0]][1:]
            grads = op.backward(dv, v, stats, layout, p)
            _all_same(grads, gbase, f"{name}: backward")
            assert all(a.flags.c_contiguous for a in grads), name
        # statistics and weight that are not contiguous either
        ps = dict(p, w=_strided_copy(p["w"]))
        grads = op.backward(dy, x, [_strided_copy(s) for s in stats], layout, ps)
        _all_same(grads, gbase, "strided statistics and weight")


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op,shape,layout,nt", CASES)
def test_out_buffers_of_any_layout_and_in_place(rng, op, shape, layout, nt, dt):
    """out= may be C-contiguous, unaligned, strided, Fortran-ordered, or the input itself
    (out=x, and out=dy or out=x in backward), and gives the bits of a call without it."""
    x = _data(rng, shape, dt)
    p = op.params(rng, x, layout, dt)
    dy = rng.standard_normal(shape).astype(dt)

    def targets(a):
        """(name, buffer, check of the memory around it) for out=; a is the input."""
        yield "C-contiguous", np.full(shape, 7.0, dt), None
        buf = np.full(a.size + 1, 5.0, dt)        # one element in: not 16-byte aligned
        yield "offset", buf[1:].reshape(shape), lambda: buf[0] == 5.0
        big = np.full(shape[:-1] + (2 * shape[-1],), -3.0, dt)
        yield "strided", big[..., 1::2], lambda: (big[..., 0::2] == -3.0).all()
        yield "fortran", np.asfortranarray(np.zeros(shape, dt)), None

    def in_place(a):
        """(name, input, the same as out=) for in-place calls on a's values."""
        yield "in place", a.copy(), None
        big = np.zeros(shape[:-1] + (2 * shape[-1],), dt)
        v = big[..., ::2]
        v[...] = a
        yield "in place, strided", v, lambda: (big[..., 1::2] == 0).all()
        yield "in place, reversed", a[::-1].copy()[::-1], None

    with threads(nt):
        fwd = op.forward(x, layout, p)
        want_y = op.call(x, layout, p)
        grads = op.backward(dy, x, fwd[1:], layout, p)
        for name, out, around in targets(x):
            res = op.call(x, layout, p, out=out)
            assert res is out, name
            _same(out, want_y, name)
            assert around is None or around(), f"{name}: memory around out was written"
        for name, out, around in targets(x):
            res = op.forward(x, layout, p, out=out)
            assert res.y is out, name
            _all_same(res, fwd, f"forward, {name}")
            assert around is None or around(), name
        for name, xi, around in in_place(x):
            assert op.call(xi, layout, p, out=xi) is xi
            _same(xi, want_y, name)
            assert around is None or around(), name
        for name, xi, around in in_place(x):
            res = op.forward(xi, layout, p, out=xi)
            assert res.y is xi
            _all_same(res, fwd, f"forward, {name}")
        for name, out, around in targets(x):
            res = op.backward(dy, x, fwd[1:], layout, p, out=out)
            assert res.dx is out, name
            _all_same(res, grads, f"backward, {name}")
            assert around is None or around(), name
        for arg in ("dy", "x"):
            for name, a, around in in_place(dy if arg == "dy" else x):
                args = (a, x) if arg == "dy" else (dy, a)
                res = op.backward(*args, fwd[1:], layout, p, out=a)
                assert res.dx is a
                _all_same(res, grads, f"backward, out={arg}, {name}")
                assert around is None or around(), name


@pytest.mark.parametrize("op,shape,layout,nt", CASES)
def test_inputs_are_left_alone_and_results_are_new(rng, op, shape, layout, nt):
    for dt in DTYPES:
        for x in (_data(rng, shape, dt), np.asfortranarray(_data(rng, shape, dt))):
            p = op.params(rng, x, layout, dt)
            dy = rng.standard_normal(shape).astype(dt)
            inputs = {"x": x, "dy": dy, "weight": p["w"], "bias": p["b"]}
            copies = {k: v.copy() for k, v in inputs.items()}
            with threads(nt):
                y = op.call(x, layout, p, "relu")
                fwd = op.forward(x, layout, p, op.kernels[-1])
                stats = [s.copy() for s in fwd[1:]]
                grads = op.backward(dy, x, fwd[1:], layout, p)
            for k, v in inputs.items():
                _same(v, copies[k], f"{k} was modified")
            for i, (s, c) in enumerate(zip(fwd[1:], stats)):
                _same(s, c, f"statistic {i} was modified by backward")
            outputs = {"y": y, **{f"forward {n}": a for n, a in zip(fwd._fields, fwd)},
                       **dict(zip(grads._fields, grads))}
            for n, o in outputs.items():
                assert type(o) is np.ndarray and o.dtype == dt, n
                assert o.flags.c_contiguous and o.flags.owndata and o.flags.writeable, n
                for k, v in inputs.items():
                    assert not np.shares_memory(o, v), f"{n} shares memory with {k}"
            names = list(outputs)
            for i, n1 in enumerate(names):
                for n2 in names[i + 1:]:
                    assert not np.shares_memory(outputs[n1], outputs[n2]), (n1, n2)


@pytest.mark.parametrize("op,shape,layout,nt", FIRST_CASES)
def test_read_only_inputs_are_accepted(rng, op, shape, layout, nt):
    x = _data(rng, shape, np.float32)
    p = op.params(rng, x, layout, np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    fwd = op.forward(x, layout, p)
    grads = op.backward(dy, x, fwd[1:], layout, p)
    y = op.call(x, layout, p)
    for a in (x, dy, p["w"], p["b"], *fwd[1:]):
        a.flags.writeable = False
    _same(op.call(x, layout, p), y, "plain function")
    _all_same(op.forward(x, layout, p), fwd, "forward")
    _all_same(op.backward(dy, x, fwd[1:], layout, p), grads, "backward")


# ---------------------------------------------------------------------------
# Array-likes and dtypes of the arguments
# ---------------------------------------------------------------------------

def _tuples(a):
    return tuple(_tuples(r) for r in a) if a.ndim > 1 else tuple(a.tolist())


def _np_scalars(a):
    """a as nested lists of NumPy scalars of a's dtype."""
    return [_np_scalars(r) for r in a] if a.ndim > 1 else list(a)


PARAM_VARIANTS = ["none", "lists", "tuples", "other-float-dtype", "int-lists", "strided",
                  "fortran", "weight-list-only", "bias-other-dtype-only"]


@pytest.mark.parametrize("variant", PARAM_VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op,shape,layout,nt", FIRST_CASES)
def test_weight_and_bias_may_be_any_real_array_like(rng, op, shape, layout, nt, dt, variant):
    """weight and bias are cast to x's dtype (a float32 x rounds float64 ones first): the
    bits of pre-cast arrays, forward and backward; they are not modified."""
    x = _data(rng, shape, dt)
    wshape = op.params(rng, x, layout, dt)["w"].shape
    w64, b64 = rng.uniform(0.5, 2, wshape), rng.uniform(-1, 1, wshape)
    other = np.float64 if dt == np.float32 else np.float32
    w, b = {
        "none": (None, None),
        "lists": (w64.tolist(), b64.tolist()),
        "tuples": (_tuples(w64), _tuples(b64)),
        "other-float-dtype": (w64.astype(other), b64.astype(other)),
        "int-lists": (rng.integers(-3, 4, wshape).tolist(), rng.integers(-3, 4, wshape).tolist()),
        "strided": (np.repeat(w64.astype(dt), 2, axis=-1)[..., ::2],
                    np.repeat(b64.astype(dt), 3, axis=-1)[..., ::3]),
        "fortran": (np.asfortranarray(w64.astype(dt)), np.asfortranarray(b64.astype(dt))),
        "weight-list-only": (w64.tolist(), None),
        "bias-other-dtype-only": (None, b64.astype(other)),
    }[variant]
    given = dict(w=w, b=b)
    cast = {k: None if v is None else np.asarray(v).astype(dt) for k, v in given.items()}
    copies = {k: None if v is None else np.array(v, copy=True) for k, v in given.items()}
    got = op.forward(x, layout, given)
    _all_same(got, op.forward(x, layout, cast), "forward vs pre-cast parameters")
    for g, want, nm in zip(got, op.ref_forward(x, layout, cast), got._fields):
        _close(g, want, dt, f"{variant} {nm}")
    _same(op.call(x, layout, given), got.y, "plain function")
    dy = rng.standard_normal(shape).astype(dt)
    grads = op.backward(dy, x, got[1:], layout, given)
    _all_same(grads, op.backward(dy, x, got[1:], layout, cast), "backward vs pre-cast weight")
    for g, want, nm in zip(grads, op.ref_backward(dy, x, got[1:], layout, cast), grads._fields):
        _close(g, want, dt, f"{variant} {nm}")
    for k, v in given.items():
        if v is not None:
            assert np.array_equal(np.asarray(v), copies[k]), f"{k} was modified"


@pytest.mark.parametrize("op,shape,layout,nt", FIRST_CASES)
def test_array_likes_give_the_bits_of_arrays(rng, op, shape, layout, nt):
    x = _data(rng, shape, np.float64)
    p = op.params(rng, x, layout, np.float64)
    dy = rng.standard_normal(shape)
    pl = dict(p, w=p["w"].tolist(), b=p["b"].tolist())
    y = op.call(x, layout, p)
    got = op.call(x.tolist(), layout, pl)
    assert type(got) is np.ndarray
    _same(got, y, "plain function")
    fwd = op.forward(x, layout, p)
    _all_same(op.forward(x.tolist(), layout, pl), fwd, "forward")
    grads = op.backward(dy, x, fwd[1:], layout, p)
    _all_same(op.backward(dy.tolist(), x.tolist(), [s.tolist() for s in fwd[1:]], layout, pl),
              grads, "backward")
    # float32 data: nested lists of float32 scalars and a non-native byte order stay float32
    x32 = x.astype(np.float32)
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    y32 = op.call(x32, layout, p32)
    _same(op.call(_np_scalars(x32), layout, p32), y32, "list of np.float32")
    _same(op.call(x32.astype(">f4"), layout, p32), y32, "non-native byte order")
    _all_same(op.forward(x32.astype(">f4"), layout, p32), op.forward(x32, layout, p32),
              "forward, non-native byte order")


@pytest.mark.parametrize("op,shape,layout,nt", FIRST_CASES)
def test_backward_casts_dy_statistics_and_weight_to_x_dtype(rng, op, shape, layout, nt):
    x = _data(rng, shape, np.float32)
    p = op.params(rng, x, layout, np.float32)
    fwd = op.forward(x, layout, p)
    dy = rng.standard_normal(shape)                  # float64 dy for a float32 x
    dy_copy = dy.copy()
    want = op.backward(dy.astype(np.float32), x, fwd[1:], layout, p)
    assert all(g.dtype == np.float32 for g in want)
    _all_same(op.backward(dy, x, fwd[1:], layout, p), want, "float64 dy")
    assert np.array_equal(dy, dy_copy)
    _all_same(op.backward(dy, x, [s.astype(np.float64) for s in fwd[1:]], layout, p), want,
              "float64 statistics")
    _all_same(op.backward(dy, x, fwd[1:], layout, dict(p, w=p["w"].astype(np.float64))), want,
              "float64 weight")
    # a float32 dy for a float64 x is widened
    x64 = x.astype(np.float64)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    f64 = op.forward(x64, layout, p64)
    d32 = dy.astype(np.float32)
    _all_same(op.backward(d32, x64, f64[1:], layout, p64),
              op.backward(d32.astype(np.float64), x64, f64[1:], layout, p64), "float32 dy")


# ---------------------------------------------------------------------------
# Threads and streaming stores: the same bits
# ---------------------------------------------------------------------------

# Channels-first group and instance norm are the plane geometry with one block per
# segment (a (sample, group) or (sample, channel)).  With fewer segments than
# 4 threads and not a multiple of the thread count, the statistics and the run sums
# go in CHUNK pieces over all threads instead of a segment per thread: the same
# bits either way.  Q = 1 and Q = 3 take that path on 2 and 4 threads, whole
# segments on 1 and 3; the runs below are longer than CHUNK (4096 values) or not,
# and every call has enough values (32768 a thread) for 4 threads.
FEW_SEGMENTS = [
    ("group_norm", (1, 6, 25000), 1),         # Q = 1: one group of 6 runs of 25000
    ("group_norm", (3, 4, 12000), 1),         # Q = 3: a group of 4 runs of 12000 each
    ("group_norm", (1, 48, 55, 55), 3),       # Q = 3: groups of 16 runs of 3025
    ("instance_norm", (1, 3, 50000), None),   # Q = 3: one run of 50000 each
    ("instance_norm", (3, 1, 7, 7000), None),  # Q = 3: one run of 49000 each
]


@pytest.mark.parametrize("name,shape,groups", FEW_SEGMENTS)
def test_few_segments_split_over_the_threads_with_the_same_bits(rng, name, shape, groups):
    c = shape[1]
    for dt in DTYPES:
        x = _data(rng, shape, dt, offset=50.0)
        dy = rng.standard_normal(shape).astype(dt)
        w = (1.0 + rng.standard_normal(c)).astype(dt)
        b = rng.standard_normal(c).astype(dt)
        if name == "group_norm":
            fwd = lambda: cnorm.group_norm_forward(x, groups, w, b)
            bwd = lambda f: cnorm.group_norm_backward(dy, x, f.mean, f.rstd, w)
            ref_f = R.group_norm(x, groups, w, b)
            ref_b = lambda f: R.group_norm_backward(dy, x, f.mean, f.rstd, w)
        else:
            fwd = lambda: cnorm.instance_norm_forward(x, w, b)
            bwd = lambda f: cnorm.instance_norm_backward(dy, x, f.mean, f.rstd, w)
            ref_f = R.instance_norm(x, w, b)
            ref_b = lambda f: R.instance_norm_backward(dy, x, f.mean, f.rstd, w)
        results = []
        for n in THREADS:
            with threads(n):
                f = fwd()
                g = bwd(f)
            results.append((f, g))
            what = f"{name} {shape} {dt.__name__} on {n} threads"
            for got, want in zip(f, ref_f):
                _close(got, want, dt, what)
            for got, want in zip(g, ref_b(f)):
                _close(got, want, dt, what, scale=1.0)
        for n, r in zip(THREADS[1:], results[1:]):
            _all_same([*r[0], *r[1]], [*results[0][0], *results[0][1]],
                      f"{name} {shape} {dt.__name__}: {n} threads against 1")


@pytest.mark.parametrize("op,shape,layout,nt", CASES)
def test_results_do_not_depend_on_the_thread_count(rng, op, shape, layout, nt):
    # an input large enough that the kernels really split the work (from 2 * 32768 values)
    reps = -(-66000 // math.prod(shape))
    if op.name in ("layer_norm", "rms_norm"):           # more rows: a leading axis
        big = (reps,) + tuple(shape) if reps > 1 else tuple(shape)
    else:                                               # more samples
        big = (shape[0] * reps,) + tuple(shape[1:])
    for dt in DTYPES:
        x = _data(rng, big, dt, offset=100.0)
        p = op.params(rng, x, layout, dt)
        dy = rng.standard_normal(big).astype(dt)
        results = []
        for n in THREADS:
            with threads(n):
                out = [op.call(x, layout, p)]
                for method in op.kernels:
                    f = op.forward(x, layout, p, method)
                    out += [*f, *op.backward(dy, x, f[1:], layout, p),
                            *op.backward(dy, x, f[1:], layout, _affine(p, "none"))]
            results.append([a.tobytes() for a in out])
        for n, r in zip(THREADS[1:], results[1:]):
            assert r == results[0], f"{op.name} {dt.__name__}: {n} threads differ from 1"


def test_the_ops_take_streaming_from_the_dispatch_module():
    """The patching of the streaming test reaches every op."""
    for module in (cnorm.batchnorm, cnorm.layernorm, cnorm.groupnorm, cnorm.rmsnorm):
        assert module.stream_stores is cnorm._dispatch.stream_stores, module.__name__


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("op,shape,layout,nt", CASES)
def test_streaming_stores_give_the_same_bits(rng, monkeypatch, op, shape, layout, nt, dt):
    x = _data(rng, shape, dt)
    p = op.params(rng, x, layout, dt)
    dy = rng.standard_normal(shape).astype(dt)

    def run():
        res = []
        with threads(nt):
            for method in op.kernels:
                f = op.forward(x, layout, p, method)
                res += [*f, op.call(x, layout, p, "relu", m=method)]
            buf = np.full(x.size + 1, 3.0, dt)          # unaligned out
            res.append(op.call(x, layout, p, out=buf[1:].reshape(shape)).copy())
            assert buf[0] == 3.0
            big = np.zeros(shape[:-1] + (2 * shape[-1],), dt)
            res.append(op.call(x, layout, p, out=big[..., ::2]).copy())
            assert (big[..., 1::2] == 0).all()
            xi = x.copy()
            res.append(op.call(xi, layout, p, out=xi))
            res += op.backward(dy, x, f[1:], layout, p)
            buf = np.full(x.size + 1, 3.0, dt)
            res.append(op.backward(dy, x, f[1:], layout, p, out=buf[1:].reshape(shape)).dx)
            assert buf[0] == 3.0
            dyi = dy.copy()
            res.append(op.backward(dyi, x, f[1:], layout, p, out=dyi).dx)
        return res

    _stream(monkeypatch, False)
    plain = run()
    _stream(monkeypatch, True)
    _all_same(run(), plain, "streamed vs plain stores")


# ---------------------------------------------------------------------------
# Non-finite and constant groups
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op,shape,layout,nt", CASES)
def test_nonfinite_values_stay_in_their_group(rng, op, shape, layout, nt):
    """NaN or inf in a group (channel, row, ...) makes that group's outputs and statistics
    non-finite where the reference's are; every other group is bitwise unaffected."""
    pos = tuple(s // 2 for s in shape)
    for dt in DTYPES:
        x = _data(rng, shape, dt)
        p = op.params(rng, x, layout, dt)
        masks = _group_masks(op, x, layout, p, pos)
        if masks[1].size > 1:                            # more than one group
            assert not masks[0].all()
        with threads(nt):
            clean = {m: op.forward(x, layout, p, m) for m in op.kernels}
        for bad in (np.nan, np.inf, -np.inf):
            xb = x.copy()
            xb[pos] = bad
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                want = op.ref_forward(xb, layout, p)
            for m in op.kernels:
                what = f"{op.name} {dt.__name__} x={bad} method={m}"
                with threads(nt):
                    got = op.forward(xb, layout, p, m)
                    relu = op.call(xb, layout, p, "relu", m=m)
                assert not np.isfinite(got.y[pos]), what
                for g, c, w, mask, nm in zip(got, clean[m], want, masks, got._fields):
                    _same(g[~mask], c[~mask], f"{what}: {nm} outside the group")
                    assert np.array_equal(np.isfinite(g[mask]), np.isfinite(w[mask])), \
                        f"{what}: {nm} in the group: {g[mask]}, want {w[mask]}"
                    fin = np.isfinite(w[mask])
                    _close(g[mask][fin], w[mask][fin], dt, f"{what}: {nm}")
                assert np.array_equal(np.isnan(relu), np.isnan(got.y)), f"{what}: relu"


CONSTANT_VALUES = [0.0, 0.1, 1 / 3, math.pi, -3.7, -7.25, 1024.5, 1e4 + 0.3]


@pytest.mark.parametrize("op,shape,layout,nt", CENTRED_CASES)
def test_a_constant_group_normalises_to_exactly_the_bias(rng, op, shape, layout, nt):
    """Values whose float64 sums are inexact too: the kernels centre each block on its
    first value, so a constant group has mean == value and variance 0."""
    pos = tuple(s // 2 for s in shape)
    for dt in DTYPES:
        x = _data(rng, shape, dt)
        p = op.params(rng, x, layout, dt)
        ym, mm, sm = _group_masks(op, x, layout, p, pos)
        # the reference on zeros: (0 - 0) * rstd * weight + bias, bias exactly
        bias = op.ref_forward(np.zeros_like(x), layout, p)[0].astype(dt)
        for value in CONSTANT_VALUES:
            xc = x.copy()
            xc[ym] = value
            for m in op.methods:
                what = f"{op.name} {dt.__name__} value={value} method={m}"
                with threads(nt):
                    f = op.forward(xc, layout, p, m)
                    y0 = op.call(xc, layout, _affine(p, "weight"), m=m)
                assert (f.y[ym] == bias[ym]).all(), (what, np.abs(f.y[ym] - bias[ym]).max())
                assert (y0[ym] == 0).all(), (what, np.abs(y0[ym]).max())
                assert (f[1][mm] == dt(value)).all(), (what, f[1][mm])
                _close(f[2][sm], np.full(sm.sum(), 1 / math.sqrt(1e-5)), dt, what)
