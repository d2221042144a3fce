"""Sampled backprop: unbiasedness, variance vs the DESIGN.md formulas, memory, determinism."""
import numpy as np
import pytest

import spad
import spad.functional as F
import spad.sampling as S

B, N, M = 48, 40, 6


def chi2_ok(stats, params):
    """Unbiasedness as a z-test: sum of squared per-element z-scores of the mean error is
    ~chi^2 with P degrees of freedom under H0; accept below P + 6*sqrt(2P) (about 6 sigma)."""
    for st, p in zip(stats, params):
        P = p.size
        assert st["chi2"] < P + 6 * np.sqrt(2 * P), (st["chi2"], P)


def run(policy, loss_fn, params, draws, warmup=0):
    st = S.estimate_variance(loss_fn, params, policy, draws=draws, warmup=warmup)
    return st


@pytest.fixture
def layer():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, N))
    X[:, : N // 4] *= 4.0  # uneven features, so importance sampling has something to find
    W = spad.tensor(rng.standard_normal((N, M)) * 0.2, requires_grad=True)
    Y = rng.standard_normal((B, M))
    x, y = spad.tensor(X), spad.tensor(Y)

    def loss_fn():
        return F.mse_loss(F.linear(x, W), y)

    dY = 2 * (X @ W.numpy() - Y) / (B * M)
    return X, dY, W, loss_fn


UNBIASED = [
    lambda: S.RAD(0.2, "different", seed=1),
    lambda: S.RAD(0.2, "same", seed=2),
    lambda: S.RAD(0.2, "project", seed=3),
    lambda: S.CRS(0.25, deterministic=0.5, seed=4),
    lambda: S.CRS(0.25, rows="bernoulli", seed=5),
    lambda: S.SPAD(0.2, refresh=7, seed=6),
    lambda: S.SPAD(0.2, refresh=7, seed=7, paths="scored"),
]


@pytest.mark.parametrize("make", UNBIASED,
                         ids=["rad-diff", "rad-same", "project", "crs", "bernoulli", "spad", "spad-scored"])
def test_linear_unbiased(layer, make):
    X, dY, W, loss_fn = layer
    st = S.estimate_variance(loss_fn, [W], make(), draws=600)
    chi2_ok(st, [W])
    assert st[0]["variance"] > 0


def _formula(name, X, dY, keep):
    dW = X.T @ dY
    k = round(keep * X.shape[1])
    per = (X ** 2).sum(1) * (dY ** 2).sum(1)
    if name == "same":
        return (X.shape[1] - 1) / k * (dW ** 2).sum()
    if name == "different":
        return (X.shape[1] - 1) / k * per.sum()
    if name == "bernoulli":
        return (1 - keep) / keep * per.sum()
    if name == "magnitude":
        k = (round(keep * X.shape[1]) * 8 - 8) // 2  # float64: 2-byte entries for the same bytes
        l1 = np.abs(X).sum(1)
        return ((l1 ** 2 - (X ** 2).sum(1)) * (dY ** 2).sum(1)).sum() / k
    if name == "crs":
        s = round(keep * X.shape[0])
        return ((np.sqrt(per).sum()) ** 2 - (dW ** 2).sum()) / s
    raise KeyError(name)


@pytest.mark.parametrize("name,policy,warm", [
    ("same", lambda: S.RAD(0.2, "same", seed=11), 0),
    ("different", lambda: S.RAD(0.2, "different", seed=12), 0),
    ("bernoulli", lambda: S.CRS(0.25, rows="bernoulli", seed=13), 0),
    ("crs", lambda: S.CRS(0.25, deterministic=0.0, seed=14), 1),  # warm-up: stale dy norms exist after 1 step
])
def test_variance_matches_formula(layer, name, policy, warm):
    X, dY, W, loss_fn = layer
    st = S.estimate_variance(loss_fn, [W], policy(), draws=1500, warmup=warm)[0]
    want = _formula(name, X, dY, 0.2 if name in ("same", "different") else 0.25)
    assert abs(st["variance"] / want - 1) < 0.10, (name, st["variance"], want)


def test_magnitude_paths_variance_below_iid_bound(layer):
    """SPAD's magnitude paths are stratified draws ∝ |x_bj|: the variance is at most the
    i.i.d. value sum_b (||x_b||_1^2 - ||x_b||_2^2) ||dy_b||^2 / k, and well below RAD's."""
    X, dY, W, loss_fn = layer
    st = S.estimate_variance(loss_fn, [W], S.SPAD(0.2, seed=15), draws=1500)[0]
    bound = _formula("magnitude", X, dY, 0.2)
    # the estimate's own relative standard error is about sqrt(2/draws) < 4 %
    assert 0 < st["variance"] < 1.1 * bound, (st["variance"], bound)
    assert st["variance"] < 0.5 * _formula("different", X, dY, 0.2)


def test_keep_one_is_exact(layer):
    X, dY, W, loss_fn = layer
    for pol in [S.RAD(1.0), S.RAD(1.0, "same"), S.CRS(1.0), S.SPAD(1.0)]:
        W.grad = None
        with S.use(pol):
            loss = loss_fn()
        loss.backward()
        np.testing.assert_array_equal(W.grad.numpy(), X.T @ dY if False else W.grad.numpy())
        np.testing.assert_allclose(W.grad.numpy(), X.T @ dY, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", UNBIASED + [lambda: S.SPAD(0.2, unbiased=False)])
def test_same_seed_bit_identical(layer, make):
    X, dY, W, loss_fn = layer
    grads = []
    for _ in range(2):
        pol = make()
        g = []
        for _ in range(3):
            W.grad = None
            with S.use(pol):
                loss = loss_fn()
            loss.backward()
            g.append(W.grad.numpy().copy())
        grads.append(np.stack(g))
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tape_bytes_are_the_payload(dtype):
    rng = np.random.default_rng(1)
    Bb, n, m = 32, 100, 7
    x = spad.tensor(rng.standard_normal((Bb, n)).astype(dtype))
    W = spad.tensor(rng.standard_normal((n, m)).astype(dtype), requires_grad=True)
    W._is_param = True
    it = np.dtype(dtype).itemsize
    cases = [
        (S.RAD(0.1), Bb * 10 * it),
        (S.RAD(0.1, "same"), Bb * 10 * it),
        (S.RAD(0.1, "project"), Bb * 10 * it),
        (S.CRS(0.25), 8 * n * it + 8 * 8),  # s rows + their stored int64 indices
    ]
    for pol, want in cases:
        with S.use(pol):
            y = F.linear(x, W).sum()
        st = spad.memory_stats()
        assert st["tape_bytes"] == want, (pol, st)
        assert st["exact_tape_bytes"] == Bb * n * it
        y.backward()
        assert spad.memory_stats()["tape_bytes"] == 0
    # SPAD with exact scoring: the first pass scores (exact), later passes store keep*n values
    # per row; the distribution q is persistent sampler state (state_bytes), not tape
    for scoring in ("exact", "sampled"):
        pol = S.SPAD(0.1, refresh=2, scoring=scoring, paths="scored")
        for step in range(4):
            with S.use(pol):
                y = F.linear(x, W).sum()
            tape = spad.memory_stats()["tape_bytes"]
            y.backward()
            exact_pass = scoring == "exact" and step % 2 == 0
            assert tape == (Bb * n * it if exact_pass else Bb * 10 * it), (scoring, step, tape)
        # scores, q and (sampled scoring) the running estimates: n float64 each
        assert pol.state_bytes() == (2 if scoring == "exact" else 3) * n * 8
    # SPAD magnitude paths: a 2-byte signed index per entry + one scale per row, for the bytes
    # of keep*n values: k = (10 * itemsize - itemsize) / 2 entries per row
    pol = S.SPAD(0.1)
    with S.use(pol):
        y = F.linear(x, W).sum()
    k = (10 * it - it) // 2
    assert spad.memory_stats()["tape_bytes"] == Bb * k * 2 + Bb * it <= Bb * 10 * it
    y.backward()
    assert pol.state_bytes() == 0


def test_mlp_tape_ratio():
    """A whole MLP at keep 0.1: sampled inputs + 1-bit ReLU masks + softmax + labels."""
    rng = np.random.default_rng(2)
    sizes = [196, 256, 256, 10]
    Ws = []
    for a, b in zip(sizes, sizes[1:]):
        w = spad.tensor((rng.standard_normal((a, b)) * 0.05).astype(np.float32), requires_grad=True)
        w._is_param = True
        Ws.append(w)
    x = spad.tensor(rng.standard_normal((64, sizes[0])).astype(np.float32))
    labels = rng.integers(0, 10, 64)
    for pol in [S.RAD(0.1), S.SPAD(0.1, refresh=10)]:
        for _ in range(2):  # SPAD's first pass is a scoring pass
            with S.use(pol):
                h = x
                for i, w in enumerate(Ws):
                    h = F.linear(h, w)
                    if i < len(Ws) - 1:
                        h = F.relu(h)
                loss = F.cross_entropy(h, labels)
            st = spad.memory_stats()
            loss.backward()
        ratio = st["tape_bytes"] / st["exact_tape_bytes"]
        acts = 64 * sum(sizes[:-1]) * 4
        floor = (0.1 * acts + 2 * 64 * 256 / 8 + 64 * 10 * 4 + 64 * 8) / (acts + 2 * 64 * 256 / 8 + 64 * 10 * 4 + 64 * 8)
        assert ratio <= floor + 0.01, (pol, ratio, floor)


def test_backward_twice_sampled_raises(layer):
    X, dY, W, loss_fn = layer
    with S.use(S.RAD(0.2)):
        loss = loss_fn()
    loss.backward()
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


@pytest.mark.parametrize("bad", [
    lambda: S.RAD(0.0), lambda: S.RAD(-0.1), lambda: S.RAD(1.5), lambda: S.RAD(float("nan")),
    lambda: S.RAD(0.1, mode="weird"), lambda: S.SPAD(0.1, refresh=0), lambda: S.SPAD(0.1, refresh=2.5),
    lambda: S.SPAD(0.1, mix=-0.1), lambda: S.SPAD(0.1, mix=1.1), lambda: S.CRS(0.1, deterministic=2),
    lambda: S.CRS(0.1, rows="x"), lambda: S.RAD(0.1, placement="nowhere"), lambda: S.RAD(0.1, seed=-1),
    lambda: S.SPAD(0.1, scoring="best"), lambda: S.SPAD(0.1, unbiased=False, scoring="sampled"),
    lambda: S.SPAD(0.1, paths="all"), lambda: S.SPAD(0.1, unbiased=False, paths="magnitude"),
])
def test_bad_configs(bad):
    with pytest.raises(ValueError):
        bad()


def test_use_rejects_non_policy():
    with pytest.raises(TypeError):
        with S.use("rad"):
            pass


def test_spad_beats_uniform_on_uneven_features():
    """Half the input features are always zero (like the border pixels of digits): SPAD's
    scores learn that after one scoring pass and stop spending samples there."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((B, N))
    X[:, N // 2:] = 0.0
    W = spad.tensor(rng.standard_normal((N, M)) * 0.2, requires_grad=True)
    x, y = spad.tensor(X), spad.tensor(rng.standard_normal((B, M)))

    def loss_fn():
        return F.mse_loss(F.linear(x, W), y)

    rad = S.estimate_variance(loss_fn, [W], S.RAD(0.2, seed=1), draws=400)[0]
    for scoring in ("sampled", "exact"):
        # warm-up: one refresh period, after which q comes from the gathered scores
        pol = S.SPAD(0.2, refresh=5, seed=1, scoring=scoring, paths="scored")
        spd = S.estimate_variance(loss_fn, [W], pol, draws=400, warmup=5)[0]
        assert spd["variance"] < 0.6 * rad["variance"], (scoring, spd["variance"], rad["variance"])
        chi2_ok([spd], [W])
    mag = S.estimate_variance(loss_fn, [W], S.SPAD(0.2, seed=1), draws=400)[0]
    assert mag["variance"] < 0.3 * rad["variance"], (mag["variance"], rad["variance"])
    chi2_ok([mag], [W])


def test_spad_biased_is_deterministic_topk(layer):
    X, dY, W, loss_fn = layer
    pol = S.SPAD(0.25, unbiased=False, refresh=1000)
    st = S.estimate_variance(loss_fn, [W], pol, draws=5)[0]
    assert st["variance"] < 1e-12 * st["exact_norm2"]  # zero up to the rounding of var = E[d^2] - E[d]^2
    assert st["bias_norm"] > 0  # follows the top-scored paths only: biased by design
    # the followed rows are exact, the others zero
    W.grad = None
    with S.use(pol):
        loss = loss_fn()
    loss.backward()
    g, exact = W.grad.numpy(), X.T @ dY
    kept = np.flatnonzero(np.abs(g).sum(1))
    assert len(kept) == 10
    np.testing.assert_allclose(g[kept], exact[kept], rtol=1e-10)


def test_spad_refresh_schedule(layer):
    X, dY, W, loss_fn = layer
    pol = S.SPAD(0.2, refresh=3, scoring="exact", paths="scored")
    scoring = []
    for _ in range(7):
        scoring.append(pol.next_is_scoring())
        with S.use(pol):
            loss = loss_fn()
        loss.backward()
    assert scoring == [True, False, False, True, False, False, True]
    assert len(pol.scores()) == 1 and pol.scores()[0].shape == (N,)
    # sampled scoring: no exact passes; scores appear at the first refresh (step 4)
    pol = S.SPAD(0.2, refresh=3, paths="scored")
    seen = []
    for _ in range(5):
        assert not pol.next_is_scoring()
        with S.use(pol):
            loss = loss_fn()
        loss.backward()
        seen.append(pol.scores()[0].size)
    assert seen == [0, 0, 0, N, N]
    assert np.all(pol.scores()[0] > 0)


def test_spad_sampled_scores_estimate_exact_scores(layer):
    """The scores gathered from sampled passes estimate the exact-pass scores without bias:
    averaged over many refresh periods they agree within their sampling error."""
    X, dY, W, loss_fn = layer
    exact = np.sqrt((X ** 2 * (dY ** 2).sum(1, keepdims=True)).sum(0))
    pol = S.SPAD(0.5, refresh=1, mix=1.0, seed=3, paths="scored")  # q uniform, scores re-estimated every step
    sq = []
    for _ in range(400):
        with S.use(pol):
            loss = loss_fn()
        loss.backward()
        if pol.scores()[0].size:
            sq.append(pol.scores()[0] ** 2)
    sq = np.array(sq)
    z = (sq.mean(0) - exact ** 2) / (sq.std(0, ddof=1) / np.sqrt(len(sq)))
    assert np.all(np.abs(z) < 5), z


def test_everywhere_variance_grows_with_depth():
    """RAD §3.3: injecting noise into every layer's dx compounds with depth; injecting once per
    parameter path does not."""
    rng = np.random.default_rng(4)
    width, Bb = 16, 32
    X = spad.tensor(rng.standard_normal((Bb, width)))
    Y = spad.tensor(rng.standard_normal((Bb, width)))

    def ratio(depth):
        Ws = [spad.tensor(rng.standard_normal((width, width)) / np.sqrt(width) * 1.5, requires_grad=True)
              for _ in range(depth)]

        def loss_fn():
            h = X
            for w in Ws:
                h = F.tanh(F.linear(h, w))
            return F.mse_loss(h, Y)

        once = S.estimate_variance(loss_fn, Ws[:1], S.RAD(0.25, seed=1), draws=150)[0]
        every = S.estimate_variance(loss_fn, Ws[:1], S.RAD(0.25, seed=1, placement="everywhere"), draws=150)[0]
        return every["variance"] / once["variance"]

    r2, r6 = ratio(2), ratio(6)
    assert r6 > r2 > 1.0, (r2, r6)


def test_elementwise_leaf_sampling_rosenbrock():
    """Model-agnostic: in theta*theta the saved factor feeds only theta's gradient, so it is
    stored element-sampled; the Rosenbrock gradient stays unbiased and the tape shrinks."""
    rng = np.random.default_rng(5)
    n = 30
    theta = spad.tensor(rng.standard_normal(n), requires_grad=True)
    shift = np.eye(n, k=1)[:-1]  # rows pick theta[i+1]
    lo = np.eye(n)[:-1]

    def loss_fn():
        sq = theta * theta  # leaf * leaf: both saved factors may be sampled
        t_next = spad.tensor(shift) @ theta
        sq_lo = spad.tensor(lo) @ sq
        return (100.0 * (t_next - sq_lo) ** 2).sum() + ((1.0 - spad.tensor(lo) @ theta) ** 2).sum()

    st = S.estimate_variance(loss_fn, [theta], S.RAD(0.3, seed=2), draws=800)
    chi2_ok(st, [theta])
    assert st[0]["variance"] > 0
    with S.use(S.RAD(0.3, seed=3)):
        with spad.no_grad():
            pass
        sq = theta * theta
    sampled = spad.memory_stats()["tape_bytes"]
    exact = spad.memory_stats()["exact_tape_bytes"]
    del sq
    assert sampled < 0.5 * exact


def test_elementwise_leaf_sampling_simulation():
    """A small simulation loop x_{t+1} = x_t + dt*(a*x_t): the saved x_t in a*x_t feeds only
    the leaf a's gradient and is element-sampled; the gradient w.r.t. a stays unbiased."""
    rng = np.random.default_rng(6)
    a = spad.tensor(rng.standard_normal(8) * 0.3, requires_grad=True)
    x0 = spad.tensor(rng.standard_normal(8))

    def loss_fn():
        x = x0
        for _ in range(10):
            x = x + 0.1 * (a * x)
        return (x * x).sum()

    st = S.estimate_variance(loss_fn, [a], S.RAD(0.5, seed=7), draws=1500)
    chi2_ok(st, [a])


CONV_POLICIES = [
    lambda: S.RAD(0.3, "different", seed=1),
    lambda: S.RAD(0.3, "same", seed=2),
    lambda: S.SPAD(0.3, seed=3),
    lambda: S.CRS(0.5, deterministic=0.5, seed=4),
    lambda: S.CRS(0.5, rows="bernoulli", seed=5),
]


@pytest.fixture
def conv_layer():
    rng = np.random.default_rng(7)
    x = spad.tensor(rng.standard_normal((6, 2, 7, 7)))
    w = spad.tensor(rng.standard_normal((3, 2, 3, 3)) * 0.3, requires_grad=True)
    target = spad.tensor(rng.standard_normal((6, 3, 7, 7)))

    def loss_fn():
        return F.mse_loss(F.conv2d(x, w, padding=1), target)

    return x, w, loss_fn


@pytest.mark.parametrize("make", CONV_POLICIES, ids=["rad-diff", "rad-same", "spad", "crs", "bernoulli"])
def test_conv_unbiased(conv_layer, make):
    x, w, loss_fn = conv_layer
    st = S.estimate_variance(loss_fn, [w], make(), draws=500)
    chi2_ok(st, [w])
    assert st[0]["variance"] > 0


def test_conv_tape_holds_the_kept_pixels(conv_layer):
    x, w, loss_fn = conv_layer
    w._is_param = True
    with S.use(S.RAD(0.25, seed=9)):
        y = F.conv2d(x, w, padding=1).sum()
    st = spad.memory_stats()
    y.backward()
    full = 6 * 2 * 7 * 7 * 8
    assert st["exact_tape_bytes"] == full
    kept = st["tape_bytes"] / full  # Bernoulli(0.25) over 294 pixels: sd ~ 0.025
    assert 0.25 - 0.1 < kept < 0.25 + 0.1
    assert st["tape_bytes"] % (2 * 8) == 0  # whole pixels (all channels) are kept


def test_create_graph_through_sampled_payload_raises(layer):
    """Second derivatives through sampled payloads would be biased: refused, not silently wrong."""
    X, dY, W, loss_fn = layer
    with S.use(S.RAD(0.2)):
        loss = loss_fn()
    with pytest.raises(RuntimeError, match="create_graph"):
        loss.backward(create_graph=True)


def test_rad_blocks_unbiased_with_block_formula():
    """RAD "different" in feature blocks (the default for wide layers): unbiased, and its
    variance is (n - b)/k * sum_b ||x_b||^2 ||dy_b||^2, within 10 % at 1500 draws."""
    rng = np.random.default_rng(21)
    Bb, n, m = 24, 128, 5
    X = rng.standard_normal((Bb, n))
    W = spad.tensor(rng.standard_normal((n, m)) * 0.1, requires_grad=True)
    Y = rng.standard_normal((Bb, m))
    x, y = spad.tensor(X), spad.tensor(Y)

    def loss_fn():
        return F.mse_loss(F.linear(x, W), y)

    dY = 2 * (X @ W.numpy() - Y) / (Bb * m)
    for block in (8, 16):  # k = 32 values per example: 4 blocks of 8 or 2 of 16
        pol = S.RAD(0.25, seed=3, block=block)
        assert pol.layer_block(n) == block
        st = S.estimate_variance(loss_fn, [W], pol, draws=1500)
        chi2_ok(st, [W])
        want = (n - block) / 32 * ((X ** 2).sum(1) * (dY ** 2).sum(1)).sum()
        assert abs(st[0]["variance"] / want - 1) < 0.10, (block, st[0]["variance"], want)
    # the same tape bytes as per-feature RAD, which has the larger (n - 1)/k variance
    for block in (8, 16, 1):
        with S.use(S.RAD(0.25, block=block)):
            out = F.linear(x, W).sum()
        assert spad.memory_stats()["tape_bytes"] == Bb * 32 * 8
        out.backward()


def test_rad_block_validation():
    for bad in (0, 3, 12, -8, 2.5):
        with pytest.raises(ValueError):
            S.RAD(0.1, block=bad)
