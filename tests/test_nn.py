"""Modules, parameter registration, state dicts and initializers."""
import numpy as np
import pytest

import spad
import spad.functional as F
import spad.init as I
import spad.nn as nn


def test_parameters_in_registration_order():
    m = nn.Sequential(nn.Linear(3, 4, seed=0), nn.ReLU(), nn.Linear(4, 2, bias=False, seed=1))
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight"]
    assert [p.shape for p in m.parameters()] == [(3, 4), (4,), (4, 2)]
    assert all(p.requires_grad and p._is_param for p in m.parameters())
    assert len(m.children()) == 3 and len(m) == 3 and isinstance(m[1], nn.ReLU)


def test_custom_module_and_shared_parameter():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(2, 3, seed=0)
            self.scale = spad.ones(3, requires_grad=True)
            self.tied = self.enc  # the same module twice: its parameters are listed once

        def forward(self, x):
            return self.enc(x) * self.scale

    net = Net()
    assert [n for n, _ in net.named_parameters()] == ["scale", "enc.weight", "enc.bias"]
    out = net(spad.ones((5, 2)))
    assert out.shape == (5, 3)


def test_linear_uses_fused_op_and_layout():
    lin = nn.Linear(5, 3, seed=0)
    x = spad.tensor(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32))
    y = lin(x)
    assert "linear" in str(y.grad_fn).lower()
    np.testing.assert_allclose(y.numpy(), x.numpy() @ lin.weight.numpy() + lin.bias.numpy(), rtol=1e-5)
    y.sum().backward()
    assert lin.weight.grad.shape == (5, 3) and lin.bias.grad.shape == (3,)


def test_train_eval_propagate_and_zero_grad():
    m = nn.Sequential(nn.Linear(2, 2, seed=0), nn.Sequential(nn.Tanh(), nn.Sigmoid()))
    m.eval()
    assert not m.training and not m[1][0].training
    m.train()
    assert m[1][1].training
    F.mse_loss(m(spad.ones((1, 2))), np.zeros((1, 2), np.float32)).backward()
    assert m[0].weight.grad is not None
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_seeded_models_are_reproducible():
    a, b = nn.mlp([8, 16, 4], seed=3), nn.mlp([8, 16, 4], seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    c = nn.mlp([8, 16, 4], seed=4)
    assert not np.array_equal(a[0].weight.numpy(), c[0].weight.numpy())
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    np.testing.assert_array_equal(nn.Linear(3, 3, seed=g1).weight.numpy(), nn.Linear(3, 3, seed=g2).weight.numpy())


def test_state_dict_round_trip(tmp_path):
    a, b = nn.mlp([6, 5, 3], seed=0), nn.mlp([6, 5, 3], seed=1)
    x = spad.ones((2, 6))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    sd = a.state_dict()
    sd["0.weight"][...] = 0  # a copy: editing it does not touch the model
    assert np.any(a[0].weight.numpy() != 0)
    path = tmp_path / "m.npz"
    a.save(str(path))
    c = nn.mlp([6, 5, 3], seed=9)
    c.load(str(path))
    np.testing.assert_array_equal(a(x).numpy(), c(x).numpy())


def test_load_state_dict_bumps_version_and_keeps_identity():
    m = nn.Linear(2, 2, seed=0)
    w, v0 = m.weight, m.weight._version
    m.load_state_dict({"weight": np.ones((2, 2), np.float32), "bias": np.zeros(2, np.float32)})
    assert m.weight is w and w._version > v0
    np.testing.assert_array_equal(w.numpy(), 1)


def test_load_state_dict_errors():
    m = nn.Linear(2, 3, seed=0)
    good = m.state_dict()
    with pytest.raises(ValueError, match="shape"):
        m.load_state_dict({**good, "weight": np.zeros((3, 2), np.float32)})
    with pytest.raises(TypeError, match="dtype"):
        m.load_state_dict({**good, "weight": np.zeros((2, 3), np.float64)})
    with pytest.raises(KeyError, match="missing"):
        m.load_state_dict({"weight": good["weight"]})
    with pytest.raises(KeyError, match="unexpected"):
        m.load_state_dict({**good, "extra": np.zeros(1)})
    m.load_state_dict({"bias": np.ones(3, np.float32)}, strict=False)
    np.testing.assert_array_equal(m.bias.numpy(), 1)


def test_module_without_super_init():
    class Bad(nn.Module):
        def __init__(self):
            self.x = 1

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_flatten_and_activations():
    x = spad.tensor(np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 12)
    assert nn.Flatten()(x).shape == (2, 12)
    np.testing.assert_array_equal(nn.ReLU()(x).numpy(), np.maximum(x.numpy(), 0))
    np.testing.assert_allclose(nn.Tanh()(x).numpy(), np.tanh(x.numpy()), rtol=1e-6)
    np.testing.assert_allclose(nn.Sigmoid()(x).numpy(), 1 / (1 + np.exp(-x.numpy())), rtol=1e-6)


def test_dropout_p_checked():
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


# ---- layers whose ops are added elsewhere ------------------------------------------------
needs_conv = pytest.mark.skipif(not hasattr(F, "conv2d"), reason="F.conv2d not available yet")
needs_pool = pytest.mark.skipif(not hasattr(F, "max_pool2d"), reason="F.max_pool2d not available yet")
needs_dropout = pytest.mark.skipif(not hasattr(F, "dropout"), reason="F.dropout not available yet")


@needs_conv
def test_conv2d_module_shapes():
    conv = nn.Conv2d(3, 8, 3, stride=1, padding=1, seed=0)
    assert conv.weight.shape == (8, 3, 3, 3) and conv.bias.shape == (8,)
    y = conv(spad.ones((2, 3, 8, 8)))
    assert y.shape == (2, 8, 8, 8)


@needs_conv
@needs_pool
def test_small_convnet_forward_backward():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, seed=0), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 10, seed=1))
    loss = F.cross_entropy(net(spad.ones((2, 1, 8, 8))), np.array([1, 2]))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert nn.AvgPool2d(2)(spad.ones((1, 1, 4, 4))).shape == (1, 1, 2, 2)


@needs_dropout
def test_dropout_is_identity_in_eval():
    d = nn.Dropout(0.5)
    x = spad.ones((4, 4))
    d.eval()
    np.testing.assert_array_equal(d(x).numpy(), 1)
    d.train()
    vals = set(np.unique(d(x).numpy()).tolist())
    assert vals <= {0.0, 2.0}


# ---- initializers ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,var",
    [
        ("glorot_uniform", 2 / (400 + 300)),
        ("glorot_normal", 2 / (400 + 300)),
        ("he_uniform", 2 / 400),
        ("he_normal", 2 / 400),
    ],
)
def test_initializer_variance(name, var):
    w = I.get(name)((400, 300), seed=0)
    assert w.dtype == np.float32 and w.shape == (400, 300)
    assert abs(w.mean()) < 0.01 * np.sqrt(var) * 10
    assert w.var() == pytest.approx(var, rel=0.05)


def test_uniform_bounds_and_conv_fans():
    w = I.he_uniform((16, 3, 3, 3), seed=0)  # fan_in = 27
    assert np.abs(w).max() <= np.sqrt(6 / 27) + 1e-6
    assert I.fans((16, 3, 3, 3)) == (27, 144)


@pytest.mark.parametrize("shape", [(5, 5), (8, 3), (3, 8), (4, 2, 2, 2)])
def test_orthogonal(shape):
    w = I.orthogonal(shape, seed=0, dtype=np.float64).reshape(shape[0], -1)
    if w.shape[0] >= w.shape[1]:
        np.testing.assert_allclose(w.T @ w, np.eye(w.shape[1]), atol=1e-12)
    else:
        np.testing.assert_allclose(w @ w.T, np.eye(w.shape[0]), atol=1e-12)


def test_initializers_are_seeded_and_named():
    np.testing.assert_array_equal(I.glorot_normal((3, 4), seed=1), I.glorot_normal((3, 4), seed=1))
    with pytest.raises(ValueError, match="unknown initializer"):
        I.get("nope")
    lin = nn.Linear(4, 4, init="orthogonal", seed=0)
    np.testing.assert_allclose(lin.weight.numpy().T @ lin.weight.numpy(), np.eye(4), atol=1e-5)
