"""spad.analysis: Hessian-vector products, the modified losses of GD and SGD, the explicit
regularizer, gradient flow, and the random-matrix diagnostics. Everything is float64 with
fixed seeds; each tolerance says where it comes from."""
from __future__ import annotations

import numpy as np
import pytest

import spad
import spad.analysis as A
import spad.functional as F
import spad.sampling as S
from spad.analysis import implicit as I
from spad.analysis import spectrum as Sp


def leaf(a):
    return spad.tensor(np.array(a, dtype=np.float64), requires_grad=True)


def mlp(rng, kind, batch=6, d=4, hidden=5, out=3):
    """A 2-layer tanh MLP with cross-entropy or MSE; returns (loss_fn, params)."""
    x = spad.tensor(rng.standard_normal((batch, d)))
    y = rng.integers(0, out, batch) if kind == "ce" else spad.tensor(rng.standard_normal((batch, out)))
    params = [leaf(rng.standard_normal((d, hidden)) * 0.7), leaf(rng.standard_normal(hidden) * 0.1),
              leaf(rng.standard_normal((hidden, out)) * 0.7)]
    W1, b1, W2 = params

    def loss_fn():
        o = F.linear(x, W1, b1).tanh() @ W2
        return F.cross_entropy(o, y) if kind == "ce" else F.mse_loss(o, y)

    return loss_fn, params


def least_squares(rng, n=12, d=3, batches=3):
    """C(w) = mean((X w - y)²) split into equal minibatches: (X, y, w, loss closures)."""
    X, y = rng.standard_normal((n, d)), rng.standard_normal((n, 1))
    w = leaf(rng.standard_normal((d, 1)))
    Xt, yt = spad.tensor(X), spad.tensor(y)

    def full():
        return F.mse_loss(Xt @ w, yt)

    def batch(k):
        sl = slice(k * n // batches, (k + 1) * n // batches)
        xb, yb = spad.tensor(X[sl].copy()), spad.tensor(y[sl].copy())
        return lambda: F.mse_loss(xb @ w, yb)

    return X, y, w, full, [batch(k) for k in range(batches)]


def ls_grad(X, y, w):
    return 2.0 / len(X) * X.T @ (X @ w - y)


# ---- Hessian-vector products -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_hvp_exact_matches_fd(kind, rng):
    loss_fn, params = mlp(rng, kind)
    vs = [rng.standard_normal(p.shape) for p in params]
    exact = A.hvp(loss_fn, params, vs, method="exact")
    fd = A.hvp(loss_fn, params, vs, method="fd")
    # default h ~ 6e-6 relative: truncation h²·|g'''| ~ 1e-10, rounding eps/h ~ 4e-11
    for e, f in zip(exact, fd):
        assert np.abs(e).max() > 1e-2  # a real curvature, not two zeros agreeing
        np.testing.assert_allclose(f, e, rtol=1e-6, atol=1e-8)


def test_hvp_is_linear_and_symmetric(rng):
    # vᵀ H u = uᵀ H v: a check that does not depend on finite differences at all.
    loss_fn, params = mlp(rng, "ce")
    u = [rng.standard_normal(p.shape) for p in params]
    v = [rng.standard_normal(p.shape) for p in params]
    hu, hv = A.hvp(loss_fn, params, u), A.hvp(loss_fn, params, v)
    assert np.isclose(A.flatten(v) @ A.flatten(hu), A.flatten(u) @ A.flatten(hv), rtol=1e-12)
    h2 = A.hvp(loss_fn, params, [2 * a - b for a, b in zip(u, v)])
    np.testing.assert_allclose(A.flatten(h2), 2 * A.flatten(hu) - A.flatten(hv), rtol=1e-10, atol=1e-13)


def test_hvp_vs_torch(torch, rng):
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    W1, b1, W2 = rng.standard_normal((4, 5)) * 0.7, rng.standard_normal(5) * 0.1, rng.standard_normal((5, 3))
    vs = [rng.standard_normal(a.shape) for a in (W1, b1, W2)]
    params = [leaf(W1), leaf(b1), leaf(W2)]
    xt = spad.tensor(x)
    ours = A.hvp(lambda: F.cross_entropy(F.linear(xt, params[0], params[1]).tanh() @ params[2], y), params, vs)

    def tloss(a, b, c):
        return torch.nn.functional.cross_entropy(torch.tanh(torch.tensor(x) @ a + b) @ c, torch.tensor(y))

    _, theirs = torch.autograd.functional.hvp(tloss, tuple(torch.tensor(a) for a in (W1, b1, W2)),
                                              tuple(torch.tensor(v) for v in vs))
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(o, t.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("method", ["exact", "fd"])
def test_hvp_restores_parameters_and_grads(method, rng):
    loss_fn, params = mlp(rng, "ce")
    before = [p.numpy().copy() for p in params]
    marker = spad.tensor(np.full(params[0].shape, 7.0))
    params[0].grad = marker
    A.hvp(loss_fn, params, [rng.standard_normal(p.shape) for p in params], method=method)
    for p, b in zip(params, before):
        assert np.array_equal(p.numpy(), b)  # bit for bit
    assert params[0].grad is marker and params[1].grad is None


def test_hvp_unused_parameter_and_zero_vector(rng):
    loss_fn, params = mlp(rng, "mse")
    spare = leaf(rng.standard_normal(3))
    vs = [rng.standard_normal(p.shape) for p in params] + [np.ones(3)]
    for method in ("exact", "fd"):
        out = A.hvp(loss_fn, params + [spare], vs, method=method)
        assert np.array_equal(out[-1], np.zeros(3))
    zero = A.hvp(loss_fn, params, [np.zeros(p.shape) for p in params], method="fd")
    assert all(not z.any() for z in zero)


def test_hvp_under_sampling_policy(rng):
    loss_fn, params = mlp(rng, "ce", batch=16, d=8)
    vs = [rng.standard_normal(p.shape) for p in params]
    with S.use(S.RAD(keep=0.5, seed=0)):
        with pytest.raises(ValueError, match='method="fd"'):
            A.hvp(loss_fn, params, vs, method="exact")
        est = A.hvp(loss_fn, params, vs, method="fd", h=1e-2)
    assert all(np.isfinite(e).all() for e in est)


def test_hvp_bad_input(rng):
    loss_fn, params = mlp(rng, "ce")
    vs = [np.zeros(p.shape) for p in params]
    with pytest.raises(ValueError, match="method"):
        A.hvp(loss_fn, params, vs, method="lanczos")
    with pytest.raises(ValueError, match="vectors"):
        A.hvp(loss_fn, params, vs[:2])
    with pytest.raises(ValueError, match="shape"):
        A.hvp(loss_fn, params, [np.zeros((2, 2))] + vs[1:])
    with pytest.raises(ValueError, match="h must be"):
        A.hvp(loss_fn, params, [np.ones(p.shape) for p in params], method="fd", h=-1.0)
    with pytest.raises(ValueError, match="scalar"):
        A.hvp(lambda: params[1] * 2.0, params, vs)
    with pytest.raises(ValueError, match="leaf"):
        A.hvp(loss_fn, [spad.tensor(np.zeros(3))], [np.zeros(3)])


# ---- modified losses -----------------------------------------------------------------------
def test_gd_modified_loss_least_squares(rng):
    X, y, w, full, _ = least_squares(rng)
    lr = 0.3
    w0 = w.numpy().copy()
    C = np.mean((X @ w0 - y) ** 2)
    g = ls_grad(X, y, w0)
    assert I.gd_modified_loss(full, [w], lr) == pytest.approx(C + lr / 4 * np.sum(g * g), rel=1e-13)


def test_sgd_modified_loss_least_squares(rng):
    X, y, w, full, batches = least_squares(rng, n=12, batches=3)
    lr = 0.2
    w0 = w.numpy().copy()
    parts = np.split(np.arange(12), 3)
    C = np.mean([np.mean((X[p] @ w0 - y[p]) ** 2) for p in parts])
    pen = sum(np.sum(ls_grad(X[p], y[p], w0) ** 2) for p in parts)
    assert C == pytest.approx(full().item(), rel=1e-13)  # equal batches: mean of batch losses = C
    assert I.sgd_modified_loss(batches, [w], lr) == pytest.approx(C + lr / (4 * 3) * pen, rel=1e-13)
    # SGD's penalty is the GD penalty plus the variance of the minibatch gradients (≥ it).
    assert I.sgd_modified_loss(batches, [w], lr) >= I.gd_modified_loss(full, [w], lr)


@pytest.mark.parametrize("method", ["exact", "fd"])
def test_modified_gradients_least_squares(method, rng):
    # For C = mean((Xw - y)²) the Hessian is 2XᵀX/n exactly, so g + lr/2·H g is known in closed form.
    X, y, w, full, batches = least_squares(rng, n=12, batches=3)
    lr, w0 = 0.25, w.numpy().copy()
    g = ls_grad(X, y, w0)
    H = 2 * X.T @ X / len(X)
    (got,) = I.gd_modified_grad(full, [w], lr, method=method)
    np.testing.assert_allclose(got, g + lr / 2 * H @ g, rtol=1e-7)
    expect = 0.0
    for p in np.split(np.arange(12), 3):
        gk, Hk = ls_grad(X[p], y[p], w0), 2 * X[p].T @ X[p] / len(p)
        expect = expect + gk / 3 + lr / (2 * 3) * Hk @ gk
    (got,) = I.sgd_modified_grad(batches, [w], lr, method=method)
    np.testing.assert_allclose(got, expect, rtol=1e-7)


@pytest.mark.parametrize("method", ["exact", "fd"])
def test_explicit_regularizer_gradient_matches_fd(method, rng):
    loss_fn, params = mlp(rng, "ce")
    lam = 0.5
    reg = I.ExplicitRegularizer(lam, method=method)
    out = reg.add(loss_fn(), loss_fn, params)
    value = I.gd_modified_loss(loss_fn, params, lam)  # Ĉ + lam/4 ‖∇Ĉ‖², computed independently
    assert out.item() == pytest.approx(value, rel=1e-12)
    out.backward()
    got = [p.grad.numpy().copy() for p in params]
    # Central differences of the regularized loss itself (eps = 1e-5: error ~1e-10 · |f'''|).
    eps = 1e-5
    for p, gp in zip(params, got):
        base = p.numpy().copy()
        num = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            vals = []
            for s in (1, -1):
                a = base.copy()
                a[idx] += s * eps
                spad._core.assign_(p, spad.tensor(a))
                vals.append(I.gd_modified_loss(loss_fn, params, lam))
            num[idx] = (vals[0] - vals[1]) / (2 * eps)
        spad._core.assign_(p, spad.tensor(base))
        np.testing.assert_allclose(gp, num, rtol=1e-6, atol=1e-9)


def test_explicit_regularizer_in_fit(rng):
    X = rng.standard_normal((40, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    for method in ("fd", "exact"):
        model = spad.nn.Sequential(spad.nn.Linear(5, 8, seed=0), spad.nn.Tanh(), spad.nn.Linear(8, 2, seed=1))
        reg = I.ExplicitRegularizer(0.1, method=method)
        hist = spad.train.fit(model, F.cross_entropy, spad.data.DataLoader(X, y, 8), spad.optim.SGD(
            model.parameters(), 0.1), epochs=2, regularizer=reg, progress=False)
        assert np.isfinite(hist.loss).all() and reg.last_penalty > 0
    # under a sampling policy only the finite-difference route is allowed
    model = spad.nn.Sequential(spad.nn.Linear(5, 8, seed=0), spad.nn.Tanh(), spad.nn.Linear(8, 2, seed=1))
    hist = spad.train.fit(model, F.cross_entropy, spad.data.DataLoader(X, y, 8), spad.optim.SGD(
        model.parameters(), 0.1), epochs=1, sampling=S.RAD(keep=0.5), regularizer=I.ExplicitRegularizer(0.1),
        progress=False)
    assert np.isfinite(hist.loss).all()
    with pytest.raises(ValueError, match='method="fd"'):
        spad.train.fit(model, F.cross_entropy, spad.data.DataLoader(X, y, 8), spad.optim.SGD(
            model.parameters(), 0.1), epochs=1, sampling=S.RAD(keep=0.5),
            regularizer=I.ExplicitRegularizer(0.1, method="exact"), progress=False)


@pytest.mark.parametrize("modified", [None, "gd"])
def test_gradient_flow_quadratic_closed_form(modified, rng):
    # Least squares: ∇C = H(w - w*), and ∇(C + lr/4‖∇C‖²) = (H + lr/2·H²)(w - w*): linear flows
    # with solution w* + expm(-A t)(w0 - w*), from the eigendecomposition of the symmetric A.
    X, y, w, full, _ = least_squares(rng, n=12)
    lr, t = 0.4, 1.5
    H = 2 * X.T @ X / len(X)
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]
    Amat = H if modified is None else H + lr / 2 * H @ H
    lam, Q = np.linalg.eigh(Amat)
    w0 = w.numpy().copy()
    expect = w_star + Q @ np.diag(np.exp(-lam * t)) @ Q.T @ (w0 - w_star)
    times, thetas = I.gradient_flow(full, [w], t, steps=60, modified=modified, lr=lr, record_every=20)
    # RK4 local error (dt·λmax)^5/120 per step; dt·λmax ≈ 0.2 here, so ~1e-7 in total.
    np.testing.assert_allclose(w.numpy(), expect, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(times, [0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(thetas[-1], expect.ravel(), rtol=1e-6, atol=1e-8)
    assert np.array_equal(thetas[0], w0.ravel())


def test_gradient_flow_sgd_modified(rng):
    X, y, w, _, batches = least_squares(rng, n=12, batches=3)
    lr, t = 0.3, 1.0
    w0 = w.numpy().copy()
    Amat, b = 0.0, 0.0  # ∇ = Σ_k (H_k/m + lr/(2m) H_k²)(w) - (same)·w*_k, a linear field A w - b
    for p in np.split(np.arange(12), 3):
        Hk = 2 * X[p].T @ X[p] / len(p)
        ck = 2 * X[p].T @ y[p] / len(p)  # g_k = H_k w - c_k
        Amat = Amat + Hk / 3 + lr / 6 * Hk @ Hk
        b = b + ck / 3 + lr / 6 * Hk @ ck
    w_inf = np.linalg.solve(Amat, b)
    lam, Q = np.linalg.eigh(Amat)
    expect = w_inf + Q @ np.diag(np.exp(-lam * t)) @ Q.T @ (w0 - w_inf)
    I.gradient_flow(None, [w], t, steps=50, modified="sgd", lr=lr, batch_loss_fns=batches)
    np.testing.assert_allclose(w.numpy(), expect, rtol=1e-6, atol=1e-8)


def test_implicit_bad_input(rng):
    _, _, w, full, batches = least_squares(rng)
    for lr in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="lr"):
            I.gd_modified_loss(full, [w], lr)
        with pytest.raises(ValueError, match="lr"):
            I.sgd_modified_loss(batches, [w], lr)
    with pytest.raises(ValueError, match="empty"):
        I.sgd_modified_loss([], [w], 0.1)
    with pytest.raises(ValueError, match="lam"):
        I.ExplicitRegularizer(0.0)
    with pytest.raises(ValueError, match="method"):
        I.ExplicitRegularizer(0.1, method="taylor")
    with pytest.raises(ValueError, match="steps"):
        I.gradient_flow(full, [w], 1.0, steps=0)
    with pytest.raises(ValueError, match="modified"):
        I.gradient_flow(full, [w], 1.0, steps=2, modified="adam", lr=0.1)
    with pytest.raises(ValueError, match="batch_loss_fns"):
        I.gradient_flow(full, [w], 1.0, steps=2, modified="sgd", lr=0.1)


# ---- spectra -----------------------------------------------------------------------------
@pytest.mark.parametrize("q,sigma2", [(0.25, 1.0), (0.5, 2.0), (1.0, 0.7)])
def test_mp_density_normalized_with_mean_sigma2(q, sigma2):
    lo, hi = Sp.mp_edges(q, sigma2)
    # Midpoint rule on φ with x = lo + (hi-lo)(1-cos φ)/2: a smooth integrand (even at q = 1,
    # where the pdf has a 1/√x pole), never evaluated at the edges; independent of the CDF code.
    N = 100000
    phi = (np.arange(N) + 0.5) * np.pi / N
    x = lo + (hi - lo) * (1 - np.cos(phi)) / 2
    w = Sp.marchenko_pastur_pdf(x, q, sigma2) * (hi - lo) / 2 * np.sin(phi) * np.pi / N
    assert w.sum() == pytest.approx(1.0, abs=1e-8)
    assert (x * w).sum() == pytest.approx(sigma2, rel=1e-8)
    assert Sp.marchenko_pastur_pdf([lo - 1e-3, hi + 1e-3, -1.0], q, sigma2).tolist() == [0, 0, 0]
    cdf = Sp.marchenko_pastur_cdf([lo, (lo + hi) / 2, hi], q, sigma2)
    assert cdf[0] == 0 and cdf[-1] == 1 and 0 < cdf[1] < 1


def test_mp_cdf_matches_closed_form_mean():
    # E[x] = ∫ (1 − F(x)) dx over [0, λ+] for a positive variable: checks the CDF, not just the pdf.
    q, sigma2 = 0.3, 1.5
    xs = np.linspace(0, Sp.mp_edges(q, sigma2)[1], 400001)
    assert np.trapezoid(1 - Sp.marchenko_pastur_cdf(xs, q, sigma2), xs) == pytest.approx(sigma2, rel=1e-5)


def test_ks_gaussian_small_planted_large():
    rng = np.random.default_rng(1234)
    n, m = 2000, 500
    W = rng.standard_normal((n, m))
    e = Sp.eigenvalues(W)
    assert e.shape == (m,) and np.all(np.diff(e) >= 0)
    d0 = Sp.mp_ks_distance(e, m / n)
    assert d0 < 0.05
    assert Sp.mp_outliers(e, m / n, tol=0.05)["count"] == 0
    # a planted rank-r signal: outliers appear and the bulk distorts; KS grows with the signal
    dists = []
    for r, amp in ((50, 0.3), (100, 0.6)):
        P = amp * rng.standard_normal((n, r)) @ rng.standard_normal((r, m)) / np.sqrt(r)
        ep = Sp.eigenvalues(W + P)
        dists.append(Sp.mp_ks_distance(ep, m / n))
        assert Sp.mp_outliers(ep, m / n)["count"] > 0
    assert dists[0] > 2 * d0 and dists[1] > 0.15 and dists[1] > dists[0]


def test_eigenvalues_accept_tensor_and_match_svd(rng):
    W = rng.standard_normal((30, 10))
    e = Sp.eigenvalues(spad.tensor(W))
    np.testing.assert_allclose(e, np.sort(np.linalg.svd(W, compute_uv=False) ** 2 / 30), rtol=1e-12)


def test_wigner_surmise_basics():
    s = np.linspace(0, 6, 60001)
    cdf = Sp.wigner_surmise_cdf(s)
    assert cdf[0] == 0 and np.all(np.diff(cdf) >= 0) and cdf[-1] == pytest.approx(1, abs=1e-12)
    assert Sp.wigner_surmise_cdf(-1.0) == 0
    np.testing.assert_allclose(np.gradient(cdf, s)[1:-1], Sp.wigner_surmise_pdf(s)[1:-1], atol=1e-7)
    assert np.trapezoid(s * Sp.wigner_surmise_pdf(s), s) == pytest.approx(1.0, abs=1e-8)  # mean spacing 1
    assert Sp.wigner_surmise_cdf(np.sqrt(4 * np.log(2) / np.pi)) == pytest.approx(0.5)


def test_spacings_wishart_follow_wigner_poisson_do_not():
    rng = np.random.default_rng(7)
    e = Sp.eigenvalues(rng.standard_normal((2000, 500)))
    s = Sp.unfolded_spacings(e)
    assert s.mean() == pytest.approx(1.0)
    # 400 spacings: KS sampling noise ~0.07 at 95%; the surmise is ~1% off exact GOE
    assert Sp.wigner_ks_distance(s) < 0.08
    poisson = np.sort(rng.random(500))
    assert Sp.wigner_ks_distance(Sp.unfolded_spacings(poisson)) > 0.15
    # ratios need no unfolding: ~0.53 (GOE) vs ~0.39 (Poisson), ±0.012 standard error
    assert abs(Sp.spacing_ratios(e).mean() - 0.5307) < 0.04
    assert abs(Sp.spacing_ratios(poisson).mean() - Sp.POISSON_MEAN_RATIO) < 0.04


def test_spectrum_bad_input():
    with pytest.raises(ValueError, match="q"):
        Sp.marchenko_pastur_pdf(1.0, 1.5)
    with pytest.raises(ValueError, match="q"):
        Sp.mp_ks_distance([1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="sigma2"):
        Sp.marchenko_pastur_cdf(1.0, 0.5, sigma2=-1)
    with pytest.raises(ValueError, match="2-D"):
        Sp.eigenvalues(np.zeros(5))
    with pytest.raises(ValueError, match="2-D"):
        Sp.eigenvalues(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        Sp.eigenvalues(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="trim"):
        Sp.unfolded_spacings(np.arange(10.0), trim=0.6)
    with pytest.raises(ValueError, match="every"):
        Sp.SpectrumTracker(every=0)


def test_spectrum_tracker_in_fit(rng):
    X = rng.standard_normal((64, 12)).astype(np.float32)
    y = (X[:, :2].sum(1) > 0).astype(np.int64)
    model = spad.nn.Sequential(spad.nn.Linear(12, 6, seed=0), spad.nn.ReLU(), spad.nn.Linear(6, 2, seed=1))
    tracker = Sp.SpectrumTracker()
    tracker.record(model)
    spad.train.fit(model, F.cross_entropy, spad.data.DataLoader(X, y, 16), spad.optim.SGD(model.parameters(), 0.1),
                   epochs=3, callbacks=[tracker], progress=False)
    assert tracker.epochs == [-1, 0, 1, 2]
    assert list(tracker.eigs) == ["0.weight", "2.weight"]
    assert [len(e) for e in tracker.eigs["0.weight"]] == [6] * 4 and tracker.q["0.weight"] == 0.5
    np.testing.assert_allclose(tracker.eigs["0.weight"][-1], Sp.eigenvalues(model.parameters()[0].numpy()),
                               rtol=1e-10)
    assert len(tracker.eigs["2.weight"][0]) == 2  # (6, 2): already q = 1/3


def test_teacher_student_spectra_small():
    res = Sp.teacher_student_spectra(n=256, d=40, hidden=20, epochs=2, batch_size=16)
    assert res["init_eigs"].shape == (20,) and res["final_eigs"].shape == (20,)
    assert res["history"].loss[-1] < res["history"].loss[0]
    assert 0 <= res["final_mp_ks"] <= 1 and 0 < res["final_ratio"] < 1
