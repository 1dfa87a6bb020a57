"""Argument errors, table-driven.

Each case is (description, builder, exception type, argument name).  A builder
receives an `Env` holding a standard set of float32 arrays for x of shape
(4, 3, 5) and may add more with ``env.put(name, array)``; it returns the
callable that must raise.  The test then checks the exception type, that the
message names the argument, and that none of the arrays in the Env (every
array the call could see) was modified.

Layer-norm cases normalise the same x over its trailing dimensions LN_SHAPE
= (3, 5) (or over the last one, through layer_norm's fast path), with the
Env's lw, lb, lmean and lrstd.
"""

import copy
import re

import numpy as np
import pytest

import cnorm

SHAPE = (4, 3, 5)
C = 3
LN_SHAPE = (3, 5)      # normalized_shape of the layer-norm cases
LN_LEAD = (4,)         # shape of their mean and rstd
F32 = np.float32


class Env(dict):
    def __init__(self, rng):
        super().__init__(
            x=rng.standard_normal(SHAPE).astype(F32),
            dy=rng.standard_normal(SHAPE).astype(F32),
            w=rng.uniform(0.5, 2, C).astype(F32),
            b=rng.uniform(-1, 1, C).astype(F32),
            rm=rng.uniform(-1, 1, C).astype(F32),
            rv=rng.uniform(0.5, 2, C).astype(F32),
            mean=rng.uniform(-1, 1, C).astype(F32),
            invstd=rng.uniform(0.5, 2, C).astype(F32),
            out=np.full(SHAPE, 9.0, dtype=F32),
        )
        # layer norm over LN_SHAPE: drawn after the arrays above, which are unchanged
        self.update(
            lw=rng.uniform(0.5, 2, LN_SHAPE).astype(F32),
            lb=rng.uniform(-1, 1, LN_SHAPE).astype(F32),
            lmean=rng.uniform(-1, 1, LN_LEAD).astype(F32),
            lrstd=rng.uniform(0.5, 2, LN_LEAD).astype(F32),
        )

    def put(self, name, value):
        self[name] = value
        return value

    def readonly(self, name, value):
        value = self.put(name, value)
        value.flags.writeable = False
        return value

    def overlapping(self, shift=1):
        """x and out: two views of one buffer, out shifted by `shift` elements."""
        buf = self.put("buf", np.zeros(int(np.prod(SHAPE)) + shift, dtype=F32))
        buf[:] = np.arange(buf.size, dtype=F32)
        x = self.put("x_shared", buf[:-shift].reshape(SHAPE))
        out = self.put("out_shared", buf[shift:].reshape(SHAPE))
        return x, out


def call(f, *args, **kw):
    """f(*args, **kw), later: the arguments are built now, before the snapshot."""
    return lambda: f(*args, **kw)


def train(e, x=None, **kw):
    """batch_norm in training with running statistics (so that their safety is checked)."""
    kw.setdefault("running_mean", e["rm"])
    kw.setdefault("running_var", e["rv"])
    return lambda: cnorm.batch_norm(e["x"] if x is None else x, e["w"], e["b"], training=True,
                                    **kw)


def infer(e, x=None, **kw):
    kw.setdefault("running_mean", e["rm"])
    kw.setdefault("running_var", e["rv"])
    return lambda: cnorm.batch_norm(e["x"] if x is None else x, e["w"], e["b"], training=False,
                                    **kw)


def forward(e, x=None, **kw):
    kw.setdefault("running_mean", e["rm"])
    kw.setdefault("running_var", e["rv"])
    return lambda: cnorm.batch_norm_forward(e["x"] if x is None else x, e["w"], e["b"], **kw)


def backward(e, dy=None, x=None, **kw):
    kw.setdefault("mean", e["mean"])
    kw.setdefault("invstd", e["invstd"])
    kw.setdefault("weight", e["w"])
    return lambda: cnorm.batch_norm_backward(e["dy"] if dy is None else dy,
                                             e["x"] if x is None else x, **kw)


def _bad_dtype_arrays(e):
    x = e["x"]
    return {
        "int64": x.astype(np.int64),
        "int32": x.astype(np.int32),
        "bool": x > 0,
        "complex64": x.astype(np.complex64),
        "complex128": x.astype(np.complex128),
        "object": x.astype(object),
        "int16": x.astype(np.int16),
        "longdouble": x.astype(np.longdouble),
    }


BAD_DTYPES = ["int64", "int32", "bool", "complex64", "complex128", "object", "int16",
              "longdouble"]

CASES = []


def case(desc, build, exc, name):
    CASES.append(pytest.param(build, exc, name, id=desc))


# --- TypeError: x / dy not floating ------------------------------------------------------
for _dt in BAD_DTYPES:
    case(f"train-x-{_dt}",
         lambda e, dt=_dt: train(e, x=e.put("bad", _bad_dtype_arrays(e)[dt])), TypeError, "x")
    case(f"infer-x-{_dt}",
         lambda e, dt=_dt: infer(e, x=e.put("bad", _bad_dtype_arrays(e)[dt])), TypeError, "x")
    case(f"forward-x-{_dt}",
         lambda e, dt=_dt: forward(e, x=e.put("bad", _bad_dtype_arrays(e)[dt])), TypeError, "x")
    case(f"backward-x-{_dt}",
         lambda e, dt=_dt: backward(e, x=e.put("bad", _bad_dtype_arrays(e)[dt])), TypeError, "x")
    case(f"backward-dy-{_dt}",
         lambda e, dt=_dt: backward(e, dy=e.put("bad", _bad_dtype_arrays(e)[dt])), TypeError,
         "dy")
case("train-x-int-nested-list", lambda e: train(e, x=[[[1, 2]] * 3] * 4), TypeError, "x")
case("train-x-ragged-list", lambda e: train(e, x=[[1.0, 2.0, 3.0], [1.0]]), TypeError, "x")
case("train-x-string", lambda e: train(e, x="abc"), TypeError, "x")
case("backward-dy-int-list", lambda e: backward(e, dy=e["x"].astype(int).tolist()), TypeError,
     "dy")

# --- TypeError: running statistics in training ---------------------------------------------
case("train-running_mean-float64",
     lambda e: train(e, running_mean=e.put("rm64", e["rm"].astype(np.float64))), TypeError,
     "running_mean")
case("train-running_var-float64",
     lambda e: train(e, running_var=e.put("rv64", e["rv"].astype(np.float64))), TypeError,
     "running_var")
case("forward-running_mean-float64",
     lambda e: forward(e, running_mean=e.put("rm64", e["rm"].astype(np.float64))), TypeError,
     "running_mean")
case("forward-running_var-float16",
     lambda e: forward(e, running_var=e.put("rv16", e["rv"].astype(np.float16))), TypeError,
     "running_var")
case("train-float16-x-float16-running_mean",
     lambda e: train(e, x=e.put("x16", e["x"].astype(np.float16)),
                     running_mean=e.put("rm16", e["rm"].astype(np.float16))),
     TypeError, "running_mean")
case("train-float16-x-float64-running_var",
     lambda e: train(e, x=e.put("x16", e["x"].astype(np.float16)),
                     running_var=e.put("rv64", e["rv"].astype(np.float64))),
     TypeError, "running_var")
case("train-float64-x-float32-running_mean",
     lambda e: train(e, x=e.put("x64", e["x"].astype(np.float64)),
                     running_var=e.put("rv64", e["rv"].astype(np.float64))),
     TypeError, "running_mean")
case("train-running_mean-list", lambda e: train(e, running_mean=e["rm"].tolist()), TypeError,
     "running_mean")
case("train-running_var-list", lambda e: train(e, running_var=e["rv"].tolist()), TypeError,
     "running_var")
case("forward-running_mean-tuple", lambda e: forward(e, running_mean=tuple(e["rm"].tolist())),
     TypeError, "running_mean")

# --- TypeError: complex / non-numeric parameters -------------------------------------------
case("train-weight-complex",
     lambda e: call(cnorm.batch_norm, e["x"], e.put("wc", e["w"].astype(complex)),
                    training=True, running_mean=e["rm"], running_var=e["rv"]),
     TypeError, "weight")
case("infer-weight-complex",
     lambda e: call(cnorm.batch_norm, e["x"], e.put("wc", e["w"].astype(np.complex64)),
                    None, e["rm"], e["rv"]), TypeError, "weight")
case("forward-bias-complex",
     lambda e: call(cnorm.batch_norm_forward, e["x"], e["w"],
                    e.put("bc", e["b"].astype(complex))),
     TypeError, "bias")
case("backward-weight-complex",
     lambda e: backward(e, weight=e.put("wc", e["w"].astype(complex))), TypeError, "weight")
case("infer-running_mean-complex",
     lambda e: infer(e, running_mean=e.put("rmc", e["rm"].astype(complex))), TypeError,
     "running_mean")
case("train-weight-strings",
     lambda e: call(cnorm.batch_norm, e["x"], ["a", "b", "c"], training=True), TypeError,
     "weight")

# --- ValueError: dimensions and axis ---------------------------------------------------------
case("train-x-1d",
     lambda e: call(cnorm.batch_norm, e.put("x1", np.ones(5, F32)), training=True),
     ValueError, "x")
case("infer-x-1d",
     lambda e: call(cnorm.batch_norm, e.put("x1", np.ones(3, F32)), None, None, e["rm"],
                    e["rv"]), ValueError, "x")
case("train-x-0d",
     lambda e: call(cnorm.batch_norm, e.put("x0", np.array(1.0, F32)), training=True),
     ValueError, "x")
case("forward-x-1d", lambda e: call(cnorm.batch_norm_forward, e.put("x1", np.ones(5, F32))),
     ValueError, "x")
case("backward-x-1d",
     lambda e: call(cnorm.batch_norm_backward, e.put("d1", np.ones(3, F32)),
                    e.put("x1", np.ones(3, F32)), e["mean"], e["invstd"]), ValueError, "x")
case("train-axis-2-of-2d",
     lambda e: call(cnorm.batch_norm, e.put("x2", np.ones((4, 3), F32)), training=True,
                    axis=2), ValueError, "axis")
case("train-axis-minus3-of-2d",
     lambda e: call(cnorm.batch_norm, e.put("x2", np.ones((4, 3), F32)), training=True,
                    axis=-3), ValueError, "axis")
case("infer-axis-3", lambda e: infer(e, axis=3), ValueError, "axis")
case("forward-axis-minus4", lambda e: forward(e, axis=-4), ValueError, "axis")
case("backward-axis-3", lambda e: backward(e, axis=3), ValueError, "axis")
case("train-axis-float", lambda e: train(e, axis=1.0), TypeError, "axis")

# --- ValueError: per-channel shapes ----------------------------------------------------------
case("train-weight-shape", lambda e: call(
    cnorm.batch_norm, e["x"], e.put("w4", np.ones(4, F32)), e["b"], e["rm"], e["rv"],
    training=True),
    ValueError, "weight")
case("train-weight-2d", lambda e: call(
    cnorm.batch_norm, e["x"], e.put("w31", np.ones((3, 1), F32)), e["b"], e["rm"], e["rv"],
    training=True),
    ValueError, "weight")
case("infer-weight-list-shape", lambda e: call(
    cnorm.batch_norm, e["x"], [1.0, 2.0], None, e["rm"], e["rv"]), ValueError, "weight")
case("train-bias-shape", lambda e: call(
    cnorm.batch_norm, e["x"], e["w"], e.put("b2", np.zeros(2, F32)), e["rm"], e["rv"],
    training=True),
    ValueError, "bias")
case("forward-bias-scalar", lambda e: call(cnorm.batch_norm_forward, e["x"], e["w"], 0.5),
     ValueError, "bias")
case("train-running_mean-shape",
     lambda e: train(e, running_mean=e.put("rm4", np.zeros(4, F32))), ValueError, "running_mean")
case("train-running_var-shape",
     lambda e: train(e, running_var=e.put("rv2", np.ones(2, F32))), ValueError, "running_var")
case("infer-running_mean-shape",
     lambda e: infer(e, running_mean=e.put("rm4", np.zeros(4, F32))), ValueError, "running_mean")
case("infer-running_var-shape",
     lambda e: infer(e, running_var=e.put("rv13", np.ones((1, 3), F32))), ValueError,
     "running_var")
case("backward-mean-shape", lambda e: backward(e, mean=e.put("m4", np.zeros(4, F32))),
     ValueError, "mean")
case("backward-invstd-shape", lambda e: backward(e, invstd=e.put("i2", np.ones(2, F32))),
     ValueError, "invstd")
case("backward-weight-shape", lambda e: backward(e, weight=e.put("w5", np.ones(5, F32))),
     ValueError, "weight")
case("backward-mean-none", lambda e: backward(e, mean=None), ValueError, "mean")
case("backward-axis-minus1-mean-shape", lambda e: backward(e, axis=-1), ValueError, "mean")

# --- ValueError: running statistics given alone / missing -------------------------------------
case("train-running_mean-only", lambda e: train(e, running_var=None), ValueError,
     "running_mean")
case("train-running_var-only", lambda e: train(e, running_mean=None), ValueError,
     "running_var")
case("infer-running_mean-only", lambda e: infer(e, running_var=None), ValueError,
     "running_var")
case("forward-running_var-only", lambda e: forward(e, running_mean=None), ValueError,
     "running_mean")
case("infer-without-running-stats", lambda e: infer(e, running_mean=None, running_var=None),
     ValueError, "running_mean")
case("infer-default-training-without-stats",
     lambda e: call(cnorm.batch_norm, e["x"], e["w"], e["b"]), ValueError, "running_mean")

# --- ValueError: method, eps, momentum ------------------------------------------------------
case("train-method-fast", lambda e: train(e, method="fast"), ValueError, "method")
case("forward-method-Welford", lambda e: forward(e, method="Welford"), ValueError, "method")
case("infer-method-fast", lambda e: infer(e, method="fast"), ValueError, "method")
case("train-method-int", lambda e: train(e, method=1), ValueError, "method")
for _eps, _id in [(-1e-5, "negative"), (float("nan"), "nan"), (float("inf"), "inf"),
                  (-float("inf"), "-inf")]:
    case(f"train-eps-{_id}", lambda e, v=_eps: train(e, eps=v), ValueError, "eps")
    case(f"infer-eps-{_id}", lambda e, v=_eps: infer(e, eps=v), ValueError, "eps")
    case(f"forward-eps-{_id}", lambda e, v=_eps: forward(e, eps=v), ValueError, "eps")
case("train-eps-string", lambda e: train(e, eps="small"), TypeError, "eps")
for _m, _id in [(-0.1, "negative"), (1.5, "above-1"), (float("nan"), "nan"),
                (float("inf"), "inf")]:
    case(f"train-momentum-{_id}", lambda e, v=_m: train(e, momentum=v), ValueError, "momentum")
    case(f"forward-momentum-{_id}", lambda e, v=_m: forward(e, momentum=v), ValueError,
         "momentum")
case("train-momentum-none", lambda e: train(e, momentum=None), TypeError, "momentum")

# --- ValueError: too few values per channel in training ------------------------------------
case("train-shape-1x3", lambda e: call(
    cnorm.batch_norm, e.put("x13", np.ones((1, 3), F32)), e["w"], e["b"], e["rm"], e["rv"],
    training=True),
    ValueError, "x")
case("train-empty-batch-0x3", lambda e: call(
    cnorm.batch_norm, e.put("x03", np.ones((0, 3), F32)), e["w"], e["b"], e["rm"], e["rv"],
    training=True),
    ValueError, "x")
case("train-shape-1x3x1", lambda e: call(
    cnorm.batch_norm, e.put("x131", np.ones((1, 3, 1), F32)), training=True), ValueError, "x")
case("forward-shape-1x3", lambda e: call(
    cnorm.batch_norm_forward, e.put("x13", np.ones((1, 3), F32)), e["w"], e["b"], e["rm"],
    e["rv"]), ValueError, "x")
case("forward-empty-batch-0x3x4", lambda e: call(
    cnorm.batch_norm_forward, e.put("x034", np.ones((0, 3, 4), F32))), ValueError, "x")

# --- ValueError: dy shape -----------------------------------------------------------------
case("backward-dy-shape", lambda e: backward(e, dy=e.put("dy2", np.ones((4, 3, 4), F32))),
     ValueError, "dy")
case("backward-dy-transposed", lambda e: backward(e, dy=e["dy"].transpose(0, 2, 1)),
     ValueError, "dy")

# --- ValueError: out --------------------------------------------------------------------
for _mode, _fn in [("train", train), ("infer", infer), ("forward", forward),
                   ("backward", backward)]:
    case(f"{_mode}-out-shape",
         lambda e, f=_fn: f(e, out=e.put("o", np.zeros((4, 3, 4), F32))), ValueError, "out")
    case(f"{_mode}-out-transposed-shape",
         lambda e, f=_fn: f(e, out=e.put("o", np.zeros((4, 5, 3), F32))), ValueError, "out")
    case(f"{_mode}-out-dtype",
         lambda e, f=_fn: f(e, out=e.put("o", np.zeros(SHAPE, np.float64))), ValueError, "out")
    case(f"{_mode}-out-readonly",
         lambda e, f=_fn: f(e, out=e.readonly("o", np.zeros(SHAPE, F32))), ValueError, "out")
    case(f"{_mode}-out-overlaps-x",
         lambda e, f=_fn: (lambda xs, os_: f(e, x=xs, out=os_))(*e.overlapping(1)),
         ValueError, "out")
    case(f"{_mode}-out-overlaps-x-by-a-row",
         lambda e, f=_fn: (lambda xs, os_: f(e, x=xs, out=os_))(*e.overlapping(5)),
         ValueError, "out")
case("backward-out-overlaps-dy",
     lambda e: (lambda ds, os_: backward(e, dy=ds, out=os_))(*e.overlapping(1)),
     ValueError, "out")
case("train-out-reversed-x",
     lambda e: train(e, out=e["x"][::-1]), ValueError, "out")
case("infer-out-list", lambda e: infer(e, out=np.zeros(SHAPE, F32).tolist()), TypeError, "out")

# --- ValueError: read-only running statistics in training ---------------------------------
case("train-running_mean-readonly",
     lambda e: train(e, running_mean=e.readonly("rm_ro", e["rm"].copy())), ValueError,
     "running_mean")
case("train-running_var-readonly",
     lambda e: train(e, running_var=e.readonly("rv_ro", e["rv"].copy())), ValueError,
     "running_var")
case("forward-running_mean-readonly",
     lambda e: forward(e, running_mean=e.readonly("rm_ro", e["rm"].copy())), ValueError,
     "running_mean")

# --- bool flags -------------------------------------------------------------------------
case("train-relu-string", lambda e: train(e, relu="yes"), TypeError, "relu")
case("batch_norm-training-int", lambda e: call(cnorm.batch_norm, e["x"], training=1),
     TypeError, "training")

# --- thread count ------------------------------------------------------------------------
case("set_num_threads-0", lambda e: call(cnorm.set_num_threads, 0), ValueError, "n")
case("set_num_threads-negative", lambda e: call(cnorm.set_num_threads, -2), ValueError, "n")
case("set_num_threads-1.5", lambda e: call(cnorm.set_num_threads, 1.5), TypeError, "n")
case("set_num_threads-str", lambda e: call(cnorm.set_num_threads, "2"), TypeError, "n")
case("set_num_threads-list", lambda e: call(cnorm.set_num_threads, [2]), TypeError, "n")


# --- layer norm -------------------------------------------------------------------------
def ln(e, x=None, ns=LN_SHAPE, **kw):
    """layer_norm over the trailing (3, 5) of x, with weight and bias (the general path)."""
    kw.setdefault("weight", e["lw"])
    kw.setdefault("bias", e["lb"])
    return lambda: cnorm.layer_norm(e["x"] if x is None else x, ns, **kw)


def ln_fast(e, x=None, ns=5, **kw):
    """layer_norm over the last dimension, no parameters: the call of the fast path."""
    return lambda: cnorm.layer_norm(e["x"] if x is None else x, ns, **kw)


def ln_forward(e, x=None, ns=LN_SHAPE, **kw):
    kw.setdefault("weight", e["lw"])
    kw.setdefault("bias", e["lb"])
    return lambda: cnorm.layer_norm_forward(e["x"] if x is None else x, ns, **kw)


def ln_backward(e, dy=None, x=None, **kw):
    kw.setdefault("mean", e["lmean"])
    kw.setdefault("rstd", e["lrstd"])
    kw.setdefault("weight", e["lw"])
    return lambda: cnorm.layer_norm_backward(e["dy"] if dy is None else dy,
                                             e["x"] if x is None else x, **kw)


LN_MODES = [("ln", ln), ("ln_fast", ln_fast), ("ln_forward", ln_forward)]

# TypeError: x / dy not floating
for _dt in BAD_DTYPES:
    for _mode, _fn in LN_MODES:
        case(f"{_mode}-x-{_dt}",
             lambda e, dt=_dt, f=_fn: f(e, x=e.put("bad", _bad_dtype_arrays(e)[dt])),
             TypeError, "x")
    case(f"ln_backward-x-{_dt}",
         lambda e, dt=_dt: ln_backward(e, x=e.put("bad", _bad_dtype_arrays(e)[dt])),
         TypeError, "x")
    case(f"ln_backward-dy-{_dt}",
         lambda e, dt=_dt: ln_backward(e, dy=e.put("bad", _bad_dtype_arrays(e)[dt])),
         TypeError, "dy")
case("ln-x-int-nested-list", lambda e: ln(e, x=[[[1, 2, 3, 4, 5]] * 3] * 4), TypeError, "x")
case("ln_fast-x-ragged-list", lambda e: ln_fast(e, x=[[1.0, 2.0, 3.0], [1.0]], ns=3),
     TypeError, "x")
case("ln_fast-x-string", lambda e: ln_fast(e, x="abc", ns=3), TypeError, "x")
case("ln_fast-x-complex-list", lambda e: ln_fast(e, x=[[1j, 2.0]], ns=2), TypeError, "x")
case("ln_backward-dy-int-list", lambda e: ln_backward(e, dy=e["x"].astype(int).tolist()),
     TypeError, "dy")

# TypeError: normalized_shape not integers
for _ns, _id in [(2.5, "2.5"), (5.0, "5.0"), ("a", "str"), ((3, 5.0), "tuple-float"),
                 ((3, "5"), "tuple-str"), (None, "none"), (np.float64(5), "np.float64"),
                 ([3.0, 5.0], "list-floats")]:
    case(f"ln-normalized_shape-{_id}", lambda e, v=_ns: ln(e, ns=v), TypeError,
         "normalized_shape")
    case(f"ln_fast-normalized_shape-{_id}", lambda e, v=_ns: ln_fast(e, ns=v), TypeError,
         "normalized_shape")
    case(f"ln_forward-normalized_shape-{_id}", lambda e, v=_ns: ln_forward(e, ns=v), TypeError,
         "normalized_shape")

# TypeError: complex / non-numeric parameters
case("ln-weight-complex", lambda e: ln(e, weight=e.put("wc", e["lw"].astype(complex))),
     TypeError, "weight")
case("ln_fast-weight-complex64",
     lambda e: ln_fast(e, weight=e.put("wc", e["lw"][0].astype(np.complex64))), TypeError,
     "weight")
case("ln_forward-weight-complex",
     lambda e: ln_forward(e, weight=e.put("wc", e["lw"].astype(complex))), TypeError, "weight")
case("ln_forward-bias-complex",
     lambda e: ln_forward(e, bias=e.put("bc", e["lb"].astype(complex))), TypeError, "bias")
case("ln_backward-weight-complex",
     lambda e: ln_backward(e, weight=e.put("wc", e["lw"].astype(complex))), TypeError,
     "weight")
case("ln-weight-strings", lambda e: ln_fast(e, weight=["a", "b", "c", "d", "e"]), TypeError,
     "weight")
case("ln_forward-bias-object",
     lambda e: ln_forward(e, bias=e.put("bo", e["lb"].astype(object))), TypeError, "bias")

# ValueError: normalized_shape against x
for _ns, _id in [(4, "int-4"), ((4,), "tuple-4"), ((4, 5), "4x5"), ((5, 3), "5x3"),
                 ((3,), "not-trailing"), ((4, 3), "leading-dims"), ((1, 3, 5), "extra-1"),
                 ((2, 4, 3, 5), "more-dims-than-x"), ((4, 3, 5, 1), "4d-of-3d"),
                 ((), "empty"), (-5, "negative")]:
    for _mode, _fn in LN_MODES:
        case(f"{_mode}-normalized_shape-{_id}",
             lambda e, v=_ns, f=_fn: f(e, ns=v, **({} if f is ln_fast else
                                                   {"weight": None, "bias": None})),
             ValueError, "normalized_shape")
case("ln-normalized_shape-1d-x-more-dims",
     lambda e: ln_fast(e, x=e.put("x1", np.ones(5, F32)), ns=(1, 5)), ValueError,
     "normalized_shape")
case("ln-normalized_shape-0d-x",
     lambda e: ln_fast(e, x=e.put("x0", np.array(1.0, F32)), ns=1), ValueError,
     "normalized_shape")
case("ln_fast-normalized_shape-zero-elements",
     lambda e: ln_fast(e, x=e.put("x30", np.ones((3, 0), F32)), ns=0), ValueError,
     "normalized_shape")
case("ln-normalized_shape-zero-elements-tuple",
     lambda e: ln(e, x=e.put("x30", np.ones((3, 0), F32)), ns=(0,), weight=None, bias=None),
     ValueError, "normalized_shape")
case("ln_forward-normalized_shape-zero-elements",
     lambda e: ln_forward(e, x=e.put("x204", np.ones((2, 0, 4), F32)), ns=(0, 4),
                          weight=None, bias=None),
     ValueError, "normalized_shape")
case("ln_forward-normalized_shape-zero-elements-no-rows",
     lambda e: ln_forward(e, x=e.put("x00", np.ones((0, 0), F32)), ns=0, weight=None,
                          bias=None),
     ValueError, "normalized_shape")
case("ln_backward-x-zero-elements",
     lambda e: ln_backward(e, dy=e.put("d30", np.ones((3, 0), F32)),
                           x=e.put("x30", np.ones((3, 0), F32)),
                           mean=e.put("m3", np.zeros(3, F32)), rstd=e.put("r3", np.ones(3, F32)),
                           weight=None),
     ValueError, "x")

# ValueError: weight / bias shapes
case("ln-weight-shape-last-only", lambda e: ln(e, weight=e.put("w5", np.ones(5, F32))),
     ValueError, "weight")
case("ln-weight-flat", lambda e: ln(e, weight=e.put("w15", np.ones(15, F32))), ValueError,
     "weight")
case("ln-weight-transposed", lambda e: ln(e, weight=e["lw"].T), ValueError, "weight")
case("ln-bias-shape", lambda e: ln(e, bias=e.put("b3", np.zeros(3, F32))), ValueError, "bias")
case("ln-bias-scalar", lambda e: ln(e, bias=0.5), ValueError, "bias")
case("ln_fast-weight-shape", lambda e: ln_fast(e, weight=e.put("w4", np.ones(4, F32))),
     ValueError, "weight")
case("ln_fast-weight-2d", lambda e: ln_fast(e, weight=e.put("w15", np.ones((1, 5), F32))),
     ValueError, "weight")
case("ln_fast-bias-shape", lambda e: ln_fast(e, bias=e.put("b6", np.zeros(6, F32))),
     ValueError, "bias")
case("ln_fast-bias-list-shape", lambda e: ln_fast(e, bias=[0.0, 1.0]), ValueError, "bias")
case("ln_forward-weight-shape", lambda e: ln_forward(e, weight=e.put("w35", np.ones((3, 4), F32))),
     ValueError, "weight")
case("ln_forward-bias-shape", lambda e: ln_forward(e, bias=e.put("b53", np.ones((5, 3), F32))),
     ValueError, "bias")
case("ln_backward-weight-shape", lambda e: ln_backward(e, weight=e.put("w5", np.ones(5, F32))),
     ValueError, "weight")
case("ln_backward-weight-shape-k1",
     lambda e: ln_backward(e, mean=e.put("m43", np.zeros((4, 3), F32)),
                           rstd=e.put("r43", np.ones((4, 3), F32))),
     ValueError, "weight")

# ValueError: method, eps
for _mode, _fn in LN_MODES:
    case(f"{_mode}-method-fast", lambda e, f=_fn: f(e, method="fast"), ValueError, "method")
    case(f"{_mode}-method-Welford", lambda e, f=_fn: f(e, method="Welford"), ValueError,
         "method")
    case(f"{_mode}-method-int", lambda e, f=_fn: f(e, method=1), ValueError, "method")
    for _eps, _id in [(-1e-5, "negative"), (float("nan"), "nan"), (float("inf"), "inf"),
                      (-float("inf"), "-inf"), (np.float32(-1), "np-negative"),
                      (-1, "int-negative")]:
        case(f"{_mode}-eps-{_id}", lambda e, v=_eps, f=_fn: f(e, eps=v), ValueError, "eps")
    case(f"{_mode}-eps-string", lambda e, f=_fn: f(e, eps="small"), TypeError, "eps")
    case(f"{_mode}-eps-none", lambda e, f=_fn: f(e, eps=None), TypeError, "eps")

# ValueError: dy, mean and rstd in backward
case("ln_backward-dy-shape", lambda e: ln_backward(e, dy=e.put("dy2", np.ones((4, 3, 4), F32))),
     ValueError, "dy")
case("ln_backward-dy-transposed", lambda e: ln_backward(e, dy=e["dy"].transpose(0, 2, 1)),
     ValueError, "dy")
case("ln_backward-dy-fewer-dims", lambda e: ln_backward(e, dy=e["dy"][0]), ValueError, "dy")
case("ln_backward-mean-shape", lambda e: ln_backward(e, mean=e.put("m3", np.zeros(3, F32))),
     ValueError, "mean")
case("ln_backward-rstd-shape", lambda e: ln_backward(e, rstd=e.put("r5", np.ones(5, F32))),
     ValueError, "rstd")
case("ln_backward-rstd-more-dims",
     lambda e: ln_backward(e, rstd=e.put("r43", np.ones((4, 3), F32))), ValueError, "rstd")
case("ln_backward-mean-as-many-dims-as-x",
     lambda e: ln_backward(e, mean=e.put("m435", np.zeros(SHAPE, F32)),
                           rstd=e.put("r435", np.ones(SHAPE, F32))),
     ValueError, "mean")
case("ln_backward-mean-more-dims-than-x",
     lambda e: ln_backward(e, mean=e.put("m4351", np.zeros(SHAPE + (1,), F32))),
     ValueError, "mean")
case("ln_backward-mean-none", lambda e: ln_backward(e, mean=None), ValueError, "mean")
case("ln_backward-rstd-none", lambda e: ln_backward(e, rstd=None), ValueError, "rstd")
case("ln_backward-mean-complex",
     lambda e: ln_backward(e, mean=e.put("mc", e["lmean"].astype(complex))), TypeError, "mean")

# ValueError: out
for _mode, _fn in LN_MODES + [("ln_backward", ln_backward)]:
    case(f"{_mode}-out-shape",
         lambda e, f=_fn: f(e, out=e.put("o", np.zeros((4, 3, 4), F32))), ValueError, "out")
    case(f"{_mode}-out-transposed-shape",
         lambda e, f=_fn: f(e, out=e.put("o", np.zeros((4, 5, 3), F32))), ValueError, "out")
    case(f"{_mode}-out-dtype",
         lambda e, f=_fn: f(e, out=e.put("o", np.zeros(SHAPE, np.float64))), ValueError, "out")
    case(f"{_mode}-out-readonly",
         lambda e, f=_fn: f(e, out=e.readonly("o", np.zeros(SHAPE, F32))), ValueError, "out")
    case(f"{_mode}-out-overlaps-x",
         lambda e, f=_fn: (lambda xs, os_: f(e, x=xs, out=os_))(*e.overlapping(1)),
         ValueError, "out")
    case(f"{_mode}-out-overlaps-x-by-a-row",
         lambda e, f=_fn: (lambda xs, os_: f(e, x=xs, out=os_))(*e.overlapping(5)),
         ValueError, "out")
    case(f"{_mode}-out-reversed-x", lambda e, f=_fn: f(e, out=e["x"][::-1]), ValueError, "out")
    case(f"{_mode}-out-list", lambda e, f=_fn: f(e, out=np.zeros(SHAPE, F32).tolist()),
         TypeError, "out")
case("ln_backward-out-overlaps-dy",
     lambda e: (lambda ds, os_: ln_backward(e, dy=ds, out=os_))(*e.overlapping(1)),
     ValueError, "out")
case("ln_backward-out-reversed-dy", lambda e: ln_backward(e, out=e["dy"][:, ::-1]),
     ValueError, "out")


# --- scalar arguments: strings, bytes, bools and other non-numbers are TypeErrors ------------
# (float(v) used to accept "1e-5", b"1e-5" and True.)  Every function, layer and helper that
# takes the scalar is listed; each rejects every value in _NOT_REAL.
_NOT_REAL = [("1e-5", "str"), (b"1e-5", "bytes"), (True, "bool"), (np.True_, "np-bool"),
             (1e-5j, "complex"), ([1e-5], "list"), (np.array([1e-5]), "1d-array"),
             (np.array("1e-5"), "0d-str-array")]
_EPS_TAKERS = [("train", train), ("infer", infer), ("forward", forward), ("ln", ln),
               ("ln_fast", ln_fast), ("ln_forward", ln_forward),
               ("BatchNorm", lambda e, **kw: call(cnorm.BatchNorm, C, **kw)),
               ("LayerNorm", lambda e, **kw: call(cnorm.LayerNorm, LN_SHAPE, **kw)),
               ("fold_batch_norm", lambda e, **kw: call(
                   cnorm.fold_batch_norm, e.put("W", np.ones((C, 2), F32)), None, e["w"], e["b"],
                   e["rm"], e["rv"], **kw))]
for _v, _id in _NOT_REAL:
    for _mode, _fn in _EPS_TAKERS:
        case(f"{_mode}-eps-{_id}", lambda e, v=_v, f=_fn: f(e, eps=v), TypeError, "eps")
    for _mode, _fn in [("train", train), ("infer", infer), ("forward", forward),
                       ("BatchNorm", _EPS_TAKERS[6][1])]:
        case(f"{_mode}-momentum-{_id}", lambda e, v=_v, f=_fn: f(e, momentum=v), TypeError,
             "momentum")
for _v, _id in [(True, "bool"), (np.True_, "np-bool"), ("1", "str"), (b"\x01", "bytes"),
                (1.0, "float")]:
    for _mode, _fn in [("train", train), ("infer", infer), ("forward", forward),
                       ("backward", backward), ("BatchNorm", _EPS_TAKERS[6][1])]:
        if (_mode, _id) != ("train", "float"):             # that one is listed above
            case(f"{_mode}-axis-{_id}", lambda e, v=_v, f=_fn: f(e, axis=v), TypeError, "axis")
    case(f"BatchNorm-num_features-{_id}", lambda e, v=_v: call(cnorm.BatchNorm, v), TypeError,
         "num_features")
    if _id != "str":                                        # listed with the thread count
        case(f"set_num_threads-{_id}", lambda e, v=_v: call(cnorm.set_num_threads, v),
             TypeError, "n")
for _v, _id in [(True, "bool"), (np.True_, "np-bool"), (b"\x03\x05", "bytes"), ((3, True), "tuple-bool"),
                ({3, 5}, "set"), (np.array(5.0), "0d-float-array")]:
    for _mode, _fn in LN_MODES:
        case(f"{_mode}-normalized_shape-{_id}", lambda e, v=_v, f=_fn: f(e, ns=v), TypeError,
             "normalized_shape")
    case(f"LayerNorm-normalized_shape-{_id}", lambda e, v=_v: call(cnorm.LayerNorm, v), TypeError,
         "normalized_shape")
# Out-of-range values are checked whichever mode runs, and huge ints are not an OverflowError.
for _mode, _fn in [("infer", infer), ("train", train), ("forward", forward)]:
    for _v, _id in [(2, "2"), (-0.5, "negative"), (float("nan"), "nan")]:
        case(f"{_mode}-momentum-range-{_id}", lambda e, v=_v, f=_fn: f(e, momentum=v),
             ValueError, "momentum")
for _mode, _fn in _EPS_TAKERS:
    case(f"{_mode}-eps-huge-int", lambda e, f=_fn: f(e, eps=10 ** 400), ValueError, "eps")


# --- group, instance and RMS norm ----------------------------------------------------------
# x of SHAPE (4, 3, 5): C = 3 channels, so num_groups is 1 or 3.  RMS norm uses LN_SHAPE.

def gn(e, x=None, g=3, **kw):
    return lambda: cnorm.group_norm(e["x"] if x is None else x, g, e["w"], e["b"], **kw)


def gn_forward(e, x=None, g=3, **kw):
    return lambda: cnorm.group_norm_forward(e["x"] if x is None else x, g, e["w"], e["b"], **kw)


def gn_backward(e, dy=None, x=None, **kw):
    kw.setdefault("mean", e.put("gmean", np.zeros((4, 3), F32)))
    kw.setdefault("rstd", e.put("grstd", np.ones((4, 3), F32)))
    return lambda: cnorm.group_norm_backward(e["dy"] if dy is None else dy,
                                             e["x"] if x is None else x, weight=e["w"], **kw)


def inorm(e, x=None, **kw):
    return lambda: cnorm.instance_norm(e["x"] if x is None else x, e["w"], e["b"], **kw)


def in_backward(e, **kw):
    kw.setdefault("mean", e.put("imean", np.zeros((4, 3), F32)))
    kw.setdefault("rstd", e.put("irstd", np.ones((4, 3), F32)))
    return lambda: cnorm.instance_norm_backward(e["dy"], e["x"], weight=e["w"], **kw)


def rms(e, x=None, ns=LN_SHAPE, **kw):
    return lambda: cnorm.rms_norm(e["x"] if x is None else x, ns, e["lw"], **kw)


def rms_fast(e, x=None, **kw):
    return lambda: cnorm.rms_norm(e["x"] if x is None else x, 5, **kw)


def rms_backward(e, **kw):
    kw.setdefault("rstd", e["lrstd"])
    return lambda: cnorm.rms_norm_backward(e["dy"], e["x"], weight=e["lw"], **kw)


NEW_FORWARDS = [("gn", gn), ("gn_forward", gn_forward), ("in", inorm), ("rms", rms),
                ("rms_fast", rms_fast)]
for _mode, _fn in NEW_FORWARDS:
    for _d in BAD_DTYPES:
        case(f"{_mode}-x-{_d}", lambda e, d=_d, f=_fn: f(e, x=e.put("xb", _bad_dtype_arrays(e)[d])),
             TypeError, "x")
    for _v, _id in [(-1e-5, "negative"), (float("nan"), "nan"), (float("inf"), "inf")]:
        case(f"{_mode}-eps-{_id}", lambda e, v=_v, f=_fn: f(e, eps=v), ValueError, "eps")
    for _v, _id in [("1e-5", "str"), (True, "bool"), (b"1", "bytes")]:
        case(f"{_mode}-eps-{_id}", lambda e, v=_v, f=_fn: f(e, eps=v), TypeError, "eps")
    case(f"{_mode}-out-shape", lambda e, f=_fn: f(e, out=e.put("o", np.zeros((4, 3, 4), F32))),
         ValueError, "out")
    case(f"{_mode}-out-dtype", lambda e, f=_fn: f(e, out=e.put("o", np.zeros(SHAPE, np.float64))),
         ValueError, "out")
    case(f"{_mode}-out-readonly", lambda e, f=_fn: f(e, out=e.readonly("o", np.zeros(SHAPE, F32))),
         ValueError, "out")
    case(f"{_mode}-out-overlaps-x",
         lambda e, f=_fn: (lambda xs, os_: f(e, x=xs, out=os_))(*e.overlapping(1)),
         ValueError, "out")
for _mode, _fn in [("gn", gn), ("in", inorm), ("rms", rms)]:
    case(f"{_mode}-activation-unknown", lambda e, f=_fn: f(e, activation="gelu"), ValueError,
         "activation")
    case(f"{_mode}-activation-int", lambda e, f=_fn: f(e, activation=1), TypeError, "activation")
case("train-activation-unknown", lambda e: train(e, activation="tanh"), ValueError, "activation")
case("train-activation-relu-and-silu", lambda e: train(e, activation="silu", relu=True),
     ValueError, "activation")
case("ln-activation-unknown", lambda e: ln(e, activation="Relu"), ValueError, "activation")
case("ln-activation-int", lambda e: ln(e, activation=2), TypeError, "activation")
# num_groups
for _v, _exc, _id in [(2, ValueError, "not-dividing"), (0, ValueError, "zero"),
                      (-3, ValueError, "negative"), (1.0, TypeError, "float"),
                      (True, TypeError, "bool"), ("3", TypeError, "str"), (None, TypeError, "none")]:
    case(f"gn-num_groups-{_id}", lambda e, v=_v: gn(e, g=v), _exc, "num_groups")
    case(f"gn_forward-num_groups-{_id}", lambda e, v=_v: gn_forward(e, g=v), _exc, "num_groups")
    case(f"GroupNorm-num_groups-{_id}", lambda e, v=_v: call(cnorm.GroupNorm, v, 3), _exc,
         "num_groups")
case("GroupNorm-num_channels-zero", lambda e: call(cnorm.GroupNorm, 1, 0), ValueError,
     "num_channels")
# shapes and axes
case("gn-weight-shape", lambda e: call(cnorm.group_norm, e["x"], 3, e.put("w4", np.ones(4, F32))),
     ValueError, "weight")
case("gn-bias-shape", lambda e: call(cnorm.group_norm, e["x"], 3, None, e.put("b5", np.ones(5, F32))),
     ValueError, "bias")
case("gn-x-1d", lambda e: gn(e, x=e.put("x1", np.ones(3, F32))), ValueError, "x")
case("gn-axis-0", lambda e: gn(e, axis=0), ValueError, "axis")
case("gn-axis-3", lambda e: gn(e, axis=3), ValueError, "axis")
case("gn-axis-float", lambda e: gn(e, axis=1.0), TypeError, "axis")
case("gn_backward-mean-shape", lambda e: gn_backward(e, mean=e.put("m", np.zeros((4, 2), F32))),
     ValueError, "mean")
case("gn_backward-rstd-shape", lambda e: gn_backward(e, rstd=e.put("r", np.ones((4, 1), F32))),
     ValueError, "rstd")
case("gn_backward-mean-none", lambda e: gn_backward(e, mean=None), ValueError, "mean")
case("gn_backward-dy-shape", lambda e: gn_backward(e, dy=e.put("d", np.ones((4, 3, 4), F32))),
     ValueError, "dy")
case("gn_backward-out-overlaps-dy",
     lambda e: (lambda ds, os_: gn_backward(e, dy=ds, out=os_))(*e.overlapping(1)),
     ValueError, "out")
case("in-x-2d", lambda e: inorm(e, x=e.put("x2", np.ones((4, 3), F32))), ValueError, "x")
case("in-one-spatial-value",
     lambda e: inorm(e, x=e.put("x1", np.ones((4, 3, 1), F32))), ValueError, "x")
case("in-only-running_mean", lambda e: inorm(e, running_mean=e["rm"]), ValueError,
     "running_mean")
case("in-only-running_var", lambda e: inorm(e, running_var=e["rv"]), ValueError, "running_var")
case("in-no-input-stats-without-running", lambda e: inorm(e, use_input_stats=False), ValueError,
     "use_input_stats")
case("in-use_input_stats-int", lambda e: inorm(e, use_input_stats=1), TypeError,
     "use_input_stats")
case("in-running_mean-float64",
     lambda e: inorm(e, running_mean=e.put("rm64", e["rm"].astype(np.float64)),
                     running_var=e["rv"]), TypeError, "running_mean")
case("in-running_var-readonly",
     lambda e: inorm(e, running_mean=e["rm"], running_var=e.readonly("rvr", e["rv"].copy())),
     ValueError, "running_var")
case("in-running_var-shape",
     lambda e: inorm(e, running_mean=e["rm"], running_var=e.put("rv4", np.ones(4, F32))),
     ValueError, "running_var")
for _v, _id in [(1.5, "1.5"), (-0.1, "negative")]:
    case(f"in-momentum-{_id}", lambda e, v=_v: inorm(e, running_mean=e["rm"], running_var=e["rv"],
                                                     momentum=v), ValueError, "momentum")
case("in_backward-mean-shape", lambda e: in_backward(e, mean=e.put("m", np.zeros((4, 1), F32))),
     ValueError, "mean")
case("InstanceNorm-num_features-zero", lambda e: call(cnorm.InstanceNorm, 0), ValueError,
     "num_features")
case("InstanceNorm-momentum-none", lambda e: call(cnorm.InstanceNorm, 3, momentum=None), TypeError,
     "momentum")
case("rms-normalized_shape", lambda e: rms(e, ns=(5, 3)), ValueError, "normalized_shape")
case("rms-normalized_shape-bool", lambda e: rms(e, ns=True), TypeError, "normalized_shape")
case("rms-weight-shape", lambda e: call(cnorm.rms_norm, e["x"], LN_SHAPE, e.put("w5", np.ones(5, F32))),
     ValueError, "weight")
case("rms_backward-rstd-shape", lambda e: rms_backward(e, rstd=e.put("r3", np.ones(3, F32))),
     ValueError, "rstd")
case("rms_backward-rstd-none", lambda e: rms_backward(e, rstd=None), ValueError, "rstd")
case("rms_backward-rstd-as-many-dims",
     lambda e: rms_backward(e, rstd=e.put("r435", np.ones(SHAPE, F32))), ValueError, "rstd")
case("RMSNorm-normalized_shape-zero", lambda e: call(cnorm.RMSNorm, 0), ValueError,
     "normalized_shape")
case("RMSNorm-eps-str", lambda e: call(cnorm.RMSNorm, 5, eps="1e-6"), TypeError, "eps")


def _snapshot(env):
    return {k: copy.deepcopy(v) for k, v in env.items()}


def _same(a, b):
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype.kind in "fc":
            return np.array_equal(a, b, equal_nan=True)
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("build,exc,name", CASES)
def test_error(rng, build, exc, name):
    env = Env(rng)
    fn = build(env)
    before = _snapshot(env)
    threads_before = cnorm.get_num_threads()
    with pytest.raises(exc) as info:
        fn()
    assert type(info.value) is exc, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message), \
        f"message does not name {name!r}: {message!r}"
    assert env.keys() == before.keys(), "arrays must be created by the builder, not the call"
    for key, value in env.items():
        assert _same(value, before[key]), f"{key} was modified by a call that raised"
    assert cnorm.get_num_threads() == threads_before


def test_every_error_case_is_distinct():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) > 100


@pytest.mark.parametrize("shape,axis", [((4, 3, 5), 1), ((4, 5, 3), -1)])
def test_valid_edge_arguments_are_accepted(rng, shape, axis):
    """The boundaries of the checked ranges are valid: eps=0, momentum 0 and 1, x of two
    values per channel, a read-only x, weight and running statistics (inference)."""
    x = rng.standard_normal(shape).astype(F32)
    x.flags.writeable = False
    rm, rv = np.zeros(3, F32), np.ones(3, F32)
    for momentum in (0.0, 1.0, 0, 1, np.float32(0.5)):
        cnorm.batch_norm(x, None, None, rm, rv, training=True, momentum=momentum, eps=0, axis=axis)
    ro = np.ones(3, F32)
    ro.flags.writeable = False
    y = cnorm.batch_norm(x, ro, None, ro, ro, training=False, axis=axis)
    assert y.shape == shape
    two = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], F32)
    y = cnorm.batch_norm(two, training=True, eps=0.0)
    assert np.array_equal(y[:, 0], np.array([-1.0, 1.0], F32))
    assert np.array_equal(y[:, 2], np.array([1.0, -1.0], F32))


def test_layer_norm_valid_edge_arguments_are_accepted(rng):
    """The boundaries of the checked ranges are valid: eps=0 in any numeric type,
    normalized_shape of numpy integers or all of x's dimensions, H = 1, a read-only x,
    weight, mean and rstd."""
    x = rng.standard_normal(SHAPE).astype(F32)
    x.flags.writeable = False
    y = cnorm.layer_norm(x, LN_SHAPE)
    assert np.array_equal(cnorm.layer_norm(x, (np.int64(3), np.int32(5))), y)
    y5 = cnorm.layer_norm(x, 5, eps=0.0)
    for eps in (0, np.float32(0), np.float64(0), -0.0):
        assert np.array_equal(cnorm.layer_norm(x, 5, eps=eps), y5)
        assert np.array_equal(cnorm.layer_norm(x, np.int64(5), eps=eps), y5)
    whole = cnorm.layer_norm_forward(x, SHAPE)
    assert whole.mean.shape == () and whole.rstd.shape == ()
    g = cnorm.layer_norm_backward(x, x, whole.mean, whole.rstd)
    assert g.dx.shape == SHAPE and g.dweight.shape == SHAPE
    one = cnorm.layer_norm(x[..., :1], 1)
    assert one.shape == (4, 3, 1) and (one == 0).all()
    ro = np.ones(LN_SHAPE, F32)
    ro.flags.writeable = False
    f = cnorm.layer_norm_forward(x, LN_SHAPE, ro, ro)
    f.mean.flags.writeable = False
    f.rstd.flags.writeable = False
    g = cnorm.layer_norm_backward(x, x, f.mean, f.rstd, ro)
    assert g.dx.shape == SHAPE
