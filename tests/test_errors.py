"""The bad-input catalogue: each case asserts the exception type and that the message names
the op and the shapes (or the offending value), so a user can find the failing call."""
from __future__ import annotations

import gc
import re

import numpy as np
import pytest

import spad
import spad.functional as F


def t(*shape, dtype=np.float64, requires_grad=False):
    return spad.tensor(np.ones(shape, dtype=dtype), requires_grad=requires_grad)


def arr(values):
    return spad.tensor(np.asarray(values, dtype=np.float64))


NAN_LOGITS = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]])
INF_LOGITS = np.array([[0.0, 1.0, 2.0], [-np.inf, 1.0, 2.0]])

# (id, thunk, exception type, fragments that must all appear in the message, in order)
CASES = [
    # ---- shape mismatch ----
    ("add_shapes", lambda: t(3, 4) + t(5), ValueError, ["add", "(3, 4)", "(5,)"]),
    ("sub_shapes", lambda: t(2, 3) - t(2), ValueError, ["sub", "(2, 3)", "(2,)"]),
    ("mul_shapes", lambda: t(4) * t(5), ValueError, ["mul", "(4,)", "(5,)"]),
    ("div_shapes", lambda: t(2, 3) / t(3, 2), ValueError, ["div", "(2, 3)", "(3, 2)"]),
    ("matmul_inner", lambda: t(2, 3) @ t(4, 5), ValueError, ["matmul", "(2, 3)", "(4, 5)"]),
    ("matmul_1d", lambda: t(3) @ t(4, 5), ValueError, ["matmul", "(1, 3)", "(4, 5)"]),
    ("matmul_batch", lambda: t(2, 3, 4) @ t(3, 4, 5), ValueError, ["matmul", "(2, 3, 4)", "(3, 4, 5)"]),
    ("matmul_0d", lambda: t() @ t(3), ValueError, ["matmul", "()", "(3,)"]),
    ("reshape_size", lambda: t(3, 4).reshape(5, 3), ValueError, ["reshape", "(3, 4)", "(5, 3)"]),
    ("reshape_infer", lambda: t(3, 4).reshape(5, -1), ValueError, ["reshape", "(3, 4)", "(5, -1)"]),
    ("reshape_two_infer", lambda: t(3, 4).reshape(-1, -1), ValueError, ["reshape", "(-1, -1)"]),
    ("mse_shapes", lambda: F.mse_loss(t(3, 4), t(4, 3)), ValueError, ["mse_loss", "(3, 4)", "(4, 3)"]),
    ("mse_no_broadcast", lambda: F.mse_loss(t(3, 4), t(4)), ValueError, ["mse_loss", "(3, 4)", "(4,)"]),
    ("concat_shapes", lambda: spad.concatenate([t(3, 4), t(2, 5)]), ValueError, ["concatenate", "(3, 4)", "(2, 5)"]),
    ("linear_weight", lambda: F.linear(t(2, 3), t(4, 5)), ValueError, ["linear", "(2, 3)", "(4, 5)"]),
    ("linear_bias", lambda: F.linear(t(2, 3), t(3, 5), t(4)), ValueError, ["linear", "(4,)", "(3, 5)"]),
    ("item_many", lambda: t(3).item(), ValueError, ["item", "(3,)"]),
    # ---- dtype mismatch ----
    ("add_dtype", lambda: t(3) + t(3, dtype=np.float32), TypeError, ["add", "float64", "float32"]),
    ("matmul_dtype", lambda: t(2, 3) @ t(3, 2, dtype=np.float32), TypeError,
     ["matmul", "float64", "(2, 3)", "float32", "(3, 2)"]),
    ("mse_dtype", lambda: F.mse_loss(t(3), t(3, dtype=np.float32)), TypeError, ["mse_loss", "float64", "float32"]),
    ("concat_dtype", lambda: spad.concatenate([t(2), t(2, dtype=np.float32)]), TypeError,
     ["concatenate", "float64", "float32"]),
    ("linear_dtype", lambda: F.linear(t(2, 3, dtype=np.float32), t(3, 4)), TypeError, ["linear", "float32", "float64"]),
    ("operand_str", lambda: t(3) + "a", TypeError, ["unsupported operand", "str"]),
    ("operand_str_reflected", lambda: "a" * t(3), TypeError, ["unsupported operand", "str"]),
    ("operand_object", lambda: t(3) * object(), TypeError, ["unsupported operand", "object"]),
    ("pow_tensor_exponent", lambda: t(3) ** t(3), TypeError, ["pow", "Tensor"]),
    # ---- NaN / inf in losses ----
    ("ce_nan", lambda: F.cross_entropy(spad.tensor(NAN_LOGITS), [0, 1]), ValueError, ["cross_entropy", "(2, 3)", "NaN"]),
    ("ce_inf", lambda: F.cross_entropy(spad.tensor(INF_LOGITS), [0, 1]), ValueError, ["cross_entropy", "(2, 3)", "inf"]),
    ("mse_nan_pred", lambda: F.mse_loss(arr([1.0, np.nan]), arr([1.0, 1.0])), ValueError, ["mse_loss", "(2,)", "NaN"]),
    ("mse_inf_target", lambda: F.mse_loss(arr([1.0, 1.0]), arr([np.inf, 1.0])), ValueError, ["mse_loss", "(2,)", "inf"]),
    # ---- cross_entropy labels ----
    ("ce_label_high", lambda: F.cross_entropy(t(2, 3), [0, 3]), ValueError, ["cross_entropy", "label 3", "(2, 3)"]),
    ("ce_label_negative", lambda: F.cross_entropy(t(2, 3), [-1, 0]), ValueError, ["cross_entropy", "label -1", "(2, 3)"]),
    ("ce_label_length", lambda: F.cross_entropy(t(2, 3), [0, 1, 2]), ValueError, ["cross_entropy", "(3,)", "(2, 3)"]),
    ("ce_label_2d", lambda: F.cross_entropy(t(2, 3), np.zeros((2, 1), np.int64)), ValueError,
     ["cross_entropy", "(2, 1)", "(2, 3)"]),
    ("ce_label_float", lambda: F.cross_entropy(t(2, 3), np.array([0.5, 1.0])), TypeError,
     ["cross_entropy", "integers", "float64"]),
    ("ce_label_nan", lambda: F.cross_entropy(t(2, 3), np.array([np.nan, 1.0])), TypeError,
     ["cross_entropy", "integers"]),
    ("ce_logits_1d", lambda: F.cross_entropy(t(3), [0]), ValueError, ["cross_entropy", "(3,)"]),
    # ---- empty tensors ----
    ("mean_empty", lambda: t(0).mean(), ValueError, ["mean", "(0,)"]),
    ("mean_empty_axis", lambda: t(3, 0).mean(axis=1), ValueError, ["mean", "(3, 0)"]),
    ("max_empty", lambda: t(0).max(), ValueError, ["max", "(0,)"]),
    ("max_empty_axis", lambda: t(3, 0).max(axis=-1), ValueError, ["max", "(3, 0)"]),
    ("ce_batch0", lambda: F.cross_entropy(t(0, 3), np.zeros(0, np.int64)), ValueError, ["cross_entropy", "(0, 3)"]),
    ("ce_classes0", lambda: F.cross_entropy(t(2, 0), [0, 0]), ValueError, ["cross_entropy", "(2, 0)"]),
    ("mse_empty", lambda: F.mse_loss(t(0, 2), t(0, 2)), ValueError, ["mse_loss", "(0, 2)"]),
    # ---- axes ----
    ("sum_axis", lambda: t(3, 4).sum(axis=2), ValueError, ["sum", "axis 2", "rank 2"]),
    ("sum_axis_neg", lambda: t(3, 4).sum(axis=-3), ValueError, ["sum", "axis -3", "rank 2"]),
    ("sum_axis_repeat", lambda: t(3, 4).sum(axis=(1, -1)), ValueError, ["sum", "repeated"]),
    ("mean_axis_tuple", lambda: t(3, 4).mean(axis=(0, 5)), ValueError, ["mean", "axis 5", "rank 2"]),
    ("max_axis", lambda: t(3, 4).max(axis=2), ValueError, ["max", "axis 2", "rank 2"]),
    ("softmax_axis", lambda: F.softmax(t(3, 4), axis=2), ValueError, ["softmax", "axis 2", "rank 2"]),
    ("log_softmax_axis", lambda: F.log_softmax(t(3, 4), axis=-3), ValueError, ["log_softmax", "axis -3", "rank 2"]),
    ("concat_axis", lambda: spad.concatenate([t(3, 4), t(3, 4)], axis=2), ValueError, ["concatenate", "axis 2"]),
    # ---- transpose ----
    ("transpose_short", lambda: t(2, 3, 4).transpose(0, 1), ValueError, ["transpose", "(0, 1)", "(2, 3, 4)"]),
    ("transpose_repeat", lambda: t(2, 3, 4).transpose(0, 1, 1), ValueError, ["transpose", "repeated", "(0, 1, 1)"]),
    ("transpose_range", lambda: t(2, 3, 4).transpose(0, 1, 3), ValueError, ["transpose", "axis 3", "rank 3"]),
    # ---- indexing ----
    ("index_int", lambda: t(3, 4)[3], IndexError, ["index", "3", "(3, 4)"]),
    ("index_negative", lambda: t(3, 4)[0, -5], IndexError, ["index", "-5", "(3, 4)"]),
    ("index_array", lambda: t(3, 4)[np.array([0, 7])], IndexError, ["index", "7", "(3, 4)"]),
    ("index_too_many", lambda: t(3, 4)[0, 0, 0], IndexError, ["index", "(3, 4)"]),
    ("index_bool_shape", lambda: t(3, 4)[np.array([True, False])], IndexError, ["index", "(3, 4)"]),
    # ---- creation ----
    ("zeros_negative", lambda: spad.zeros((2, -1)), ValueError, ["(2, -1)"]),
]


def _backward_twice():
    x = t(3, requires_grad=True)
    y = (x * x).sum()
    y.backward()
    y.backward()


def _backward_no_grad():
    t(2, 3).sum().backward()


def _backward_no_grad_under_no_grad():
    x = t(2, 3, requires_grad=True)
    with spad.no_grad():
        y = (x * x).sum()
    y.backward()


def _backward_non_scalar():
    (t(2, 3, requires_grad=True) * 2).backward()


def _backward_seed_dtype():
    (t(2, requires_grad=True) * 2).backward(spad.tensor(np.ones(2, np.float32)))


def _requires_grad_non_leaf():
    y = t(2, requires_grad=True) * 2
    y.requires_grad = False


def _grad_assign_shape():
    x = t(2, 3, requires_grad=True)
    x.grad = t(3, 2)


CASES += [
    ("backward_twice", _backward_twice, RuntimeError, ["mul", "second time", "retain_graph=True"]),
    ("backward_no_grad", _backward_no_grad, RuntimeError, ["backward", "()", "does not require grad"]),
    ("backward_under_no_grad", _backward_no_grad_under_no_grad, RuntimeError, ["backward", "no_grad"]),
    ("backward_non_scalar", _backward_non_scalar, RuntimeError, ["backward", "scalar", "(2, 3)"]),
    ("backward_seed_dtype", _backward_seed_dtype, TypeError, ["backward", "float32", "float64"]),
    ("requires_grad_non_leaf", _requires_grad_non_leaf, RuntimeError, ["requires_grad", "leaf"]),
    ("grad_assign_shape", _grad_assign_shape, ValueError, ["grad", "(3, 2)", "(2, 3)"]),
]


@pytest.mark.parametrize("thunk,exc,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(thunk, exc, fragments):
    with pytest.raises(exc) as info:
        thunk()
    assert type(info.value) is exc, f"expected exactly {exc.__name__}, got {type(info.value).__name__}"
    pattern = ".*".join(re.escape(f) for f in fragments)
    # Case-insensitive: the tape names ops by their table name (MUL) in the second-pass error.
    assert re.search(pattern, str(info.value), re.S | re.I), f"message {str(info.value)!r} lacks {fragments}"


def test_case_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_errors_leave_no_tape_behind():
    """A failed op records nothing and leaves grad mode on."""
    gc.collect()  # graphs of earlier tests in reference cycles would be freed mid-test otherwise
    before = spad.memory_stats()["tape_bytes"]
    x = t(3, 4, requires_grad=True)
    for bad in (lambda: x @ t(5, 2), lambda: F.cross_entropy(x, [0, 9, 1]), lambda: x.sum(axis=4)):
        with pytest.raises(ValueError):
            bad()
    assert spad.memory_stats()["tape_bytes"] == before
    assert spad.is_grad_enabled()


def test_error_during_backward_leaves_graph_usable():
    """A bad seed is rejected before the sweep starts, so a correct retry still works."""
    x = t(2, requires_grad=True)
    y = x * 3.0
    with pytest.raises(ValueError):
        y.backward(np.ones(3))
    y.backward(np.ones(2))
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])


def test_empty_sum_is_allowed():
    """Unlike mean/max, a sum over zero elements is well defined (0), as in numpy."""
    assert t(0).sum().item() == 0.0
    assert t(3, 0).sum(axis=1).shape == (3,)
