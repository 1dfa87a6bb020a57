"""One contract for every op, checked over a table of ops.

Each op in OPS says how to build its arguments for a shape, how to call its
forward, backward and (where it has one) activation form, and the float64
reference in cnorm/_reference.py that each must match.  Every op is then
checked for every layout (channel axis or normalised dimensions), dtype,
variance method and stride pattern of the input, for thread-count
independence (bitwise) and for leaving its inputs unchanged.  Op-specific
behaviour (running statistics, fast paths, numerics at the edges) stays in
the op's own test file.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import cnorm
from cnorm import _reference as R

TOL = {np.float32: 2e-5, np.float64: 1e-11}
METHODS = ["two_pass", "welford"]


@dataclass
class Op:
    name: str
    cases: list                # (shape, layout): layout is the channel axis or normalized_shape
    forward: Callable          # (x, layout, params, method) -> (y, *stats)
    ref_forward: Callable      # (x, layout, params) -> (y, *stats)
    backward: Callable         # (dy, x, stats, layout, params) -> grads
    ref_backward: Callable
    params: Callable           # (rng, x, layout, dtype) -> dict of parameters
    act: Callable = None       # (x, layout, params, activation) -> y
    methods: tuple = tuple(METHODS)


def _channel_params(rng, x, axis, dt):
    c = x.shape[axis]
    return dict(w=rng.uniform(0.5, 2, c).astype(dt), b=rng.uniform(-1, 1, c).astype(dt))


def _ln_params(rng, x, ns, dt):
    ns = (ns,) if np.ndim(ns) == 0 else tuple(ns)
    return dict(w=rng.uniform(0.5, 2, ns).astype(dt), b=rng.uniform(-1, 1, ns).astype(dt))


def _groups(x, axis):
    c = x.shape[axis]
    return 4 if c % 4 == 0 else c


OPS = [
    Op("batch_norm",
       [((6, 5, 7, 3), 1), ((4, 9, 40), 1), ((8, 6, 5, 12), -1), ((33, 7), 1)],
       lambda x, a, p, m: tuple(cnorm.batch_norm_forward(x, p["w"], p["b"], axis=a, method=m)),
       lambda x, a, p: (lambda r: (r[0], r[1], r[3]))(R.batch_norm_train(x, p["w"], p["b"],
                                                                         axis=a)),
       lambda dy, x, s, a, p: cnorm.batch_norm_backward(dy, x, s[0], s[1], p["w"], axis=a),
       lambda dy, x, s, a, p: R.batch_norm_backward(dy, x, s[0], s[1], p["w"], axis=a),
       _channel_params,
       act=lambda x, a, p, act: cnorm.batch_norm(x, p["w"], p["b"], training=True, axis=a,
                                                 activation=act)),
    Op("layer_norm",
       [((5, 7, 24), 24), ((3, 4, 6, 10), (6, 10)), ((9, 300), 300), ((4, 2, 3), (2, 3))],
       lambda x, ns, p, m: tuple(cnorm.layer_norm_forward(x, ns, p["w"], p["b"], method=m)),
       lambda x, ns, p: R.layer_norm(x, ns, p["w"], p["b"]),
       lambda dy, x, s, ns, p: cnorm.layer_norm_backward(dy, x, s[0], s[1], p["w"]),
       lambda dy, x, s, ns, p: R.layer_norm_backward(dy, x, s[0], s[1], p["w"]),
       _ln_params,
       act=lambda x, ns, p, act: cnorm.layer_norm(x, ns, p["w"], p["b"], activation=act)),
    Op("group_norm",
       [((6, 8, 5, 3), 1), ((3, 12, 70), 1), ((5, 4, 6, 8), -1), ((7, 8), 1), ((2, 9, 12), -1)],
       lambda x, a, p, m: tuple(cnorm.group_norm_forward(x, _groups(x, a), p["w"], p["b"],
                                                         axis=a, method=m)),
       lambda x, a, p: R.group_norm(x, _groups(x, a), p["w"], p["b"], axis=a),
       lambda dy, x, s, a, p: cnorm.group_norm_backward(dy, x, s[0], s[1], p["w"], axis=a),
       lambda dy, x, s, a, p: R.group_norm_backward(dy, x, s[0], s[1], p["w"], axis=a),
       _channel_params,
       act=lambda x, a, p, act: cnorm.group_norm(x, _groups(x, a), p["w"], p["b"], axis=a,
                                                 activation=act)),
    Op("instance_norm",
       [((6, 5, 7, 3), 1), ((4, 3, 300), 1), ((5, 4, 6, 7), -1), ((2, 9, 2), 1)],
       lambda x, a, p, m: tuple(cnorm.instance_norm_forward(x, p["w"], p["b"], axis=a,
                                                            method=m)),
       lambda x, a, p: R.instance_norm(x, p["w"], p["b"], axis=a),
       lambda dy, x, s, a, p: cnorm.instance_norm_backward(dy, x, s[0], s[1], p["w"], axis=a),
       lambda dy, x, s, a, p: R.instance_norm_backward(dy, x, s[0], s[1], p["w"], axis=a),
       _channel_params,
       act=lambda x, a, p, act: cnorm.instance_norm(x, p["w"], p["b"], axis=a, activation=act)),
    Op("rms_norm",
       [((5, 7, 24), 24), ((3, 4, 6, 10), (6, 10)), ((9, 300), 300), ((1, 4096), 4096)],
       lambda x, ns, p, m: tuple(cnorm.rms_norm_forward(x, ns, p["w"], eps=1e-6)),
       lambda x, ns, p: R.rms_norm(x, ns, p["w"], eps=1e-6),
       lambda dy, x, s, ns, p: cnorm.rms_norm_backward(dy, x, s[0], p["w"]),
       lambda dy, x, s, ns, p: R.rms_norm_backward(dy, x, s[0], p["w"]),
       _ln_params,
       act=lambda x, ns, p, act: cnorm.rms_norm(x, ns, p["w"], eps=1e-6, activation=act),
       methods=("two_pass",)),    # no variance: the method does not apply
]

CASES = [pytest.param(op, shape, layout, id=f"{op.name}-{'x'.join(map(str, shape))}-{layout}")
         for op in OPS for shape, layout in op.cases]


def _data(rng, shape, dt, offset=3.0):
    return (offset + 2.0 * rng.standard_normal(shape)).astype(dt)


def _close(got, want, dt, what):
    want = np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=TOL[dt],
                               atol=TOL[dt] * scale, err_msg=what)


def _views(x):
    """x as strided views: a slice of a larger array, a reversed view, Fortran order."""
    big = np.zeros((2 * x.shape[0],) + x.shape[1:-1] + (x.shape[-1] + 3,), x.dtype)
    big[::2, ..., 1:-2] = x
    yield "strided", big[::2, ..., 1:-2]
    yield "reversed", np.ascontiguousarray(x[::-1])[::-1]
    yield "fortran", np.asfortranarray(x)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("op,shape,layout", CASES)
def test_forward_and_backward_match_the_reference(rng, op, shape, layout, dt):
    x = _data(rng, shape, dt)
    p = op.params(rng, x, layout, dt)
    dy = rng.standard_normal(shape).astype(dt)
    want = op.ref_forward(x, layout, p)
    for method in op.methods:
        before = x.copy()
        got = op.forward(x, layout, p, method)
        assert np.array_equal(x, before), "x was modified"
        assert len(got) == len(want)
        for g, w, what in zip(got, want, ["y", "stat 1", "stat 2"]):
            assert g.dtype == dt and g.shape == np.shape(w), what
            _close(g, w, dt, f"{op.name} {method} {what}")
    stats = got[1:]
    grads = op.backward(dy, x, stats, layout, p)
    for g, w, what in zip(grads, op.ref_backward(dy, x, stats, layout, p), ["dx", "dw", "db"]):
        assert g.dtype == dt and g.shape == np.shape(w), what
        _close(g, w, dt, f"{op.name} backward {what}")


@pytest.mark.parametrize("op,shape,layout", CASES)
def test_any_strides_give_the_contiguous_bits(rng, op, shape, layout):
    x = _data(rng, shape, np.float32)
    p = op.params(rng, x, layout, np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    base = op.forward(x, layout, p, op.methods[0])
    gbase = op.backward(dy, x, base[1:], layout, p)
    for name, v in _views(x):
        assert np.array_equal(v, x)
        got = op.forward(v, layout, p, op.methods[0])
        for a, b in zip(got, base):
            assert a.tobytes() == b.tobytes(), name
        for a, b in zip(op.backward(dy, v, base[1:], layout, p), gbase):
            assert a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("op,shape,layout", CASES)
def test_results_do_not_depend_on_the_thread_count(rng, op, shape, layout):
    # a larger input, so that the kernels really split the work
    reps = max(2, 100000 // int(np.prod(shape)))
    if op.name in ("layer_norm", "rms_norm"):           # more rows: a leading axis
        big = (reps,) + tuple(shape)
    else:                                               # more samples
        big = (shape[0] * reps,) + tuple(shape[1:])
    x = _data(rng, big, np.float32, offset=100.0)
    p = op.params(rng, x, layout, np.float32)
    dy = rng.standard_normal(big).astype(np.float32)
    results = []
    before = cnorm.get_num_threads()
    try:
        for n in (1, 2, 3):
            cnorm.set_num_threads(n)
            out = []
            for method in op.methods:
                f = op.forward(x, layout, p, method)
                out += [*f, *op.backward(dy, x, f[1:], layout, p)]
            results.append([a.tobytes() for a in out])
    finally:
        cnorm.set_num_threads(before)
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("op,shape,layout", CASES)
def test_activation_is_applied_to_the_normalised_output(rng, op, shape, layout, dt, activation):
    x = _data(rng, shape, dt)
    p = op.params(rng, x, layout, dt)
    y = op.ref_forward(x, layout, p)[0]
    _close(op.act(x, layout, p, activation), R.activation(y, activation), dt,
           f"{op.name} {activation}")


@pytest.mark.parametrize("op,shape,layout", CASES)
def test_out_may_be_x_and_gives_the_same_bits(rng, op, shape, layout):
    x = _data(rng, shape, np.float32)
    p = op.params(rng, x, layout, np.float32)
    want = op.act(x, layout, p, None)
    xs = x.copy()
    fwd = op.forward(xs, layout, p, op.methods[0])
    assert np.array_equal(xs, x)
    if op.name == "batch_norm":
        got = cnorm.batch_norm(xs, p["w"], p["b"], training=True, axis=layout, out=xs)
    elif op.name == "layer_norm":
        got = cnorm.layer_norm(xs, layout, p["w"], p["b"], out=xs)
    elif op.name == "group_norm":
        got = cnorm.group_norm(xs, _groups(xs, layout), p["w"], p["b"], axis=layout, out=xs)
    elif op.name == "instance_norm":
        got = cnorm.instance_norm(xs, p["w"], p["b"], axis=layout, out=xs)
    else:
        got = cnorm.rms_norm(xs, layout, p["w"], eps=1e-6, out=xs)
    assert got is xs
    assert xs.tobytes() == want.tobytes() == fwd[0].tobytes()


@pytest.mark.parametrize("op,shape,layout", CASES)
def test_nan_stays_in_its_group(rng, op, shape, layout):
    x = _data(rng, shape, np.float64)
    p = op.params(rng, x, layout, np.float64)
    clean = op.forward(x, layout, p, op.methods[0])[0]
    x[(0,) * x.ndim] = np.nan
    y = op.forward(x, layout, p, op.methods[0])[0]
    bad = np.isnan(y)
    assert bad[(0,) * x.ndim]
    assert np.array_equal(y[~bad], clean[~bad])     # everything outside the group is unchanged
    if shape[0] > 1:                                # more than one group: not all NaN
        assert bad.sum() < y.size


# RMS norm does not centre: a constant row normalises to its sign, not to 0
@pytest.mark.parametrize("op,shape,layout", [c for c in CASES if c.values[0].name != "rms_norm"])
def test_constant_input_normalises_to_zero(rng, op, shape, layout):
    x = np.full(shape, 7.25, np.float32)
    p = op.params(rng, x, layout, np.float32)
    p = dict(w=p["w"], b=np.zeros_like(p["b"]))
    assert (op.forward(x, layout, p, op.methods[0])[0] == 0).all()
