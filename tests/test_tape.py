"""The tape: seeding backward, retain/release, grad modes, accumulation, deep graphs,
in-place detection, double backward, and the memory accounting we report."""
from __future__ import annotations

import gc
import math
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

import spad
import spad.functional as F
from helpers import numeric_grad


def tape_bytes() -> int:
    return spad.memory_stats()["tape_bytes"]


def leaf(a, requires_grad=True):
    return spad.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


# ---- seeding backward ---------------------------------------------------------------------
def test_backward_scalar_implicit_grad():
    x = leaf([1.0, 2.0, 3.0])
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0, 6.0])


def test_backward_0d_leaf_itself():
    x = leaf(3.0)
    x.backward()
    assert x.grad.item() == 1.0


def test_backward_non_scalar_needs_grad():
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"scalar outputs.*\(2,\)"):
        (x * 2).backward()


def test_backward_explicit_grad():
    x = leaf([[1.0, 2.0], [3.0, 4.0]])
    y = x * x
    y.backward(np.array([[1.0, 0.0], [2.0, -1.0]]))
    np.testing.assert_array_equal(x.grad.numpy(), [[2.0, 0.0], [12.0, -8.0]])
    x2 = leaf([1.0, 2.0])
    (x2 * 3).backward(spad.tensor(np.array([0.5, 2.0])))
    np.testing.assert_array_equal(x2.grad.numpy(), [1.5, 6.0])


def test_backward_explicit_grad_wrong_shape():
    x = leaf([1.0, 2.0])
    with pytest.raises(ValueError, match=r"backward.*\(3,\).*\(2,\)"):
        (x * 2).backward(np.ones(3))


# ---- retain_graph and the second-pass error -----------------------------------------------
def test_retain_graph_accumulates_twice():
    x = leaf([1.0, -2.0])
    y = (x * x * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * first)
    np.testing.assert_array_equal(first, 3 * np.array([1.0, 4.0]))


def test_backward_twice_without_retain_raises():
    x = leaf([1.0, 2.0])
    y = (x.tanh() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_backward_twice_releases_tape():
    x = leaf(np.ones(10))
    y = (x.exp() * x).sum()
    assert tape_bytes() > 0
    y.backward()
    assert tape_bytes() == 0


def test_backward_on_tensor_without_grad():
    t = spad.tensor(np.ones(3))
    with pytest.raises(RuntimeError, match=r"does not require grad.*\(\)"):
        t.sum().backward()


# ---- grad modes and detach --------------------------------------------------------------
def test_no_grad_context_records_nothing():
    x = leaf(np.ones((4, 4)))
    before = tape_bytes()
    with spad.no_grad():
        assert not spad.is_grad_enabled()
        y = (x @ x).tanh().exp() * x
        assert tape_bytes() == before
    assert spad.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_decorator():
    @spad.no_grad()
    def f(t):
        return (t * t).sum()

    x = leaf(np.ones(8))
    before = tape_bytes()
    y = f(x)
    assert tape_bytes() == before
    assert not y.requires_grad
    assert spad.is_grad_enabled()


def test_no_grad_restored_after_exception():
    with pytest.raises(ZeroDivisionError):
        with spad.no_grad():
            1 / 0
    assert spad.is_grad_enabled()


def test_enable_grad_inside_no_grad():
    x = leaf([1.0, 2.0])
    with spad.no_grad():
        with spad.enable_grad():
            y = (x * x).sum()
    assert y.requires_grad
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])


def test_detach_cuts_graph_and_shares_data():
    x = leaf([1.0, 2.0])
    d = (x * 2).detach()
    assert not d.requires_grad and d.grad_fn is None and d.is_leaf
    y = (x * d).sum()  # d is a constant: dy/dx = d
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])
    xd = x.detach()
    assert np.shares_memory(xd.numpy(), x.numpy())


# ---- accumulation --------------------------------------------------------------------------
def test_leaf_grad_accumulates_across_backward_calls():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3 + 2, 3 + 4])


def test_grad_none_resets():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    x.grad = None
    assert x.grad is None
    (x * 5).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 5.0])


def test_grad_does_not_alias_seed():
    """The first gradient must not alias the user's seed array (accumulation writes in place)."""
    x = leaf([1.0, 2.0])
    seed = np.array([1.0, 1.0])
    x.backward(seed)
    (x * 1.0).sum().backward()
    np.testing.assert_array_equal(seed, [1.0, 1.0])
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_fan_out_accumulates():
    x = leaf([0.3, -0.7])
    a = x.tanh()
    y = (a * a + a * 3 + a.exp()).sum()
    y.backward()
    t = np.tanh([0.3, -0.7])
    np.testing.assert_allclose(x.grad.numpy(), (2 * t + 3 + np.exp(t)) * (1 - t * t), rtol=1e-14)


def diamond_grad(x0: np.ndarray) -> np.ndarray:
    x = leaf(x0.copy())
    a = x.tanh()
    b = x.sigmoid()
    c = a * b
    d = a / (b + 1.0)
    e = (c + d) * a - b.exp()
    (e.sum() + c.max() * d.mean()).backward()
    return x.grad.numpy().copy()


def test_diamond_accumulation_deterministic(rng):
    x0 = rng.standard_normal(257)
    g1, g2 = diamond_grad(x0), diamond_grad(x0)
    assert g1.tobytes() == g2.tobytes()  # bit-identical, not just close
    num = numeric_grad(lambda arrs: float(_diamond_value(arrs[0])), [x0.copy()], 0)
    np.testing.assert_allclose(g1, num, rtol=1e-5, atol=1e-7)


def _diamond_value(x0):
    with spad.no_grad():
        x = spad.tensor(x0.copy())
        a, b = x.tanh(), x.sigmoid()
        c, d = a * b, a / (b + 1.0)
        e = (c + d) * a - b.exp()
        return (e.sum() + c.max() * d.mean()).item()


# ---- deep graphs: no recursion in backward or teardown -----------------------------------
def test_long_chain_backward_and_teardown():
    x = leaf([0.5, -0.25])
    w = leaf([1.0, 1.0])
    y = x
    for _ in range(10_000):
        y = y * w  # each node saves its input, which carries its own grad_fn
    for _ in range(10_000):
        y = (y + 0.0).tanh() * 1.0
    y.sum().backward()
    assert np.all(np.isfinite(x.grad.numpy())) and np.all(np.isfinite(w.grad.numpy()))
    del y
    gc.collect()
    assert tape_bytes() == 0


CHAIN_SCRIPT = r"""
import numpy as np, spad
x = spad.tensor(np.full(3, 0.5), requires_grad=True)
w = spad.tensor(np.ones(3), requires_grad=True)
y = x
for i in range({n}):
    y = {expr}
{after}
del y
print("ok", spad.memory_stats()["tape_bytes"])
"""


@pytest.mark.parametrize("expr,after", [
    ("y * w", ""),                                           # saved inputs own the rest of the chain
    ("y * y", ""),                                           # the same input saved twice in one node
    ("(y * w).tanh()", ""),
    ("y * w", "y.sum().backward(retain_graph=True)"),
    ("y.tanh()", "y.sum().backward()"),
], ids=["mul_w", "mul_self", "mul_tanh", "retained", "released"])
def test_deep_graph_teardown_small_stack(expr, after):
    """Dropping an unreleased 100k-op graph must not recurse; a 1 MiB stack makes recursion crash."""
    code = CHAIN_SCRIPT.format(n=100_000, expr=expr, after=after)

    def small_stack():
        resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       preexec_fn=small_stack, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.split() == ["ok", "0"]


# ---- in-place modification of a saved tensor ------------------------------------------
def test_saved_tensor_modified_in_place_raises():
    """Gradient accumulation writes into .grad in place and bumps its storage version. Using a
    .grad as a saved input and accumulating into it before backward must raise, not silently
    compute with the new values."""
    x = leaf([1.0, 2.0])
    (x * 1.0).sum().backward()
    p = x.grad  # a leaf of its own
    p.requires_grad = True
    c = leaf([3.0, 4.0])
    y = (p * c).sum()  # saves p for dc
    v0 = p._version
    (x * 2.0).sum().backward()  # accumulates into x.grad (== p) in place
    assert x.grad is p and p._version == v0 + 1
    np.testing.assert_array_equal(p.numpy(), [3.0, 3.0])
    with pytest.raises(RuntimeError, match=r"mul:.*\(2,\).*modified by an in-place operation"):
        y.backward()


def test_unmodified_saved_tensor_passes_version_check():
    x = leaf([1.0, 2.0])
    (x * 1.0).sum().backward()
    p = x.grad
    p.requires_grad = True
    c = leaf([3.0, 4.0])
    (p * c).sum().backward()
    np.testing.assert_array_equal(c.grad.numpy(), [1.0, 1.0])


# ---- double backward (create_graph) ---------------------------------------------------
def grad_of(fn, arrays):
    """Plain first-order gradients of fn(*tensors) with respect to every input (float64)."""
    ts = [leaf(a.copy()) for a in arrays]
    fn(*ts).backward()
    return [t.grad.numpy().copy() for t in ts]


def test_double_backward_tanh_x(rng):
    x0 = rng.standard_normal(6)
    x = leaf(x0.copy())
    (x.tanh() * x).sum().backward(create_graph=True)
    g = x.grad
    assert g.grad_fn is not None
    t = np.tanh(x0)
    np.testing.assert_allclose(g.numpy(), t + x0 * (1 - t * t), rtol=1e-14)
    x.grad = None
    g.sum().backward()
    d2 = x.grad.numpy()
    # d/dx of the gradient, by finite differences of the (first-order) gradient.
    eps = 1e-6
    num = np.array([
        (grad_of(lambda x: (x.tanh() * x).sum(), [x0 + eps * e])[0]
         - grad_of(lambda x: (x.tanh() * x).sum(), [x0 - eps * e])[0]).sum() / (2 * eps)
        for e in np.eye(6)
    ])
    np.testing.assert_allclose(d2, num, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d2, 2 * (1 - t * t) - 2 * x0 * t * (1 - t * t), rtol=1e-12)


def mlp_loss(kind, x, y):
    def f(W1, b1, W2):
        h = F.linear(x, W1, b1).tanh()
        out = h @ W2
        return F.cross_entropy(out, y) if kind == "ce" else F.mse_loss(out, y)
    return f


@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_hvp_two_layer_mlp(kind, rng):
    x = spad.tensor(rng.standard_normal((5, 3)))
    y = rng.integers(0, 4, size=5) if kind == "ce" else spad.tensor(rng.standard_normal((5, 4)))
    f = mlp_loss(kind, x, y)
    params = [rng.standard_normal((3, 6)) * 0.7, rng.standard_normal(6) * 0.1, rng.standard_normal((6, 4)) * 0.7]
    vs = [rng.standard_normal(p.shape) for p in params]

    ts = [leaf(p.copy()) for p in params]
    f(*ts).backward(create_graph=True)
    gs = [t.grad for t in ts]
    for t in ts:
        t.grad = None
    dot = gs[0] * spad.tensor(vs[0])
    dot = dot.sum() + (gs[1] * spad.tensor(vs[1])).sum() + (gs[2] * spad.tensor(vs[2])).sum()
    dot.backward()
    hvp = [t.grad.numpy() for t in ts]

    # Central differences of the gradient along v: H v = (g(p + eps v) - g(p - eps v)) / (2 eps).
    eps = 1e-5
    gp = grad_of(f, [p + eps * v for p, v in zip(params, vs)])
    gm = grad_of(f, [p - eps * v for p, v in zip(params, vs)])
    for h, a, b in zip(hvp, gp, gm):
        np.testing.assert_allclose(h, (a - b) / (2 * eps), rtol=1e-5, atol=1e-8)
    del dot, gs
    gc.collect()
    assert tape_bytes() == 0


def test_hvp_vs_torch(torch, rng):
    x0, W0, v0 = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    y = np.array([0, 4, 2, 1])
    W = leaf(W0.copy())
    F.cross_entropy((spad.tensor(x0) @ W).tanh() * 2, y).backward(create_graph=True)
    g = W.grad
    W.grad = None
    (g * spad.tensor(v0)).sum().backward()
    tW = torch.tensor(W0, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(torch.tanh(torch.tensor(x0) @ tW) * 2, torch.tensor(y))
    (tg,) = torch.autograd.grad(tl, tW, create_graph=True)
    (th,) = torch.autograd.grad((tg * torch.tensor(v0)).sum(), tW)
    np.testing.assert_allclose(W.grad.numpy(), th.numpy(), rtol=1e-10, atol=1e-13)


# ---- memory accounting ----------------------------------------------------------------
def test_tape_bytes_positive_then_zero(rng):
    base = tape_bytes()
    x = leaf(rng.standard_normal((8, 5)))
    W = leaf(rng.standard_normal((5, 3)))
    loss = F.cross_entropy((x @ W).tanh(), np.arange(8) % 3)
    assert tape_bytes() > base
    loss.backward()
    assert tape_bytes() == base


def test_tape_bytes_released_when_graph_dropped():
    base = tape_bytes()
    x = leaf(np.ones(100))
    y = (x.exp() * x).sum()
    assert tape_bytes() > base
    del y
    gc.collect()
    assert tape_bytes() == base


@pytest.mark.parametrize("n", [1, 7, 8, 9, 100, 1001])
def test_relu_saves_one_bit_per_element(n):
    base = tape_bytes()
    x = leaf(np.linspace(-1, 1, n) + 0.01)
    exact_base = spad.memory_stats()["exact_tape_bytes"]
    y = x.relu()
    assert tape_bytes() - base == math.ceil(n / 8)
    assert spad.memory_stats()["exact_tape_bytes"] - exact_base == math.ceil(n / 8)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), (x.numpy() > 0).astype(np.float64))
    assert tape_bytes() == base


def test_exact_tape_bytes_equals_tape_bytes_without_policy(rng):
    x = leaf(rng.standard_normal((6, 4)))
    W1, W2 = leaf(rng.standard_normal((4, 8))), leaf(rng.standard_normal((8, 3)))
    h = F.linear(x, W1).relu()
    out = F.softmax(h @ W2, axis=1).log() * 2
    loss = out.mean()
    m = spad.memory_stats()
    assert m["tape_bytes"] > 0
    assert m["exact_tape_bytes"] == m["tape_bytes"]
    loss.backward()
    m = spad.memory_stats()
    assert m["exact_tape_bytes"] == m["tape_bytes"] == 0


def test_tape_counts_storage_once():
    w = leaf(np.ones(16))
    x = w + 0.0  # not a leaf: saving it is tape
    base = tape_bytes()
    y = x * x  # x saved in two slots: one storage, counted once
    assert tape_bytes() - base == 16 * 8
    z = w * w  # a leaf that requires grad lives anyway, like a parameter: not tape
    assert tape_bytes() - base == 16 * 8
    del y, z


def test_peak_and_reset_peak(rng):
    spad.reset_peak_memory_stats()
    base = tape_bytes()
    assert spad.memory_stats()["peak_tape_bytes"] == base
    x = leaf(rng.standard_normal(1000))
    y = (x.exp() * x).sum()
    during = tape_bytes()
    assert during > base
    y.backward()
    m = spad.memory_stats()
    assert m["tape_bytes"] == base
    assert m["peak_tape_bytes"] >= during
    assert m["peak_exact_tape_bytes"] >= during
    spad.reset_peak_memory_stats()
    m = spad.memory_stats()
    assert m["peak_tape_bytes"] == m["tape_bytes"] == base
    assert m["peak_exact_tape_bytes"] == m["exact_tape_bytes"]


def test_params_not_counted(rng):
    x0, W0 = rng.standard_normal((4, 6)), rng.standard_normal((6, 5))
    base = tape_bytes()
    x, W = leaf(x0) + 0.0, leaf(W0)  # x: an activation (not a leaf)
    y = x @ W  # saves x (for dW) and W (for dx)
    # W is a leaf that requires grad: it lives anyway, like a parameter, so it is not tape
    assert tape_bytes() - base == x0.nbytes
    del y
    x, W = leaf(x0) + 0.0, leaf(W0)
    W._is_param = True
    y = x @ W
    assert tape_bytes() - base == x0.nbytes  # W lives anyway: saving it costs nothing
    assert spad.memory_stats()["exact_tape_bytes"] - base == x0.nbytes
    y.sum().backward()
    assert tape_bytes() == base


def test_second_backward_message_names_op_in_lower_case():
    x = spad.tensor(np.ones(3), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"^mul: trying to backward through the graph a second time"):
        y.backward()
