"""The policy clock (Note [Policy clock] in csrc/core/sampling/sampling.h), the "nothing sampled" warning, thread
safety of a policy's state, and the accounting rule for raw leaves."""
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import spad
import spad.functional as F
import spad.sampling as S

B, N, M = 32, 48, 5


@pytest.fixture
def layer():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, N))
    X[:, : N // 4] *= 4.0
    W = spad.tensor(rng.standard_normal((N, M)) * 0.2, requires_grad=True)
    x, y = spad.tensor(X), spad.tensor(rng.standard_normal((B, M)))

    def loss_fn():
        return F.mse_loss(F.linear(x, W), y)

    return W, loss_fn


POLICIES = [
    ("scored-exact", lambda: S.SPAD(0.2, refresh=3, scoring="exact", paths="scored", seed=1)),
    ("scored-sampled", lambda: S.SPAD(0.2, refresh=3, paths="scored", seed=2)),
    ("magnitude", lambda: S.SPAD(0.2, seed=3)),
    ("crs", lambda: S.CRS(0.25, seed=4)),
    ("rad", lambda: S.RAD(0.2, seed=5)),
]


def _train(W, loss_fn, pol, steps, wrap):
    """`steps` SGD steps; wrap="loop": one use() around the loop, "step": one per step.
    Returns the gradients, the tape bytes of each forward pass and the policy's steps."""
    W0 = W.numpy().copy()
    grads, tapes, clock = [], [], []

    def one():
        W.grad = None
        loss = loss_fn()
        tapes.append(spad.memory_stats()["tape_bytes"])
        loss.backward()
        clock.append(pol.step)
        grads.append(W.grad.numpy().copy())
        with spad.no_grad():
            W.numpy()[...] -= 0.05 * W.grad.numpy()

    if wrap == "loop":
        with S.use(pol):
            for _ in range(steps):
                one()
    else:
        for _ in range(steps):
            with S.use(pol):
                one()
    W.numpy()[...] = W0
    return np.stack(grads), tapes, clock


@pytest.mark.parametrize("make", [m for _, m in POLICIES], ids=[n for n, _ in POLICIES])
def test_one_use_around_the_loop_is_one_use_per_step(layer, make):
    W, loss_fn = layer
    g_loop, t_loop, c_loop = _train(W, loss_fn, make(), 10, "loop")
    g_step, t_step, c_step = _train(W, loss_fn, make(), 10, "step")
    np.testing.assert_array_equal(g_loop, g_step)  # bit-identical
    assert t_loop == t_step  # the same scoring passes (full tape) at the same steps
    assert c_loop == c_step == list(range(1, 11))


def test_exact_scoring_passes_follow_forward_passes(layer):
    """refresh=3 with exact scoring: passes 1, 4, 7, 10 keep the exact input, whatever the
    use() blocks look like (here: one block around everything)."""
    W, loss_fn = layer
    pol = S.SPAD(0.2, refresh=3, scoring="exact", paths="scored")
    _, tapes, _ = _train(W, loss_fn, pol, 10, "loop")
    full = B * N * 8  # the exact layer input (plus the loss's few saved bytes)
    assert [t >= full for t in tapes] == [i % 3 == 0 for i in range(10)], tapes


def test_shared_weight_stays_in_one_step():
    """A weight used twice in one forward pass (an unrolled recurrence) is one step, and a
    forward pass whose graph is dropped without backward still ends its step."""
    rng = np.random.default_rng(1)
    W = spad.tensor(rng.standard_normal((8, 8)) * 0.3, requires_grad=True)
    x = spad.tensor(rng.standard_normal((4, 8)))
    pol = S.RAD(0.5, seed=0)
    with S.use(pol):
        h = x
        for _ in range(3):
            h = F.tanh(F.linear(h, W))
        assert pol.step == 1
        h.sum().backward()
        F.linear(x, W).sum()  # dropped at once: its payloads die with it
        F.linear(x, W).sum()
    assert pol.step == 3
    assert pol._impl.visits == 5


def test_use_without_sites_warns_once(layer):
    W, loss_fn = layer
    pol = S.RAD(0.2)
    x = spad.tensor(np.ones((3, N)))
    with pytest.warns(UserWarning, match="no sampling site") as rec:
        with S.use(pol):
            with spad.no_grad():
                F.linear(x, W)
    assert len(rec) == 1 and "RAD" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with S.use(pol):
            loss_fn().backward()
        with S.use(None):  # exact: nothing to warn about
            pass


def test_two_threads():
    """Policy state is per policy object and guarded by its mutex: two threads, each with
    its own policy, get the gradients a single thread gets; two threads sharing one policy
    (backward passes run without the GIL, updating the same site scores) keep its counts.
    In a subprocess, so the threads cannot disturb this process's global tape counters."""
    script = textwrap.dedent("""
        import threading
        import numpy as np
        import spad, spad.functional as F, spad.sampling as S
        rng = np.random.default_rng(0)
        X = spad.tensor(rng.standard_normal((64, 256)))
        Y = spad.tensor(rng.standard_normal((64, 32)))
        W0 = rng.standard_normal((256, 32)) * 0.1
        def run(pol, steps, out):
            W = spad.tensor(W0.copy(), requires_grad=True)
            for _ in range(steps):
                W.grad = None
                with S.use(pol):
                    loss = F.mse_loss(F.linear(X, W), Y)
                loss.backward()
                out.append(W.grad.numpy().copy())
        make = lambda: S.SPAD(0.1, refresh=2, paths="scored", seed=7)
        ref = []
        run(make(), 12, ref)
        outs = [[], []]
        ts = [threading.Thread(target=run, args=(make(), 12, outs[i])) for i in range(2)]
        [t.start() for t in ts]; [t.join() for t in ts]
        for o in outs:
            assert all(np.array_equal(a, b) for a, b in zip(o, ref)), "per-policy state leaked across threads"
        shared = S.CRS(0.25, seed=1)
        outs = [[], []]
        ts = [threading.Thread(target=run, args=(shared, 30, outs[i])) for i in range(2)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert shared._impl.visits == 60 and 30 <= shared.step <= 60, (shared._impl.visits, shared.step)
        assert all(np.isfinite(g).all() for o in outs for g in o)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


@pytest.mark.parametrize("policy", [None, lambda: S.RAD(0.1, seed=0), lambda: S.SPAD(0.1, seed=0)],
                         ids=["exact", "rad", "spad"])
def test_raw_leaf_weights_are_not_tape(policy):
    """A weight made with spad.tensor(..., requires_grad=True) lives anyway, like an nn
    parameter: the same tape bytes either way (functional-style models)."""
    rng = np.random.default_rng(2)
    sizes = [64, 128, 10]
    x = spad.tensor(rng.standard_normal((16, 64)).astype(np.float32))
    tapes = []
    for as_param in (False, True):
        Ws = []
        for a, b in zip(sizes, sizes[1:]):
            w = spad.tensor((rng.standard_normal((a, b)) * 0.1).astype(np.float32), requires_grad=True)
            w._is_param = as_param
            Ws.append(w)
        with S.use(policy() if policy else None):
            h = F.relu(x @ Ws[0])
            loss = (F.linear(h, Ws[1]) ** 2).sum()
        st = spad.memory_stats()
        tapes.append((st["tape_bytes"], st["exact_tape_bytes"]))
        loss.backward()
    assert tapes[0] == tapes[1], tapes
