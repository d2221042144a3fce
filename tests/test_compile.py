"""spad.compile: a recorded step replayed in C++ equals the eager step; re-recording on new
shapes; what cannot be replayed is reported, never silently replayed wrong."""
from __future__ import annotations

import gc
import re
import warnings

import numpy as np
import pytest

import spad
import spad.functional as F
import spad.nn as nn
import spad.optim as optim
import spad.sampling as S
from compile_common import _batches, _max_rel, _mlp_step, _train_step


POLICIES = {"exact": lambda: None, "rad0.1": lambda: S.RAD(keep=0.1, seed=3),
            "spad0.2": lambda: S.SPAD(keep=0.2, refresh=5, seed=1), "crs0.3": lambda: S.CRS(keep=0.3, seed=2)}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_compiled_equals_eager_digits_100_steps(digits, policy):
    X, y = digits
    pol = POLICIES[policy]
    spad.manual_seed(7)
    m1, eager = _mlp_step(policy=pol())
    m2, step = _mlp_step(policy=pol())
    compiled = spad.compile(step)
    losses = []
    for xb, yb in _batches(X, y, 100):
        l1 = eager(spad.tensor(xb), yb)
        l2 = compiled(xb, yb)
        losses.append((float(l1), float(l2)))
    assert compiled.recordings == 1 and compiled.program.replays == 99
    assert compiled.lowered and compiled.program.lowered_runs == 99  # sampled packs lower too
    assert _max_rel(m1, m2) <= 1e-6
    assert all(a == b for a, b in losses)
    assert losses[-1][0] < losses[0][0]  # it trained


def test_other_batch_size_rerecords_and_matches_eager(digits):
    X, y = digits
    m1, eager = _mlp_step()
    m2, step = _mlp_step()
    compiled = spad.compile(step)
    for xb, yb in _batches(X, y, 5):
        eager(spad.tensor(xb), yb)
        compiled(xb, yb)
    for xb, yb in _batches(X, y, 3, batch=17, seed=1):
        assert float(eager(spad.tensor(xb), yb)) == float(compiled(xb, yb))
    assert compiled.recordings == 2
    for xb, yb in _batches(X, y, 2, seed=2):  # back to batch 32: the first program, from the cache
        assert float(eager(spad.tensor(xb), yb)) == float(compiled(xb, yb))
    assert compiled.recordings == 2
    assert _max_rel(m1, m2) == 0.0


def test_adam_dropout_and_mse_match_eager():
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32))
            for _ in range(20)]
    # Dropout draws from the global RNG: run each engine from the same seed, one after the other.
    spad.manual_seed(11)
    m1, eager = _mlp_step((4, 32, 3), opt="adam", loss=F.mse_loss, dropout=0.3)
    l1 = [float(eager(spad.tensor(x), spad.tensor(t))) for x, t in data]
    spad.manual_seed(11)
    m2, step = _mlp_step((4, 32, 3), opt="adam", loss=F.mse_loss, dropout=0.3)
    compiled = spad.compile(step)
    l2 = [float(compiled(x, t)) for x, t in data]
    assert l1 == l2
    assert _max_rel(m1, m2) == 0.0  # Adam's bias correction advanced per replay, dropout masks drawn alike
    assert compiled.lowered and "= dropout(" in compiled.dump()  # the mask's RNG counters taken as eager takes them


@pytest.mark.parametrize("training,p", [(False, 0.5), (True, 0.0)])
def test_identity_dropout_does_not_let_an_activation_fuse_over_another_reader(training, p):
    # dropout(y) in eval mode or with p = 0 is y itself: a relu on it must not be fused in place
    # into y's linear layer while a sigmoid still reads y.
    rng = np.random.default_rng(0)
    wf0 = rng.standard_normal((6, 8)).astype(np.float32)
    w20 = (rng.standard_normal((8, 8)) * 0.3).astype(np.float32)
    data = [rng.standard_normal((4, 6)).astype(np.float32) for _ in range(4)]

    def make():
        wf, w2 = spad.tensor(wf0.copy()), spad.tensor(w20.copy(), requires_grad=True)
        o = optim.SGD([w2], lr=0.1)

        def step(x):
            yv = F.linear(x, wf, None)
            target = F.sigmoid(yv)
            loss = F.mse_loss(F.linear(F.relu(F.dropout(yv, p, training)), w2, None), target)
            o.zero_grad()
            loss.backward()
            o.step()
            return loss

        return step

    eager, compiled = make(), spad.compile(make())
    assert [float(eager(spad.tensor(x))) for x in data] == [float(compiled(x)) for x in data]
    assert compiled.lowered


@pytest.mark.parametrize("train", [True, False])
def test_lowered_dropout_between_layers_and_in_eval_mode(train):
    # Dropout after a tanh (not fused into the linear layer), train and eval mode; the global
    # RNG is shared with other draws in the step (a second dropout), so counters must match.
    rng = np.random.default_rng(1)
    data = [(rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 4, 16)) for _ in range(15)]

    def make():
        model = nn.Sequential(nn.Linear(6, 24, seed=0), nn.Tanh(), nn.Dropout(0.5), nn.Linear(24, 24, seed=1),
                              nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 4, seed=2))
        model.train(train)
        return model, _train_step(model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9))

    spad.manual_seed(5)
    m1, eager = make()
    l1 = [float(eager(spad.tensor(x), yb)) for x, yb in data]
    spad.manual_seed(5)
    m2, step = make()
    compiled = spad.compile(step)
    l2 = [float(compiled(x, yb)) for x, yb in data]
    assert l1 == l2 and _max_rel(m1, m2) == 0.0
    kernels = compiled.dump().split("lowered:")[1]  # eval mode: the records keep dropout, the kernels do not
    assert compiled.lowered and ("= dropout(" in kernels) == train


def test_conv_step_matches_eager():
    rng = np.random.default_rng(1)

    def make():
        model = nn.Sequential(nn.Conv2d(1, 4, 3, seed=0), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5, seed=1))
        return model, _train_step(model, optim.SGD(model.parameters(), lr=0.1, momentum=0.5))

    m1, eager = make()
    m2, step = make()
    compiled = spad.compile(step)
    for _ in range(5):
        x = rng.random((6, 1, 8, 8), dtype=np.float32)
        yb = rng.integers(0, 5, 6)
        assert float(eager(spad.tensor(x), yb)) == float(compiled(x, yb))
    assert _max_rel(m1, m2) == 0.0
    # The replay keeps its plan: in-place buffer reuse is off under a plan (reuse.cpp), so the
    # replayed allocations follow the recorded order.
    assert compiled.program.plan_bytes > 0 and not compiled.program.plan_dropped
    assert not compiled.lowered and "conv2d" in compiled.lower_note  # replayed record by record


def test_plan_arena_is_used_and_smaller_than_eager_peak(digits):
    X, y = digits
    _, step = _mlp_step()
    compiled = spad.compile(step)
    for xb, yb in _batches(X, y, 4):
        compiled(xb, yb)
    p = compiled.program
    assert 0 < p.plan_bytes < p.eager_peak_bytes
    assert not p.plan_dropped
    text = str(compiled)
    assert "arena" in text and "linear" in text and "sgd_step" in text
    assert compiled.n_records == p.n_records == len(re.findall(r"^  \d+: ", text, re.M)) == 8  # 2 policy switches; the MLP is one linear_chain


def test_returned_loss_is_a_fresh_tensor(digits):
    X, y = digits
    _, step = _mlp_step()
    compiled = spad.compile(step)
    (xb, yb), (xb2, yb2) = list(_batches(X, y, 2))
    compiled(xb, yb)
    l1 = compiled(xb2, yb2)
    v = float(l1)
    compiled(xb, yb)
    assert float(l1) == v and l1.grad_fn is None


def test_dtype_change_rerecords():
    W = spad.tensor(np.ones((3, 1)), requires_grad=True)  # float64 parameter

    def step(x):
        loss = (x @ W).sum()
        W.grad = None
        loss.backward()
        return loss

    compiled = spad.compile(step)
    compiled(np.ones((2, 3)))
    compiled(np.ones((2, 3), np.float32).astype(np.float64))
    assert compiled.recordings == 1
    with pytest.raises(TypeError):  # float32 x with a float64 W: re-recorded, and the op refuses
        compiled(np.ones((2, 3), np.float32))


def test_item_during_recording_warns_and_unused_input_warns():
    W = spad.tensor(np.ones((3, 1), np.float32), requires_grad=True)

    def step(x, unused):
        loss = (x @ W).sum()
        if loss.item() > 0:
            loss = loss * 2.0
        return loss

    compiled = spad.compile(step)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        compiled(np.ones((2, 3), np.float32), np.ones(2, np.float32))
    msgs = " | ".join(str(x.message) for x in w)
    assert "item()" in msgs and "input 1" in msgs


def test_tensor_from_outside_the_recording_is_refused():
    W = spad.tensor(np.ones((3, 1), np.float32), requires_grad=True)
    h = W * 2.0  # made by an op before recording: the replay could not recompute it

    def step(x):
        return (x @ h).sum()

    compiled = spad.compile(step)
    with pytest.raises(RuntimeError, match="recorder did not see"):
        compiled(np.ones((2, 3), np.float32))
    assert (W * 3.0).grad_fn is not None  # recording was aborted: eager mode works


def test_bad_returns_and_errors_abort_recording():
    def bad(x):
        return 1.0

    with pytest.raises(TypeError, match="loss tensor"):
        spad.compile(bad)(np.ones(2, np.float32))

    def boom(x):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        spad.compile(boom)(np.ones(2, np.float32))
    with pytest.raises(RuntimeError, match="not been recorded"):
        spad.compile(boom).plan_bytes
    with pytest.raises(TypeError):
        spad.compile(42)


def test_constants_made_while_recording_keep_the_plan(digits):
    X, y = digits
    model = nn.mlp([64, 128, 10], seed=0)
    o = optim.SGD(model.parameters(), lr=0.05)

    def step(x, yb):
        loss = F.cross_entropy(model(x) * 0.5 + 1.0, yb) * 2.0  # scalars made in Python: constants
        o.zero_grad()
        loss.backward()
        o.step()
        return loss

    compiled = spad.compile(step)
    for xb, yb in _batches(X, y, 4):
        compiled(xb, yb)
    assert compiled.plan_bytes > 0 and not compiled.program.plan_dropped


def test_rosenbrock_program_without_inputs_matches_eager():
    def make():
        p = spad.tensor(np.array([-1.2, 1.0]), requires_grad=True)
        o = optim.Adam([p], lr=0.01)

        def step():
            x, y = p[0], p[1]  # indexing: take with a constant index, recorded
            loss = (1.0 - x) ** 2 + 100.0 * (y - x ** 2) ** 2
            o.zero_grad()
            loss.backward()
            o.step()
            return loss

        return p, step

    p1, eager = make()
    p2, step = make()
    compiled = spad.compile(step)
    for _ in range(50):
        assert float(eager()) == float(compiled())
    np.testing.assert_array_equal(p1.numpy(), p2.numpy())
    assert compiled.recordings == 1


def test_step_returning_none_compiles_and_replays(digits):
    # finish(None): a step with no loss to return (the benchmark's training steps) must not be
    # refused by the Tensor caster that turns None away from ops.
    X, y = digits
    _, step = _mlp_step()

    def no_loss(x, y):
        step(x, y)

    compiled = spad.compile(no_loss)
    for xb, yb in _batches(X, y, 3):
        assert compiled(xb, yb) is None
    assert compiled.program.replays == 2 and not compiled.program.plan_dropped


# ---- lowered execution (csrc/core/replay/lower.h) ----

def _params_equal(m1, m2):
    return all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(m1.parameters(), m2.parameters()))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_lowered_step_is_taken_and_equals_eager_bit_for_bit(digits, opt):
    X, y = digits
    m1, eager = _mlp_step(opt=opt)
    m2, step = _mlp_step(opt=opt)
    m3, step3 = _mlp_step(opt=opt)
    lowered, records = spad.compile(step), spad.compile(step3, lower=False)
    for xb, yb in _batches(X, y, 100):
        l1 = float(eager(spad.tensor(xb), yb))
        assert l1 == float(lowered(xb, yb)) == float(records(xb, yb))
    assert lowered.lowered and lowered.lower_note == "" and lowered.program.lowered_runs == 99
    assert not records.lowered and records.program.lowered_runs == 0
    assert _params_equal(m1, m2) and _params_equal(m1, m3)
    for p, q in zip(m1.parameters(), m2.parameters()):  # gradients are left in .grad as in eager
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())
    assert "lowered: 4 forward kernels" in lowered.dump() and "linear+relu" in lowered.dump()


def test_lowered_workspace_shares_bytes_by_liveness(digits):
    # 64-32-32-10 at batch 8: one buffer per value and gradient would take the three
    # activations (1024 + 1024 + 320 bytes), two activation gradients (1024 each), the logits'
    # gradient and the softmax (320 each); placed by liveness, a layer's input gradient reuses
    # the bytes of the output its mask has consumed: at most activations + two gradients +
    # softmax are live at once (each rounded up to 64 bytes).
    X, y = digits
    _, step = _mlp_step((64, 32, 32, 10))
    compiled = spad.compile(step)
    for xb, yb in _batches(X, y, 3, batch=8):
        compiled(xb, yb)
    assert compiled.lowered
    every = 1024 + 1024 + 320 + 1024 + 1024 + 320 + 320
    ws = compiled.program.lowered_workspace_bytes
    assert ws < every and ws <= compiled.program.plan_bytes
    assert ws >= 1024 + 1024 + 1024 + 320  # h1, h2, the gradient of h2 and the logits live together


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lowered_functional_layers_batch_one_and_activations(dtype):
    # F.linear + standalone and fused activations, batch 1 (the gemm layouts of 1-row and
    # 1-column operands), in=1 and out=1 layers, MSE, SGD with Nesterov momentum and decay.
    rng = np.random.default_rng(3)

    def make():
        shapes = [(1, 8), (8, 8), (8, 8), (8, 1)]
        ps = [spad.tensor(rng_w.standard_normal(s).astype(dtype) * 0.5, requires_grad=True) for s in shapes]
        bs = [spad.tensor(np.zeros(s[1], dtype), requires_grad=True) for s in shapes]
        o = optim.SGD(ps + bs, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)

        def step(x, t):
            h = F.tanh(F.linear(x, ps[0], bs[0]))  # fused into the linear kernel
            h = F.sigmoid(h)  # on an activation: a kernel of its own
            h = F.sigmoid(F.linear(h, ps[1], bs[1]))
            h = F.relu(F.linear(h, ps[2], bs[2]))
            loss = F.mse_loss(F.linear(h, ps[3], bs[3]), t)
            o.zero_grad()
            loss.backward()
            o.step()
            return loss

        return ps + bs, step

    rng_w = np.random.default_rng(0)
    p1, eager = make()
    rng_w = np.random.default_rng(0)
    p2, step = make()
    compiled = spad.compile(step)
    for _ in range(30):
        x = rng.standard_normal((1, 1)).astype(dtype)
        t = np.sin(x).astype(dtype)
        assert float(eager(spad.tensor(x), spad.tensor(t))) == float(compiled(x, t))
    assert compiled.lowered, compiled.lower_note
    assert compiled.dump().count("linear+") == 3 and len(re.findall(r"= sigmoid\(v", compiled.dump())) == 1
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_rad_step_lowered_bit_for_bit(digits):
    # RAD keep 0.1: the lowered step packs and reads the same payloads as eager mode.
    X, y = digits
    spad.manual_seed(5)
    m1, eager = _mlp_step(policy=S.RAD(keep=0.1, seed=3))
    m2, step = _mlp_step(policy=S.RAD(keep=0.1, seed=3))
    compiled = spad.compile(step)
    for xb, yb in _batches(X, y, 100):
        assert float(eager(spad.tensor(xb), yb)) == float(compiled(xb, yb))
    assert compiled.lowered and compiled.program.lowered_runs == 99
    assert _params_equal(m1, m2)


def test_not_lowered_programs_say_why_and_still_match_eager():
    # A weight read twice (tied): its two gradient contributions would accumulate.
    def tied():
        W = spad.tensor(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32) * 0.3, requires_grad=True)
        o = optim.SGD([W], lr=0.1)

        def step(x, t):
            loss = F.mse_loss(F.linear(F.relu(F.linear(x, W)), W), t)
            o.zero_grad()
            loss.backward()
            o.step()
            return loss

        return W, step

    (W1, e), (W2, s) = tied(), tied()
    compiled = spad.compile(s)
    x, t = np.ones((2, 4), np.float32), np.zeros((2, 4), np.float32)
    for _ in range(3):
        assert float(e(spad.tensor(x), spad.tensor(t))) == float(compiled(x, t))
    assert not compiled.lowered and "read by two ops" in compiled.lower_note
    np.testing.assert_array_equal(W1.numpy(), W2.numpy())


def test_gradient_accumulated_across_steps_is_not_lowered():
    W = spad.tensor(np.ones((3, 2), np.float32), requires_grad=True)

    def step(x, t):  # no zero_grad: .grad accumulates over calls, as in eager mode
        loss = F.mse_loss(F.linear(x, W), t)
        loss.backward()
        return loss

    compiled = spad.compile(step)
    x, t = np.ones((1, 3), np.float32), np.zeros((1, 2), np.float32)
    for _ in range(3):
        compiled(x, t)
    assert not compiled.lowered and "not cleared" in compiled.lower_note
    np.testing.assert_array_equal(W.grad.numpy(), np.full((3, 2), 3 * 2.0 * 3 / 2, np.float32))


def test_lowered_keeps_a_gradient_the_user_holds(digits):
    X, y = digits
    model, step = _mlp_step((64, 16, 10))
    compiled = spad.compile(step)
    batches = list(_batches(X, y, 4))
    compiled(*batches[0])
    compiled(*batches[1])
    assert compiled.lowered
    held = model.parameters()[0].grad
    before = held.numpy().copy()
    compiled(*batches[2])
    np.testing.assert_array_equal(held.numpy(), before)  # a fresh buffer took the new gradient
    assert not np.array_equal(model.parameters()[0].grad.numpy(), before)


def test_lowered_errors_match_eager_and_change_nothing(digits):
    X, y = digits
    model, step = _mlp_step((64, 16, 10))
    compiled = spad.compile(step)
    for xb, yb in _batches(X, y, 2):
        compiled(xb, yb)
    assert compiled.lowered
    snap = [p.numpy().copy() for p in model.parameters()]
    xb, yb = next(_batches(X, y, 1))
    yb = yb.copy()
    yb[3] = 10
    with pytest.raises(ValueError, match=r"label 10 at position 3 is out of range"):
        compiled(xb, yb)
    xb = xb.copy()
    xb[0, 0] = np.nan
    with pytest.raises(ValueError, match="contain NaN or inf"):
        compiled(xb, np.zeros(32, np.int64))
    assert all(np.array_equal(a, p.numpy()) for a, p in zip(snap, model.parameters()))


def test_policy_active_at_entry_is_followed_by_the_lowered_step(digits):
    X, y = digits
    spad.manual_seed(1)
    m1, _ = _mlp_step((64, 32, 10), policy=None)
    m2, _ = _mlp_step((64, 32, 10), policy=None)

    # steps that do not set their own policy
    e = _train_step(m1, optim.SGD(m1.parameters(), lr=0.05))
    c = spad.compile(_train_step(m2, optim.SGD(m2.parameters(), lr=0.05)))
    bs = list(_batches(X, y, 4))
    for xb, yb in bs[:2]:
        assert float(e(spad.tensor(xb), yb)) == float(c(xb, yb))
    assert c.lowered and c.program.lowered_runs == 1
    pe, pc = S.RAD(keep=0.5, seed=4), S.RAD(keep=0.5, seed=4)
    for xb, yb in bs[2:]:  # a policy set outside the step: the lowered step samples under it
        with S.use(pe):
            l1 = float(e(spad.tensor(xb), yb))
        with S.use(pc):
            l2 = float(c(xb, yb))
        assert l1 == l2
    assert c.program.lowered_runs == 3 and _params_equal(m1, m2)


def test_optimizer_in_backward_replays_record_by_record(digits):
    # A gradient-complete hook updates inside backward(): the lowered path never runs then.
    X, y = digits

    def make():
        model = nn.mlp([64, 16, 10], seed=0)
        o = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, in_backward=True)
        return model, o, _train_step(model, o)

    m1, o1, eager = make()
    m2, o2, step = make()
    compiled = spad.compile(step)
    for xb, yb in _batches(X, y, 4):
        assert float(eager(spad.tensor(xb), yb)) == float(compiled(xb, yb))
    assert compiled.program.lowered_runs == 0 and "hook" in compiled.lower_note
    assert _params_equal(m1, m2)
    o1.remove_hooks()
    o2.remove_hooks()


def test_hooks_on_other_or_dead_leaves_do_not_keep_a_step_off_the_lowered_path(digits):
    # An in-backward optimizer on another model (alive, or dropped while its parameters died
    # with their hooks still registered) does not concern this step's parameters.
    X, y = digits
    other = nn.mlp([4, 3], seed=1)
    other_opt = optim.SGD(other.parameters(), lr=0.1, in_backward=True)
    dead = spad.tensor(np.ones(3, np.float32), requires_grad=True)
    spad._core.set_grad_complete_hook(dead, lambda t: None)
    del dead
    gc.collect()
    model = nn.mlp([64, 16, 10], seed=0)
    o = optim.SGD(model.parameters(), lr=0.05)
    compiled = spad.compile(_train_step(model, o))
    for xb, yb in _batches(X, y, 4):
        compiled(xb, yb)
    assert compiled.program.lowered_runs == 3
    other_opt.remove_hooks()
