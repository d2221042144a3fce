"""One line per op and per broadcasting case: forward against numpy (float64, tight) and
backward against central finite differences, all through helpers.check_op.

Tolerances: check_op's defaults (rtol 1e-5, atol 1e-7 with eps 1e-6) bound the central
difference error for O(1) data in float64 (truncation ~eps^2, rounding ~1e-16/eps).
Data for ops with kinks or restricted domains is generated away from the kink/boundary."""
from __future__ import annotations

import numpy as np
import pytest

import spad
import spad.functional as F
from helpers import check_op


def away_from_zero(r: np.random.Generator, s: tuple) -> np.ndarray:
    """Normal data pushed at least 0.1 away from 0 (ReLU's kink)."""
    x = r.standard_normal(s)
    return np.sign(x) * (np.abs(x) + 0.1)


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


LABELS = np.array([2, 0, 4, 1, 4, 3])


def np_cross_entropy(z, labels=LABELS):
    return -np_log_softmax(z, 1)[np.arange(len(labels)), labels].mean()


# (id, spad_fn, numpy_fn, input shapes, extra check_op kwargs)
CASES = [
    # ---- binary elementwise, same shape and broadcasting ----
    ("add", lambda a, b: a + b, np.add, [(3, 4), (3, 4)], {}),
    ("sub", lambda a, b: a - b, np.subtract, [(3, 4), (3, 4)], {}),
    ("mul", lambda a, b: a * b, np.multiply, [(3, 4), (3, 4)], {}),
    ("div", lambda a, b: a / b, np.divide, [(3, 4), (3, 4)], {"positive": True}),
    ("add_row", lambda a, b: a + b, np.add, [(3, 4), (4,)], {}),
    ("add_row_left", lambda a, b: a + b, np.add, [(4,), (3, 4)], {}),
    ("sub_col", lambda a, b: a - b, np.subtract, [(3, 4), (3, 1)], {}),
    ("mul_outer", lambda a, b: a * b, np.multiply, [(3, 1), (1, 4)], {}),
    ("div_3d", lambda a, b: a / b, np.divide, [(2, 3, 4), (3, 1)], {"positive": True}),
    ("div_3d_left", lambda a, b: a / b, np.divide, [(3, 1), (2, 3, 4)], {"positive": True}),
    ("mul_0d", lambda a, b: a * b, np.multiply, [(3, 4), ()], {}),
    ("sub_0d_left", lambda a, b: a - b, np.subtract, [(), (3, 4)], {}),
    ("add_0d_0d", lambda a, b: a + b, np.add, [(), ()], {}),
    ("mul_4d_bcast", lambda a, b: a * b, np.multiply, [(2, 1, 3, 1), (4, 1, 5)], {}),
    ("add_reuse", lambda a: a + a, lambda a: a + a, [(3, 4)], {}),
    ("mul_square", lambda a: a * a, lambda a: a * a, [(3, 4)], {}),
    # ---- Python scalars on both sides ----
    ("rsub_scalar", lambda t: 2 - t, lambda t: 2 - t, [(3, 4)], {}),
    ("rdiv_scalar", lambda t: 2 / t, lambda t: 2 / t, [(3, 4)], {"positive": True}),
    ("radd_scalar", lambda t: 1.5 + t, lambda t: 1.5 + t, [(3, 4)], {}),
    ("rmul_scalar", lambda t: 3 * t, lambda t: 3 * t, [(3, 4)], {}),
    ("sub_scalar", lambda t: t - 0.25, lambda t: t - 0.25, [(3, 4)], {}),
    ("div_scalar", lambda t: t / 4, lambda t: t / 4, [(3, 4)], {}),
    ("neg", lambda t: -t, np.negative, [(3, 4)], {}),
    # ---- pow by a scalar ----
    ("pow2", lambda t: t ** 2, lambda t: t ** 2, [(3, 4)], {}),
    ("pow3", lambda t: t ** 3, lambda t: t ** 3, [(3, 4)], {}),
    ("pow_half", lambda t: t ** 0.5, np.sqrt, [(3, 4)], {"positive": True}),
    ("pow_neg1", lambda t: t ** -1, lambda t: 1 / t, [(3, 4)], {"positive": True}),
    # ---- unary ----
    ("exp", lambda t: t.exp(), np.exp, [(3, 4)], {}),
    ("log", lambda t: t.log(), np.log, [(3, 4)], {"positive": True}),
    ("sqrt", lambda t: t.sqrt(), np.sqrt, [(3, 4)], {"positive": True}),
    ("tanh", lambda t: t.tanh(), np.tanh, [(3, 4)], {}),
    ("sigmoid", lambda t: t.sigmoid(), lambda t: 1 / (1 + np.exp(-t)), [(3, 4)], {}),
    ("sigmoid_large", lambda t: (t * 30).sigmoid(), lambda t: 1 / (1 + np.exp(-30 * t)), [(3, 4)], {}),
    ("relu", lambda t: t.relu(), lambda t: np.maximum(t, 0), [(5, 7)], {"make": away_from_zero}),
    ("F.relu", F.relu, lambda t: np.maximum(t, 0), [(13,)], {"make": away_from_zero}),
    ("F.tanh", F.tanh, np.tanh, [(2, 3)], {}),
    ("F.sigmoid", F.sigmoid, lambda t: 1 / (1 + np.exp(-t)), [(2, 3)], {}),
    ("unary_on_view", lambda t: t.T.exp(), lambda t: np.exp(t.T), [(3, 4)], {}),
    # ---- matmul ----
    ("matmul_2d", lambda a, b: a @ b, np.matmul, [(3, 4), (4, 5)], {}),
    ("matmul_1d_2d", lambda a, b: a @ b, np.matmul, [(4,), (4, 5)], {}),
    ("matmul_2d_1d", lambda a, b: a @ b, np.matmul, [(3, 4), (4,)], {}),
    ("matmul_1d_1d", lambda a, b: a @ b, np.matmul, [(4,), (4,)], {}),
    ("matmul_batched", lambda a, b: a @ b, np.matmul, [(2, 3, 4), (2, 4, 5)], {}),
    ("matmul_batch_bcast", lambda a, b: a @ b, np.matmul, [(2, 1, 3, 4), (3, 4, 5)], {}),
    ("matmul_batch_x_2d", lambda a, b: a @ b, np.matmul, [(2, 3, 4), (4, 5)], {}),
    ("matmul_2d_x_batch", lambda a, b: a @ b, np.matmul, [(3, 4), (2, 4, 5)], {}),
    ("matmul_1d_batch", lambda a, b: a @ b, np.matmul, [(4,), (2, 4, 5)], {}),
    ("matmul_aT", lambda a, b: a.T @ b, lambda a, b: a.T @ b, [(4, 3), (4, 5)], {}),
    ("matmul_bT", lambda a, b: a @ b.T, lambda a, b: a @ b.T, [(3, 4), (5, 4)], {}),
    ("matmul_both_T", lambda a, b: a.T @ b.T, lambda a, b: a.T @ b.T, [(4, 3), (5, 4)], {}),
    ("matmul_batched_T", lambda a, b: a @ b.transpose(0, 2, 1), lambda a, b: a @ b.transpose(0, 2, 1),
     [(2, 3, 4), (2, 5, 4)], {}),
    ("matmul_sliced", lambda a, b: a[:, ::2] @ b, lambda a, b: a[:, ::2] @ b, [(3, 8), (4, 5)], {}),
    ("F.matmul", F.matmul, np.matmul, [(3, 4), (4, 2)], {}),
    # ---- reductions ----
    ("sum_all", lambda t: t.sum(), np.sum, [(3, 4)], {}),
    ("sum_0", lambda t: t.sum(axis=0), lambda t: t.sum(axis=0), [(3, 4)], {}),
    ("sum_neg1_keep", lambda t: t.sum(axis=-1, keepdims=True), lambda t: t.sum(axis=-1, keepdims=True),
     [(3, 4)], {}),
    ("sum_tuple", lambda t: t.sum(axis=(0, 2)), lambda t: t.sum(axis=(0, 2)), [(2, 3, 4)], {}),
    ("sum_tuple_neg_keep", lambda t: t.sum(axis=(-1, 0), keepdims=True),
     lambda t: t.sum(axis=(-1, 0), keepdims=True), [(2, 3, 4)], {}),
    ("sum_all_keep", lambda t: t.sum(keepdims=True), lambda t: t.sum(keepdims=True), [(2, 3)], {}),
    ("sum_0d", lambda t: t.sum(), np.sum, [()], {}),
    ("sum_view", lambda t: t.T.sum(axis=1), lambda t: t.T.sum(axis=1), [(3, 4)], {}),
    ("mean_all", lambda t: t.mean(), np.mean, [(3, 4)], {}),
    ("mean_1", lambda t: t.mean(axis=1), lambda t: t.mean(axis=1), [(3, 4)], {}),
    ("mean_neg2_keep", lambda t: t.mean(axis=-2, keepdims=True), lambda t: t.mean(axis=-2, keepdims=True),
     [(2, 3, 4)], {}),
    ("mean_tuple", lambda t: t.mean(axis=(1, 2)), lambda t: t.mean(axis=(1, 2)), [(2, 3, 4)], {}),
    ("max_all", lambda t: t.max(), np.max, [(3, 4)], {}),
    ("max_0", lambda t: t.max(axis=0), lambda t: t.max(axis=0), [(3, 4)], {}),
    ("max_neg1_keep", lambda t: t.max(axis=-1, keepdims=True), lambda t: t.max(axis=-1, keepdims=True),
     [(3, 4)], {}),
    ("max_tuple", lambda t: t.max(axis=(0, 2)), lambda t: t.max(axis=(0, 2)), [(2, 3, 4)], {}),
    ("max_tuple_keep", lambda t: t.max(axis=(-1, 1), keepdims=True),
     lambda t: t.max(axis=(-1, 1), keepdims=True), [(2, 3, 4)], {}),
    ("max_all_keep", lambda t: t.max(keepdims=True), lambda t: t.max(keepdims=True), [(2, 3)], {}),
    ("max_view", lambda t: t.T.max(axis=0), lambda t: t.T.max(axis=0), [(3, 4)], {}),
    # ---- shape ops ----
    ("reshape", lambda t: t.reshape(4, 3), lambda t: t.reshape(4, 3), [(3, 4)], {}),
    ("reshape_tuple", lambda t: t.reshape((2, 6)), lambda t: t.reshape(2, 6), [(3, 4)], {}),
    ("reshape_infer", lambda t: t.reshape(2, -1, 3), lambda t: t.reshape(2, -1, 3), [(3, 4)], {}),
    ("reshape_flat", lambda t: t.reshape(-1), lambda t: t.reshape(-1), [(2, 3, 4)], {}),
    ("reshape_view", lambda t: t.T.reshape(-1), lambda t: t.T.reshape(-1), [(3, 4)], {}),
    ("reshape_0d", lambda t: t.reshape(1, 1), lambda t: t.reshape(1, 1), [()], {}),
    ("T", lambda t: t.T, lambda t: t.T, [(3, 4)], {}),
    ("T_3d", lambda t: t.T, lambda t: t.T, [(2, 3, 4)], {}),
    ("transpose_noargs", lambda t: t.transpose(), lambda t: t.transpose(), [(2, 3, 4)], {}),
    ("transpose_perm", lambda t: t.transpose(1, 0, 2), lambda t: t.transpose(1, 0, 2), [(2, 3, 4)], {}),
    ("transpose_tuple", lambda t: t.transpose((2, 0, 1)), lambda t: t.transpose(2, 0, 1), [(2, 3, 4)], {}),
    ("transpose_neg", lambda t: t.transpose(-1, 0, 1), lambda t: t.transpose(2, 0, 1), [(2, 3, 4)], {}),
    ("transpose_then_mul", lambda t: t.transpose(1, 0) * t.transpose(1, 0),
     lambda t: t.T * t.T, [(3, 4)], {}),
    # ---- indexing ----
    ("index_int", lambda t: t[1], lambda t: t[1], [(3, 4)], {}),
    ("index_int_int", lambda t: t[1, 2], lambda t: t[1, 2], [(3, 4)], {}),
    ("index_neg", lambda t: t[-1, -2], lambda t: t[-1, -2], [(3, 4)], {}),
    ("index_neg_row", lambda t: t[-2], lambda t: t[-2], [(3, 4)], {}),
    ("index_slice", lambda t: t[1:3], lambda t: t[1:3], [(4, 5)], {}),
    ("index_slice_step", lambda t: t[::2, 1::2], lambda t: t[::2, 1::2], [(5, 6)], {}),
    ("index_slice_negstep", lambda t: t[::-1, -1:0:-2], lambda t: t[::-1, -1:0:-2], [(4, 6)], {}),
    ("index_int_array", lambda t: t[np.array([0, 2, 2, 1])], lambda t: t[np.array([0, 2, 2, 1])], [(3, 4)], {}),
    ("index_int_arrays_2", lambda t: t[[0, 2, 0], [1, 3, 1]], lambda t: t[[0, 2, 0], [1, 3, 1]], [(3, 4)], {}),
    ("index_neg_array", lambda t: t[:, np.array([-1, 0, -1])], lambda t: t[:, np.array([-1, 0, -1])],
     [(3, 4)], {}),
    ("index_bool_rows", lambda t: t[np.array([True, False, True])], lambda t: t[np.array([True, False, True])],
     [(3, 4)], {}),
    ("index_bool_mask", lambda t: t[MASK34], lambda t: t[MASK34], [(3, 4)], {}),
    ("index_ellipsis", lambda t: t[..., 1], lambda t: t[..., 1], [(2, 3, 4)], {}),
    ("index_none", lambda t: t[None], lambda t: t[None], [(3, 4)], {}),
    ("index_none_mid", lambda t: t[:, None, ::2], lambda t: t[:, None, ::2], [(3, 4)], {}),
    ("index_ellipsis_none", lambda t: t[0, ..., None], lambda t: t[0, ..., None], [(2, 3, 4)], {}),
    ("index_tensor_idx", lambda t: t[spad.tensor(np.array([1.0, 0.0])).numpy().astype(int)],
     lambda t: t[np.array([1, 0])], [(3, 4)], {}),
    # ---- concatenate ----
    ("concat_0", lambda a, b: spad.concatenate([a, b], axis=0), lambda a, b: np.concatenate([a, b], 0),
     [(2, 3), (4, 3)], {}),
    ("concat_1", lambda a, b: spad.concatenate([a, b], axis=1), lambda a, b: np.concatenate([a, b], 1),
     [(2, 3), (2, 5)], {}),
    ("concat_neg1", lambda a, b, c: spad.concatenate([a, b, c], axis=-1),
     lambda a, b, c: np.concatenate([a, b, c], -1), [(2, 3, 1), (2, 3, 2), (2, 3, 3)], {}),
    ("concat_reuse", lambda a: spad.concatenate([a, a * 2], axis=0), lambda a: np.concatenate([a, 2 * a], 0),
     [(2, 3)], {}),
    ("concat_views", lambda a, b: spad.concatenate([a.T, b], axis=1), lambda a, b: np.concatenate([a.T, b], 1),
     [(3, 2), (2, 4)], {}),
    # ---- softmax / log_softmax ----
    ("softmax_last", lambda t: F.softmax(t), lambda t: np_softmax(t, -1), [(3, 5)], {}),
    ("softmax_0", lambda t: F.softmax(t, axis=0), lambda t: np_softmax(t, 0), [(3, 5)], {}),
    ("softmax_mid", lambda t: F.softmax(t, axis=1), lambda t: np_softmax(t, 1), [(2, 3, 4)], {}),
    ("softmax_1d", lambda t: F.softmax(t, 0), lambda t: np_softmax(t, 0), [(6,)], {}),
    ("log_softmax_last", lambda t: F.log_softmax(t), lambda t: np_log_softmax(t, -1), [(3, 5)], {}),
    ("log_softmax_0", lambda t: F.log_softmax(t, axis=0), lambda t: np_log_softmax(t, 0), [(3, 5)], {}),
    ("log_softmax_neg2", lambda t: F.log_softmax(t, axis=-2), lambda t: np_log_softmax(t, -2), [(2, 3, 4)], {}),
    ("softmax_shifted", lambda t: F.softmax(t * 50 + 1000), lambda t: np_softmax(t * 50 + 1000, -1), [(2, 4)], {}),
    # ---- losses ----
    ("cross_entropy", lambda z: F.cross_entropy(z, LABELS), np_cross_entropy, [(6, 5)], {}),
    ("cross_entropy_large", lambda z: F.cross_entropy(z * 40, LABELS), lambda z: np_cross_entropy(z * 40),
     [(6, 5)], {"rtol": 1e-5, "atol": 1e-6}),
    ("cross_entropy_list", lambda z: F.cross_entropy(z, [1, 0]),
     lambda z: np_cross_entropy(z, np.array([1, 0])), [(2, 3)], {}),
    ("mse_loss", F.mse_loss, lambda p, t: np.mean((p - t) ** 2), [(4, 3), (4, 3)], {}),
    ("mse_loss_1d", F.mse_loss, lambda p, t: np.mean((p - t) ** 2), [(7,), (7,)], {}),
    ("mse_loss_pred_only", F.mse_loss, lambda p, t: np.mean((p - t) ** 2), [(4, 3), (4, 3)],
     {"grad_inputs": [0]}),
    # ---- linear ----
    ("linear_bias", F.linear, lambda x, W, b: x @ W + b, [(4, 3), (3, 5), (5,)], {}),
    ("linear_nobias", F.linear, lambda x, W: x @ W, [(4, 3), (3, 5)], {}),
    ("linear_3d", F.linear, lambda x, W, b: x @ W + b, [(2, 4, 3), (3, 5), (5,)], {}),
    ("linear_1d", F.linear, lambda x, W, b: x @ W + b, [(3,), (3, 5), (5,)], {}),
    ("linear_WT", lambda x, W, b: F.linear(x, W.T, b), lambda x, W, b: x @ W.T + b, [(4, 3), (5, 3), (5,)], {}),
    ("linear_x_only", F.linear, lambda x, W, b: x @ W + b, [(4, 3), (3, 5), (5,)], {"grad_inputs": [0]}),
    ("linear_W_only", F.linear, lambda x, W, b: x @ W + b, [(4, 3), (3, 5), (5,)], {"grad_inputs": [1]}),
    # ---- composites ----
    ("mlp_tanh", lambda x, W1, W2: ((x @ W1).tanh() @ W2).sigmoid(),
     lambda x, W1, W2: 1 / (1 + np.exp(-np.tanh(x @ W1) @ W2)), [(4, 3), (3, 5), (5, 2)], {}),
    ("normalize", lambda x: x / (x * x).sum(axis=1, keepdims=True).sqrt(),
     lambda x: x / np.sqrt((x * x).sum(axis=1, keepdims=True)), [(3, 4)], {}),
]

MASK34 = np.array([[True, False, True, True], [False, False, True, False], [True, True, False, True]])


@pytest.mark.parametrize("spad_fn,np_fn,shapes,kw", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_op(spad_fn, np_fn, shapes, kw):
    check_op(spad_fn, np_fn, shapes, **kw)


def test_case_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# ---- outputs that check_op does not see ---------------------------------------------------
def test_binary_result_shape_and_dtype():
    a = spad.tensor(np.ones((2, 1, 3)))
    b = spad.tensor(np.ones((4, 1)))
    assert (a + b).shape == (2, 4, 3)
    assert (a + b).dtype == np.float64
    assert (spad.ones((3,)) * 2).dtype == np.float32


def test_python_scalar_keeps_tensor_dtype():
    t = spad.tensor(np.array([1.0, 2.0], dtype=np.float32))
    for r in (2 - t, 2 / t, t ** 2, t * 0.1, 0.5 + t):
        assert r.dtype == np.float32


def test_cross_entropy_vs_torch(torch, rng):
    z = rng.standard_normal((8, 6))
    y = rng.integers(0, 6, size=8)
    t = spad.tensor(z, requires_grad=True)
    loss = F.cross_entropy(t, y)
    loss.backward()
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y))
    tl.backward()
    np.testing.assert_allclose(loss.item(), tl.item(), rtol=1e-12)
    np.testing.assert_allclose(t.grad.numpy(), tz.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_cross_entropy_labels_as_tensor(rng):
    z = rng.standard_normal((3, 4))
    a = F.cross_entropy(spad.tensor(z), np.array([3, 0, 1])).item()
    b = F.cross_entropy(spad.tensor(z), spad.tensor(np.array([3.0, 0.0, 1.0]))).item()
    assert a == b == pytest.approx(np_cross_entropy(z, np.array([3, 0, 1])), rel=1e-12)


def test_mse_loss_vs_torch(torch, rng):
    p, q = rng.standard_normal((2, 5, 3))
    tp = spad.tensor(p, requires_grad=True)
    loss = F.mse_loss(tp, q)  # numpy target converted to the prediction's dtype
    loss.backward()
    xp = torch.tensor(p, requires_grad=True)
    tl = torch.nn.functional.mse_loss(xp, torch.tensor(q))
    tl.backward()
    np.testing.assert_allclose(loss.item(), tl.item(), rtol=1e-12)
    np.testing.assert_allclose(tp.grad.numpy(), xp.grad.numpy(), rtol=1e-12)


def test_softmax_rows_sum_to_one(rng):
    y = F.softmax(spad.tensor(rng.standard_normal((4, 7)) * 30), axis=1).numpy()
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-12)


def test_max_gradient_goes_to_one_argmax_on_ties():
    x = spad.tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    g = x.grad.numpy()
    # A subgradient: each row's gradient is one unit placed on a maximal element.
    np.testing.assert_array_equal(g.sum(axis=1), [1.0, 1.0])
    assert g[0, 0] == 0 and g[1, 2] == 0


# ---- float32 forward against numpy -------------------------------------------------------
# float32 results are compared with numpy's float32 results; rtol 1e-5 is ~80 ulp, room for
# different summation order / libm but far below any real bug.
F32_CASES = [
    ("add_bcast", lambda a, b: a + b, lambda a, b: a + b, [(3, 4), (4,)]),
    ("mul", lambda a, b: a * b, lambda a, b: a * b, [(3, 4), (3, 1)]),
    ("div", lambda a, b: a / (b * b + 1), lambda a, b: a / (b * b + 1), [(3, 4), (3, 4)]),
    ("exp", lambda a: a.exp(), np.exp, [(5, 6)]),
    ("tanh", lambda a: a.tanh(), np.tanh, [(5, 6)]),
    ("sigmoid", lambda a: a.sigmoid(), lambda a: 1 / (1 + np.exp(-a)), [(5, 6)]),
    ("relu", lambda a: a.relu(), lambda a: np.maximum(a, 0), [(5, 6)]),
    ("matmul", lambda a, b: a @ b, np.matmul, [(16, 32), (32, 8)]),
    ("matmul_batched", lambda a, b: a @ b, np.matmul, [(3, 5, 7), (7, 2)]),
    ("sum", lambda a: a.sum(axis=0), lambda a: a.sum(axis=0), [(100, 3)]),
    ("mean", lambda a: a.mean(), np.mean, [(10, 10)]),
    ("max", lambda a: a.max(axis=1), lambda a: a.max(axis=1), [(4, 9)]),
    ("softmax", lambda a: F.softmax(a, axis=1), lambda a: np_softmax(a, 1), [(4, 9)]),
    ("log_softmax", lambda a: F.log_softmax(a), lambda a: np_log_softmax(a, -1), [(4, 9)]),
]


@pytest.mark.parametrize("spad_fn,np_fn,shapes", [c[1:] for c in F32_CASES], ids=[c[0] for c in F32_CASES])
def test_float32_forward(spad_fn, np_fn, shapes, rng):
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    out = spad_fn(*[spad.tensor(a, requires_grad=True) for a in arrays])
    assert out.dtype == np.float32
    ref = np_fn(*arrays)
    assert out.shape == np.shape(ref)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_float32_backward_matches_float64(rng):
    """The float32 gradient of a small net agrees with the float64 one to float32 precision."""
    x, W = rng.standard_normal((6, 5)), rng.standard_normal((5, 3))
    grads = []
    for dt in (np.float32, np.float64):
        tw = spad.tensor(W.astype(dt), requires_grad=True)
        F.cross_entropy((spad.tensor(x.astype(dt)) @ tw).tanh(), np.array([0, 1, 2, 0, 1, 2])).backward()
        assert tw.grad.dtype == dt
        grads.append(tw.grad.numpy().astype(np.float64))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)
