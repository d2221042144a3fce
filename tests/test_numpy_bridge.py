"""Zero-copy in and out of numpy, lifetimes across the boundary, and the explicit-copy rules
for arrays that cannot be shared (wrong dtype, negative strides, read-only)."""
from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

import spad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tensor_shares_memory(dtype):
    a = np.arange(12, dtype=dtype).reshape(3, 4)
    t = spad.tensor(a)
    assert t.dtype == dtype and t.shape == (3, 4)
    assert np.shares_memory(t.numpy(), a)
    assert np.shares_memory(spad.from_numpy(a).numpy(), a)
    assert np.shares_memory(spad.tensor(a, copy=False).numpy(), a)
    assert not np.shares_memory(spad.tensor(a, copy=True).numpy(), a)


def test_writes_visible_both_ways():
    a = np.zeros((2, 3), dtype=np.float32)
    t = spad.tensor(a)
    v = t.numpy()
    v[1, 2] = 5.0
    assert a[1, 2] == 5.0
    a[0, 0] = -1.0
    assert t.numpy()[0, 0] == -1.0
    assert (t * 1.0).numpy()[0, 0] == -1.0


def test_numpy_view_outlives_tensor():
    t = spad.tensor(np.arange(1000, dtype=np.float64) * 2)  # spad.tensor made the array; only t owns it
    v = t.numpy()
    del t
    gc.collect()
    _ = [np.ones(1000) for _ in range(50)]  # churn the allocator
    np.testing.assert_array_equal(v, np.arange(1000) * 2.0)


def test_result_view_outlives_tensor():
    x = spad.tensor(np.arange(5.0))
    v = (x * 3.0).exp().numpy()  # a core-allocated result, owned only by the view
    gc.collect()
    np.testing.assert_allclose(v, np.exp(3.0 * np.arange(5.0)), rtol=1e-15)


def test_tensor_outlives_source_array():
    a = np.arange(1000, dtype=np.float32)
    t = spad.tensor(a)
    del a
    gc.collect()
    _ = [np.ones(1000, dtype=np.float32) for _ in range(50)]
    np.testing.assert_array_equal(t.numpy(), np.arange(1000, dtype=np.float32))
    assert t.sum().item() == float(np.arange(1000).sum())


def test_borrow_releases_the_array():
    a = np.arange(6.0)
    before = sys.getrefcount(a)
    t = spad.tensor(a)
    assert sys.getrefcount(a) == before + 1
    del t
    gc.collect()
    assert sys.getrefcount(a) == before


def test_saved_input_keeps_array_alive():
    a = np.linspace(0.1, 1.0, 10)
    x = spad.tensor(a)
    w = spad.tensor(np.ones(10), requires_grad=True)
    y = (x * w).sum()  # saves x for dw
    del x, a
    gc.collect()
    y.backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.linspace(0.1, 1.0, 10))


# ---- arrays that cannot be shared ---------------------------------------------------
@pytest.mark.parametrize("bad", [np.arange(6).reshape(2, 3), np.ones((2, 3), dtype=np.float16)],
                         ids=["int64", "float16"])
def test_wrong_dtype_copied_or_refused(bad):
    t = spad.tensor(bad)
    assert t.dtype == np.float32
    assert not np.shares_memory(t.numpy(), bad)
    np.testing.assert_array_equal(t.numpy(), bad.astype(np.float32))
    assert spad.tensor(bad, dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match=str(bad.dtype)):
        spad.from_numpy(bad)
    with pytest.raises(TypeError, match=str(bad.dtype)):
        spad.tensor(bad, copy=False)


def test_dtype_conversion_is_a_copy():
    a = np.ones(4, dtype=np.float64)
    t = spad.tensor(a, dtype=np.float32)
    assert t.dtype == np.float32 and not np.shares_memory(t.numpy(), a)
    with pytest.raises(TypeError, match="float64"):
        spad.tensor(a, dtype=np.float32, copy=False)


def test_unsupported_target_dtype():
    with pytest.raises(TypeError, match="int32"):
        spad.tensor([1, 2], dtype=np.int32)


def test_negative_strides_copied():
    base = np.arange(12.0).reshape(3, 4)
    for a in (base[::-1], base[:, ::-2]):
        t = spad.tensor(a)
        assert not np.shares_memory(t.numpy(), base)
        np.testing.assert_array_equal(t.numpy(), a)
        assert t.numpy().flags.c_contiguous
        with pytest.raises(TypeError, match="strides"):
            spad.from_numpy(a)
        with pytest.raises(TypeError):
            spad.tensor(a, copy=False)


def test_positive_strided_view_computes_correctly():
    """A positively strided view is borrowed as a strided tensor (no copy); ops must respect
    its strides."""
    base = np.arange(24.0).reshape(4, 6)
    a = base[1::2, ::3]
    t = spad.tensor(a, requires_grad=True)
    np.testing.assert_array_equal(t.numpy(), a)
    np.testing.assert_array_equal((t * 2.0 + 1.0).numpy(), a * 2 + 1)
    np.testing.assert_array_equal(t.sum(axis=0).numpy(), a.sum(axis=0))
    np.testing.assert_array_equal((t @ spad.tensor(np.ones((2, 3)))).numpy(), a @ np.ones((2, 3)))
    (t * t).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), 2 * a)
    np.testing.assert_array_equal(base, np.arange(24.0).reshape(4, 6))  # the gradient did not write here


def test_readonly_array_copied():
    a = np.ones((2, 2))
    a.flags.writeable = False
    t = spad.tensor(a)
    assert not np.shares_memory(t.numpy(), a)
    assert t.numpy().flags.writeable
    with pytest.raises(TypeError, match="read-only"):
        spad.from_numpy(a)
    with pytest.raises(TypeError, match="writeable=False"):
        spad.tensor(a, copy=False)


def test_lists_and_scalars_are_copied():
    assert spad.tensor([[1, 2], [3, 4]]).dtype == np.float32
    assert spad.tensor(2.0).shape == ()
    with pytest.raises(TypeError):
        spad.from_numpy([1.0, 2.0])


# ---- out of the core -------------------------------------------------------------------
def test_grad_numpy_is_a_view():
    W = spad.tensor(np.ones((3, 2)), requires_grad=True)
    (W * 2.0).sum().backward()
    g1, g2 = W.grad.numpy(), W.grad.numpy()
    assert np.shares_memory(g1, g2)
    g1[0, 0] = 7.0
    assert W.grad.numpy()[0, 0] == 7.0


def test_asarray_is_a_view():
    t = spad.tensor(np.arange(6.0).reshape(2, 3))
    a = np.asarray(t)
    assert a.dtype == np.float64 and a.shape == (2, 3)
    assert np.shares_memory(a, t.numpy())
    m = memoryview(t)
    assert m.shape == (2, 3) and m.format == "d"
    np.testing.assert_array_equal(np.asarray(t.T), np.arange(6.0).reshape(2, 3).T)
    assert np.asarray(t, dtype=np.float32).dtype == np.float32


def test_buffer_of_saved_tensor_is_readonly():
    """numpy writes would bypass the version counter, so a tensor a saved payload holds is
    exported read-only through the buffer protocol."""
    x = spad.tensor(np.ones(3))
    w = spad.tensor(np.ones(3), requires_grad=True)
    assert np.asarray(x).flags.writeable
    y = (x * w).sum()
    assert not np.asarray(x).flags.writeable
    y.backward()
    assert np.asarray(x).flags.writeable


def test_numpy_operand_defers_to_tensor():
    t = spad.tensor(np.array([1.0, 2.0, 3.0], dtype=np.float32), requires_grad=True)
    a = np.array([2.0, 4.0, 8.0], dtype=np.float32)
    for r, ref in ((a + t, a + t.numpy()), (a * t, a * t.numpy()), (a - t, a - t.numpy()),
                   (a / t, a / t.numpy()), (t / a, t.numpy() / a)):
        assert isinstance(r, spad.Tensor)
        np.testing.assert_allclose(r.numpy(), ref, rtol=1e-7)
    m = a @ spad.tensor(np.eye(3, dtype=np.float32))
    assert isinstance(m, spad.Tensor)
    (a * t).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), a)


def test_integer_array_operand_takes_tensor_dtype():
    t = spad.tensor(np.ones(3))
    r = np.array([1, 2, 3]) + t
    assert isinstance(r, spad.Tensor) and r.dtype == np.float64
    np.testing.assert_array_equal(r.numpy(), [2.0, 3.0, 4.0])


def test_float_array_operand_of_other_dtype_refused():
    t = spad.tensor(np.ones(3, dtype=np.float32))
    with pytest.raises(TypeError, match=r"dtype mismatch.*float64.*float32"):
        np.ones(3) + t


def test_numpy_view_of_saved_tensor_is_read_only():
    """numpy writes bypass the version counter, so a tensor the tape holds exports read-only."""
    x = spad.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    y = (x * x).sum()  # saves x
    assert not x.numpy().flags.writeable
    y.backward()  # payload released
    assert x.numpy().flags.writeable


def test_python_lists_default_to_float32():
    assert spad.tensor([1.5, 2.5]).dtype == np.float32
    assert spad.tensor(2.0).dtype == np.float32
    assert spad.tensor(np.array([1.5])).dtype == np.float64  # numpy float64 data keeps its dtype
    assert spad.tensor([1.5], dtype=np.float64).dtype == np.float64
