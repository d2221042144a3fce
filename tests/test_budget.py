"""Training under a memory budget: the keep solver, the floor error, and fit(memory_budget=b)
keeping every step's measured peak allocation within b."""
import gc

import numpy as np
import pytest

import spad
import spad.functional as F
import spad.nn as nn
import spad.optim as optim
import spad.sampling as S
from spad.budget import solve_keeps, sites_of
from spad.data import DataLoader
from spad.train import fit

SIZES = [256, 512, 512, 10]
BATCH = 256


def _data(n=4 * BATCH, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], n)


def _exact_step_peak(X, y, opt_kw, metric="peak_allocated_bytes"):
    model = nn.mlp(SIZES, seed=0)
    opt = optim.SGD(model.parameters(), **opt_kw)
    peaks = []
    for i in range(2):  # the second step includes the optimizer state made by the first
        opt.zero_grad()
        spad.reset_peak_memory_stats()
        loss = F.cross_entropy(model(spad.tensor(X[i * BATCH:(i + 1) * BATCH])), y[i * BATCH:(i + 1) * BATCH])
        loss.backward()
        opt.step()
        peaks.append(spad.memory_stats()[metric])
    return max(peaks)


def test_solver_is_the_square_root_rule():
    c, b = np.array([4.0, 1.0, 9.0]), np.array([100.0, 400.0, 100.0])
    room = 150.0
    k = solve_keeps(c, b, room, 0.01)
    assert abs(float((b * k).sum()) - room) < 1e-6 * room  # the bytes constraint is tight
    r = k / np.sqrt(c / b)
    np.testing.assert_allclose(r, r[0], rtol=1e-9)  # k_i proportional to sqrt(c_i / b_i)
    # clipping: a site whose share would exceed 1 is exact, the rest share what is left
    k = solve_keeps(np.array([1e6, 1.0]), np.array([10.0, 100.0]), 30.0, 0.01)
    assert k[0] == 1.0 and abs(10 + 100 * k[1] - 30) < 1e-6
    assert np.all(solve_keeps(c, b, 1e9, 0.05) == 1.0)
    with pytest.raises(ValueError, match="min_keep exceed"):
        solve_keeps(c, b, 5.0, 0.05)
    # it beats the uniform keep with the same bytes
    ku = np.full(3, room / b.sum())
    assert (c / solve_keeps(c, b, room, 0.01)).sum() < (c / ku).sum()


def _floor(X, y, in_backward, metric):
    model = nn.mlp(SIZES, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, in_backward=in_backward)
    b = spad.Budget(10 ** 12, metric=metric)
    return b.plan(model, F.cross_entropy, spad.tensor(X[:BATCH]), y[:BATCH], opt).floor


@pytest.mark.parametrize("in_backward,metric", [(False, "peak_tape_bytes"), (True, "peak_tape_bytes"),
                                                (False, "peak_allocated_bytes"), (True, "peak_allocated_bytes")])
def test_fit_within_budget(in_backward, metric):
    """Every step's measured peak stays within the budget. For the tape the budget is half the exact
    step's; for the whole allocation it is halfway between the floor and the exact step's peak (until
    intermediate activations are freed at last use, the floor is close to the exact peak)."""
    X, y = _data()
    opt_kw = dict(lr=0.01, momentum=0.9)
    exact_peak = _exact_step_peak(X, y, opt_kw, metric)
    if metric == "peak_tape_bytes":
        b = exact_peak // 2
    else:
        b = (exact_peak + _floor(X, y, in_backward, metric)) // 2
    model = nn.mlp(SIZES, seed=0)
    opt = optim.SGD(model.parameters(), in_backward=in_backward, **opt_kw)
    budget = spad.Budget(b, base=S.RAD(), resolve_every=3, metric=metric)
    hist = fit(model, F.cross_entropy, DataLoader(X, y, BATCH, seed=0), opt, 2, memory_budget=budget,
               progress=False)
    peaks = hist.peak_tape_bytes if metric == "peak_tape_bytes" else hist.peak_allocated_bytes
    assert max(peaks) <= b, (peaks, b, exact_peak)
    assert len(hist.budget_plans) == 3  # steps 0, 3, 6 of 8
    plan = hist.budget_plans[0]
    assert plan.floor <= b and plan.measured_peak <= b and plan.micro_batches == 1
    assert set(plan.keeps) == {n for n, _ in sites_of(model)}
    assert all(0.05 <= k <= 1 for k in plan.keeps.values())
    assert min(plan.keeps.values()) < 1  # it had to sample
    assert opt.in_backward == in_backward  # the probes put the optimizer's hooks back
    if metric == "peak_allocated_bytes":
        assert plan.keeps["0"] == 1.0  # the first layer's input is the borrowed batch: exact is free
    assert np.isfinite(hist.loss).all() and hist.loss[-1] < hist.loss[0] + 0.5


def test_impossible_budget_raises_before_any_update():
    X, y = _data()
    model = nn.mlp(SIZES, seed=0)
    before = [p.numpy().copy() for p in model.parameters()]
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, in_backward=True)
    with pytest.raises(spad.MemoryBudgetError, match=r"below the floor of \d+ B") as err:
        fit(model, F.cross_entropy, DataLoader(X, y, BATCH, seed=0), opt, 1, memory_budget=1000, progress=False)
    assert isinstance(err.value, ValueError) and err.value.floor > 1000 and err.value.budget == 1000
    assert str(err.value.floor) in str(err.value)
    for a, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(p.numpy(), a)
    assert all(p.grad is None for p in model.parameters())


def test_budget_is_a_policy_for_use():
    # Peaks are process-wide live bytes: graphs of earlier tests awaiting the cycle collector
    # would be counted in one probe and gone in the next.
    gc.collect()
    X, y = _data()
    model = nn.mlp(SIZES, seed=0)
    xb, yb = spad.tensor(X[:BATCH]), y[:BATCH]
    spad.reset_peak_memory_stats()
    F.cross_entropy(model(xb), yb).backward()
    exact_tape = spad.memory_stats()["peak_tape_bytes"]
    budget = spad.Budget(10 ** 12, base=S.SPAD(keep=0.5))
    plan = budget.plan(model, F.cross_entropy, xb, yb)
    assert all(k == 1.0 for k in plan.keeps.values())  # everything fits: exact everywhere
    budget = spad.Budget(plan.floor + (plan.measured_peak - plan.floor) // 3, base=S.SPAD(keep=0.5))
    plan = budget.plan(model, F.cross_entropy, xb, yb)
    for p in model.parameters():
        p.grad = None
    spad.reset_peak_memory_stats()
    with S.use(budget):
        loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    assert spad.memory_stats()["peak_allocated_bytes"] <= budget.nbytes
    assert spad.memory_stats()["peak_tape_bytes"] < exact_tape
    assert "keeps" in plan.summary()


def test_budget_argument_checks():
    with pytest.raises(ValueError, match="positive integer"):
        spad.Budget(0)
    with pytest.raises(TypeError, match="base must be a sampling policy"):
        spad.Budget(1 << 20, base=S.Exact())
    with pytest.raises(ValueError, match="min_keep"):
        spad.Budget(1 << 20, min_keep=0)


def test_plan_refuses_hooks_of_an_optimizer_it_was_not_given():
    X, y = _data()
    model = nn.mlp(SIZES, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.1, in_backward=True)
    before = [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="optimizer="):
        spad.Budget(10 ** 12).plan(model, F.cross_entropy, spad.tensor(X[:BATCH]), y[:BATCH])
    spad.Budget(10 ** 12).plan(model, F.cross_entropy, spad.tensor(X[:BATCH]), y[:BATCH], optimizer=opt)
    for a, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(p.numpy(), a)


# ---- accumulated micro-batches: the solver's answer when no keep fits ------------------------
MB_SIZES, MB_BATCH = [64, 256, 256, 10], 2048  # activations (batch x 256) dominate the floor


def _mb_data(n=2 * MB_BATCH):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, MB_SIZES[0])).astype(np.float32), rng.integers(0, MB_SIZES[-1], n)


def test_micro_batches_when_no_keep_fits():
    gc.collect()
    X, y = _mb_data()
    model = nn.mlp(MB_SIZES, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    whole = spad.Budget(10 ** 12).plan(model, F.cross_entropy, spad.tensor(X[:MB_BATCH]), y[:MB_BATCH], opt).floor
    b = int(0.6 * whole)  # below the whole batch's floor: no keep reaches it
    budget = spad.Budget(b, base=S.RAD())
    hist = fit(model, F.cross_entropy, DataLoader(X, y, MB_BATCH, seed=0), opt, 1, memory_budget=budget,
               progress=False)
    plan = hist.budget_plans[0]
    assert plan.micro_batches > 1 and plan.batch_floor > b >= plan.floor, plan.summary()
    assert f"{plan.micro_batches} accumulated micro-batches" in plan.summary()
    assert max(hist.peak_allocated_bytes) <= b, (hist.peak_allocated_bytes, b)
    assert np.isfinite(hist.loss).all()
    # the fewest that fit: half as many do not
    if plan.micro_batches > 2:
        with pytest.raises(spad.MemoryBudgetError):
            spad.Budget(b, max_micro_batches=plan.micro_batches // 2).plan(
                model, F.cross_entropy, spad.tensor(X[:MB_BATCH]), y[:MB_BATCH], opt)
    # no splitting allowed, or an optimizer that cannot accumulate: the floor error, parameters untouched
    before = [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(spad.MemoryBudgetError, match="below the floor"):
        spad.Budget(b, max_micro_batches=1).plan(model, F.cross_entropy, spad.tensor(X[:MB_BATCH]), y[:MB_BATCH], opt)
    opt_ib = optim.SGD(model.parameters(), lr=0.01, in_backward=True)
    with pytest.raises(spad.MemoryBudgetError, match="below the floor"):
        fit(model, F.cross_entropy, DataLoader(X, y, MB_BATCH, seed=0), opt_ib, 1, memory_budget=b, progress=False)
    opt_ib.remove_hooks()
    for a, p in zip(before, model.parameters()):
        np.testing.assert_array_equal(p.numpy(), a)
    with pytest.raises(ValueError, match="max_micro_batches"):
        spad.Budget(b, max_micro_batches=0)


class _FixedSplit(spad.Budget):
    """Every site exact, the batch in 4 accumulated micro-batches: fit's accumulation alone."""

    def plan(self, model, loss_fn, x, y, optimizer=None, step=0, micro_batches_ok=True):
        for _, m in sites_of(model):
            self._impl.set_site_keep(m.weight, 1.0)
        p = spad.budget.BudgetPlan(budget=self.nbytes, floor=0, fixed=0, keeps={}, input_bytes={}, variance={},
                                   predicted_peak=0, measured_peak=0, micro_batches=4)
        self.plans.append(p)
        return p


def test_accumulated_micro_batches_give_the_whole_batch_step():
    X, y = _data(n=2 * BATCH + 6)  # a ragged last batch, and micro-batches of unequal size
    params = []
    for budget in (None, _FixedSplit(10 ** 12, base=S.RAD())):
        model = nn.mlp(SIZES, seed=0)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        hist = fit(model, F.cross_entropy, DataLoader(X, y, BATCH + 2, seed=3), opt, 2,
                   memory_budget=budget, progress=False)
        params.append(([p.numpy().copy() for p in model.parameters()], hist.loss))
    for a, b in zip(params[0][0], params[1][0]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params[1][1], params[0][1], rtol=1e-5)


def _same_floor(X, y, implicit):
    model = nn.mlp(SIZES, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, in_backward=True)
    if not implicit:
        opt.remove_hooks()
        opt._attach("SGD", implicit=False)
    plan = spad.Budget(10 ** 12, base=S.RAD(mode="same", seed=1)).plan(
        model, F.cross_entropy, spad.tensor(X[:BATCH]), y[:BATCH], opt)
    assert opt.in_backward and opt._implicit == implicit  # the probes put the caller's hooks back
    return plan.floor


def test_in_backward_probe_measures_the_compact_dw_step():
    """Under RAD mode="same" an in-backward optimizer takes dW as compact rows and never builds
    it dense, so its floor is below the same step's with dense dW hooks; a budget between the two
    must plan (the probe measures the step it plans for) and every step must stay within it."""
    X, y = _data()
    compact, dense = _same_floor(X, y, True), _same_floor(X, y, False)
    assert compact < dense, (compact, dense)
    b = (compact + dense) // 2
    model = nn.mlp(SIZES, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, in_backward=True)
    budget = spad.Budget(b, base=S.RAD(mode="same", seed=1), resolve_every=3)
    hist = fit(model, F.cross_entropy, DataLoader(X, y, BATCH, seed=0), opt, 1, memory_budget=budget,
               progress=False)
    assert max(hist.peak_allocated_bytes) <= b, (hist.peak_allocated_bytes, b, compact, dense)
    assert hist.budget_plans[0].floor <= b and hist.budget_plans[0].micro_batches == 1
