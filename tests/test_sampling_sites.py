"""Every weight product is a sampling site: matmul (2-D and batched, the weight on either
side), conv2d and elementwise products, each unbiased (z-test) and with its variance within
10 % of its formula (DESIGN.md §1), like linear in test_sampling.py."""
import numpy as np
import pytest

import spad
import spad.functional as F
import spad.sampling as S

from test_sampling import chi2_ok

B, N, M = 48, 40, 6
DRAWS = 1500  # relative standard error of a variance estimate ~ sqrt(2/1500) < 4 %


def _rad_different(X, dY, keep):
    k = round(keep * X.shape[1])
    return (X.shape[1] - 1) / k * ((X ** 2).sum(1) * (dY ** 2).sum(1)).sum()


def _matmul_case(side, batched):
    """A loss through x @ W (side="right") or W @ x (side="left"); returns the weight, the
    loss, and the layer input X (rows = examples) and output gradient dY of dW = X^T dY."""
    rng = np.random.default_rng(3 if side == "right" else 4)
    X = rng.standard_normal((B, N))
    X[:, : N // 4] *= 4.0
    Y = rng.standard_normal((B, M))
    W0 = rng.standard_normal((N, M)) * 0.2
    if side == "right":
        W = spad.tensor(W0, requires_grad=True)
        xs = X.reshape(4, B // 4, N) if batched else X
        x, y = spad.tensor(xs), spad.tensor(Y.reshape(4, B // 4, M) if batched else Y)

        def loss_fn():
            return F.mse_loss(x @ W, y)
    else:  # W^T @ x^T: the columns of x^T are the examples
        W = spad.tensor(np.ascontiguousarray(W0.T), requires_grad=True)
        xs = X.reshape(4, B // 4, N).transpose(0, 2, 1) if batched else X.T
        ys = Y.reshape(4, B // 4, M).transpose(0, 2, 1) if batched else Y.T
        x, y = spad.tensor(np.ascontiguousarray(xs)), spad.tensor(np.ascontiguousarray(ys))

        def loss_fn():
            return F.mse_loss(W @ x, y)
    dY = 2 * (X @ W0 - Y) / (B * M)
    return W, loss_fn, X, dY


CASES = [("right", False), ("right", True), ("left", False), ("left", True)]
IDS = ["x@W", "batched x@W", "W@x", "batched W@x"]


@pytest.mark.parametrize("side,batched", CASES, ids=IDS)
@pytest.mark.parametrize("make", [lambda: S.RAD(0.2, seed=1), lambda: S.SPAD(0.2, seed=2),
                                  lambda: S.CRS(0.25, seed=3), lambda: S.RAD(0.2, "same", seed=4)],
                         ids=["rad", "spad", "crs", "rad-same"])
def test_matmul_unbiased(side, batched, make):
    W, loss_fn, X, dY = _matmul_case(side, batched)
    st = S.estimate_variance(loss_fn, [W], make(), draws=500)
    chi2_ok(st, [W])
    assert st[0]["variance"] > 0  # it was sampled


@pytest.mark.parametrize("side,batched", CASES, ids=IDS)
def test_matmul_variance_matches_formula(side, batched):
    W, loss_fn, X, dY = _matmul_case(side, batched)
    st = S.estimate_variance(loss_fn, [W], S.RAD(0.2, seed=5, block=1), draws=DRAWS)[0]
    want = _rad_different(X, dY, 0.2)
    assert abs(st["variance"] / want - 1) < 0.10, (st["variance"], want)


def test_matmul_tape_bar():
    """x @ W under RAD keep 0.1 (784x256 weight, batch 128): the matmul's tape <= 0.2x exact.
    (In ((x @ W) * r).sum() the factor r is saved for the gradient of x @ W, not of a leaf,
    so it stays exact under every policy: that product's tape is 0.1 x + r.)"""
    rng = np.random.default_rng(6)
    x = spad.tensor(rng.standard_normal((128, 784)).astype(np.float32))
    W = spad.tensor((rng.standard_normal((784, 256)) * 0.05).astype(np.float32), requires_grad=True)
    r = spad.tensor(rng.standard_normal((128, 256)).astype(np.float32))
    for make_loss, extra in ((lambda: (x @ W).sum(), 0), (lambda: ((x @ W) * r).sum(), 128 * 256 * 4)):
        tapes = {}
        for name, pol in (("exact", None), ("rad", S.RAD(0.1))):
            with S.use(pol):
                loss = make_loss()
            tapes[name] = spad.memory_stats()["tape_bytes"] - extra
            loss.backward()
        assert tapes["exact"] == 128 * 784 * 4
        assert tapes["rad"] <= 0.2 * tapes["exact"], tapes


def test_matmul_exact_without_policy_is_unchanged():
    rng = np.random.default_rng(7)
    X, Wn = rng.standard_normal((5, 4, 3)), rng.standard_normal((3, 2))
    W = spad.tensor(Wn, requires_grad=True)
    (spad.tensor(X) @ W).sum().backward()
    np.testing.assert_allclose(W.grad.numpy(), X.reshape(-1, 3).T @ np.ones((20, 2)), rtol=1e-12)
    V = spad.tensor(Wn.T.copy(), requires_grad=True)
    with S.use(S.RAD(1.0)):  # keep=1 is exact, through the weight-input path
        (V @ spad.tensor(X.transpose(0, 2, 1).copy())).sum().backward()
    np.testing.assert_allclose(V.grad.numpy(), np.ones((2, 20)) @ X.reshape(-1, 3), rtol=1e-12)


# ---- conv2d: pixels kept with probability p (RAD/SPAD), examples (CRS) ----
def _conv_terms(x, w, target, pad=1):
    """Output gradient g of mse(conv2d(x, w, padding=pad), target) and the per-pixel norm
    sums S[n, h, w] = sum over the kernel taps reaching input pixel (h, w) of ||g[n, :, ho, wo]||^2."""
    Nn, C, H, Wd = x.shape
    O, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = H + 2 * pad - kh + 1, Wd + 2 * pad - kw + 1
    out = np.zeros((Nn, O, Ho, Wo))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + Ho, j:j + Wo], w[:, :, i, j])
    g = 2 * (out - target) / out.size
    gn = (g ** 2).sum(1)  # (N, Ho, Wo)
    S_ = np.zeros((Nn, H, Wd))
    for i in range(kh):
        for j in range(kw):
            # input pixel (h, w) meets output (h + pad - i, w + pad - j)
            for h in range(H):
                ho = h + pad - i
                if not 0 <= ho < Ho:
                    continue
                for ww in range(Wd):
                    wo = ww + pad - j
                    if 0 <= wo < Wo:
                        S_[:, h, ww] += gn[:, ho, wo]
    return g, S_


def _conv_per_example_dw(x, g, kh, kw, pad=1):
    Nn, C, H, Wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = g.shape[2:]
    G = np.zeros((Nn, g.shape[1], C, kh, kw))
    for i in range(kh):
        for j in range(kw):
            G[:, :, :, i, j] = np.einsum("nohw,nchw->noc", g, xp[:, :, i:i + Ho, j:j + Wo])
    return G


@pytest.fixture
def conv_case():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((6, 2, 7, 7))
    Wn = rng.standard_normal((3, 2, 3, 3)) * 0.3
    T = rng.standard_normal((6, 3, 7, 7))
    x, t = spad.tensor(X), spad.tensor(T)
    w = spad.tensor(Wn, requires_grad=True)

    def loss_fn():
        return F.mse_loss(F.conv2d(x, w, padding=1), t)

    return X, Wn, T, w, loss_fn


@pytest.mark.parametrize("make", [lambda: S.RAD(0.3, seed=1), lambda: S.SPAD(0.3, seed=2)], ids=["rad", "spad"])
def test_conv_pixel_variance_matches_formula(conv_case, make):
    """Each input pixel (all channels) kept with probability p, weight 1/p: the variance is
    (1-p)/p * sum over pixels of ||x[n,:,h,w]||^2 * S[n,h,w]."""
    X, Wn, T, w, loss_fn = conv_case
    g, S_ = _conv_terms(X, Wn, T)
    want = (1 - 0.3) / 0.3 * ((X ** 2).sum(1) * S_).sum()
    st = S.estimate_variance(loss_fn, [w], make(), draws=DRAWS)[0]
    assert abs(st["variance"] / want - 1) < 0.10, (st["variance"], want)


def test_conv_same_pixels_variance_matches_formula(conv_case):
    """RAD "same": one pixel mask for the batch: (1-p)/p * sum_hw ||sum_n D_{n,hw}||^2, where
    D_{n,hw} is pixel (n, h, w)'s share of dW."""
    X, Wn, T, w, loss_fn = conv_case
    g, _ = _conv_terms(X, Wn, T)
    H = Wd = 7
    want = 0.0
    for h in range(H):
        for ww in range(Wd):
            Xo = np.zeros_like(X)
            Xo[:, :, h, ww] = X[:, :, h, ww]
            want += (_conv_per_example_dw(Xo, g, 3, 3).sum(0) ** 2).sum()
    want *= (1 - 0.3) / 0.3
    st = S.estimate_variance(loss_fn, [w], S.RAD(0.3, "same", seed=3), draws=DRAWS)[0]
    assert abs(st["variance"] / want - 1) < 0.10, (st["variance"], want)


def test_conv_crs_variance_matches_formula(conv_case):
    """CRS over examples, drawn with replacement ∝ ||x_n||·||dy_n|| (deterministic=0):
    (sum_n ||G_n||^2 / q_n - ||dW||^2) / s, G_n example n's share of dW."""
    X, Wn, T, w, loss_fn = conv_case
    g, _ = _conv_terms(X, Wn, T)
    G = _conv_per_example_dw(X, g, 3, 3)
    score = np.sqrt((X ** 2).sum((1, 2, 3)) * (g ** 2).sum((1, 2, 3)))
    q = score / score.sum()
    s = 3
    want = ((G ** 2).sum((1, 2, 3, 4)) / q).sum() - (G.sum(0) ** 2).sum()
    want /= s
    st = S.estimate_variance(loss_fn, [w], S.CRS(0.5, deterministic=0.0, seed=4), draws=DRAWS, warmup=1)[0]
    assert abs(st["variance"] / want - 1) < 0.10, (st["variance"], want)


# ---- elementwise products with a leaf ----
def test_elementwise_variance_matches_formula():
    """z = a * x with a a leaf: x is kept element-wise with probability p, weight 1/p, so the
    variance of da = g * x_hat is (1-p)/p * sum_i (g_i x_i)^2."""
    rng = np.random.default_rng(9)
    n = 60
    Xn, Tn = rng.standard_normal(n), rng.standard_normal(n)
    a = spad.tensor(rng.standard_normal(n), requires_grad=True)
    x, t = spad.tensor(Xn), spad.tensor(Tn)

    def loss_fn():
        return ((a * x - t) ** 2).sum()

    g = 2 * (a.numpy() * Xn - Tn)
    want = (1 - 0.4) / 0.4 * ((g * Xn) ** 2).sum()
    st = S.estimate_variance(loss_fn, [a], S.RAD(0.4, seed=10), draws=DRAWS)
    chi2_ok(st, [a])
    assert abs(st[0]["variance"] / want - 1) < 0.10, (st[0]["variance"], want)


def test_magnitude_blocks_on_wide_layers():
    """SPAD's magnitude paths on a layer keeping >= 16 values per example: blocks of 16
    features drawn ∝ their L2 norm (systematic draws). Unbiased, variance at most the i.i.d.
    value sum_b ((sum_β ||x_bβ||)^2 - ||x_b||^2) ||dy_b||^2 / kb, below uniform blocks' here."""
    rng = np.random.default_rng(11)
    Bb, n, m, bs = 24, 256, 5, 16
    X = rng.standard_normal((Bb, n)) * np.repeat(rng.uniform(0.5, 2.0, n // bs) ** 2, bs)  # uneven blocks
    X[X < 0] = 0  # ReLU-like
    Wn = rng.standard_normal((n, m)) * 0.1
    W = spad.tensor(Wn, requires_grad=True)
    x, y = spad.tensor(X), spad.tensor(rng.standard_normal((Bb, m)))

    def loss_fn():
        return F.mse_loss(F.linear(x, W), y)

    dY = 2 * (X @ Wn - y.numpy()) / (Bb * m)
    kb = 2  # keep 0.125: 32 values per example = 2 blocks of 16
    st = S.estimate_variance(loss_fn, [W], S.SPAD(0.125, seed=12), draws=DRAWS)
    chi2_ok(st, [W])
    bn = np.sqrt((X.reshape(Bb, n // bs, bs) ** 2).sum(2))
    g2 = (dY ** 2).sum(1)
    bound = ((bn.sum(1) ** 2 - (X ** 2).sum(1)) * g2).sum() / kb
    uniform = (n - bs) / (kb * bs) * ((X ** 2).sum(1) * g2).sum()
    assert 0 < st[0]["variance"] < 1.1 * bound < uniform, (st[0]["variance"], bound, uniform)
    with S.use(S.SPAD(0.125)):  # kb blocks of 16 values + a 2-byte block index each, per example
        out = F.linear(x, W).sum()
    assert spad.memory_stats()["tape_bytes"] == Bb * kb * (bs * 8 + 2)
    out.backward()
