"""Optimizers inside backward (in_backward=True): the tape's gradient-complete hook, the same
parameters as backward(); step(), what step()/zero_grad() do, and the clipping error."""
import gc

import numpy as np
import pytest

import spad
import spad._core as C
import spad.functional as F
import spad.nn as nn
import spad.optim as optim
import spad.sampling as S

CASES = [
    (optim.SGD, dict(lr=0.05)),
    (optim.SGD, dict(lr=0.05, momentum=0.9)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
    (optim.Adagrad, dict(lr=0.05, weight_decay=1e-3)),
    (optim.RMSprop, dict(lr=0.01)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (optim.Adam, dict(lr=0.01, weight_decay=1e-3)),
    (optim.AdamW, dict(lr=0.01)),
]


def _data(seed=0, n=64, d=12, k=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, k, n)


def _train(cls, kw, in_backward, steps=5, policy_seed=None):
    X, y = _data()
    model = nn.mlp([12, 16, 16, 5], seed=3)
    opt = cls(model.parameters(), in_backward=in_backward, **kw)
    policy = None if policy_seed is None else S.RAD(keep=0.5, mode="same", seed=policy_seed)
    for s in range(steps):
        xb, yb = X[s * 8:(s + 1) * 8 + 24], y[s * 8:(s + 1) * 8 + 24]
        with S.use(policy):
            loss = F.cross_entropy(model(spad.tensor(xb)), yb)
        opt.zero_grad()
        loss.backward()
        if in_backward:
            assert all(p.grad is None for p in model.parameters()), "in_backward must free every gradient"
        opt.step()
    return [p.numpy().copy() for p in model.parameters()], opt


@pytest.mark.parametrize("cls,kw", CASES, ids=[f"{c.__name__}-{'-'.join(k for k in kw if k != 'lr')}"
                                               for c, kw in CASES])
def test_same_parameters_as_step(cls, kw):
    ref, _ = _train(cls, kw, in_backward=False)
    got, opt = _train(cls, kw, in_backward=True)
    assert opt.steps == 5
    for a, b in zip(ref, got):
        # The same kernel on the same gradient: equal up to float rounding (in practice bitwise).
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    moved = sum(float(np.abs(a - b0).max()) for a, b0 in zip(got, _init_params()))
    assert moved > 1e-3, "the optimizer must actually have moved the parameters"


def _init_params():
    return [p.numpy().copy() for p in nn.mlp([12, 16, 16, 5], seed=3).parameters()]


def test_same_parameters_under_a_sampling_policy():
    ref, _ = _train(optim.SGD, dict(lr=0.05, momentum=0.9), False, policy_seed=7)
    got, _ = _train(optim.SGD, dict(lr=0.05, momentum=0.9), True, policy_seed=7)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_hook_fires_once_after_the_last_contribution():
    # W is used three times (two branches + a late reuse): the hook must see the full sum.
    W = spad.tensor(np.arange(6, dtype=np.float64).reshape(2, 3), requires_grad=True)
    x = spad.tensor(np.ones((4, 2)))
    seen = []
    C.set_grad_complete_hook(W, lambda t: seen.append(t.grad.numpy().copy()))
    try:
        loss = ((x @ W).sum() + (x @ W * 2.0).sum() + (W * W).sum())
        loss.backward()
        expected = np.ones((2, 4)) @ np.ones((4, 3)) * 3 + 2 * W.numpy()
        assert len(seen) == 1
        np.testing.assert_allclose(seen[0], expected)
        assert C.has_grad_complete_hook(W)
    finally:
        C.set_grad_complete_hook(W, None)
    assert not C.has_grad_complete_hook(W)


def test_hook_not_called_when_the_loss_does_not_reach_the_leaf():
    a = spad.tensor(np.ones(3), requires_grad=True)
    b = spad.tensor(np.ones(3), requires_grad=True)
    calls = []
    C.set_grad_complete_hook(a, lambda t: calls.append("a"))
    C.set_grad_complete_hook(b, lambda t: calls.append("b"))
    try:
        (b * 2.0).sum().backward()
        assert calls == ["b"]
        # a leaf root: the hook runs too
        s = spad.tensor(np.array(2.0), requires_grad=True)
        C.set_grad_complete_hook(s, lambda t: calls.append("s"))
        s.backward()
        assert calls == ["b", "s"]
    finally:
        C.set_grad_complete_hook(a, None)
        C.set_grad_complete_hook(b, None)


def test_hook_on_a_non_leaf_is_rejected():
    a = spad.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match="not a leaf"):
        C.set_grad_complete_hook(a * 2.0, lambda t: None)


def test_exception_in_hook_propagates():
    a = spad.tensor(np.ones(3), requires_grad=True)

    def boom(t):
        raise KeyError("boom")

    C.set_grad_complete_hook(a, boom)
    try:
        with pytest.raises(KeyError, match="boom"):
            (a * 3.0).sum().backward()
    finally:
        C.set_grad_complete_hook(a, None)


def test_loss_not_reaching_a_parameter_leaves_it_alone():
    model = nn.mlp([4, 3, 2], seed=0)
    W0, b0, W1, b1 = model.parameters()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, in_backward=True)
    before = [p.numpy().copy() for p in model.parameters()]
    loss = (W1 * W1).sum()  # reaches W1 only
    loss.backward()
    opt.step()
    after = [p.numpy() for p in model.parameters()]
    for i in (0, 1, 3):
        np.testing.assert_array_equal(after[i], before[i])
    np.testing.assert_allclose(after[2], before[2] * (1 - 0.1 * 2), rtol=1e-6)
    assert opt._counts == [0, 0, 1, 0]


def test_step_and_zero_grad_semantics():
    p = spad.tensor(np.array([1.0, 2.0]), requires_grad=True)
    opt = optim.SGD([p], lr=0.5, in_backward=True)
    (p * p).sum().backward()  # g = 2p: p -> p - 0.5*2p = 0
    np.testing.assert_allclose(p.numpy(), [0.0, 0.0])
    assert p.grad is None
    # step() does not update (even with a gradient set by hand); it counts the step.
    p.grad = spad.tensor(np.array([1.0, 1.0]))
    opt.step()
    np.testing.assert_allclose(p.numpy(), [0.0, 0.0])
    assert opt.steps == 1
    opt.zero_grad()
    assert p.grad is None
    # remove_hooks: an ordinary optimizer again
    opt.remove_hooks()
    assert not opt.in_backward and not C.has_grad_complete_hook(p)
    (p + 1.0).sum().backward()
    np.testing.assert_allclose(p.numpy(), [0.0, 0.0])
    opt.step()
    np.testing.assert_allclose(p.numpy(), [-0.5, -0.5])


def test_lr_schedule_applies_from_the_next_backward():
    p = spad.tensor(np.array([0.0]), requires_grad=True)
    opt = optim.SGD([p], lr=1.0, in_backward=True)
    sched = optim.LRScheduler(opt, lambda k: 1.0 / (k + 1))
    for _ in range(3):
        (p * 1.0).sum().backward()  # g = 1
        opt.step()
        sched.step()
    np.testing.assert_allclose(p.numpy(), [-(1 + 1 / 2 + 1 / 3)])


def test_two_in_backward_optimizers_on_one_parameter_are_rejected():
    p = spad.tensor(np.ones(2), requires_grad=True)
    opt = optim.SGD([p], lr=0.1, in_backward=True)
    with pytest.raises(ValueError, match="already updated inside backward"):
        optim.Adam([p], in_backward=True)
    with pytest.raises(ValueError, match="same tensor as parameter 0"):
        optim.SGD([spad.tensor(np.ones(2), requires_grad=True)] * 2, lr=0.1, in_backward=True)
    del opt


def test_dropped_optimizer_stops_updating():
    p = spad.tensor(np.ones(2), requires_grad=True)
    opt = optim.SGD([p], lr=0.1, in_backward=True)
    del opt
    gc.collect()
    assert not C.has_grad_complete_hook(p)
    (p * p).sum().backward()
    np.testing.assert_allclose(p.numpy(), [1.0, 1.0])
    assert p.grad is not None


def test_global_norm_clipping_is_a_clear_error():
    model = nn.mlp([4, 3, 2], seed=0)
    opt = optim.Adam(model.parameters(), in_backward=True)
    with pytest.raises(RuntimeError, match="in_backward=True"):
        optim.clip_grad_norm(model.parameters(), 1.0)
    opt.remove_hooks()
    optim.clip_grad_norm(model.parameters(), 1.0)  # fine again


def test_state_dict_round_trip_keeps_update_counts():
    ref, opt = _train(optim.Adam, dict(lr=0.01), True, steps=2)
    d = opt.state_dict()
    assert d["update_counts"] == [2] * len(opt.params) and "in_backward" not in d["hyper"]
    model = nn.mlp([12, 16, 16, 5], seed=3)
    opt2 = optim.Adam(model.parameters(), lr=0.01, in_backward=True)
    opt2.load_state_dict(d)
    assert opt2._counts == [2] * len(opt.params) and opt2.in_backward


def _fit_both_ways(seed, n, sizes, epochs, **fit_kw):
    """fit() with backward(); step() and with the optimizer in backward: (losses, parameters) of each."""
    X, y = _data(seed, n=n)
    res = []
    for ib in (False, True):
        model = nn.mlp(sizes, seed=seed)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, in_backward=ib)
        hist = spad.train.fit(model, F.cross_entropy, spad.data.DataLoader(X, y, 16, seed=0), opt, epochs,
                              progress=False, **fit_kw)
        assert opt.in_backward == ib
        res.append((hist.loss, [p.numpy().copy() for p in model.parameters()]))
    np.testing.assert_allclose(res[1][0], res[0][0], rtol=1e-5)
    for a, b in zip(res[0][1], res[1][1]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_fit_with_an_in_backward_optimizer_matches_fit_with_step():
    _fit_both_ways(1, 96, [12, 16, 5], 2)


def test_fit_progress_bar_advances_per_batch(capsys):
    X, y = spad.datasets.two_moons(64, seed=0)
    model = nn.mlp([2, 8, 2], seed=0)
    spad.train.fit(model, F.cross_entropy, spad.data.DataLoader(X, y, 16), optim.SGD(model.parameters(), 0.1), 2,
                   progress=True)
    err = capsys.readouterr().err
    assert "8/8" in err and "batch" in err, err[-300:]


@pytest.mark.parametrize("segments", [1, 2, 3, 5])
def test_checkpoint_sequential_gives_exact_gradients(segments):
    from spad.checkpoint import checkpoint_sequential

    X, y = _data(2)
    model = nn.mlp([12, 16, 16, 5], seed=3)
    loss = F.cross_entropy(model(spad.tensor(X)), y)
    loss.backward()
    ref = [p.grad.numpy().copy() for p in model.parameters()]
    value = loss.item()
    model.zero_grad()
    got = checkpoint_sequential(model, segments, spad.tensor(X), F.cross_entropy, y)
    assert abs(got - value) < 1e-6
    for a, p in zip(ref, model.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), a, rtol=1e-5, atol=1e-7)
    # with an in-backward optimizer: the same update as backward(); step()
    model2 = nn.mlp([12, 16, 16, 5], seed=3)
    opt = optim.SGD(model2.parameters(), lr=0.1, in_backward=True)
    checkpoint_sequential(model2, segments, spad.tensor(X), F.cross_entropy, y)
    for p0, a, p in zip(_init12(), ref, model2.parameters()):
        np.testing.assert_allclose(p.numpy(), p0 - 0.1 * a, rtol=1e-5, atol=1e-6)
    del opt


def _init12():
    return [p.numpy().copy() for p in nn.mlp([12, 16, 16, 5], seed=3).parameters()]


def test_checkpoint_sequential_checks_arguments():
    from spad.checkpoint import checkpoint_sequential

    model = nn.mlp([4, 3, 2], seed=0)
    x = spad.tensor(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="segments must be an integer"):
        checkpoint_sequential(model, 0, x, F.cross_entropy, np.array([0, 1]))
    with pytest.raises(TypeError, match="nn.Sequential"):
        checkpoint_sequential(model.children()[0], 1, x, F.cross_entropy, np.array([0, 1]))


def test_fit_with_a_gradient_penalty_and_an_in_backward_optimizer():
    from spad.analysis.implicit import ExplicitRegularizer

    _fit_both_ways(3, 64, [12, 8, 5], 1, regularizer=ExplicitRegularizer(0.1, method="exact"))
