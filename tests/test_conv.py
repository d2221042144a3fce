"""conv2d, max_pool2d, avg_pool2d and dropout: forward against numpy (and torch when it is
installed), backward against central finite differences in float64, tape accounting,
and error messages.

Finite differences use eps=1e-6 in float64 on functions that are linear (conv, pools away
from ties) in the perturbed input, so the truncation error is ~0 and round-off is about
1e-16 * |f| / 1e-6 ~ 1e-9; rtol=1e-5 / atol=1e-7 leaves a wide margin yet catches any
wrong index or missing term (those are O(1) errors)."""
from __future__ import annotations

import numpy as np
import pytest

import spad
import spad._core as C
import spad.functional as F

from helpers import check_op


# ---- numpy references --------------------------------------------------------------------
def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def np_conv2d(x, w, b=None, stride=1, padding=0):
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    N, Cin, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    out = np.zeros((N, O, Ho, Wo), dtype=np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + sh * (Ho - 1) + 1 : sh, j : j + sw * (Wo - 1) + 1 : sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    if b is not None:
        out += b[None, :, None, None]
    return out


def np_im2col(x, kshape, stride, padding):
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    kh, kw = kshape
    N, Cin, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    rows = [
        xp[n, :, oh * sh : oh * sh + kh, ow * sw : ow * sw + kw].reshape(-1)
        for n in range(N)
        for oh in range(Ho)
        for ow in range(Wo)
    ]
    return np.stack(rows)


def np_pool(x, k, reduce):
    N, Cc, H, W = x.shape
    Ho, Wo = H // k, W // k
    blocks = x[:, :, : Ho * k, : Wo * k].reshape(N, Cc, Ho, k, Wo, k)
    return reduce(blocks, axis=(3, 5))


# ---- conv2d --------------------------------------------------------------------------------
CONV_CASES = [
    # x shape, w shape, stride, padding, bias
    ((2, 3, 5, 6), (4, 3, 3, 3), 1, 0, True),
    ((2, 3, 5, 6), (4, 3, 3, 3), 1, 1, False),
    ((2, 3, 7, 6), (4, 3, 3, 3), 2, 0, False),
    ((2, 3, 7, 6), (4, 3, 3, 3), 2, 1, True),
    ((1, 2, 6, 7), (3, 2, 2, 3), 1, 1, True),  # non-square kernel
    ((2, 2, 7, 8), (3, 2, 3, 2), (2, 1), (0, 1), True),  # per-axis stride and padding
    ((2, 1, 4, 4), (2, 1, 1, 1), 1, 0, True),  # 1x1 kernel
]


@pytest.mark.parametrize("xs,ws,stride,padding,bias", CONV_CASES)
def test_conv2d_forward_and_grads(xs, ws, stride, padding, bias):
    shapes = [xs, ws] + ([(ws[0],)] if bias else [])

    def sp(x, w, b=None):
        return F.conv2d(x, w, b, stride=stride, padding=padding)

    def ref(x, w, b=None):
        return np_conv2d(x, w, b, stride, padding)

    check_op(sp, ref, shapes, seed=len(xs) + ws[2] * 10 + ws[3])


def test_conv2d_float32_matches_float64():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 2, 9, 8)), rng.standard_normal((5, 2, 3, 3)), rng.standard_normal(5)
    y = F.conv2d(spad.tensor(x, dtype=np.float32), spad.tensor(w, dtype=np.float32), spad.tensor(b, dtype=np.float32),
                 stride=2, padding=1)
    assert y.dtype == np.float32
    # float32 sums of 18 products of O(1) terms: errors ~1e-6.
    np.testing.assert_allclose(y.numpy(), np_conv2d(x, w, b, 2, 1), rtol=1e-4, atol=1e-5)


def test_conv2d_weight_grad_large_and_over_many_chunks():
    # 64 channels x 4x4 kernel = 1024 patch entries; 1 x 37 x 37 = 1369 output positions.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 64, 40, 40))
    w = rng.standard_normal((3, 64, 4, 4))
    tx, tw = spad.tensor(x, requires_grad=True), spad.tensor(w, requires_grad=True)
    y = F.conv2d(tx, tw)
    G = rng.standard_normal(y.shape)
    (y * spad.tensor(G)).sum().backward()
    cols = np_im2col(x, (4, 4), 1, 0)  # (1369, 1024)
    g_rows = G.transpose(0, 2, 3, 1).reshape(-1, 3)
    ref = (g_rows.T @ cols).reshape(w.shape)
    np.testing.assert_allclose(tw.grad.numpy(), ref, rtol=1e-10, atol=1e-10)
    # The row-subset path rebuilds rows in chunks of 2^20 / 1024 = 1024 rows: two chunks here.
    rows = list(range(cols.shape[0]))
    dW = C._conv_weight_grad_rows(spad.tensor(x), spad.tensor(G), list(w.shape), (1, 1), (0, 0), rows)
    np.testing.assert_allclose(dW.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_conv2d_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 3, 8, 7)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    tx, tw, tb = (spad.tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(tx, tw, tb, stride=(2, 1), padding=(1, 0))
    G = rng.standard_normal(y.shape)
    (y * spad.tensor(G)).sum().backward()
    px, pw, pb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    py = torch.nn.functional.conv2d(px, pw, pb, stride=(2, 1), padding=(1, 0))
    (py * torch.tensor(G)).sum().backward()
    np.testing.assert_allclose(y.numpy(), py.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, theirs in ((tx, px), (tw, pw), (tb, pb)):
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-11, atol=1e-11)


def test_conv2d_saves_input_not_im2col():
    rng = np.random.default_rng(4)
    x = spad.tensor(rng.standard_normal((4, 2, 10, 10)))  # float64: 6400 bytes
    w = spad.tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    w._is_param = True  # parameters live anyway: not charged to the tape
    before = spad.memory_stats()["tape_bytes"]
    y = F.conv2d(x, w, padding=1)
    # Exactly the input's bytes, not the 9x larger im2col matrix.
    assert spad.memory_stats()["tape_bytes"] - before == x.size * 8
    y.sum().backward()
    assert spad.memory_stats()["tape_bytes"] == before


def test_conv2d_only_input_grad():
    # W without requires_grad: the input x is not saved at all (only W is).
    rng = np.random.default_rng(5)
    x = spad.tensor(rng.standard_normal((1, 2, 5, 5)), requires_grad=True)
    w = spad.tensor(rng.standard_normal((2, 2, 3, 3)))
    F.conv2d(x, w).sum().backward()
    assert w.grad is None
    # d/dx sum(conv(x, w)): every output position adds sum_o w[o] onto its 3x3 patch.
    ref = np.zeros((1, 2, 5, 5))
    for oh in range(3):
        for ow in range(3):
            ref[0, :, oh : oh + 3, ow : ow + 3] += w.numpy().sum(axis=0)
    np.testing.assert_allclose(x.grad.numpy(), ref, rtol=1e-12)


def test_conv2d_double_backward_raises():
    x = spad.tensor(np.ones((1, 1, 4, 4)), requires_grad=True)
    w = spad.tensor(np.ones((1, 1, 2, 2)), requires_grad=True)
    y = F.conv2d(x, w).sum()
    with pytest.raises(RuntimeError, match="conv2d: double backward"):
        y.backward(create_graph=True)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((1, 2), (1, 0))])
def test_conv_weight_grad_from_a_weighted_subset_of_rows(stride, padding):
    # The building block a spatial-sampling policy calls: dW from chosen im2col rows,
    # each row scaled by its weight (rows may repeat, as with sampling with replacement).
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 7, 6))
    wshape = (4, 3, 3, 2)
    y = np_conv2d(x, np.zeros(wshape), None, stride, padding)
    g = rng.standard_normal(y.shape)
    cols = np_im2col(x, wshape[2:], stride, padding)
    g_rows = g.transpose(0, 2, 3, 1).reshape(-1, wshape[0])
    rows = rng.integers(0, cols.shape[0], size=9)
    rows[1] = rows[0]
    weights = rng.uniform(0.5, 3.0, size=9)
    dW = C._conv_weight_grad_rows(spad.tensor(x), spad.tensor(g), list(wshape), _pair(stride), _pair(padding),
                                  rows.tolist(), weights.tolist())
    ref = ((g_rows[rows] * weights[:, None]).T @ cols[rows]).reshape(wshape)
    np.testing.assert_allclose(dW.numpy(), ref, rtol=1e-12, atol=1e-12)
    # All rows with unit weights is the exact dW.
    full = C._conv_weight_grad_rows(spad.tensor(x), spad.tensor(g), list(wshape), _pair(stride), _pair(padding),
                                    list(range(cols.shape[0])))
    np.testing.assert_allclose(full.numpy(), (g_rows.T @ cols).reshape(wshape), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="out of range"):
        C._conv_weight_grad_rows(spad.tensor(x), spad.tensor(g), list(wshape), _pair(stride), _pair(padding),
                                 [cols.shape[0]])


# ---- pooling -------------------------------------------------------------------------------
@pytest.mark.parametrize("xs,k", [((2, 3, 4, 6), 2), ((1, 2, 5, 7), 2), ((2, 1, 9, 9), 3), ((1, 1, 3, 3), 1)])
def test_max_pool2d(xs, k):
    # Standard-normal entries: the gap between a window's two largest values is far above
    # the FD step 1e-6 for this fixed seed, so the argmax does not flip under perturbation.
    check_op(lambda x: F.max_pool2d(x, k), lambda x: np_pool(x, k, np.max), [xs], seed=k)


@pytest.mark.parametrize("xs,k", [((2, 3, 4, 6), 2), ((1, 2, 5, 7), 2), ((2, 1, 9, 10), 3)])
def test_avg_pool2d(xs, k):
    check_op(lambda x: F.avg_pool2d(x, k), lambda x: np_pool(x, k, np.mean), [xs], seed=k)


@pytest.mark.parametrize("pool", [F.max_pool2d, F.avg_pool2d])
def test_pool_grad_under_create_graph(pool):
    # create_graph runs the differentiable form of the rule: it must agree with the fast one
    # and be differentiable itself. With R requiring grad, x.grad = pool^T(R) depends on R,
    # and d/dR <pool^T(R), V> = pool(V) (for max: V read at x's argmax positions).
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 5, 7))
    Rn, V = rng.standard_normal((2, 2, 2, 3)), rng.standard_normal(x.shape)
    a = spad.tensor(x, requires_grad=True)
    (pool(a, 2) * spad.tensor(Rn)).sum().backward()
    b, R = spad.tensor(x, requires_grad=True), spad.tensor(Rn, requires_grad=True)
    (pool(b, 2) * R).sum().backward(create_graph=True)
    np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=1e-15, atol=0)
    R.grad = None
    (b.grad * spad.tensor(V)).sum().backward()
    if pool is F.max_pool2d:
        blocks = x[:, :, :4, :6].reshape(2, 2, 2, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 2, 2, 3, 4)
        vblocks = V[:, :, :4, :6].reshape(2, 2, 2, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 2, 2, 3, 4)
        expected = np.take_along_axis(vblocks, blocks.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    else:
        expected = np_pool(V, 2, np.mean)
    np.testing.assert_allclose(R.grad.numpy(), expected, rtol=1e-14, atol=1e-15)


def test_pools_against_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(8).standard_normal((2, 3, 7, 9))
    for ours, theirs in ((F.max_pool2d, torch.nn.functional.max_pool2d),
                         (F.avg_pool2d, torch.nn.functional.avg_pool2d)):
        t = spad.tensor(x, requires_grad=True)
        ours(t, 3).sum().backward()
        p = torch.tensor(x, requires_grad=True)
        theirs(p, 3).sum().backward()
        np.testing.assert_allclose(ours(spad.tensor(x), 3).numpy(), theirs(torch.tensor(x), 3).numpy(), rtol=1e-14)
        np.testing.assert_allclose(t.grad.numpy(), p.grad.numpy(), rtol=1e-14)


def test_pool_tape_bytes():
    x = spad.tensor(np.random.default_rng(9).standard_normal((2, 3, 8, 8)), requires_grad=True)
    before = spad.memory_stats()["tape_bytes"]
    y = F.max_pool2d(x, 2)
    assert spad.memory_stats()["tape_bytes"] - before == y.size  # one byte (position in its window) per output
    z = F.avg_pool2d(x, 2)
    assert spad.memory_stats()["tape_bytes"] - before == y.size  # avg_pool2d saves nothing
    (y.sum() + z.sum()).backward()
    assert spad.memory_stats()["tape_bytes"] == before


def test_max_pool2d_propagates_nan():
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 1, 0] = np.nan
    assert np.isnan(F.max_pool2d(spad.tensor(x), 2).item())


# ---- dropout -------------------------------------------------------------------------------
def _drop(x, p, seed):
    spad.manual_seed(seed)
    return F.dropout(x, p, True)


def test_dropout_same_seed_same_mask():
    x = spad.ones((64, 50))
    a, b, c = _drop(x, 0.3, 11).numpy(), _drop(x, 0.3, 11).numpy(), _drop(x, 0.3, 12).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Consecutive calls draw fresh masks from the same seed.
    spad.manual_seed(11)
    first, second = F.dropout(x, 0.3, True).numpy(), F.dropout(x, 0.3, True).numpy()
    np.testing.assert_array_equal(first, a)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_preserves_the_mean(p):
    n = 200_000
    y = _drop(spad.ones(n, dtype=np.float64), p, 13).numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1.0 / (1.0 - p), rtol=1e-15)
    # Each element has mean 1 and std sqrt(p/(1-p)); 5 standard errors.
    sem = np.sqrt(p / (1 - p) / n)
    assert abs(y.mean() - 1.0) < 5 * sem
    assert abs((~kept).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_dropout_gradient_is_mask_times_scale_and_costs_no_tape():
    p = 0.4
    rng = np.random.default_rng(14)
    x = spad.tensor(rng.standard_normal((8, 16, 5)), requires_grad=True)
    stats = spad.memory_stats()
    y = _drop(x, p, 15)
    after = spad.memory_stats()
    assert after["tape_bytes"] == stats["tape_bytes"]
    assert after["exact_tape_bytes"] == stats["exact_tape_bytes"]
    mask = (y.numpy() != 0).astype(np.float64)
    np.testing.assert_allclose(y.numpy(), x.numpy() * mask / (1 - p), rtol=1e-15)
    G = rng.standard_normal(y.shape)
    (y * spad.tensor(G)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), G * mask / (1 - p), rtol=1e-15)


def test_dropout_backward_twice_and_double_backward():
    x = spad.tensor(np.ones((4, 4)), requires_grad=True)
    y = _drop(x, 0.5, 16).sum()
    y.backward(retain_graph=True)
    g1 = x.grad.numpy().copy()
    x.grad = None
    y.backward(create_graph=True)
    np.testing.assert_array_equal(x.grad.numpy(), g1)
    y2 = _drop(x, 0.5, 16).sum()
    y2.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y2.backward()


def test_dropout_identity_cases():
    x = spad.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    for y in (F.dropout(x, 0.5, False), F.dropout(x, 0.0, True)):
        np.testing.assert_array_equal(y.numpy(), x.numpy())


# ---- errors --------------------------------------------------------------------------------
def _t(*shape, dtype=np.float64):
    return spad.tensor(np.zeros(shape), dtype=dtype)


@pytest.mark.parametrize(
    "call,exc,pattern",
    [
        (lambda: F.conv2d(_t(3, 5, 5), _t(2, 3, 3, 3)), ValueError, r"conv2d: input must be 4-D.*\(3, 5, 5\)"),
        (lambda: F.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3)), ValueError, r"conv2d: weight must be 4-D.*\(2, 3, 3\)"),
        (lambda: F.conv2d(_t(1, 3, 5, 5), _t(2, 4, 3, 3)), ValueError, r"conv2d: .*\(1, 3, 5, 5\).*\(2, 4, 3, 3\)"),
        (lambda: F.conv2d(_t(1, 3, 2, 5), _t(2, 3, 3, 3)), ValueError, r"conv2d: kernel 3x3 is larger"),
        (lambda: F.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), stride=0), ValueError, r"conv2d: stride"),
        (lambda: F.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), padding=-1), ValueError, r"conv2d: padding"),
        (lambda: F.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), stride=(1, 2, 3)), ValueError, r"conv2d: stride"),
        (lambda: F.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3), _t(3)), ValueError, r"conv2d: bias of shape \(3,\)"),
        (lambda: F.conv2d(_t(1, 3, 5, 5), _t(2, 3, 3, 3, dtype=np.float32)), TypeError, r"conv2d: dtype mismatch"),
        (lambda: F.max_pool2d(_t(3, 4, 4), 2), ValueError, r"max_pool2d: input must be 4-D.*\(3, 4, 4\)"),
        (lambda: F.max_pool2d(_t(1, 1, 4, 1), 2), ValueError, r"max_pool2d: kernel size 2 .*\(1, 1, 4, 1\)"),
        (lambda: F.avg_pool2d(_t(1, 1, 4, 4), 0), ValueError, r"avg_pool2d: kernel size must be >= 1"),
        (lambda: F.avg_pool2d(_t(1, 1, 1, 4), 3), ValueError, r"avg_pool2d: kernel size 3 .*\(1, 1, 1, 4\)"),
        (lambda: F.dropout(_t(2, 2), 1.0, True), ValueError, r"dropout: p must be in \[0, 1\).*\(2, 2\)"),
        (lambda: F.dropout(_t(2, 2), -0.1, True), ValueError, r"dropout: p must be in"),
        (lambda: F.dropout(_t(2, 2), float("nan"), False), ValueError, r"dropout: p must be in"),
    ],
)
def test_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_manual_seed_rejects_negative():
    with pytest.raises(ValueError, match="manual_seed"):
        spad.manual_seed(-1)
