"""The bad-input catalogue: what a hostile (or careless) user passes to every part of the
Python API, and what must happen. Each case is either an expected exception (type and a
fragment of its message, so the error says what is wrong) or a check of the correct
result where numpy/PyTorch semantics define one (NaN propagation, byte order, conversions).
No case may crash, hang, give a silently wrong answer or a raw binding message.

The C API has its own catalogue (tests/cpp/test_bad_inputs.cpp, also run under ASan +
UBSan), and model files their shared vectors and fuzzing (tests/test_model_files.py).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import spad
import spad.functional as F
from spad import nn, optim
from spad import sampling as S
from spad.data import DataLoader

NAN, INF = float("nan"), float("inf")
CASES = []


def bad(name, fn, exc, fragment):
    """fn() must raise exc with `fragment` (a regex) in its message."""
    CASES.append(pytest.param(fn, exc, fragment, id=name))


def good(name, fn):
    """fn() must return True (a check of the correct result)."""
    CASES.append(pytest.param(fn, None, None, id=name))


def t(*shape, fill=1.0, dtype=np.float32, rg=False):
    return spad.tensor(np.full(shape, fill, dtype), requires_grad=rg)


def p(*shape):
    return spad.tensor(np.ones(shape, np.float32), requires_grad=True)


def img(n=1, c=1, h=4, w=4):
    return t(n, c, h, w)


def setgrad(x, g):
    x.grad = g


def close(a, b):
    return np.allclose(np.asarray(a), np.asarray(b), equal_nan=True)


# ---- tensor creation ---------------------------------------------------------------------
bad("tensor_complex", lambda: spad.tensor(np.array([1 + 2j])), TypeError, "complex")
bad("tensor_complex_list", lambda: spad.tensor([1j, 2]), TypeError, "complex")
bad("tensor_object", lambda: spad.tensor(np.array([object()])), TypeError, "object")
bad("tensor_none", lambda: spad.tensor(None), TypeError, "object")
bad("tensor_str", lambda: spad.tensor("abc"), TypeError, "<U3|dtype")
bad("tensor_str_array", lambda: spad.tensor(np.array(["a"])), TypeError, "dtype")
bad("tensor_datetime", lambda: spad.tensor(np.array(["2020-01-01"], "datetime64[D]")), TypeError, "datetime64")
bad("tensor_ragged", lambda: spad.tensor([[1.0], [1.0, 2.0]]), ValueError, "inhomogeneous|sequence")
bad("tensor_dtype_int", lambda: spad.tensor([1, 2], dtype=np.int32), TypeError, "float32 or float64")
bad("tensor_dtype_float16", lambda: spad.tensor([1, 2], dtype=np.float16), TypeError, "float32 or float64")
bad("tensor_dtype_bogus", lambda: spad.tensor([1, 2], dtype="bogus"), TypeError, "bogus")
bad("tensor_copy_false_int", lambda: spad.tensor(np.arange(3), copy=False), TypeError, "copy")
bad("tensor_copy_false_readonly", lambda: spad.tensor(np.ones(3, np.float32)[::-1], copy=False), TypeError, "copy")
good("tensor_big_endian_f4", lambda: close(spad.tensor(np.array([1, 2, 3], ">f4")).numpy(), [1, 2, 3]))
good("tensor_big_endian_f8_keeps_width",
     lambda: spad.tensor(np.array([1.5, 2], ">f8")).dtype == np.float64
     and close(spad.tensor(np.array([1.5, 2], ">f8")).numpy(), [1.5, 2]))
good("tensor_float16_converts", lambda: close(spad.tensor(np.array([1.5], np.float16)).numpy(), [1.5]))
good("tensor_bool_converts", lambda: close(spad.tensor(np.array([True, False])).numpy(), [1, 0]))
good("tensor_uint64_converts", lambda: close(spad.tensor(np.array([2**40], np.uint64)).numpy(), [2**40]))
good("tensor_negative_stride_copies", lambda: close(spad.tensor(np.arange(4.0)[::-1]).numpy(), [3, 2, 1, 0]))
good("tensor_noncontiguous", lambda: close(spad.tensor(np.arange(12.0).reshape(3, 4)[:, 1::2]).numpy(),
                                           np.arange(12.0).reshape(3, 4)[:, 1::2]))
good("tensor_readonly_copies", lambda: close(spad.tensor(np.frombuffer(b"\0\0\x80?", "<f4")).numpy(), [1.0]))
good("tensor_0d", lambda: spad.tensor(3.0).shape == () and spad.tensor(3.0).item() == 3.0)
good("tensor_empty", lambda: spad.tensor(np.zeros((0, 3), np.float32)).shape == (0, 3))
good("tensor_nan_kept", lambda: math.isnan(spad.tensor([NAN]).item()))
bad("from_numpy_list", lambda: spad.from_numpy([1.0, 2.0]), TypeError, "numpy array")
bad("from_numpy_int", lambda: spad.from_numpy(np.arange(3)), TypeError, "int64")
bad("from_numpy_float16", lambda: spad.from_numpy(np.ones(3, np.float16)), TypeError, "float16")
bad("from_numpy_big_endian", lambda: spad.from_numpy(np.ones(3, ">f4")), TypeError, "dtype")
bad("from_numpy_readonly", lambda: spad.from_numpy(np.frombuffer(b"\0" * 8, np.float32)), TypeError, "read-only")
bad("from_numpy_negative_stride", lambda: spad.from_numpy(np.ones(4, np.float32)[::-1]), TypeError, "strides")
bad("core_from_numpy_big_endian", lambda: spad._core.from_numpy(np.ones(3, ">f4")), TypeError, "byte order")
bad("zeros_negative", lambda: spad.zeros(-1), ValueError, "negative")
bad("zeros_negative_tuple", lambda: spad.zeros((2, -3)), ValueError, "negative")
bad("zeros_float_dim", lambda: spad.zeros((2, 2.5)), TypeError, "integers")
bad("zeros_float", lambda: spad.zeros(1.5), TypeError, "int")
bad("zeros_str", lambda: spad.zeros("34"), TypeError, "str")
bad("zeros_none", lambda: spad.zeros(None), TypeError, "NoneType")
bad("zeros_huge", lambda: spad.zeros((2**62, 2**62)), ValueError, "too big|exceed|large")
bad("zeros_int_dtype", lambda: spad.zeros(3, dtype=np.int64), TypeError, "float32 or float64")
bad("ones_bool_dim", lambda: spad.ones((True, 2)), TypeError, "integers")
bad("randn_negative", lambda: spad.randn(-2), ValueError, "negative")
bad("randn_seed_negative", lambda: spad.randn(2, seed=-1), ValueError, "negative|non-negative")
bad("full_str_value", lambda: spad.full(3, "a"), ValueError, "could not convert|a")
good("full_nan_value", lambda: np.isnan(spad.full(3, NAN).numpy()).all())

# ---- tensor methods and attributes ------------------------------------------------------
bad("item_many", lambda: t(3).item(), ValueError, "one element")
bad("item_empty", lambda: t(0).item(), ValueError, "one element")
bad("grad_numpy", lambda: setgrad(p(3), np.ones(3)), TypeError, "spad Tensor or None")
bad("grad_number", lambda: setgrad(p(3), 5), TypeError, "spad Tensor or None")
bad("grad_shape", lambda: setgrad(p(3), t(4)), ValueError, "shape")
bad("grad_dtype", lambda: setgrad(p(3), t(3, dtype=np.float64)), TypeError, "dtype")
good("grad_none", lambda: setgrad(p(3), None) is None)
bad("requires_grad_nonleaf_off", lambda: setattr(p(3) * 2, "requires_grad", False), RuntimeError, "leaf")
bad("requires_grad_int", lambda: setattr(spad._core.from_numpy(np.arange(3)), "requires_grad", True), TypeError,
    "float")
bad("reshape_2_63", lambda: t(1).reshape(2**63, 1), ValueError, "out of range")
bad("reshape_wraps", lambda: t(4).reshape(2**62 + 1, 4), ValueError, "too large")
bad("reshape_empty_huge", lambda: spad.zeros(0).reshape(2**62, 4), ValueError, "too large")
bad("reshape_empty_huge_3d", lambda: spad.zeros(0).reshape(0, 2**40, 2**40), ValueError, "too large")
bad("reshape_negative", lambda: t(4).reshape(-2, 2), ValueError, "invalid shape")
bad("reshape_two_infer", lambda: t(4).reshape(-1, -1), ValueError, "only one")
bad("reshape_mismatch", lambda: t(4).reshape(5), ValueError, "cannot reshape")
bad("reshape_infer_zero", lambda: t(0).reshape(-1, 0), ValueError, "cannot reshape")
bad("reshape_float", lambda: t(4).reshape(1.5), TypeError, "shape")
bad("reshape_str", lambda: t(4).reshape("ab"), TypeError, "shape")
bad("reshape_none_entry", lambda: t(4).reshape((2, None)), TypeError, "integers")
bad("reshape_neg_huge", lambda: t(4).reshape(-(2**63) - 1), ValueError, "out of range")
good("reshape_numpy_ints", lambda: t(4).reshape(np.int64(2), np.int32(2)).shape == (2, 2))
bad("transpose_axis", lambda: t(2, 3).transpose(0, 5), ValueError, "axis")
bad("transpose_repeat", lambda: t(2, 3).transpose(0, 0), ValueError, "repeated")
bad("transpose_float", lambda: t(2, 3).transpose(0.5, 1), TypeError, "integers")
bad("sum_axis_range", lambda: t(2, 3).sum(axis=5), ValueError, "axis")
bad("sum_axis_float", lambda: t(2, 3).sum(axis=1.5), TypeError, "axis")
bad("sum_axis_str", lambda: t(2, 3).sum(axis="0"), TypeError, "axis")
bad("sum_axis_huge", lambda: t(2, 3).sum(axis=2**70), ValueError, "out of range")
bad("sum_axis_empty", lambda: t(2, 3).sum(axis=()), ValueError, "axis")
bad("sum_axis_repeat", lambda: t(2, 3).sum(axis=(0, 0)), ValueError, "axis|repeated")
bad("max_empty", lambda: t(0).max(), ValueError, "zero-size")
bad("max_empty_axis", lambda: t(0, 3).max(axis=0), ValueError, "zero-size")
good("sum_empty_is_zero", lambda: t(0).sum().item() == 0.0)
good("max_nan_middle", lambda: math.isnan(spad.tensor([1, NAN, 2]).max().item()))
good("max_nan_first", lambda: math.isnan(spad.tensor([NAN, 1, 2]).max().item()))
good("max_nan_last", lambda: math.isnan(spad.tensor([1, 2, NAN]).max().item()))
good("max_nan_axis", lambda: close(spad.tensor([[1, NAN], [3, 2]]).max(axis=1).numpy(), [NAN, 3]))
good("max_inf", lambda: spad.tensor([1, INF, 2]).max().item() == INF)
good("max_all_neg_inf", lambda: spad.tensor([-INF, -INF]).max().item() == -INF)
good("max_0d", lambda: spad.tensor(2.0).max().item() == 2.0)
good("mean_nan", lambda: math.isnan(spad.tensor([1, NAN]).mean().item()))


def _max_nan_grad():
    x = spad.tensor([1.0, NAN, 2.0], requires_grad=True)
    x.max().backward()
    return close(x.grad.numpy(), [0, 1, 0])


good("max_nan_grad_to_nan", _max_nan_grad)
bad("index_out_of_range", lambda: t(3)[10], IndexError, "10|out of bounds")
bad("index_float", lambda: t(3)[1.5], IndexError, "integers|index")
bad("index_str", lambda: t(3)["a"], IndexError, "integers|index")
bad("index_array_range", lambda: t(3)[np.array([5])], IndexError, "5|out of bounds")
bad("index_too_many", lambda: t(3)[0, 0], IndexError, "too many|dimension")
good("index_negative", lambda: t(3, fill=2.0)[-1].item() == 2.0)

bad("bool_many", lambda: bool(t(2)), ValueError, "ambiguous")
good("bool_zero_is_false", lambda: bool(spad.tensor([0.0])) is False)
good("bool_nan_is_true", lambda: bool(spad.tensor([NAN])) is True)
bad("int_nan", lambda: int(spad.tensor(NAN)), ValueError, "nan")
good("int_value", lambda: int(spad.tensor(2.7)) == 2)
bad("float_many", lambda: float(t(2)), ValueError, "one element")
bad("iter_0d", lambda: list(spad.tensor(1.0)), TypeError, "0-d")
bad("len_0d", lambda: len(spad.tensor(1.0)), TypeError, "0-d")
good("format_one", lambda: f"{spad.tensor(1.0):.2f}" == "1.00")
good("keepdims_truthy", lambda: t(2, 3).sum(axis=1, keepdims=1).shape == (2, 1))
bad("pickle", lambda: __import__("pickle").dumps(t(2)), TypeError, "pickle")
bad("numpy_ufunc", lambda: np.exp(t(2)), TypeError, "ufunc")

# ---- arithmetic operands ----------------------------------------------------------------
bad("add_str", lambda: t(3) + "a", TypeError, "str")
bad("add_none", lambda: t(3) + None, TypeError, "NoneType")
bad("add_dict", lambda: t(3) + {}, TypeError, "dict")
bad("add_object", lambda: t(3) + object(), TypeError, "object")
bad("add_complex_scalar", lambda: t(3) + 1j, TypeError, "complex")
bad("add_complex_array", lambda: t(3) + np.array([1j, 2, 3]), TypeError, "complex")
bad("radd_complex_array", lambda: np.array([1j, 2, 3]) + t(3), TypeError, "complex")
bad("mul_complex_list", lambda: t(2) * [1j, 1], TypeError, "complex")
bad("add_str_array", lambda: t(3) + np.array(["a", "b", "c"]), TypeError, "<U1|dtype")
bad("add_object_array", lambda: t(2) * np.array([None, None]), TypeError, "object")
bad("add_ragged", lambda: t(2) + [[1], [1, 2]], ValueError, "inhomogeneous|sequence")
bad("add_broadcast", lambda: t(3) + t(4), ValueError, "broadcast")
bad("add_dtypes", lambda: t(3) + t(3, dtype=np.float64), TypeError, "float32|float64")
bad("pow_tensor", lambda: t(3) ** t(3), TypeError, "pow")
bad("pow_str", lambda: t(3) ** "a", TypeError, "pow")
bad("matmul_shapes", lambda: t(2, 3) @ t(4, 2), ValueError, "matmul")
bad("matmul_0d", lambda: t(2, 3) @ 2.0, ValueError, "matmul")
good("add_big_endian", lambda: close((t(3) + np.array([1, 2, 3], ">f4")).numpy(), [2, 3, 4]))
good("radd_big_endian", lambda: close((np.array([1, 2, 3], ">f8") + t(3)).numpy(), [2, 3, 4]))
good("matmul_big_endian", lambda: close((t(1, 3) @ np.array([[1], [2], [3]], ">f4")).numpy(), [[6]]))
good("add_float16", lambda: close((t(2) + np.array([0.5, 1.5], np.float16)).numpy(), [1.5, 2.5]))
good("add_int", lambda: close((t(2) + np.array([1, 2])).numpy(), [2, 3]))
good("add_uint8", lambda: close((t(2) + np.array([255, 2], np.uint8)).numpy(), [256, 3]))
good("add_bool", lambda: close((t(2) + np.array([True, False])).numpy(), [2, 1]))
good("add_strided", lambda: close((t(2) + np.arange(4.0, dtype=np.float32)[::2]).numpy(), [1, 3]))
good("add_negative_stride", lambda: close((t(3) + np.arange(3.0, dtype=np.float32)[::-1]).numpy(), [3, 2, 1]))
good("add_readonly", lambda: close((t(1) + np.frombuffer(b"\0\0\x80?", "<f4")).numpy(), [2]))
good("add_list", lambda: close((t(2) + [1, 2]).numpy(), [2, 3]))
good("add_numpy_scalar", lambda: close((t(2) + np.float64(1.5)).numpy(), [2.5, 2.5]))
good("add_empty", lambda: (t(0) + t(0)).shape == (0,))
good("add_0d", lambda: (t() + t(2)).shape == (2,))
good("mul_inf_zero_nan", lambda: math.isnan((spad.tensor([INF]) * 0).item()))
good("div_zero_inf", lambda: (spad.tensor([1.0]) / 0).item() == INF)
good("log_negative_nan", lambda: math.isnan(spad.tensor([-1.0]).log().item()))


def _backward(x, **kw):
    y = x * 2
    y.backward(**kw)
    return x.grad


bad("backward_nonscalar", lambda: (p(3) * 2).backward(), (ValueError, RuntimeError), "backward|scalar")
bad("backward_grad_shape", lambda: _backward(p(3), grad=np.ones(4, np.float32)), ValueError, "shape|backward")
bad("backward_grad_complex", lambda: _backward(p(3), grad=np.ones(3, complex)), TypeError, "complex")
bad("backward_grad_str", lambda: _backward(p(3), grad="a"), TypeError, "str")
good("backward_grad_big_endian", lambda: close(_backward(p(3), grad=np.array([1, 2, 3], ">f4")).numpy(), [2, 4, 6]))


def _backward_twice():
    x = p(3)
    y = (x * x).sum()
    y.backward()
    y.backward()


good("backward_retain_truthy", lambda: (lambda x: ((x * x).sum().backward(retain_graph=1), True)[1])(p(2)))
bad("backward_twice", _backward_twice, RuntimeError, "twice|released|retain")
bad("backward_no_grad_leaf", lambda: t(3).sum().backward(), RuntimeError, "grad")

# ---- the zero-copy numpy source during a pending backward --------------------------------


def _write_between(make):
    x = np.array([1.0, 1.0, 1.0], np.float32)
    W = p(3)
    y = (make(x) * W * 2).sum()
    blocked = False
    try:
        x[:] = 5  # a numpy write the version counter cannot see
    except ValueError:
        blocked = True
    y.backward()
    x[:] = 7  # writeable again once the tape let go of it
    return blocked and close(W.grad.numpy(), [2, 2, 2]) and x[0] == 7


good("numpy_write_blocked_tensor", lambda: _write_between(spad.tensor))
good("numpy_write_blocked_from_numpy", lambda: _write_between(spad.from_numpy))
good("numpy_write_blocked_operand", lambda: _write_between(lambda a: a))


def _write_two_borrows():
    x = np.ones(3, np.float32)
    a, b = spad.tensor(x), spad.tensor(x)
    W = p(3)
    ya = (a * W).sum()
    yb = (b * W).sum()
    ya.backward()
    still = not x.flags.writeable  # b's tape still holds x
    yb.backward()
    return still and x.flags.writeable


good("numpy_write_two_borrows", _write_two_borrows)

# ---- functional ops -----------------------------------------------------------------------
bad("matmul_out_of_memory", lambda: F.matmul(spad.ones((2**20, 1)), spad.ones((1, 2**20))), MemoryError,
    r"matmul: out of memory: cannot allocate 4398046511104 bytes")
bad("relu_list", lambda: F.relu([1.0, 2.0]), TypeError, "relu: invalid argument types")
bad("relu_str", lambda: F.relu("a"), TypeError, "relu: invalid argument types")
bad("relu_none", lambda: F.relu(None), TypeError, "relu")
bad("relu_int_tensor", lambda: F.relu(spad._core.from_numpy(np.arange(3))), TypeError, "int64")
bad("tanh_complex_array", lambda: F.tanh(np.array([1j])), TypeError, "complex")
good("relu_numpy_array", lambda: close(F.relu(np.array([-1.0, 2.0])).numpy(), [0, 2]))
good("relu_nan", lambda: close(F.relu(spad.tensor([NAN, -1, 1])).numpy(), [NAN, 0, 1]))
good("relu_nan_long", lambda: close(F.relu(spad.tensor([NAN] * 9 + [-1])).numpy(), [NAN] * 9 + [0]))
good("relu_method_nan", lambda: math.isnan(spad.tensor([NAN]).relu().item()))


def _relu_nan_nograd():
    with spad.no_grad():
        return math.isnan(F.relu(spad.tensor([NAN, 1])).numpy()[0])


good("relu_nan_no_grad", _relu_nan_nograd)
good("relu_inf", lambda: close(F.relu(spad.tensor([INF, -INF])).numpy(), [INF, 0]))
good("relu_empty", lambda: F.relu(t(0)).shape == (0,))
bad("softmax_axis", lambda: F.softmax(t(2, 3), axis=5), ValueError, "axis")
bad("matmul_fn_types", lambda: F.matmul(t(2), "a"), TypeError, "matmul")
bad("linear_shapes", lambda: F.linear(t(2, 3), t(4, 2)), ValueError, "linear")
bad("linear_bias_shape", lambda: F.linear(t(2, 3), t(3, 2), t(3)), ValueError, "linear|bias")
bad("conv_padding_huge", lambda: F.conv2d(img(), t(1, 1, 3, 3), padding=2**31 - 1), ValueError, "padding")
bad("conv_padding_int64_max", lambda: F.conv2d(img(), t(1, 1, 3, 3), padding=2**63 - 1), ValueError, "padding")
bad("conv_padding_too_big_int", lambda: F.conv2d(img(), t(1, 1, 3, 3), padding=2**70), ValueError, "out of range")
bad("conv_padding_negative", lambda: F.conv2d(img(), t(1, 1, 3, 3), padding=-1), ValueError, "padding")
bad("conv_padding_float", lambda: F.conv2d(img(), t(1, 1, 3, 3), padding=1.5), TypeError, "padding")
bad("conv_padding_triple", lambda: F.conv2d(img(), t(1, 1, 3, 3), padding=(1, 1, 1)), ValueError, "pair")
bad("conv_stride_zero", lambda: F.conv2d(img(), t(1, 1, 3, 3), stride=0), ValueError, "stride")
bad("conv_stride_negative", lambda: F.conv2d(img(), t(1, 1, 3, 3), stride=(1, -2)), ValueError, "stride")
bad("conv_kernel_too_big", lambda: F.conv2d(img(h=2, w=2), t(1, 1, 3, 3)), ValueError, "larger than")
bad("conv_channels", lambda: F.conv2d(img(c=2), t(1, 3, 3, 3)), ValueError, "channels")
bad("conv_input_3d", lambda: F.conv2d(t(1, 4, 4), t(1, 1, 3, 3)), ValueError, "4-D")
bad("conv_weight_3d", lambda: F.conv2d(img(), t(1, 3, 3)), ValueError, "4-D")
bad("conv_weight_empty", lambda: F.conv2d(img(), t(0, 1, 3, 3)), ValueError, "empty")
bad("conv_bias_shape", lambda: F.conv2d(img(), t(2, 1, 3, 3), t(3)), ValueError, "bias|conv2d")
good("conv_huge_stride", lambda: F.conv2d(img(), t(1, 1, 3, 3), stride=2**40).shape == (1, 1, 1, 1))
good("conv_empty_batch", lambda: F.conv2d(img(n=0), t(1, 1, 3, 3)).shape == (0, 1, 2, 2))
bad("maxpool_k0", lambda: F.max_pool2d(img(), 0), ValueError, "kernel size")
bad("maxpool_k_negative", lambda: F.max_pool2d(img(), -2), ValueError, "kernel size")
bad("maxpool_k_huge", lambda: F.max_pool2d(img(), 2**40), ValueError, "kernel size")
bad("maxpool_k_too_big_int", lambda: F.max_pool2d(img(), 2**70), ValueError, "out of range")
bad("maxpool_k_float", lambda: F.max_pool2d(img(), 1.5), TypeError, "kernel size")
bad("maxpool_k_larger", lambda: F.max_pool2d(img(h=1, w=1), 2), ValueError, "larger than")
bad("maxpool_k_17", lambda: F.max_pool2d(img(h=17, w=17), 17), ValueError, "too large")
bad("maxpool_3d", lambda: F.max_pool2d(t(1, 4, 4), 2), ValueError, "4-D")
bad("avgpool_k0", lambda: F.avg_pool2d(img(), 0), ValueError, "kernel size")
good("maxpool_nan", lambda: math.isnan(F.max_pool2d(spad.tensor(np.array([[[[1, NAN], [2, 3]]]], np.float32)), 2)
                                         .item()))
bad("ce_label_range", lambda: F.cross_entropy(t(2, 3), [0, 3]), ValueError, "label")
bad("ce_label_negative", lambda: F.cross_entropy(t(2, 3), [0, -1]), ValueError, "label")
bad("ce_label_uint64_max", lambda: F.cross_entropy(t(1, 3), np.array([2**64 - 1], np.uint64)), ValueError,
    "18446744073709551615")
bad("ce_label_float", lambda: F.cross_entropy(t(2, 3), [0.5, 1]), TypeError, "integers")
bad("ce_label_nan", lambda: F.cross_entropy(t(2, 3), [NAN, 1]), TypeError, "integers")
bad("ce_label_str", lambda: F.cross_entropy(t(2, 3), ["a", "b"]), TypeError, "integers")
bad("ce_label_count", lambda: F.cross_entropy(t(2, 3), [0, 1, 2]), ValueError, "label|batch|shape")
bad("ce_label_2d", lambda: F.cross_entropy(t(2, 3), [[0], [1]]), ValueError, "label|shape")
bad("ce_logits_1d", lambda: F.cross_entropy(t(3), [0]), ValueError, "logits|shape|2")
bad("ce_nan_logits", lambda: F.cross_entropy(t(2, 3, fill=NAN), [0, 1]), ValueError, "NaN")
bad("ce_inf_logits", lambda: F.cross_entropy(t(2, 3, fill=INF), [0, 1]), ValueError, "inf")
bad("ce_empty_batch", lambda: F.cross_entropy(t(0, 3), np.zeros(0, np.int64)), ValueError, "empty|batch|0")
good("ce_integral_float_labels", lambda: math.isfinite(F.cross_entropy(t(2, 3), np.array([0.0, 2.0])).item()))
bad("mse_shapes", lambda: F.mse_loss(t(2, 3), t(3, 2)), ValueError, "mse")
bad("mse_complex_target", lambda: F.mse_loss(t(2), np.array([1j, 1])), TypeError, "complex")
bad("mse_none_target", lambda: F.mse_loss(t(2), None), TypeError, "NoneType")
bad("mse_pred_list", lambda: F.mse_loss([1.0], t(1)), TypeError, "mse_loss")
good("mse_big_endian_target", lambda: close(F.mse_loss(t(3, fill=0.0), np.array([1, 2, 3], ">f4")).item(), 14 / 3))
bad("mse_nan_target", lambda: F.mse_loss(t(2), [NAN, 1]), ValueError, "NaN")
bad("dropout_p_high", lambda: F.dropout(t(3), 1.5), ValueError, "p")
bad("dropout_p_negative", lambda: F.dropout(t(3), -0.1), ValueError, "p")
bad("dropout_p_nan", lambda: F.dropout(t(3), NAN), ValueError, "p")
bad("concat_empty", lambda: spad.concatenate([]), ValueError, "at least one")
bad("concat_0d", lambda: spad.concatenate([t(), t()]), ValueError, "zero-dimensional")
bad("concat_shapes", lambda: spad.concatenate([t(2, 3), t(2, 4)], axis=0), ValueError, "differ")
bad("concat_axis", lambda: spad.concatenate([t(2), t(2)], axis=3), ValueError, "axis")
bad("concat_dtypes", lambda: spad.concatenate([t(2), t(2, dtype=np.float64)]), TypeError, "float")

# ---- nn -----------------------------------------------------------------------------------
bad("linear_zero_in", lambda: nn.Linear(0, 3), ValueError, "in_features must be >= 1")
bad("linear_zero_out", lambda: nn.Linear(3, 0), ValueError, "out_features must be >= 1")
bad("linear_negative", lambda: nn.Linear(-1, 3), ValueError, ">= 1")
bad("linear_float", lambda: nn.Linear(2.5, 3), TypeError, "integer")
bad("linear_str", lambda: nn.Linear("3", 3), TypeError, "integer")
bad("linear_bad_input", lambda: nn.Linear(3, 2)(t(2, 4)), ValueError, "linear")
bad("linear_dtype_input", lambda: nn.Linear(3, 2)(t(2, 3, dtype=np.float64)), TypeError, "float")
bad("linear_bad_init", lambda: nn.Linear(3, 2, init="bogus"), ValueError, "bogus")
bad("conv_module_zero_k", lambda: nn.Conv2d(1, 1, 0), ValueError, "kernel_size")
bad("conv_module_zero_c", lambda: nn.Conv2d(0, 1, 3), ValueError, "in_channels")
bad("conv_module_stride0", lambda: nn.Conv2d(1, 1, 3, stride=0)(img()), ValueError, "stride")
bad("conv_module_padding_k", lambda: nn.Conv2d(1, 1, 3, padding=3)(img()), ValueError, "padding")
bad("maxpool_module_k0", lambda: nn.MaxPool2d(0)(img()), ValueError, "kernel size")
bad("dropout_module_p1", lambda: nn.Dropout(1.0), ValueError, "p must be")
bad("dropout_module_nan", lambda: nn.Dropout(NAN), ValueError, "p must be")
bad("state_dict_shape", lambda: nn.Linear(3, 2).load_state_dict({"weight": np.ones((2, 3)), "bias": np.ones(2)}),
    ValueError, "shape")
bad("state_dict_missing", lambda: nn.Linear(3, 2).load_state_dict({"weight": np.ones((3, 2))}), (KeyError, ValueError),
    "bias")

bad("sequential_not_module", lambda: nn.Sequential(3), TypeError, "not an nn.Module")
bad("linear_module_none", lambda: nn.Linear(2, 2)(None), TypeError, "linear")
bad("linear_fn_none_weight", lambda: F.linear(t(1, 2), None), TypeError, "linear")
bad("conv_fn_none_input", lambda: F.conv2d(None, t(1, 1, 3, 3)), TypeError, "conv2d")
bad("concat_none", lambda: spad.concatenate([t(2), None]), TypeError, "item 1")
bad("concat_axis_float", lambda: spad.concatenate([t(2), t(2)], axis=0.5), TypeError, "axis")
bad("threads_zero", lambda: spad.set_num_threads(0), ValueError, "thread count")
bad("threads_huge", lambda: spad.set_num_threads(2**40), ValueError, "thread count")
bad("threads_float", lambda: spad.set_num_threads(1.5), TypeError, "integer")
good("tensor_longdouble_float64", lambda: spad.tensor(np.ones(2, np.longdouble)).dtype == np.float64)
bad("rank_20_reduce", lambda: spad.tensor(np.ones([1] * 20, np.float32)).sum(axis=3), ValueError, "rank > 16")

# ---- optim --------------------------------------------------------------------------------
bad("sgd_lr_nan", lambda: optim.SGD([p(2)], lr=NAN), ValueError, "finite")
bad("sgd_lr_inf", lambda: optim.SGD([p(2)], lr=INF), ValueError, "finite")
bad("sgd_lr_zero", lambda: optim.SGD([p(2)], lr=0), ValueError, "> 0")
bad("sgd_lr_negative", lambda: optim.SGD([p(2)], lr=-1), ValueError, "> 0")
bad("sgd_lr_str", lambda: optim.SGD([p(2)], lr="0.1"), TypeError, "lr")
bad("sgd_lr_none", lambda: optim.SGD([p(2)], lr=None), TypeError, "lr")
bad("sgd_momentum_negative", lambda: optim.SGD([p(2)], lr=0.1, momentum=-1), ValueError, "momentum")
bad("sgd_momentum_nan", lambda: optim.SGD([p(2)], lr=0.1, momentum=NAN), ValueError, "momentum")
bad("sgd_momentum_inf", lambda: optim.SGD([p(2)], lr=0.1, momentum=INF), ValueError, "momentum")
bad("sgd_nesterov_no_momentum", lambda: optim.SGD([p(2)], lr=0.1, nesterov=True), ValueError, "nesterov")
bad("sgd_wd_negative", lambda: optim.SGD([p(2)], lr=0.1, weight_decay=-1), ValueError, "weight_decay")
bad("sgd_wd_inf", lambda: optim.SGD([p(2)], lr=0.1, weight_decay=INF), ValueError, "weight_decay")
bad("sgd_duplicate", lambda: (lambda w: optim.SGD([w, w], lr=0.1))(p(2)), ValueError, "same tensor")
bad("adam_duplicate", lambda: (lambda w: optim.Adam([w, p(1), w]))(p(2)), ValueError, "same tensor")
bad("sgd_empty", lambda: optim.SGD([], lr=0.1), ValueError, "empty")
bad("sgd_not_tensor", lambda: optim.SGD([np.ones(2)], lr=0.1), TypeError, "not a spad.Tensor")
bad("sgd_no_grad_param", lambda: optim.SGD([t(2)], lr=0.1), ValueError, "require grad")
bad("adam_beta_one", lambda: optim.Adam([p(2)], betas=(1.0, 0.9)), ValueError, "betas")
bad("adam_beta_nan", lambda: optim.Adam([p(2)], betas=(NAN, 0.9)), ValueError, "betas|finite")
bad("adam_eps_negative", lambda: optim.Adam([p(2)], eps=-1), ValueError, "eps")
bad("adam_eps_nan", lambda: optim.Adam([p(2)], eps=NAN), ValueError, "eps")
bad("adam_lr_inf", lambda: optim.Adam([p(2)], lr=INF), ValueError, "finite")
bad("adamw_wd_nan", lambda: optim.AdamW([p(2)], weight_decay=NAN), ValueError, "weight_decay")
bad("rmsprop_alpha_one", lambda: optim.RMSprop([p(2)], alpha=1.0), ValueError, "alpha")
bad("adagrad_eps_negative", lambda: optim.Adagrad([p(2)], eps=-1e-3), ValueError, "eps")


def _lr_set_later(value):
    w = p(2)
    opt = optim.SGD([w], lr=0.1)
    (w * w).sum().backward()
    opt.lr = value
    before = w.numpy().copy()
    try:
        opt.step()
    finally:
        assert close(w.numpy(), before)  # untouched


bad("sgd_lr_set_nan_later", lambda: _lr_set_later(NAN), ValueError, "finite")
bad("sgd_lr_set_inf_later", lambda: _lr_set_later(INF), ValueError, "finite")

# ---- data and training --------------------------------------------------------------------
X4, Y4 = np.ones((4, 2), np.float32), np.array([0, 1, 0, 1])
bad("loader_empty", lambda: DataLoader(np.zeros((0, 2), np.float32), np.zeros(0), 2), ValueError, "empty")
bad("loader_lengths", lambda: DataLoader(X4, Y4[:3], 2), ValueError, "lengths")
bad("loader_batch_zero", lambda: DataLoader(X4, Y4, 0), ValueError, "batch_size")
bad("loader_batch_negative", lambda: DataLoader(X4, Y4, -1), ValueError, "batch_size")
bad("loader_batch_float", lambda: DataLoader(X4, Y4, 1.5), ValueError, "batch_size")
bad("loader_order", lambda: DataLoader(X4, Y4, 2, order="bogus"), ValueError, "order")
bad("loader_nan", lambda: DataLoader(np.full((4, 2), NAN, np.float32), Y4, 2), ValueError, "NaN")
bad("loader_str_data", lambda: DataLoader(np.array([["a", "b"]] * 4), Y4, 2), TypeError, "numeric")


def _fit(X, y, lr=0.1, model=None):
    model = model or nn.Sequential(nn.Linear(2, 4, seed=0), nn.ReLU(), nn.Linear(4, 2, seed=1))
    loader = [(X, y)]
    before = [w.numpy().copy() for w in model.parameters()]
    try:
        spad.train.fit(model, F.cross_entropy, loader, optim.SGD(model.parameters(), lr=lr), epochs=1,
                       progress=False)
    finally:
        assert all(close(w.numpy(), b) for w, b in zip(model.parameters(), before)), "parameters changed"


bad("fit_nan_input", lambda: _fit(np.full((4, 2), NAN, np.float32), Y4), FloatingPointError, "non-finite|NaN")
bad("fit_inf_input", lambda: _fit(np.full((4, 2), INF, np.float32), Y4), FloatingPointError, "non-finite|NaN")
bad("fit_one_nan", lambda: _fit(np.array([[1, NAN], [0, 1], [1, 0], [0, 0]], np.float32), Y4), FloatingPointError,
    "non-finite|NaN")
bad("fit_label_range", lambda: _fit(X4, np.array([0, 1, 2, 5])), ValueError, "label")


def _fit_nan_param():
    m = nn.Sequential(nn.Linear(2, 2, seed=0))
    w = m.parameters()[0]
    arr = w.numpy().copy()
    arr[0, 0] = NAN
    spad._core.assign_(w, spad._core.from_numpy(arr))
    _fit(X4, Y4, model=m)


bad("fit_nan_parameter", _fit_nan_param, FloatingPointError, "NaN|non-finite")

bad("fit_empty_loader", lambda: spad.train.fit(
    nn.Sequential(nn.Linear(2, 2)), F.cross_entropy, [], optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), epochs=1,
    progress=False), ValueError, "no batches")

# ---- sampling policies and seeds ---------------------------------------------------------
bad("rad_keep_zero", lambda: S.RAD(keep=0), ValueError, "keep")
bad("rad_keep_above_one", lambda: S.RAD(keep=1.5), ValueError, "keep")
bad("rad_keep_nan", lambda: S.RAD(keep=NAN), ValueError, "keep")
bad("rad_keep_negative", lambda: S.RAD(keep=-0.1), ValueError, "keep")
bad("rad_mode", lambda: S.RAD(mode="bogus"), ValueError, "mode")
bad("rad_seed_negative", lambda: S.RAD(seed=-1), ValueError, "seed")
bad("rad_seed_2_64", lambda: S.RAD(seed=2**64), ValueError, r"seed must be in \[0, 2\*\*64\)")
bad("rad_seed_float", lambda: S.RAD(seed=1.5), TypeError, "seed")
bad("rad_placement", lambda: S.RAD(placement="bogus"), ValueError, "placement")
bad("crs_deterministic", lambda: S.CRS(deterministic=1.5), ValueError, "deterministic")
bad("spad_refresh_zero", lambda: S.SPAD(refresh=0), ValueError, "refresh")
bad("spad_keep_inf", lambda: S.SPAD(keep=INF), ValueError, "keep")
bad("spad_seed_2_64", lambda: S.SPAD(seed=2**64), ValueError, "seed")
bad("spad_refresh_2_64", lambda: S.SPAD(refresh=2**64), ValueError, "refresh")
bad("rad_block_2_64", lambda: S.RAD(block=2**64), ValueError, "block")
bad("manual_seed_2_64", lambda: spad.manual_seed(2**64), ValueError, r"\[0, 2\*\*64\)")
bad("manual_seed_negative", lambda: spad.manual_seed(-1), ValueError, "seed")
bad("manual_seed_float", lambda: spad.manual_seed(1.5), TypeError, "integer")
bad("manual_seed_str", lambda: spad.manual_seed("1"), TypeError, "integer")
good("manual_seed_max", lambda: spad.manual_seed(2**64 - 1) is None)
bad("tape_budget_negative", lambda: spad.set_tape_budget(-1), ValueError, "budget")
bad("tape_budget_str", lambda: spad.set_tape_budget("1"), TypeError, "budget")
bad("tape_budget_huge", lambda: spad.set_tape_budget(2**64), ValueError, "budget")

# ---- model files ----------------------------------------------------------------------------
bad("load_missing", lambda: spad.load_model("/nonexistent/dir/m.spad"), FileNotFoundError, "m.spad")
bad("load_dev_zero", lambda: spad.load_model("/dev/zero"), ValueError, "not a spad model")
bad("load_directory", lambda: spad.load_model("/"), (IsADirectoryError, PermissionError), "")
bad("export_not_sequential", lambda: spad.export(nn.Linear(2, 2), "/tmp/never.spad"), ValueError, "Sequential")
bad("export_input_rank", lambda: spad.export(nn.Sequential(nn.Linear(2, 2)), "/tmp/never.spad",
                                             input_shape=(1, 2, 3, 4)), ValueError, "more than 3")

# ---- gradcheck --------------------------------------------------------------------------------
good("gradcheck_ok", lambda: spad.gradcheck(lambda a, b: (a * b).tanh(), [np.random.default_rng(0).standard_normal(3),
                                                                         np.random.default_rng(1).standard_normal(3)]))
bad("gradcheck_wrong", lambda: spad.gradcheck(lambda a: a.detach() * a, [np.ones(3)]), spad.GradcheckError,
    "input 0")
bad("gradcheck_int_input", lambda: spad.gradcheck(lambda a: a, [np.arange(3)]), TypeError, "float")
bad("gradcheck_not_callable", lambda: spad.gradcheck(3, [np.ones(2)]), TypeError, "callable")
bad("gradcheck_no_inputs", lambda: spad.gradcheck(lambda: t(1), []), ValueError, "at least one")
bad("gradcheck_returns_array", lambda: spad.gradcheck(lambda a: a.numpy(), [np.ones(2)]), TypeError, "spad Tensor")
bad("gradcheck_wrt_range", lambda: spad.gradcheck(lambda a: a, [np.ones(2)], wrt=[3]), ValueError, "wrt")


@pytest.mark.parametrize("fn,exc,fragment", CASES)
def test_bad_input(fn, exc, fragment):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's own RuntimeWarnings (log of a negative) are not the point
        if exc is None:
            result = fn()
            assert result is True or result is np.True_, f"wrong result: {result!r}"
            return
        with pytest.raises(exc, match=fragment) as info:
            fn()
    msg = str(info.value)
    for raw in ("incompatible function arguments", "Unable to cast", "std::bad_alloc"):
        assert raw not in msg, f"raw binding message: {msg}"


def test_catalogue_size():
    assert len(CASES) >= 180
