"""Sampled weight gradients applied inside backward without the dense dW (Note [Implicit leaf
gradients] in csrc/core/tape.h): the row-sparse form of RAD(mode="same") and SPAD(unbiased=False)
for every optimizer, the add-into-the-weight form of plain SGD under per-example estimators,
the same parameters as the dense update, the saving in the measured step peak, and the lr
check that now runs where each in-backward update runs."""
import numpy as np
import pytest

import spad
import spad._core as C
import spad.functional as F
import spad.nn as nn
import spad.optim as optim
import spad.sampling as S

OPTIMIZERS = [
    (optim.SGD, dict(lr=0.05)),
    (optim.SGD, dict(lr=0.05, weight_decay=1e-2)),
    (optim.SGD, dict(lr=0.05, momentum=0.9)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    (optim.Adagrad, dict(lr=0.05)),
    (optim.Adagrad, dict(lr=0.05, weight_decay=1e-3)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.9)),
    (optim.Adam, dict(lr=0.01, weight_decay=1e-3)),
    (optim.AdamW, dict(lr=0.01)),
]
OPT_IDS = [f"{c.__name__}-{'-'.join(k for k in kw if k != 'lr') or 'plain'}" for c, kw in OPTIMIZERS]

# Row-sparse estimators (only the k sampled input features' rows of dW are non-zero), and
# per-example ones (plain SGD adds their dW into the weight). SPAD(unbiased=False) scores on
# its first step (an exact, dense dW) and follows the top-k features after it.
ROW_POLICIES = {
    "rad-same": lambda: S.RAD(keep=0.3, mode="same", seed=7),
    "spad-biased": lambda: S.SPAD(keep=0.3, unbiased=False, refresh=100, seed=7),
}
ADD_POLICIES = {
    "rad-different": lambda: S.RAD(keep=0.3, block=1, seed=7),
    "spad-scored": lambda: S.SPAD(keep=0.3, paths="scored", refresh=2, seed=7),
    "spad-magnitude": lambda: S.SPAD(keep=0.3, seed=7),
}
SIZES = [12, 32, 32, 5]


def _data(seed=0, n=96, d=12, k=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, k, n)


def _train(cls, kw, mode, policy, steps=4):
    """mode: "step" (ordinary), "dense" (in backward, dense dW), "implicit" (in backward)."""
    X, y = _data()
    model = nn.mlp(SIZES, seed=3)
    opt = cls(model.parameters(), in_backward=mode != "step", **kw)
    if mode == "dense":
        opt.remove_hooks()
        opt._attach(cls.__name__, implicit=False)
    for s in range(steps):
        with S.use(policy):
            loss = F.cross_entropy(model(spad.tensor(X[s * 16:s * 16 + 24])), y[s * 16:s * 16 + 24])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.numpy().copy() for p in model.parameters()]


def _same(got, ref):
    # The same update rule on the same gradient: equal up to float rounding (rows: bitwise).
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    init = [p.numpy() for p in nn.mlp(SIZES, seed=3).parameters()]
    assert sum(float(np.abs(a - b).max()) for a, b in zip(got, init)) > 1e-3, "the parameters must have moved"


@pytest.mark.parametrize("policy", sorted(ROW_POLICIES))
@pytest.mark.parametrize("cls,kw", OPTIMIZERS, ids=OPT_IDS)
def test_row_sparse_dW_gives_the_same_parameters(cls, kw, policy):
    ref = _train(cls, kw, "step", ROW_POLICIES[policy]())
    _same(_train(cls, kw, "implicit", ROW_POLICIES[policy]()), ref)
    _same(_train(cls, kw, "dense", ROW_POLICIES[policy]()), ref)


@pytest.mark.parametrize("policy", sorted(ADD_POLICIES))
@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_plain_sgd_adds_per_example_dW_into_the_weight(policy, wd):
    ref = _train(optim.SGD, dict(lr=0.05, weight_decay=wd), "step", ADD_POLICIES[policy]())
    _same(_train(optim.SGD, dict(lr=0.05, weight_decay=wd), "implicit", ADD_POLICIES[policy]()), ref)


def _hooked_grad(policy, **forms):
    """W's gradient as a hook that reads nothing finds it after backward, and what the hook saw."""
    X, _ = _data()
    W = spad.tensor(np.random.default_rng(1).standard_normal((12, 40)).astype(np.float32), requires_grad=True)
    seen = []
    C.set_grad_complete_hook(W, lambda t: seen.append(t.grad is None), **forms)
    try:
        with S.use(policy):
            loss = (F.linear(spad.tensor(X[:16]), W) ** 2).sum()
        loss.backward()
    finally:
        C.set_grad_complete_hook(W, None)
    return W.grad.numpy(), seen


@pytest.mark.parametrize("policy,forms", [("rad-same", dict(rows=True)), ("rad-different", dict(add=True))])
def test_an_unread_implicit_gradient_is_written_out(policy, forms):
    make = {**ROW_POLICIES, **ADD_POLICIES}[policy]
    dense, seen_dense = _hooked_grad(make())
    got, seen = _hooked_grad(make(), **forms)
    assert seen_dense == [False] and seen == [True], "the hook must have been offered the implicit form"
    np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-6)
    if policy == "rad-same":  # only the sampled input features' rows are non-zero
        assert 0 < int((np.abs(got).sum(axis=1) > 0).sum()) <= round(0.3 * 12)


def _step_peak(policy, implicit, sizes, batch, opt_kw):
    model = nn.mlp(sizes, seed=0)
    opt = optim.SGD(model.parameters(), in_backward=True, **opt_kw)
    if not implicit:
        opt.remove_hooks()
        opt._attach("SGD", implicit=False)
    X = np.random.default_rng(0).standard_normal((batch, sizes[0])).astype(np.float32)
    y = np.arange(batch) % sizes[-1]
    peaks = []
    for _ in range(3):
        x = spad.tensor(X)
        spad.reset_peak_memory_stats()
        with S.use(policy):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        peaks.append(C.peak_allocated_bytes())
        opt.step()
        del loss, x
    return peaks[-1]


def test_row_sparse_application_lowers_the_step_peak():
    # Wide layers, a small batch: the 1024x1024 dW (4 MiB) dominates the backward pass. The
    # compact path holds at most k x 1024 values for it instead (k = keep*1024 sampled rows).
    sizes, batch, keep = [256, 1024, 1024, 10], 32, 0.1
    kw = dict(lr=0.01, momentum=0.9)
    dense = _step_peak(S.RAD(keep=keep, mode="same", seed=1), False, sizes, batch, kw)
    compact = _step_peak(S.RAD(keep=keep, mode="same", seed=1), True, sizes, batch, kw)
    k = round(keep * 1024)
    saving = 1024 * 1024 * 4 - k * 1024 * 4
    assert dense - compact >= saving, (dense, compact, saving)


def test_adding_dW_into_the_weight_lowers_the_step_peak():
    # Plain SGD, per-example features: dx can no longer be written over dy (dy is read by the
    # add), so the saving is dW minus one more (batch x in) buffer.
    sizes, batch = [256, 1024, 1024, 10], 32
    kw = dict(lr=0.01)
    dense = _step_peak(S.RAD(keep=0.1, block=1, seed=1), False, sizes, batch, kw)
    added = _step_peak(S.RAD(keep=0.1, block=1, seed=1), True, sizes, batch, kw)
    saving = 1024 * 1024 * 4 - batch * 1024 * 4
    assert dense - added >= saving, (dense, added, saving)


@pytest.mark.parametrize("policy", [None, "rad-same", "rad-different"])
def test_a_bad_lr_raises_inside_backward_and_touches_nothing(policy):
    make = {**ROW_POLICIES, **ADD_POLICIES}.get(policy, lambda: None)
    X, y = _data()
    model = nn.mlp(SIZES, seed=3)
    opt = optim.SGD(model.parameters(), lr=0.1, in_backward=True)
    before = [p.numpy().copy() for p in model.parameters()]
    opt.lr = float("nan")
    with S.use(make()):
        loss = F.cross_entropy(model(spad.tensor(X[:24])), y[:24])
    with pytest.raises(ValueError, match="SGD: lr must be a finite number, got nan"):
        loss.backward()
    for a, b in zip(before, model.parameters()):
        np.testing.assert_array_equal(b.numpy(), a)
    assert opt._counts == [0] * len(before)
