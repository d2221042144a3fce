"""Optimizer conformance: hand-computed trajectories, the ill-conditioned quadratic,
scale invariance of the adaptive methods, parameter checks, schedules and averages."""
import math

import numpy as np
import pytest

import spad
import spad.optim as optim

GRADS = [np.array([1.0, -2.0]), np.array([0.5, 3.0]), np.array([-1.5, 0.25])]
THETA0 = np.array([1.0, -1.0])


def run_fixed(opt_cls, steps=3, **kw):
    """Trajectory of a float64 parameter fed the fixed gradient sequence GRADS."""
    p = spad.tensor(THETA0.copy(), requires_grad=True)
    opt = opt_cls([p], **kw)
    traj = []
    for g in GRADS[:steps]:
        p.grad = spad.tensor(g.copy())
        opt.step()
        traj.append(p.numpy().copy())
    return np.array(traj)


# Reference implementations, written as in Goodfellow et al. ch. 8, element by element.
def ref_sgd(lr, mu=0.0, nesterov=False, wd=0.0):
    th, v, out = THETA0.copy(), np.zeros(2), []
    for g in GRADS:
        g = g + wd * th
        if mu == 0:
            th = th - lr * g
        elif not nesterov:  # Alg. 8.2 with v = -lr * buf
            v = mu * v - lr * g
            th = th + v
        else:  # Alg. 8.3: g is taken at the interim point; we track that point, th + mu*v
            v = mu * v - lr * g
            th = th + v
        out.append(th + mu * v if nesterov else th.copy())
    return np.array(out)


def ref_adagrad(lr, eps):
    th, r, out = THETA0.copy(), np.zeros(2), []
    for g in GRADS:
        r = r + g * g
        th = th - lr * g / (np.sqrt(r) + eps)
        out.append(th)
    return np.array(out)


def ref_rmsprop(lr, alpha, eps, mu=0.0, nesterov=False):
    th, r, v, out = THETA0.copy(), np.zeros(2), np.zeros(2), []
    for g in GRADS:
        r = alpha * r + (1 - alpha) * g * g
        s = g / (np.sqrt(r) + eps)
        if mu == 0:
            th = th - lr * s
            out.append(th)
        else:  # Alg. 8.6 with the look-ahead point tracked, as for Nesterov SGD
            v = mu * v - lr * s
            th = th + v
            out.append(th + mu * v if nesterov else th.copy())
    return np.array(out)


def ref_adam(lr, b1, b2, eps, wd=0.0, decoupled=False):
    th, m, s, out = THETA0.copy(), np.zeros(2), np.zeros(2), []
    for t, g in enumerate(GRADS, start=1):
        if decoupled:
            th = th * (1 - lr * wd)
        else:
            g = g + wd * th
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * g * g
        th = th - lr * (m / (1 - b1**t)) / (np.sqrt(s / (1 - b2**t)) + eps)
        out.append(th)
    return np.array(out)


def test_sgd_plain_literal_values():
    # theta - 0.1*g, by hand: (0.9, -0.8), (0.85, -1.1), (1.0, -1.125)
    np.testing.assert_allclose(run_fixed(optim.SGD, lr=0.1), [[0.9, -0.8], [0.85, -1.1], [1.0, -1.125]])


def test_sgd_momentum_literal_values():
    # buf: (1,-2), (1.4,1.2), (-0.24,1.33); theta -= 0.1*buf
    np.testing.assert_allclose(run_fixed(optim.SGD, lr=0.1, momentum=0.9),
                               [[0.9, -0.8], [0.76, -0.92], [0.784, -1.053]])


@pytest.mark.parametrize(
    "cls,kw,ref",
    [
        (optim.SGD, dict(lr=0.1), lambda: ref_sgd(0.1)),
        (optim.SGD, dict(lr=0.1, weight_decay=0.01), lambda: ref_sgd(0.1, wd=0.01)),
        (optim.SGD, dict(lr=0.1, momentum=0.9), lambda: ref_sgd(0.1, 0.9)),
        (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True), lambda: ref_sgd(0.1, 0.9, True)),
        (optim.Adagrad, dict(lr=0.5, eps=1e-10), lambda: ref_adagrad(0.5, 1e-10)),
        (optim.RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-8), lambda: ref_rmsprop(0.01, 0.9, 1e-8)),
        (optim.RMSprop, dict(lr=0.01, alpha=0.9, momentum=0.5), lambda: ref_rmsprop(0.01, 0.9, 1e-8, 0.5)),
        (optim.RMSprop, dict(lr=0.01, alpha=0.9, momentum=0.5, nesterov=True),
         lambda: ref_rmsprop(0.01, 0.9, 1e-8, 0.5, True)),
        (optim.Adam, dict(lr=0.1), lambda: ref_adam(0.1, 0.9, 0.999, 1e-8)),
        (optim.Adam, dict(lr=0.1, weight_decay=0.1), lambda: ref_adam(0.1, 0.9, 0.999, 1e-8, 0.1)),
        (optim.AdamW, dict(lr=0.1, weight_decay=0.1), lambda: ref_adam(0.1, 0.9, 0.999, 1e-8, 0.1, True)),
    ],
)
def test_three_step_trajectories(cls, kw, ref):
    np.testing.assert_allclose(run_fixed(cls, **kw), ref(), rtol=1e-12, atol=1e-12)


def test_first_adam_step_is_lr_times_sign():
    # bias correction makes step 1 exactly lr * g/|g| (up to eps): a classic hand check
    np.testing.assert_allclose(run_fixed(optim.Adam, steps=1, lr=0.1)[0], THETA0 - 0.1 * np.sign(GRADS[0]))


def test_float32_parameters_and_version_bump():
    p = spad.tensor(np.ones(3, np.float32), requires_grad=True)
    opt = optim.Adam([p], lr=0.1)
    p.grad = spad.tensor(np.ones(3, np.float32))
    v0 = p._version
    opt.step()
    assert p._version == v0 + 1
    assert p.dtype == np.float32 and opt.state[0]["exp_avg"].dtype == np.float32
    np.testing.assert_allclose(p.numpy(), 0.9, rtol=1e-6)


def test_step_between_forward_and_backward_is_caught():
    W = spad.tensor(np.ones((3, 2), np.float32), requires_grad=True)
    x = spad.tensor(np.ones((4, 3), np.float32), requires_grad=True)
    y = (x @ W).sum()  # saves W for dx
    W.grad = spad.tensor(np.ones((3, 2), np.float32))
    optim.SGD([W], lr=0.1).step()
    with pytest.raises(RuntimeError, match="modified by an in-place"):
        y.backward()


def test_state_is_shared_with_numpy():
    p = spad.tensor(np.zeros(2), requires_grad=True)
    opt = optim.SGD([p], lr=1.0, momentum=0.5)
    buf = opt.state[0]["momentum"]
    p.grad = spad.tensor(np.array([1.0, 2.0]))
    opt.step()
    np.testing.assert_array_equal(buf, [1.0, 2.0])  # the C++ update wrote into this very array


def test_params_without_grad_are_skipped_and_zero_grad():
    a = spad.tensor(np.ones(2), requires_grad=True)
    b = spad.tensor(np.ones(2), requires_grad=True)
    opt = optim.SGD([a, b], lr=1.0)
    a.grad = spad.tensor(np.ones(2))
    opt.step()
    np.testing.assert_array_equal(a.numpy(), 0)
    np.testing.assert_array_equal(b.numpy(), 1)
    opt.zero_grad()
    assert a.grad is None


# ---- f(θ) = ½ θᵀAθ, A = diag(1, 100) ----------------------------------------------------
A = np.array([1.0, 100.0])


def quad_steps(opt_factory, max_steps=5000, scale=1.0, record=False):
    p = spad.tensor(np.array([1.0, 1.0]), requires_grad=True)
    a = spad.tensor(A * scale)
    opt = opt_factory([p])
    traj = []
    for k in range(max_steps):
        if np.linalg.norm(p.numpy()) < 1e-6 and not record:
            return k
        opt.zero_grad()
        (0.5 * (a * p * p).sum()).backward()
        opt.step()
        traj.append(p.numpy().copy())
        if not np.all(np.isfinite(p.numpy())) or np.linalg.norm(p.numpy()) > 1e6:
            return math.inf if not record else np.array(traj)
    return np.array(traj) if record else max_steps


def test_heavy_ball_beats_gd_on_ill_conditioned_quadratic():
    lam_min, lam_max = A
    gd = quad_steps(lambda ps: optim.SGD(ps, lr=2 / (lam_min + lam_max)))  # best constant GD step
    rho = ((math.sqrt(lam_max) - math.sqrt(lam_min)) / (math.sqrt(lam_max) + math.sqrt(lam_min))) ** 2
    lr = 4 / (math.sqrt(lam_max) + math.sqrt(lam_min)) ** 2
    hb = quad_steps(lambda ps: optim.SGD(ps, lr=lr, momentum=rho))
    assert gd < 5000 and hb * 5 <= gd, (gd, hb)


def test_gd_diverges_above_two_over_lambda_max():
    assert quad_steps(lambda ps: optim.SGD(ps, lr=2 / A.max() * 1.05), max_steps=2000) == math.inf
    assert quad_steps(lambda ps: optim.SGD(ps, lr=2 / A.max() * 0.95), max_steps=5000) < 5000


@pytest.mark.parametrize(
    "factory",
    [
        lambda ps: optim.Adam(ps, lr=0.01, eps=1e-12),
        lambda ps: optim.AdamW(ps, lr=0.01, eps=1e-12, weight_decay=0.0),
        lambda ps: optim.RMSprop(ps, lr=0.01, eps=1e-12),
        lambda ps: optim.RMSprop(ps, lr=0.01, eps=1e-12, momentum=0.5, nesterov=True),
        lambda ps: optim.Adagrad(ps, lr=0.1, eps=1e-12),
    ],
)
def test_adaptive_methods_are_invariant_to_loss_scale(factory):
    t1 = quad_steps(factory, max_steps=30, record=True)
    t1000 = quad_steps(factory, max_steps=30, scale=1000.0, record=True)
    np.testing.assert_allclose(t1, t1000, rtol=1e-8, atol=1e-10)


def test_sgd_is_not_invariant_to_loss_scale():
    f = lambda ps: optim.SGD(ps, lr=1e-6)  # noqa: E731
    t1 = quad_steps(f, max_steps=5, record=True)
    t1000 = quad_steps(f, max_steps=5, scale=1000.0, record=True)
    assert not np.allclose(t1, t1000, rtol=1e-3)


# ---- parameter checks --------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda p: optim.SGD(p, lr=0.0),
        lambda p: optim.SGD(p, lr=-1.0),
        lambda p: optim.SGD(p, lr=0.1, momentum=-0.1),
        lambda p: optim.SGD(p, lr=0.1, nesterov=True),
        lambda p: optim.SGD(p, lr=0.1, weight_decay=-1),
        lambda p: optim.Adam(p, betas=(1.0, 0.999)),
        lambda p: optim.Adam(p, betas=(0.9, -0.1)),
        lambda p: optim.AdamW(p, lr=0.0),
        lambda p: optim.RMSprop(p, alpha=1.5),
        lambda p: optim.Adagrad(p, lr=-0.1),
    ],
)
def test_bad_hyperparameters(make):
    with pytest.raises(ValueError):
        make([spad.zeros(2, requires_grad=True)])


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop, optim.Adagrad])
def test_empty_parameter_list(cls):
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([], lr=0.1)


def test_non_grad_parameter_rejected():
    with pytest.raises(ValueError, match="does not require grad"):
        optim.SGD([spad.zeros(2)], lr=0.1)


def test_optimizer_state_dict_round_trip():
    p = spad.tensor(np.ones(2), requires_grad=True)
    opt = optim.Adam([p], lr=0.1)
    p.grad = spad.tensor(np.array([1.0, -1.0]))
    opt.step()
    sd = opt.state_dict()
    opt2 = optim.Adam([spad.tensor(np.ones(2), requires_grad=True)], lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.steps == 1 and opt2.lr == 0.1
    np.testing.assert_array_equal(opt2.state[0]["exp_avg"], opt.state[0]["exp_avg"])


# ---- schedules, averages, clipping -------------------------------------------------------
def test_schedules():
    s = optim.step_decay(1.0, 10, 0.5)
    assert s(0) == 1.0 and s(9) == 1.0 and s(10) == 0.5 and s(25) == 0.25
    lin = optim.linear_decay(1.0, tau=100, eps_tau=0.01)
    assert lin(0) == 1.0 and lin(50) == pytest.approx(0.505) and lin(100) == pytest.approx(0.01)
    assert lin(1000) == pytest.approx(0.01)
    assert optim.linear_decay(2.0, 10)(10) == pytest.approx(0.02)  # default: 1% of lr0
    c = optim.cosine(1.0, 100, 0.1)
    assert c(0) == pytest.approx(1.0) and c(50) == pytest.approx(0.55) and c(100) == pytest.approx(0.1)
    w = optim.warmup(optim.cosine(1.0, 100), 4)
    assert [w(k) for k in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert w(4) == pytest.approx(1.0)


def test_lr_scheduler_drives_optimizer():
    p = spad.zeros(1, requires_grad=True)
    opt = optim.SGD([p], lr=1.0)
    sch = optim.LRScheduler(opt, optim.step_decay(1.0, 2, 0.1))
    lrs = [opt.lr] + [sch.step() for _ in range(4)]
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


def test_polyak_and_ema():
    p = spad.tensor(np.array([0.0]), requires_grad=True)
    pol, ema = optim.Polyak([p]), optim.EMA([p], decay=0.5)
    for v in [1.0, 2.0, 3.0]:
        spad._core.assign_(p, spad.tensor(np.array([v])))
        pol.update()
        ema.update()
    np.testing.assert_allclose(pol.averages[0], [1.5])  # mean of 0, 1, 2, 3
    np.testing.assert_allclose(ema.averages[0], [0.5 * (0.5 * (0.5 * 1) + 1) + 1.5])
    with pol.applied():
        np.testing.assert_allclose(p.numpy(), [1.5])
    np.testing.assert_allclose(p.numpy(), [3.0])


def test_clip_grad_norm():
    a = spad.zeros(2, requires_grad=True)
    b = spad.zeros(1, requires_grad=True)
    a.grad = spad.tensor(np.array([3.0, 0.0], np.float32))
    b.grad = spad.tensor(np.array([4.0], np.float32))
    assert optim.clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([a.grad.numpy(), b.grad.numpy()]), [0.6, 0, 0.8], rtol=1e-6)
    assert optim.clip_grad_norm([a, b], 10.0) == pytest.approx(1.0, rel=1e-6)  # no change below the cap
    with pytest.raises(ValueError):
        optim.clip_grad_norm([a], 0.0)
