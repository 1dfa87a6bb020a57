"""The common calls of group norm and instance norm take a fast path checked in C
(groups_fast in cnorm/_shims.pxi): a C-contiguous ndarray, an int axis and num_groups,
parameters already right (float32, or x's own float16 or bfloat16), a float eps, the
default method, and for instance norm the input statistics without running ones.

Each fast call must not reach the general path (counted at its first check, float_array),
must give the general path's bits (the same call spelled so that the general path takes
it), and every call the fast path leaves alone must still be checked as before.
"""

import numpy as np
import pytest

import cnorm
import cnorm.groupnorm
from cnorm import _reference as R
from conftest import assert_close, count_general, threads

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:      # pragma: no cover - ml_dtypes is in the test extras
    BF16 = None

DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16),
          pytest.param("bfloat16", marks=pytest.mark.skipif(BF16 is None,
                                                            reason="needs ml_dtypes"))]
SHAPES = [  # (shape, axis, groups)
    ((2, 8, 5, 7), 1, 4),          # channels first: the planes
    ((2, 5, 7, 8), -1, 2),         # channels last: the column groups
    ((3, 12), 1, 3),               # (N, C): the column groups
    ((1, 32, 16, 16), 1, 8),       # batch 1, as a diffusion block at inference
    ((4, 64, 48, 48), 1, 32),      # large enough for two threads
]


def _dt(dt):
    return BF16 if dt == "bfloat16" else np.dtype(dt)


@pytest.fixture
def general(monkeypatch):
    """The list that every call of the general path appends to."""
    return count_general(monkeypatch, cnorm.groupnorm)


def _params(rng, c, dt):
    pdt = np.float64 if dt == np.float64 else np.float32
    w = rng.uniform(0.5, 2, c).astype(pdt)
    b = rng.uniform(-1, 1, c).astype(pdt)
    return w, b


def _same(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), what


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape,axis,groups", SHAPES, ids=lambda v: str(v))
def test_group_and_instance_norm_fast_paths_give_the_general_bits(rng, general, shape, axis,
                                                                 groups, dt, nt):
    dt = _dt(dt)
    c = shape[axis]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dt)
    w, b = _params(rng, c, dt)
    half = dt.itemsize == 2
    instance = len(shape) >= 3
    cnorm.group_norm(x, groups, w, b, axis=axis)     # bfloat16: tells the C paths its type
    general.clear()
    with threads(nt):
        fast = {
            "group_norm": cnorm.group_norm(x, groups, w, b, axis=axis),
            "group_norm silu": cnorm.group_norm(x, groups, w, b, axis=axis, activation="silu"),
            "group_norm no parameters": cnorm.group_norm(x, groups, axis=axis),
            "group_norm_forward": cnorm.group_norm_forward(x, groups, w, b, axis=axis),
        }
        buf = np.empty_like(x)
        fast["group_norm out="] = cnorm.group_norm(x, groups, w, b, axis=axis, out=buf)
        assert fast["group_norm out="] is buf
        if half:   # a model's weights in x's own dtype
            fast["group_norm half parameters"] = cnorm.group_norm(x, groups, w.astype(dt),
                                                                  b.astype(dt), axis=axis)
        if instance:
            fast["instance_norm"] = cnorm.instance_norm(x, w, b, axis=axis)
            fast["instance_norm relu"] = cnorm.instance_norm(x, w, b, axis=axis,
                                                             activation="relu")
            fast["instance_norm_forward"] = cnorm.instance_norm_forward(x, w, b, axis=axis)
        assert not general, "the common calls should take the fast path"
        slow = {
            "group_norm": cnorm.group_norm(x, groups, w, b, axis=axis, method="two_pass"),
            "group_norm silu": cnorm.group_norm(x, groups, w, b, axis=axis, activation="silu",
                                                method="two_pass"),
            "group_norm no parameters": cnorm.group_norm(x, groups, axis=axis,
                                                         method="two_pass"),
            "group_norm_forward": cnorm.group_norm_forward(x, groups, w, b, axis=axis,
                                                           method="two_pass"),
            "group_norm out=": cnorm.group_norm(x, groups, w, b, axis=axis,
                                                out=np.asfortranarray(np.empty_like(x))),
        }
        if half:
            slow["group_norm half parameters"] = cnorm.group_norm(
                x, groups, w.astype(dt).tolist(), b.astype(dt).astype(np.float32), axis=axis)
        if instance:
            slow["instance_norm"] = cnorm.instance_norm(x, w, b, axis=axis, method="two_pass")
            slow["instance_norm relu"] = cnorm.instance_norm(x, w, b, axis=axis,
                                                             activation="relu",
                                                             method="two_pass")
            slow["instance_norm_forward"] = cnorm.instance_norm_forward(x, w, b, axis=axis,
                                                                        method="two_pass")
        assert len(general) == len(slow)
    for key, got in fast.items():
        want = slow[key]
        for g, s in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            _same(g, s, key)
    y, mean, rstd = fast["group_norm_forward"]
    assert mean.shape == rstd.shape == (shape[0], groups)
    assert mean.dtype == (np.float64 if dt == np.float64 else np.float32)
    if dt.itemsize > 2:
        a = 1 if axis == 1 else x.ndim - 1
        xc = np.moveaxis(x, a, 1)
        ref = R.group_norm(xc, groups, w, b)
        assert_close(np.moveaxis(y, a, 1), ref[0], dt)


def test_calls_the_fast_path_leaves_alone_are_still_checked(rng, general):
    """What groups_fast does not take goes the general way, which raises as before and
    modifies nothing."""
    x = rng.standard_normal((2, 6, 4)).astype(np.float32)
    w, b = _params(rng, 6, x.dtype)
    rm = np.zeros(6, np.float32)
    cases = [
        (lambda: cnorm.group_norm(x, 4, w, b), ValueError, "num_groups must divide"),
        (lambda: cnorm.group_norm(x, 0, w, b), ValueError, "num_groups"),
        (lambda: cnorm.group_norm(x, 2.0, w, b), TypeError, "num_groups"),
        (lambda: cnorm.group_norm(x, 2, w[:5], b), ValueError, "weight"),
        (lambda: cnorm.group_norm(x, 2, w, b, eps=-1.0), ValueError, "eps"),
        (lambda: cnorm.group_norm(x[..., None], 2, w, b, axis=2), ValueError, "axis"),
        (lambda: cnorm.group_norm(x, 2, w, b, axis=1.0), TypeError, "axis"),
        (lambda: cnorm.group_norm(x, 2, w, b, activation="gelu"), ValueError, "activation"),
        (lambda: cnorm.group_norm(x, 2, w, b, activation=["silu"]), TypeError, "activation"),
        (lambda: cnorm.group_norm(x[0, 0], 2, w, b), ValueError, "dimensions"),
        (lambda: cnorm.group_norm(x, 2, w, b, out=np.empty((2, 6, 5), np.float32)),
         ValueError, "out"),
        (lambda: cnorm.instance_norm(x[:, :, :1], w, b), ValueError, "spatial"),
        (lambda: cnorm.instance_norm(x, w, b, momentum=2.0), ValueError, "momentum"),
        (lambda: cnorm.instance_norm(x, w, b, running_mean=rm), ValueError, "running_var"),
        (lambda: cnorm.instance_norm(x, w, b, use_input_stats=False), ValueError, "running"),
    ]
    before = x.copy()
    for i, (call, err, match) in enumerate(cases):
        with pytest.raises(err, match=match):
            call()
        assert np.array_equal(x, before), i
    assert len(general) == len(cases)
