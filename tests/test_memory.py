"""Allocation accounting: spad.memory_stats()['allocated_bytes'] and memory_summary() categories."""
import threading

import numpy as np
import pytest

import spad
import spad.functional as F
import spad.nn as nn
import spad.optim as optim
import spad.sampling as S


def _alloc():
    return spad.memory_stats()["allocated_bytes"]


def _cats():
    s = spad.memory_summary()
    return {c: s[c]["current"] for c in ("parameters", "gradients", "optimizer_state", "tape", "other")}


def test_borrowed_numpy_is_not_allocated_but_copies_are():
    a = np.ones((64, 32), np.float32)
    base = _alloc()
    t = spad.tensor(a)  # zero-copy: numpy's memory
    assert np.shares_memory(t.numpy(), a) and not t._is_allocated
    assert _alloc() == base
    y = t * 2.0  # spad allocates the result
    assert y._is_allocated and _alloc() == base + a.nbytes
    del y
    assert _alloc() == base


def test_parameters_gradients_optimizer_state_tape_categories():
    base = _cats()
    model = nn.mlp([16, 32, 4], seed=0)
    pbytes = sum(p.numpy().nbytes for p in model.parameters())
    assert all(p._memory_category == "parameters" and p._is_allocated for p in model.parameters())
    assert _cats()["parameters"] - base["parameters"] == pbytes
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert _cats()["optimizer_state"] - base["optimizer_state"] == pbytes
    assert opt.state[0]["momentum"].base is not None  # a numpy view of spad's storage
    x = spad.tensor(np.random.default_rng(0).random((8, 16), dtype=np.float32))
    loss = F.cross_entropy(model(x), np.arange(8) % 4)
    c = _cats()
    # The tape holds the hidden activation (8 x 32 floats) that spad allocated; the input
    # is numpy's and not counted as allocated, although it counts in tape_bytes.
    assert c["tape"] - base["tape"] >= 8 * 32 * 4
    loss.backward()
    c = _cats()
    assert c["gradients"] - base["gradients"] == pbytes
    assert c["tape"] == base["tape"]
    assert all(p.grad._memory_category == "gradients" for p in model.parameters())
    opt.step()
    opt.zero_grad()
    del loss
    assert _cats()["gradients"] == base["gradients"]


def test_peak_allocated_and_reset():
    x = spad.tensor(np.ones((256, 256), np.float32))
    spad.reset_peak_memory_stats()
    base = _alloc()
    assert spad.memory_stats()["peak_allocated_bytes"] == base
    y = (x * 2.0) * 3.0  # two 256 KiB temporaries, the first freed when the second is done
    peak = spad.memory_stats()["peak_allocated_bytes"]
    assert 0 <= peak - (base + 2 * x.size * 4) <= 8  # + the 4-byte scalar operands
    assert _alloc() == base + x.size * 4
    del y
    assert spad.memory_stats()["peak_allocated_bytes"] == peak
    spad.reset_peak_memory_stats()
    assert spad.memory_stats()["peak_allocated_bytes"] == _alloc() == base


def test_summary_string_and_dict():
    s = spad.memory_summary()
    assert set(s["total"]) == {"current", "peak"}
    assert s["total"]["current"] == sum(s[c]["current"] for c in ("parameters", "gradients", "optimizer_state",
                                                                    "tape", "other"))
    text = str(s)
    for c in ("parameters", "gradients", "optimizer_state", "tape", "other", "total"):
        assert c in text


def test_category_cannot_be_set_to_tape_or_unknown():
    t = spad.tensor(np.ones(4, np.float32)) * 1.0
    with pytest.raises(ValueError, match="derived"):
        t._memory_category = "tape"
    with pytest.raises(ValueError, match="unknown memory category"):
        t._memory_category = "weights"


def test_sampled_step_returns_to_baseline():
    model = nn.mlp([32, 64, 64, 10], seed=1)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = spad.tensor(np.random.default_rng(1).random((16, 32), dtype=np.float32))
    y = np.arange(16) % 10
    base = _cats()
    for pol in (None, S.RAD(0.25, seed=0), S.SPAD(0.25, refresh=2, seed=0)):
        for _ in range(3):
            with S.use(pol):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            del loss
        now = _cats()
        # Sampler state (SPAD scores) may stay in 'other'; nothing else may.
        assert {k: v for k, v in now.items() if k != "other"} == {k: v for k, v in base.items() if k != "other"}
        assert now["other"] - base["other"] <= (pol.state_bytes() if pol is not None else 0)


def test_two_threads_training_separate_models_leave_counters_at_baseline():
    # Backward and the optimizer release the GIL, so the two threads really allocate,
    # charge the tape and free at the same time.
    def train(seed, errors):
        try:
            model = nn.mlp([64, 256, 256, 10], seed=seed)
            opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            rng = np.random.default_rng(seed)
            x = spad.tensor(rng.random((64, 64), dtype=np.float32))
            y = rng.integers(0, 10, 64)
            for _ in range(30):
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                del loss
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    before = spad.memory_stats()
    cats = _cats()
    errors = []
    threads = [threading.Thread(target=train, args=(s, errors)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    after = spad.memory_stats()
    for k in ("tape_bytes", "exact_tape_bytes", "allocated_bytes"):
        assert after[k] == before[k], k
    assert _cats() == cats


# ---- free at last use and buffer reuse (Note [Buffer reuse] in csrc/core/reuse.h) ----
def _grads(model, x, y, pol, chain):
    seq = model if chain else None
    with S.use(pol):
        if chain:
            out = seq(x)
        else:  # the same modules called one by one from Python: nothing is reused in forward
            out = x
            for m in model._modules.values():
                out = m(out)
        loss = F.cross_entropy(out, y)
    loss.backward()
    g = [p.grad.numpy().copy() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    return loss.item(), g


@pytest.mark.parametrize("policy", ["exact", "rad", "spad"])
def test_linear_chain_matches_separate_calls_and_keeps_inputs(policy):
    rng = np.random.default_rng(3)
    model = nn.mlp([24, 32, 32, 16, 8], seed=2)
    assert isinstance(model._plan()[0], list)  # one chained run
    xa = rng.random((20, 24), dtype=np.float32)
    x = spad.tensor(xa.copy())
    y = np.arange(20) % 8
    mk = {"exact": lambda: None, "rad": lambda: S.RAD(0.25, seed=5), "spad": lambda: S.SPAD(0.25, refresh=1, seed=5)}
    l1, g1 = _grads(model, x, y, mk[policy](), chain=True)
    l2, g2 = _grads(model, x, y, mk[policy](), chain=False)
    assert l1 == pytest.approx(l2, rel=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x.numpy(), xa)  # the caller's input is never overwritten


def test_user_visible_tensors_are_never_overwritten():
    rng = np.random.default_rng(4)
    W = nn.Parameter(rng.standard_normal((16, 16)).astype(np.float32))
    h = F.linear(spad.tensor(rng.random((8, 16), dtype=np.float32)), W, None) * 1.0  # spad-allocated
    before = h.numpy().copy()
    a = F.relu(h)  # h is held by Python: relu must not write into it
    z = F.linear(a, W, None)
    np.testing.assert_array_equal(h.numpy(), before)
    assert not np.shares_memory(a.numpy(), h.numpy()) and not np.shares_memory(z.numpy(), a.numpy())


def test_sampled_chain_holds_one_activation_at_a_time():
    # keep 0.1 on a 4-hidden-layer MLP: the forward pass's peak is the tape plus about one
    # activation (each layer writes over its consumed input), not two.
    B, n = 256, 256
    model = nn.mlp([n, n, n, n, n, 10], seed=0)
    x = spad.tensor(np.random.default_rng(0).random((B, n), dtype=np.float32))
    act = B * n * 4
    spad.reset_peak_memory_stats()
    base = _alloc()
    with S.use(S.RAD(0.1, seed=0)):
        loss = F.cross_entropy(model(x), np.arange(B) % 10)
    tape = spad.memory_stats()["tape_bytes"]
    peak = spad.memory_stats()["peak_allocated_bytes"] - base
    assert peak < tape + 1.5 * act, (peak, tape, act)
    loss.backward()
    # backward: dx is written over dy and ReLU masks in place, so at most ~one activation
    # of transients besides the gradients.
    grads = sum(p.grad.numpy().nbytes for p in model.parameters())
    peak = spad.memory_stats()["peak_allocated_bytes"] - base
    assert peak < tape + grads + 1.5 * act, (peak, tape, grads, act)


def test_relu_owned_overwrites_only_an_unshared_input():
    x = spad.tensor(np.linspace(-1, 1, 64, dtype=np.float32)) * 1.0  # spad-allocated
    kept = x  # a second Python name: relu must leave x intact
    before = x.numpy().copy()
    box = [x]
    del x
    y = spad._core._relu_owned(box)
    np.testing.assert_array_equal(kept.numpy(), before)
    assert not np.shares_memory(y.numpy(), kept.numpy())
    np.testing.assert_array_equal(y.numpy(), np.maximum(before, 0))
    base = _alloc()
    y2 = spad._core._relu_owned([kept * 2.0])  # a temporary no one else holds: reused
    assert _alloc() - base <= y2.size * 4 + 8  # one buffer (and a scalar), not two


def test_sequential_conv_relu_matches_functional():
    rng = np.random.default_rng(6)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, seed=0), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 5, seed=1))
    x = spad.tensor(rng.random((6, 3, 8, 8), dtype=np.float32))
    y = np.arange(6) % 5
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    g1 = [p.grad.numpy().copy() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    c, _, pool, flat, lin = model._modules.values()
    loss2 = F.cross_entropy(lin(flat(pool(F.relu(c(x))))), y)
    loss2.backward()
    assert loss.item() == pytest.approx(loss2.item(), rel=1e-6)
    for a, p in zip(g1, model.parameters()):
        np.testing.assert_allclose(a, p.grad.numpy(), rtol=1e-5, atol=1e-7)
