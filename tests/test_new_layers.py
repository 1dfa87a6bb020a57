"""GroupNorm, InstanceNorm and RMSNorm: modes, state_dict, backward, and torch's modules."""

import numpy as np
import pytest

import cnorm
from cnorm import _reference as R


@pytest.fixture
def torch():
    t = pytest.importorskip("torch")
    t.manual_seed(0)
    return t


def test_group_norm_layer_forward_backward_and_state(rng):
    gn = cnorm.GroupNorm(2, 6, dtype=np.float64)
    gn.weight[:] = rng.uniform(0.5, 2, 6)
    gn.bias[:] = rng.uniform(-1, 1, 6)
    x = rng.standard_normal((3, 6, 4, 5))
    y = gn(x)
    want = R.group_norm(x, 2, gn.weight, gn.bias)
    np.testing.assert_allclose(y, want[0], rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    dx = gn.backward(dy)
    rdx, rdw, rdb = R.group_norm_backward(dy, x, want[1], want[2], gn.weight)
    np.testing.assert_allclose(dx, rdx, atol=1e-11)
    np.testing.assert_allclose(gn.weight_grad, rdw, atol=1e-11)
    np.testing.assert_allclose(gn.bias_grad, rdb, atol=1e-11)
    assert list(gn.state_dict()) == ["weight", "bias"]
    assert list(cnorm.GroupNorm(2, 6, affine=False).state_dict()) == []
    assert np.array_equal(gn.eval()(x), y)                    # no running statistics
    assert "GroupNorm(2, 6" in repr(gn)


def test_group_norm_layer_channels_last(rng):
    x = rng.standard_normal((2, 5, 5, 8)).astype(np.float32)
    y = cnorm.GroupNorm(4, 8, axis=-1)(x)
    want = cnorm.GroupNorm(4, 8)(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y.transpose(0, 3, 1, 2), want, atol=1e-5)


def test_instance_norm_layer_modes(rng):
    x = rng.standard_normal((4, 3, 10)) * 2 + 1
    plain = cnorm.InstanceNorm(3, dtype=np.float64)
    assert plain.state_dict() == {}
    np.testing.assert_allclose(plain(x), R.instance_norm(x)[0], atol=1e-12)
    np.testing.assert_allclose(plain.eval()(x), R.instance_norm(x)[0], atol=1e-12)   # no stats
    tracked = cnorm.InstanceNorm(3, affine=True, track_running_stats=True, momentum=0.5,
                                 dtype=np.float64)
    assert list(tracked.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                          "num_batches_tracked"]
    tracked(x)
    per = x.mean(axis=2)
    np.testing.assert_allclose(tracked.running_mean, 0.5 * per.mean(0), atol=1e-12)
    np.testing.assert_allclose(tracked.running_var, 0.5 + 0.5 * x.var(axis=2, ddof=1).mean(0),
                               atol=1e-12)
    tracked.eval()
    y = tracked(x)
    want = R.batch_norm_infer(x, tracked.running_mean, tracked.running_var)
    np.testing.assert_allclose(y, want, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    dx = tracked.backward(dy)                                 # statistics are constants
    np.testing.assert_allclose(dx, dy / np.sqrt(tracked.running_var + 1e-5)[:, None], atol=1e-12)


def test_rms_norm_layer(rng):
    layer = cnorm.RMSNorm((4, 6), dtype=np.float64)
    layer.weight[:] = rng.uniform(0.5, 2, (4, 6))
    x = rng.standard_normal((3, 4, 6))
    y = layer(x)
    want, rstd = R.rms_norm(x, (4, 6), layer.weight)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    rdx, rdw = R.rms_norm_backward(dy, x, rstd, layer.weight)
    np.testing.assert_allclose(dx, rdx, atol=1e-11)
    np.testing.assert_allclose(layer.weight_grad, rdw, atol=1e-11)
    assert list(layer.state_dict()) == ["weight"]
    assert cnorm.RMSNorm(6, elementwise_affine=False).state_dict() == {}


def test_backward_before_forward_raises():
    for layer in (cnorm.GroupNorm(1, 2), cnorm.InstanceNorm(2), cnorm.RMSNorm(2)):
        with pytest.raises(RuntimeError, match="forward call first"):
            layer.backward(np.ones((2, 2, 3), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rms_norm_default_eps_is_the_dtype_epsilon(rng, dtype):
    x = (rng.standard_normal((2, 8)) * 1e-5).astype(dtype)
    y = cnorm.rms_norm(x, 8)
    eps = float(np.finfo(dtype).eps)
    np.testing.assert_allclose(y, R.rms_norm(x, 8, eps=eps)[0], rtol=1e-5)
    assert not np.allclose(y, R.rms_norm(x, 8, eps=1e-5)[0], rtol=1e-3)


def test_modules_match_torch(torch, rng):
    x = (rng.standard_normal((4, 32, 6, 6)) * 3 + 1).astype(np.float32)
    tx = torch.from_numpy(x)
    tg = torch.nn.GroupNorm(8, 32)
    with torch.no_grad():
        tg.weight.uniform_(0.5, 2)
        tg.bias.uniform_(-1, 1)
    g = cnorm.GroupNorm(8, 32)
    g.load_state_dict(tg.state_dict())
    np.testing.assert_allclose(g(x), tg(tx).detach().numpy(), atol=2e-5)
    ti = torch.nn.InstanceNorm2d(32, affine=True, track_running_stats=True)
    i = cnorm.InstanceNorm(32, affine=True, track_running_stats=True)
    i.load_state_dict(ti.state_dict())
    np.testing.assert_allclose(i(x), ti(tx).detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(i.running_mean, ti.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(i.running_var, ti.running_var.numpy(), atol=1e-5)
    assert i.num_batches_tracked == int(ti.num_batches_tracked)
    i.eval()
    ti.eval()
    np.testing.assert_allclose(i(x), ti(tx).detach().numpy(), atol=2e-5)
    tr = torch.nn.RMSNorm(36)
    r = cnorm.RMSNorm(36)
    r.load_state_dict(tr.state_dict())
    h = x.reshape(4, 32, 36)
    np.testing.assert_allclose(r(h), tr(torch.from_numpy(h)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


def test_functions_match_torch(torch, rng):
    F = torch.nn.functional
    x = (rng.standard_normal((3, 16, 5, 7)) * 2 + 3).astype(np.float32)
    w = rng.uniform(0.5, 2, 16).astype(np.float32)
    b = rng.uniform(-1, 1, 16).astype(np.float32)
    tx, tw, tb = (torch.from_numpy(a).requires_grad_(True) for a in (x, w, b))
    ty = F.group_norm(tx, 4, tw, tb)
    np.testing.assert_allclose(cnorm.group_norm(x, 4, w, b, activation="silu"),
                               F.silu(ty).detach().numpy(), atol=3e-5)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ty.backward(torch.from_numpy(dy))
    f = cnorm.group_norm_forward(x, 4, w, b)
    g = cnorm.group_norm_backward(dy, x, f.mean, f.rstd, w)
    for got, want in zip(g, (tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(got, want.numpy(), atol=5e-5, rtol=1e-4)
    rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
    trm, trv = torch.zeros(16), torch.ones(16)
    y = cnorm.instance_norm(x, w, b, rm, rv, momentum=0.3)
    ty = F.instance_norm(torch.from_numpy(x), trm, trv, torch.from_numpy(w), torch.from_numpy(b),
                         use_input_stats=True, momentum=0.3)
    np.testing.assert_allclose(y, ty.numpy(), atol=3e-5)
    np.testing.assert_allclose(rm, trm.numpy(), atol=1e-6)
    np.testing.assert_allclose(rv, trv.numpy(), atol=1e-5)
    h = rng.standard_normal((6, 64)).astype(np.float32)
    th = torch.from_numpy(h).requires_grad_(True)
    ty = F.rms_norm(th, (64,))
    np.testing.assert_allclose(cnorm.rms_norm(h, 64), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    dh = rng.standard_normal(h.shape).astype(np.float32)
    ty.backward(torch.from_numpy(dh))
    f = cnorm.rms_norm_forward(h, 64)
    np.testing.assert_allclose(cnorm.rms_norm_backward(dh, h, f.rstd).dx, th.grad.numpy(),
                               rtol=1e-4, atol=1e-5)
