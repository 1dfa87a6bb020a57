"""The stateful layers (cnorm.BatchNorm, cnorm.LayerNorm) and cnorm.fold_batch_norm.

Checked against torch.nn.BatchNorm1d/2d/3d and torch.nn.LayerNorm (forward,
running statistics, autograd) when torch is installed, and against
cnorm._reference everywhere.
"""

import doctest

import numpy as np
import pytest

import cnorm
import cnorm.layers
from cnorm import _reference as R
from conftest import assert_close, channel_data

DTYPES = [np.float32, np.float64]
BN_SHAPES = [(8, 3), (6, 3, 5), (4, 3, 5, 6), (2, 3, 4, 3, 5)]
BN_SHAPE_IDS = ["NC", "NCL", "NCHW", "NCDHW"]

# Tolerances against torch: both sides round differently in float32 (cnorm
# accumulates in float64), and gradients are sums over the batch.
TORCH_TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=1e-4, atol=1e-4)}


@pytest.fixture
def torch():
    """torch (the test is skipped without it), on one thread for the test's duration.

    The tensors here are tiny: with several threads torch's thread pool costs
    far more than the arithmetic, worst on a busy machine.
    """
    t = pytest.importorskip("torch")
    previous = t.get_num_threads()
    t.set_num_threads(1)
    yield t
    t.set_num_threads(previous)


def _torch_bn_class(torch, ndim):
    return {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
            5: torch.nn.BatchNorm3d}[ndim]


def _torch_dtype(torch, dtype):
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


def _random_affine(layer, rng):
    """Non-trivial weight and bias, so that the tests see them used."""
    if layer.weight is not None:
        layer.weight[...] = rng.uniform(0.5, 2.0, layer.weight.shape)
    if layer.bias is not None:
        layer.bias[...] = rng.uniform(-1.0, 1.0, layer.bias.shape)


# -- BatchNorm against torch ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", BN_SHAPES, ids=BN_SHAPE_IDS)
@pytest.mark.parametrize("track", [True, False], ids=["track", "notrack"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "cumulative"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_batchnorm_matches_torch_sequence(torch, rng, dtype, momentum, affine, track, shape):
    tdt = _torch_dtype(torch, dtype)
    c = shape[1]
    tm = _torch_bn_class(torch, len(shape))(c, eps=1e-3, momentum=momentum, affine=affine,
                                             track_running_stats=track, dtype=tdt)
    if affine:
        with torch.no_grad():
            tm.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c)))
            tm.bias.copy_(torch.from_numpy(rng.uniform(-1.0, 1.0, c)))
    bn = cnorm.BatchNorm(c, eps=1e-3, momentum=momentum, affine=affine, track_running_stats=track,
                         dtype=dtype)
    bn.load_state_dict(tm.state_dict())
    assert list(bn.state_dict()) == list(tm.state_dict())
    assert bn.training and tm.training
    tol = TORCH_TOL[dtype]
    for step, mode in enumerate([True, True, False, True, False, False, True]):
        tm.train(mode)
        assert bn.train(mode) is bn
        x = channel_data(rng, shape, dtype=dtype, offset=3.0)
        dy = rng.standard_normal(shape).astype(dtype)
        tx = torch.tensor(x, requires_grad=True)
        tm.zero_grad(set_to_none=True)
        ty = tm(tx)
        ty.backward(torch.from_numpy(dy))
        y = bn(x)
        dx = bn.backward(dy)
        msg = f"step {step}, training={mode}"
        assert y.dtype == dtype and dx.dtype == dtype
        assert_close(y, ty.detach().numpy(), dtype, **tol, err_msg=msg)
        assert_close(dx, tx.grad.numpy(), dtype, **tol, err_msg=msg)
        if affine:
            assert_close(bn.weight_grad, tm.weight.grad.numpy(), dtype, **tol, err_msg=msg)
            assert_close(bn.bias_grad, tm.bias.grad.numpy(), dtype, **tol, err_msg=msg)
        else:
            assert bn.weight_grad is None and bn.bias_grad is None
        if track:
            assert_close(bn.running_mean, tm.running_mean.numpy(), dtype, **tol, err_msg=msg)
            assert_close(bn.running_var, tm.running_var.numpy(), dtype, **tol, err_msg=msg)
            assert bn.num_batches_tracked == int(tm.num_batches_tracked), msg
        else:
            assert bn.running_mean is None and tm.running_mean is None
            assert bn.num_batches_tracked is None
    for key, value in tm.state_dict().items():
        assert_close(bn.state_dict()[key], value.numpy(), dtype, **tol, err_msg=key)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_batchnorm_channels_last_matches_torch(torch, rng, dtype):
    tm = torch.nn.BatchNorm2d(4, dtype=_torch_dtype(torch, dtype))
    bn = cnorm.BatchNorm(4, axis=-1, dtype=dtype)
    _random_affine(bn, rng)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in bn.state_dict().items()})
    tol = TORCH_TOL[dtype]
    for mode in [True, True, False]:
        tm.train(mode)
        bn.train(mode)
        x = channel_data(rng, (3, 5, 6, 4), axis=-1, dtype=dtype)      # NHWC
        y = bn(x)
        ty = tm(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
        assert_close(y, ty.detach().numpy().transpose(0, 2, 3, 1), dtype, **tol)
        assert_close(bn.running_var, tm.running_var.numpy(), dtype, **tol)


# -- BatchNorm against the reference --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_batchnorm_training_against_reference(rng, dtype):
    shape = (5, 3, 7)
    bn = cnorm.BatchNorm(3, eps=1e-4, momentum=0.25, dtype=dtype)
    _random_affine(bn, rng)
    rm, rv = np.zeros(3), np.ones(3)
    n = shape[0] * shape[2]
    for step in range(3):
        x = channel_data(rng, shape, dtype=dtype)
        y = bn(x)
        ry, mean, var, invstd = R.batch_norm_train(x, bn.weight, bn.bias, eps=1e-4)
        assert_close(y, ry, dtype)
        rm, rv = R.running_stats_update(rm, rv, mean, var, n, 0.25)
        assert_close(bn.running_mean, rm, dtype)
        assert_close(bn.running_var, rv, dtype)
        assert bn.num_batches_tracked == step + 1
        dy = rng.standard_normal(shape).astype(dtype)
        dx = bn.backward(dy)
        rdx, rdw, rdb = R.batch_norm_backward(dy, x, mean, invstd, bn.weight, training=True)
        assert_close(dx, rdx, dtype)
        assert_close(bn.weight_grad, rdw, dtype)
        assert_close(bn.bias_grad, rdb, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_batchnorm_eval_against_reference(rng, dtype):
    bn = cnorm.BatchNorm(4, eps=1e-3, dtype=dtype).eval()
    _random_affine(bn, rng)
    bn.running_mean[...] = rng.uniform(-2, 2, 4)
    bn.running_var[...] = rng.uniform(0.5, 3, 4)
    rm0, rv0, w0 = bn.running_mean.copy(), bn.running_var.copy(), bn.weight.copy()
    x = channel_data(rng, (6, 4, 3, 2), dtype=dtype)
    y = bn(x)
    assert_close(y, R.batch_norm_infer(x, rm0, rv0, bn.weight, bn.bias, eps=1e-3), dtype)
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_mean, rm0)     # eval leaves them alone
    # backward uses the statistics and weight as they were at the forward call
    bn.running_mean += 1.0
    bn.running_var *= 2.0
    bn.weight *= 3.0
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = bn.backward(dy)
    invstd = 1.0 / np.sqrt(rv0.astype(np.float64) + 1e-3)
    rdx, rdw, rdb = R.batch_norm_backward(dy, x, rm0, invstd, w0, training=False)
    assert_close(dx, rdx, dtype)
    assert_close(bn.weight_grad, rdw, dtype)
    assert_close(bn.bias_grad, rdb, dtype)


def test_batchnorm_cumulative_momentum_is_the_average(rng):
    bn = cnorm.BatchNorm(3, momentum=None, dtype=np.float64)
    means, variances = [], []
    for _ in range(5):
        x = channel_data(rng, (10, 3, 4))
        bn(x)
        _, mean, var, _ = R.batch_norm_train(x)
        means.append(mean)
        variances.append(var * 40 / 39)
    assert bn.num_batches_tracked == 5
    assert_close(bn.running_mean, np.mean(means, axis=0), np.float64)
    assert_close(bn.running_var, np.mean(variances, axis=0), np.float64)


def test_batchnorm_without_running_stats_uses_batch_statistics_in_eval(rng):
    bn = cnorm.BatchNorm(3, track_running_stats=False, dtype=np.float64)
    assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked is None
    assert list(bn.state_dict()) == ["weight", "bias"]
    bn.eval()
    x = channel_data(rng, (7, 3))
    ry, mean, _, invstd = R.batch_norm_train(x)
    assert_close(bn(x), ry, np.float64)
    dy = rng.standard_normal(x.shape)
    assert_close(bn.backward(dy), R.batch_norm_backward(dy, x, mean, invstd)[0], np.float64)
    assert bn.num_batches_tracked is None and bn.running_mean is None


def test_batchnorm_without_affine(rng):
    bn = cnorm.BatchNorm(3, affine=False, dtype=np.float64)
    assert bn.weight is None and bn.bias is None
    assert list(bn.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]
    x = channel_data(rng, (7, 3))
    assert_close(bn(x), R.batch_norm_train(x)[0], np.float64)
    bn.backward(np.ones_like(x))
    assert bn.weight_grad is None and bn.bias_grad is None


def test_batchnorm_initial_state():
    bn = cnorm.BatchNorm(5)
    assert bn.training is True
    assert bn.dtype == np.float32
    for name, value in [("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1)]:
        a = getattr(bn, name)
        assert a.dtype == np.float32 and a.shape == (5,), name
        np.testing.assert_array_equal(a, value, err_msg=name)
    assert bn.num_batches_tracked == 0 and type(bn.num_batches_tracked) is int
    assert bn.weight_grad is None and bn.bias_grad is None


def test_batchnorm_method_welford(rng):
    x = channel_data(rng, (9, 2, 11))
    a = cnorm.BatchNorm(2, dtype=np.float64)
    b = cnorm.BatchNorm(2, method="welford", dtype=np.float64)
    assert_close(b(x), a(x), np.float64)
    assert_close(b.running_var, a.running_var, np.float64)


def test_batchnorm_casts_input_to_layer_dtype(rng):
    bn = cnorm.BatchNorm(3, dtype=np.float32)
    x = channel_data(rng, (6, 3))
    y = bn(x)                                     # float64 data, float32 layer
    assert y.dtype == np.float32
    assert_close(y, R.batch_norm_train(x.astype(np.float32))[0], np.float32)
    assert bn.running_mean.dtype == np.float32
    assert bn.backward(np.ones(x.shape, dtype=np.float64)).dtype == np.float32
    yi = cnorm.BatchNorm(2, dtype=np.float64)(np.array([[1, 2], [3, 6]]))   # integers too
    assert_close(yi, R.batch_norm_train(np.array([[1.0, 2.0], [3.0, 6.0]]))[0], np.float64)
    assert bn.forward(x.tolist()).dtype == np.float32                       # lists too


def test_train_eval_return_self_and_check_mode():
    for layer in [cnorm.BatchNorm(2), cnorm.LayerNorm(2)]:
        assert layer.training is True
        assert layer.eval() is layer and layer.training is False
        assert layer.train() is layer and layer.training is True
        assert layer.train(False) is layer and layer.training is False
        with pytest.raises(TypeError, match="mode must be a bool"):
            layer.train(1)
        with pytest.raises(TypeError, match="mode must be a bool"):
            layer.train("eval")
        assert layer.training is False


# -- forward/backward errors ----------------------------------------------------------------------

def test_backward_before_forward_raises():
    for layer in [cnorm.BatchNorm(2), cnorm.LayerNorm(2)]:
        with pytest.raises(RuntimeError, match="forward"):
            layer.backward(np.ones((3, 2)))


def test_backward_checks_dy(rng):
    for layer in [cnorm.BatchNorm(2), cnorm.LayerNorm(2)]:
        layer(rng.standard_normal((4, 2)))
        with pytest.raises(ValueError, match=r"dy must have the shape .*\(4, 2\)"):
            layer.backward(np.ones((3, 2)))
        with pytest.raises(TypeError, match="dy must hold real numbers"):
            layer.backward(np.ones((4, 2), dtype=complex))
        assert layer.weight_grad is None


def test_batchnorm_forward_errors_change_nothing(rng):
    bn = cnorm.BatchNorm(3, momentum=None)
    bn(channel_data(rng, (4, 3)))
    state = bn.state_dict()
    saved = bn._saved
    bad = [
        (np.ones((4, 2)), ValueError, r"x must have 3 channels along axis 1, got shape \(4, 2\)"),
        (np.ones(3), ValueError, "x must have at least 2 dimensions"),
        (np.ones((1, 3)), ValueError, "more than 1 value per channel"),
        (np.ones((4, 3), dtype=complex), TypeError, "x must hold real numbers"),
        (np.array([["a"] * 3] * 4), TypeError, "x must hold real numbers"),
    ]
    for x, exc, match in bad:
        with pytest.raises(exc, match=match):
            bn(x)
        after = bn.state_dict()
        for key in state:
            np.testing.assert_array_equal(after[key], state[key], err_msg=key)
        assert bn._saved is saved
    assert bn.num_batches_tracked == 1


def test_batchnorm_one_value_per_channel_is_fine_in_eval():
    bn = cnorm.BatchNorm(3).eval()
    np.testing.assert_allclose(bn(np.ones((1, 3))), np.ones((1, 3)) / np.sqrt(1 + 1e-5), 1e-6)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(num_features=0), ValueError, "num_features must be a positive integer, got 0"),
    (dict(num_features=-3), ValueError, "num_features must be a positive integer"),
    (dict(num_features=2.0), TypeError, "num_features must be a positive integer, got float"),
    (dict(num_features=True), TypeError, "num_features must be a positive integer, got bool"),
    (dict(num_features="3"), TypeError, "num_features"),
    (dict(eps=-1e-5), ValueError, "eps must be finite and >= 0"),
    (dict(eps=float("inf")), ValueError, "eps must be finite and >= 0"),
    (dict(eps=float("nan")), ValueError, "eps must be finite and >= 0"),
    (dict(eps="small"), TypeError, "eps must be a real number"),
    (dict(momentum=1.5), ValueError, r"momentum must be in \[0, 1\]"),
    (dict(momentum=-0.1), ValueError, r"momentum must be in \[0, 1\]"),
    (dict(momentum="fast"), TypeError, "momentum must be a real number"),
    (dict(affine=1), TypeError, "affine must be a bool"),
    (dict(track_running_stats=None), TypeError, "track_running_stats must be a bool"),
    (dict(axis=1.0), TypeError, "axis must be an integer"),
    (dict(method="fast"), ValueError, "method must be None, 'two_pass' or 'welford'"),
    (dict(dtype=np.complex64), TypeError, "dtype must be float32, float64, float16 or bfloat16, got complex64"),
    (dict(dtype=np.int64), TypeError, "dtype must be float32, float64, float16 or bfloat16"),
    (dict(dtype=None), TypeError, "dtype must be float32, float64, float16 or bfloat16"),
    (dict(dtype="nonsense"), TypeError, "dtype must be float32, float64, float16 or bfloat16"),
])
def test_batchnorm_constructor_errors(kwargs, exc, match):
    kwargs = {"num_features": 3, **kwargs}
    with pytest.raises(exc, match=match):
        cnorm.BatchNorm(**kwargs)


def test_batchnorm_constructor_accepts():
    bn = cnorm.BatchNorm(np.int64(4), eps=0, momentum=None, axis=np.int32(-1), method="welford",
                         dtype="float64")
    assert bn.num_features == 4 and type(bn.num_features) is int
    assert bn.dtype == np.float64 and bn.eps == 0.0 and bn.momentum is None
    assert cnorm.BatchNorm(2, momentum=0).momentum == 0.0
    assert cnorm.BatchNorm(2, momentum=1).momentum == 1.0
    assert "BatchNorm(4" in repr(bn)


@pytest.mark.parametrize("args, kwargs, exc, match", [
    ((0,), {}, ValueError, "normalized_shape must be a positive integer, got 0"),
    (((3, 0),), {}, ValueError, r"normalized_shape must hold positive ints, got \(3, 0\)"),
    (((),), {}, ValueError, "normalized_shape must have at least one dimension"),
    ((2.0,), {}, TypeError, "normalized_shape must be an int or a tuple of ints"),
    (((2, 1.5),), {}, TypeError, "normalized_shape must hold ints"),
    ((True,), {}, TypeError, "normalized_shape must be an int or a tuple of ints, got bool"),
    ((None,), {}, TypeError, "normalized_shape must be an int or a tuple of ints"),
    ((3,), dict(eps=-1.0), ValueError, "eps must be finite and >= 0"),
    ((3,), dict(elementwise_affine="yes"), TypeError, "elementwise_affine must be a bool"),
    ((3,), dict(bias=0), TypeError, "bias must be a bool"),
    ((3,), dict(method="other"), ValueError, "method must be None"),
    ((3,), dict(dtype=np.complex128), TypeError, "dtype must be float32, float64, float16 or bfloat16"),
])
def test_layernorm_constructor_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cnorm.LayerNorm(*args, **kwargs)


# -- state_dict / load_state_dict -----------------------------------------------------------------

def test_state_dict_returns_copies():
    bn = cnorm.BatchNorm(3)
    sd = bn.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert sd["num_batches_tracked"].shape == () and sd["num_batches_tracked"].dtype == np.int64
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    for key in sd:
        sd[key][...] = 7
    np.testing.assert_array_equal(bn.weight, 1.0)
    np.testing.assert_array_equal(bn.running_mean, 0.0)
    assert bn.num_batches_tracked == 0
    ln = cnorm.LayerNorm((2, 3), dtype=np.float64)
    sd = ln.state_dict()
    assert list(sd) == ["weight", "bias"] and sd["weight"].shape == (2, 3)
    sd["weight"][...] = 5
    np.testing.assert_array_equal(ln.weight, 1.0)
    assert list(cnorm.LayerNorm(3, bias=False).state_dict()) == ["weight"]
    assert cnorm.LayerNorm(3, elementwise_affine=False).state_dict() == {}


def test_load_state_dict_copies_and_casts():
    bn = cnorm.BatchNorm(2, dtype=np.float32)
    src = {"weight": np.array([2.0, 3.0]), "bias": [1, 2], "running_mean": np.array([0.5, 1.5]),
           "running_var": np.array([4.0, 9.0], dtype=np.float32),
           "num_batches_tracked": np.array(7, dtype=np.int64)}
    assert bn.load_state_dict(src) == ([], [])
    assert bn.weight.dtype == np.float32 and bn.bias.dtype == np.float32
    np.testing.assert_array_equal(bn.bias, [1.0, 2.0])
    assert bn.num_batches_tracked == 7 and type(bn.num_batches_tracked) is int
    src["running_var"][0] = -1.0
    src["weight"][0] = -1.0
    np.testing.assert_array_equal(bn.running_var, [4.0, 9.0])
    np.testing.assert_array_equal(bn.weight, [2.0, 3.0])
    bn.load_state_dict({**src, "num_batches_tracked": 3})
    assert bn.num_batches_tracked == 3


class _ArrayLike:
    def __init__(self, a):
        self.a = np.asarray(a)

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)


class _HasNumpy:
    def __init__(self, a):
        self.a = np.asarray(a)

    def numpy(self):
        return self.a


def test_load_state_dict_accepts_array_likes():
    ln = cnorm.LayerNorm(2, dtype=np.float64)
    ln.load_state_dict({"weight": _ArrayLike([3.0, 4.0]), "bias": _HasNumpy([5.0, 6.0])})
    np.testing.assert_array_equal(ln.weight, [3.0, 4.0])
    np.testing.assert_array_equal(ln.bias, [5.0, 6.0])


def _assert_unchanged(layer, before):
    after = layer.state_dict()
    assert list(after) == list(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_load_state_dict_errors_leave_layer_unchanged():
    bn = cnorm.BatchNorm(3)
    good = {"weight": np.full(3, 2.0), "bias": np.full(3, 3.0), "running_mean": np.full(3, 4.0),
            "running_var": np.full(3, 5.0), "num_batches_tracked": np.array(6)}
    before = bn.state_dict()
    cases = [
        ({k: v for k, v in good.items() if k != "running_var"}, True, KeyError,
         r"missing keys \['running_var'\]"),
        ({**good, "extra": np.ones(3)}, True, KeyError, r"unexpected keys \['extra'\]"),
        ({**good, "running_var": np.ones(4)}, True, ValueError,
         r"state_dict\['running_var'\] must have shape \(3,\), got \(4,\)"),
        ({**good, "running_var": np.ones(4)}, False, ValueError, "running_var"),
        ({**good, "extra": 1, "running_mean": np.ones((3, 1))}, False, ValueError,
         "running_mean"),
        ({**good, "num_batches_tracked": np.array([6])}, True, ValueError,
         r"num_batches_tracked'\] must have shape \(\)"),
        ({**good, "num_batches_tracked": -1}, True, ValueError, "non-negative integer"),
        ({**good, "num_batches_tracked": 2.5}, True, ValueError, "non-negative integer"),
        ({**good, "bias": np.array(["a", "b", "c"])}, True, TypeError,
         r"state_dict\['bias'\] must hold real numbers"),
        ([("weight", np.ones(3))], True, TypeError, "state_dict must be a mapping"),
    ]
    for sd, strict, exc, match in cases:
        with pytest.raises(exc, match=match):
            bn.load_state_dict(sd, strict=strict)
        _assert_unchanged(bn, before)


def test_load_state_dict_non_strict():
    bn = cnorm.BatchNorm(2)
    result = bn.load_state_dict({"weight": [3.0, 4.0], "other": 1}, strict=False)
    assert result.missing_keys == ["bias", "running_mean", "running_var", "num_batches_tracked"]
    assert result.unexpected_keys == ["other"]
    np.testing.assert_array_equal(bn.weight, [3.0, 4.0])
    np.testing.assert_array_equal(bn.bias, [0.0, 0.0])
    with pytest.raises(TypeError, match="strict must be a bool"):
        bn.load_state_dict({}, strict="no")


@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_load_state_dict_from_torch_batchnorm(torch, rng, affine, track):
    tm = torch.nn.BatchNorm1d(4, affine=affine, track_running_stats=track)
    for _ in range(3):
        tm(torch.randn(8, 4, generator=torch.Generator().manual_seed(1)) * 2 + 1)
    if affine:
        with torch.no_grad():
            tm.weight.mul_(3)
            tm.bias.add_(1)
    bn = cnorm.BatchNorm(4, affine=affine, track_running_stats=track)
    bn.load_state_dict(tm.state_dict())
    tsd = tm.state_dict()
    assert list(bn.state_dict()) == list(tsd)
    for key, value in tsd.items():
        np.testing.assert_array_equal(bn.state_dict()[key], value.numpy(), err_msg=key)
    if track:
        assert bn.num_batches_tracked == 3
    # the other way: torch loads cnorm's state_dict
    tm2 = torch.nn.BatchNorm1d(4, affine=affine, track_running_stats=track)
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in bn.state_dict().items()})
    tm.eval()
    tm2.eval()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(tm2(x).detach().numpy(), tm(x).detach().numpy())
    # and a torch tensor that requires grad and holds float64
    if affine:
        w = torch.ones(4, dtype=torch.float64, requires_grad=True)
        bn.load_state_dict({**tsd, "weight": w * 2})
        np.testing.assert_array_equal(bn.weight, 2.0)
        assert bn.weight.dtype == np.float32


def test_load_state_dict_from_torch_layernorm(torch):
    tm = torch.nn.LayerNorm((3, 4), bias=False)
    with torch.no_grad():
        tm.weight.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(0))
    ln = cnorm.LayerNorm((3, 4), bias=False)
    ln.load_state_dict(tm.state_dict())
    np.testing.assert_array_equal(ln.weight, tm.weight.detach().numpy())
    with pytest.raises(KeyError, match="unexpected keys"):
        cnorm.LayerNorm((3, 4), elementwise_affine=False).load_state_dict(tm.state_dict())
    with pytest.raises(ValueError, match=r"must have shape \(12,\)"):
        cnorm.LayerNorm(12, bias=False).load_state_dict(tm.state_dict())


# -- LayerNorm ------------------------------------------------------------------------------------

LN_CASES = [
    ("2d", (6, 8), 8),
    ("3d", (2, 5, 7), 7),
    ("3d-two-dims", (2, 5, 7), (5, 7)),
    ("4d", (2, 3, 4, 5), (4, 5)),
    ("all-dims", (3, 4), (3, 4)),
]
LN_FLAGS = [("affine", True, True), ("no-bias", True, False), ("plain", False, True)]


@pytest.mark.parametrize("flags", LN_FLAGS, ids=[f[0] for f in LN_FLAGS])
@pytest.mark.parametrize("case", LN_CASES, ids=[c[0] for c in LN_CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_layernorm_matches_torch(torch, rng, dtype, case, flags):
    _, shape, ns = case
    _, affine, with_bias = flags
    tm = torch.nn.LayerNorm(ns, eps=1e-4, elementwise_affine=affine, bias=with_bias,
                            dtype=_torch_dtype(torch, dtype))
    ln = cnorm.LayerNorm(ns, eps=1e-4, elementwise_affine=affine, bias=with_bias, dtype=dtype)
    _random_affine(ln, rng)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in ln.state_dict().items()})
    assert list(ln.state_dict()) == list(tm.state_dict())
    tol = TORCH_TOL[dtype]
    for mode in [True, False]:
        ln.train(mode)
        tm.train(mode)
        x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        tx = torch.tensor(x, requires_grad=True)
        tm.zero_grad(set_to_none=True)
        ty = tm(tx)
        ty.backward(torch.from_numpy(dy))
        y = ln(x)
        dx = ln.backward(dy)
        assert y.dtype == dtype and dx.dtype == dtype
        assert_close(y, ty.detach().numpy(), dtype, **tol)
        assert_close(dx, tx.grad.numpy(), dtype, **tol)
        if affine:
            assert_close(ln.weight_grad, tm.weight.grad.numpy(), dtype, **tol)
        else:
            assert ln.weight_grad is None
        if affine and with_bias:
            assert_close(ln.bias_grad, tm.bias.grad.numpy(), dtype, **tol)
        else:
            assert ln.bias_grad is None


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_layernorm_against_reference(rng, dtype):
    ln = cnorm.LayerNorm((3, 4), eps=1e-3, dtype=dtype)
    _random_affine(ln, rng)
    x = (rng.standard_normal((2, 5, 3, 4)) * 3 - 1).astype(dtype)
    ry, mean, rstd = R.layer_norm(x, (3, 4), ln.weight, ln.bias, eps=1e-3)
    assert_close(ln(x), ry, dtype)
    w0 = ln.weight.copy()
    ln.weight *= 2                       # backward uses the weight of the forward call
    dy = rng.standard_normal(x.shape).astype(dtype)
    rdx, rdw, rdb = R.layer_norm_backward(dy, x, mean, rstd, w0)
    assert_close(ln.backward(dy), rdx, dtype)
    assert_close(ln.weight_grad, rdw, dtype)
    assert_close(ln.bias_grad, rdb, dtype)
    assert ln.weight_grad.shape == (3, 4)


def test_layernorm_flags_and_initial_state(rng):
    ln = cnorm.LayerNorm([4, 2], dtype=np.float64)
    assert ln.normalized_shape == (4, 2) and ln.training is True
    np.testing.assert_array_equal(ln.weight, np.ones((4, 2)))
    np.testing.assert_array_equal(ln.bias, np.zeros((4, 2)))
    nb = cnorm.LayerNorm(3, bias=False)
    assert nb.weight is not None and nb.bias is None and nb.weight.dtype == np.float32
    plain = cnorm.LayerNorm(3, elementwise_affine=False, bias=True)
    assert plain.weight is None and plain.bias is None
    x = rng.standard_normal((5, 3))
    assert_close(plain(x), R.layer_norm(x.astype(np.float32), 3)[0], np.float32)
    assert plain(x).dtype == np.float32
    assert "LayerNorm((3,)" in repr(plain)


def test_layernorm_forward_errors(rng):
    ln = cnorm.LayerNorm((3, 4))
    ln(rng.standard_normal((2, 3, 4)))
    saved = ln._saved
    for x in [np.ones((3, 5)), np.ones(4), np.ones((2, 4, 3))]:
        with pytest.raises(ValueError, match=r"x must end with the dimensions normalized_shape "
                                             r"\(3, 4\)"):
            ln(x)
    with pytest.raises(TypeError, match="x must hold real numbers"):
        ln(np.ones((3, 4), dtype=complex))
    assert ln._saved is saved


# -- fold_batch_norm ------------------------------------------------------------------------------

def _eval_bn(rng, c, dtype=np.float64, eps=1e-5):
    bn = cnorm.BatchNorm(c, eps=eps, dtype=dtype).eval()
    _random_affine(bn, rng)
    bn.running_mean[...] = rng.uniform(-1, 1, c)
    bn.running_var[...] = rng.uniform(0.3, 2, c)
    return bn


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_fold_linear(rng, dtype):
    w = rng.standard_normal((6, 5)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    bn = _eval_bn(rng, 6, dtype, eps=1e-3)
    w0, b0 = w.copy(), b.copy()
    fw, fb = cnorm.fold_batch_norm(w, b, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                   eps=1e-3)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(b, b0)
    assert fw.dtype == dtype and fb.dtype == dtype and fw.shape == (6, 5) and fb.shape == (6,)
    x = rng.standard_normal((10, 5)).astype(dtype)
    assert_close(x @ fw.T + fb, bn(x @ w.T + b), dtype, rtol=1e-5 if dtype == np.float32 else None)


def test_fold_defaults(rng):
    w = rng.standard_normal((3, 4))
    rm, rv = rng.uniform(-1, 1, 3), rng.uniform(0.5, 2, 3)
    fw, fb = cnorm.fold_batch_norm(w, None, None, None, rm, rv, eps=0.0)
    s = 1.0 / np.sqrt(rv)
    np.testing.assert_allclose(fw, w * s[:, None], rtol=1e-15)
    np.testing.assert_allclose(fb, -rm * s, rtol=1e-15)
    bn = cnorm.BatchNorm(3, affine=False, eps=0.0, dtype=np.float64).eval()
    bn.running_mean[...], bn.running_var[...] = rm, rv
    x = rng.standard_normal((7, 4))
    assert_close(x @ fw.T + fb, bn(x @ w.T), np.float64)


def test_fold_conv_1x1_numpy(rng):
    # a 1x1 convolution is a matmul over the channel axis
    w = rng.standard_normal((5, 3, 1, 1))
    b = rng.standard_normal(5)
    bn = _eval_bn(rng, 5)
    fw, fb = cnorm.fold_batch_norm(w, b, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    assert fw.shape == w.shape
    x = rng.standard_normal((2, 3, 4, 6))

    def conv1x1(x, w, b):
        return np.einsum("oi,nihw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]

    assert_close(conv1x1(x, fw, fb), bn(conv1x1(x, w, b)), np.float64)


@pytest.mark.parametrize("groups", [1, 2])
def test_fold_conv2d_torch(torch, rng, groups):
    F = torch.nn.functional
    w = rng.standard_normal((4, 6 // groups, 3, 3))
    b = rng.standard_normal(4)
    bn = _eval_bn(rng, 4, eps=1e-3)
    fw, fb = cnorm.fold_batch_norm(w, b, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                   eps=1e-3)
    x = torch.from_numpy(rng.standard_normal((2, 6, 7, 8)))
    T = torch.from_numpy
    z = F.conv2d(x, T(w), T(b), padding=1, groups=groups).numpy()
    folded = F.conv2d(x, T(fw), T(fb), padding=1, groups=groups).numpy()
    assert_close(folded, bn(z), np.float64)
    ref = F.batch_norm(T(z), T(bn.running_mean), T(bn.running_var), T(bn.weight), T(bn.bias),
                       False, 0.0, 1e-3).numpy()
    assert_close(folded, ref, np.float64)


@pytest.mark.parametrize("args, exc, match", [
    (dict(weight=np.ones(4)), ValueError, r"weight must have shape \(out, in\)"),
    (dict(weight=np.ones((4, 2), dtype=int)), TypeError, "weight must have dtype float32"),
    (dict(bias=np.ones(3)), ValueError, r"bias must have shape \(4,\), got \(3,\)"),
    (dict(bn_weight=np.ones(5)), ValueError, r"bn_weight must have shape \(4,\)"),
    (dict(bn_bias=np.ones((4, 1))), ValueError, r"bn_bias must have shape \(4,\)"),
    (dict(running_mean=np.ones(2)), ValueError, r"running_mean must have shape \(4,\)"),
    (dict(running_var=np.ones(8)), ValueError, r"running_var must have shape \(4,\)"),
    (dict(running_var=None), ValueError, "running_mean and running_var are required"),
    (dict(running_mean=["a"] * 4), TypeError, "running_mean must hold real numbers"),
    (dict(eps=-1.0), ValueError, "eps must be finite and >= 0"),
])
def test_fold_errors(args, exc, match):
    kw = dict(weight=np.ones((4, 2)), bias=np.zeros(4), bn_weight=np.ones(4), bn_bias=np.zeros(4),
              running_mean=np.zeros(4), running_var=np.ones(4), eps=1e-5)
    kw.update(args)
    with pytest.raises(exc, match=match):
        cnorm.fold_batch_norm(**kw)


# -- package surface and docs ---------------------------------------------------------------------

def test_exported():
    for name in ["BatchNorm", "LayerNorm", "fold_batch_norm"]:
        assert name in cnorm.__all__
        assert getattr(cnorm, name) is getattr(cnorm.layers, name)


def test_docstrings():
    for obj in [cnorm.BatchNorm, cnorm.LayerNorm, cnorm.fold_batch_norm]:
        doc = obj.__doc__
        for section in ["Parameters", "Raises", "Examples"]:
            assert f"\n    {section}\n    ---" in doc, (obj.__name__, section)
    bn_doc = cnorm.BatchNorm.__doc__
    assert "momentum_keras = 1 - momentum" in bn_doc
    assert "unbiased" in bn_doc and "biased batch variance" in bn_doc
    for method in ["forward", "backward", "train", "eval", "state_dict", "load_state_dict"]:
        assert getattr(cnorm.BatchNorm, method).__doc__, method
        assert getattr(cnorm.LayerNorm, method).__doc__, method
    assert "RuntimeError" in cnorm.BatchNorm.backward.__doc__
    assert "RuntimeError" in cnorm.LayerNorm.backward.__doc__


def test_doctests():
    result = doctest.testmod(cnorm.layers, verbose=False, report=True)
    assert result.attempted > 0, "cnorm.layers has no doctest examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


# ---------------------------------------------------------------------------
# The layers' common calls take the functions' C fast paths, with the same results and
# the same saved state for backward as the general path
# ---------------------------------------------------------------------------

def _layer_cases():
    yield "LayerNorm", lambda dt: cnorm.LayerNorm(24, dtype=dt), (3, 5, 24), False
    yield "LayerNorm residual", lambda dt: cnorm.LayerNorm(24, dtype=dt), (3, 5, 24), True
    yield "RMSNorm", lambda dt: cnorm.RMSNorm(24, dtype=dt), (6, 24), False
    yield "RMSNorm residual", lambda dt: cnorm.RMSNorm(24, dtype=dt), (6, 24), True
    yield "GroupNorm", lambda dt: cnorm.GroupNorm(2, 6, dtype=dt), (2, 6, 4, 5), False
    yield "GroupNorm channels last", lambda dt: cnorm.GroupNorm(3, 6, axis=-1, dtype=dt), \
        (2, 4, 5, 6), False
    yield "InstanceNorm", lambda dt: cnorm.InstanceNorm(6, affine=True, dtype=dt), \
        (2, 6, 4, 5), False
    yield "BatchNorm training", lambda dt: cnorm.BatchNorm(6, dtype=dt), (4, 6, 3, 5), False
    yield "BatchNorm inference", lambda dt: cnorm.BatchNorm(6, dtype=dt).eval(), \
        (4, 6, 3, 5), False
    yield "BatchNorm no running statistics", \
        lambda dt: cnorm.BatchNorm(6, track_running_stats=False, dtype=dt), (4, 6, 3, 5), False
    yield "BatchNorm momentum None", lambda dt: cnorm.BatchNorm(6, momentum=None, dtype=dt), \
        (4, 6, 3, 5), False


LAYER_CASES = list(_layer_cases())


@pytest.mark.parametrize("dt", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("name,make,shape,residual", LAYER_CASES,
                         ids=[c[0] for c in LAYER_CASES])
def test_layers_common_calls_take_the_fast_paths(rng, monkeypatch, name, make, shape,
                                                 residual, dt):
    """A layer called with a C-contiguous ndarray of its dtype runs the functions' fast
    paths: the same output, running statistics, counter and gradients (backward runs
    from the saved state) as the same call on a Fortran-ordered copy of x, which the fast
    paths leave to the general one."""
    import cnorm.addnorm
    import cnorm.batchnorm
    import cnorm.groupnorm
    import cnorm.layernorm
    import cnorm.rmsnorm
    from conftest import count_general
    fast_layer, slow_layer = make(dt), make(dt)
    for key, v in fast_layer.state_dict().items():     # parameters that are not ones/zeros
        if key in ("weight", "bias", "running_mean", "running_var"):
            v = rng.uniform(0.5, 1.5, v.shape).astype(v.dtype)
            fast_layer.load_state_dict({key: v}, strict=False)
            slow_layer.load_state_dict({key: v}, strict=False)
    general = count_general(monkeypatch, cnorm.layernorm, cnorm.rmsnorm, cnorm.addnorm,
                            cnorm.batchnorm, cnorm.groupnorm)
    for step in range(2):      # twice: the running statistics and the counter move on
        x = (rng.standard_normal(shape) * 2 + 0.5).astype(dt)
        r = rng.standard_normal(shape).astype(dt) if residual else None
        dy = rng.standard_normal(shape).astype(dt)
        n = len(general)
        got = fast_layer(x, r) if residual else fast_layer(x)
        assert len(general) == n, f"{name}: the common call should take the fast path"
        fx = np.asfortranarray(x)
        want = slow_layer(fx, None if r is None else np.asfortranarray(r)) if residual \
            else slow_layer(fx)
        assert len(general) > n, f"{name}: a Fortran-ordered x should take the general path"
        for g, w in zip(got if residual else (got,), want if residual else (want,)):
            assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes(), \
                name
        for key, v in slow_layer.state_dict().items():
            assert np.array_equal(fast_layer.state_dict()[key], v, equal_nan=True), (name, key)
        dx_fast, dx_slow = fast_layer.backward(dy), slow_layer.backward(dy)
        assert dx_fast.tobytes() == dx_slow.tobytes(), name
        for attr in ("weight_grad", "bias_grad"):
            a, b = getattr(fast_layer, attr, None), getattr(slow_layer, attr, None)
            assert (a is None) == (b is None), (name, attr)
            if a is not None:
                assert a.tobytes() == b.tobytes(), (name, attr)
    # the saved weight is a copy: changing the layer's weight after forward does not
    # change the gradient of that forward
    if fast_layer.weight is not None:
        x = rng.standard_normal(shape).astype(dt)
        fast_layer(x, x.copy()) if residual else fast_layer(x)
        dx = fast_layer.backward(dy)
        fast_layer(x, x.copy()) if residual else fast_layer(x)
        fast_layer.weight *= 2
        assert fast_layer.backward(dy).tobytes() == dx.tobytes(), name
