"""Tensor creation, numpy interop, grad-mode switches and Python-side Tensor sugar.

The tensor type itself is the C++ ``spad._core.Tensor``; this module only adds the
constructors and the few methods that are naturally written in Python (indexing lowers
every numpy index expression to one differentiable ``take``).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _core
from ._core import Tensor

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
ShapeLike = Union[int, Sequence[int]]


def _dtype(dtype: Any) -> Optional[np.dtype]:
    if dtype is None:
        return None
    d = np.dtype(dtype)
    if d not in _FLOATS:
        raise TypeError(f"spad tensors are float32 or float64, got dtype {d}")
    return d


def _shape(shape: ShapeLike) -> tuple:
    # Integers only: int() would turn 2.5 into 2 and the string "34" into (3, 4) silently.
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, np.ndarray)):
        raise TypeError(f"shape must be an int or a sequence of ints, got {type(shape).__name__}")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"shape entries must be integers, got {s!r} in {tuple(shape)}")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return shape


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None, copy: Optional[bool] = None) -> Tensor:
    """Make a tensor from a numpy array, a nested list, a number or another tensor.

    float32 and float64 arrays with a compatible layout (any non-negative strides) are
    shared, not copied (``np.shares_memory(t.numpy(), data)`` holds). Anything else
    (integer data, another dtype, a read-only or negatively strided array, ``copy=True``) is
    copied explicitly; with ``copy=False`` such a conversion raises TypeError instead.
    numpy float arrays keep their dtype; lists, Python numbers and integer data become
    float32 unless ``dtype`` says otherwise.
    """
    if (type(data) is np.ndarray and dtype is None and copy is None and data.dtype in _FLOATS
            and data.flags.c_contiguous and data.flags.writeable):
        # the common case (a float batch buffer) skips the general conversion below
        t = _core.from_numpy(data, True)
        if requires_grad:
            t.requires_grad = True
        return t
    want = _dtype(dtype)
    if isinstance(data, Tensor):
        data = data.numpy()
        copy = True if copy is None else copy
    arr = np.asarray(data)
    if want is None:
        # numpy float data keeps its dtype; Python numbers and lists become float32 (the default)
        # (a non-native byte order, e.g. '>f8', keeps its width and is converted to native)
        keep = arr.dtype.kind == "f" and arr.dtype.itemsize in (4, 8) and isinstance(data, (np.ndarray, np.generic))
        want = arr.dtype.newbyteorder("=") if keep else np.dtype(np.float32)
        if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
            want = np.dtype(np.float64)  # long double: the closest spad dtype, not float32
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"tensor: cannot make a tensor from data of dtype {arr.dtype}")
    needs_copy = (
        arr.dtype != want
        or not arr.flags.writeable
        or any(s < 0 or s % arr.itemsize for s in arr.strides)
        or not isinstance(data, np.ndarray)
    )
    if copy is False and needs_copy:
        raise TypeError(
            f"tensor: data of dtype {arr.dtype} (writeable={arr.flags.writeable}) cannot be shared as {want}; "
            "pass copy=None or copy=True to convert"
        )
    if copy or needs_copy:
        arr = np.array(arr, dtype=want, copy=True, order="C")
    t = _core.from_numpy(arr, not (copy or needs_copy))  # guard writes to the caller's array
    if requires_grad:
        t.requires_grad = True
    return t


def from_numpy(array: np.ndarray) -> Tensor:
    """Share a float32/float64 numpy array without copying (TypeError otherwise)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy array, got {type(array).__name__}")
    # The core also borrows int64 (labels, indices); a user-facing tensor must be float.
    if array.dtype not in _FLOATS:
        raise TypeError(f"from_numpy: unsupported dtype {array.dtype}; expected float32 or float64; "
                        "use spad.tensor(x, dtype=...) to convert explicitly")
    return _core.from_numpy(array, True)


def _make(values: np.ndarray, requires_grad: bool) -> Tensor:
    t = _core.from_numpy(values)
    if requires_grad:
        t.requires_grad = True
    return t


def zeros(shape: ShapeLike, requires_grad: bool = False, dtype: Any = np.float32) -> Tensor:
    """A tensor of zeros (float32 by default)."""
    return _make(np.zeros(_shape(shape), _dtype(dtype)), requires_grad)


def ones(shape: ShapeLike, requires_grad: bool = False, dtype: Any = np.float32) -> Tensor:
    """A tensor of ones (float32 by default)."""
    return _make(np.ones(_shape(shape), _dtype(dtype)), requires_grad)


def full(shape: ShapeLike, value: float, requires_grad: bool = False, dtype: Any = np.float32) -> Tensor:
    """A tensor filled with ``value``."""
    return _make(np.full(_shape(shape), value, _dtype(dtype)), requires_grad)


def randn(shape: ShapeLike, seed: Optional[int] = None, requires_grad: bool = False, dtype: Any = np.float32) -> Tensor:
    """Standard normal samples; the same ``seed`` gives the same values."""
    rng = np.random.default_rng(seed)
    return _make(rng.standard_normal(_shape(shape), dtype=_dtype(dtype)), requires_grad)


def rand(shape: ShapeLike, seed: Optional[int] = None, requires_grad: bool = False, dtype: Any = np.float32) -> Tensor:
    """Uniform samples in [0, 1); the same ``seed`` gives the same values."""
    rng = np.random.default_rng(seed)
    return _make(rng.random(_shape(shape), dtype=_dtype(dtype)), requires_grad)


def concatenate(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis (differentiable)."""
    tensors = list(tensors)
    for i, x in enumerate(tensors):
        if not isinstance(x, Tensor):
            raise TypeError(f"concatenate: item {i} is a {type(x).__name__}, not a spad Tensor")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -2**63 <= int(axis) < 2**63:
        raise TypeError(f"concatenate: axis must be an integer, got {axis!r}")
    return _core.concatenate(tensors, int(axis))


def set_num_threads(n: int) -> None:
    """Threads the core's kernels may use (1 = single-threaded); an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: expected an integer, got {type(n).__name__}")
    if not 1 <= int(n) <= 4096:
        raise ValueError(f"set_num_threads: the thread count must be in 1..4096, got {n}")
    _core.set_num_threads(int(n))


def manual_seed(seed: int) -> None:
    """Seed the global counter-based RNG used by dropout and the samplers, so a run
    (masks, sampled paths) is reproducible. Does not affect ``randn(seed=...)``."""
    seed = _seed("manual_seed", seed)
    _core.manual_seed(seed)


def _seed(who: str, seed: Any) -> int:
    """A seed: an integer in [0, 2**64) (the RNG's state); a clear error otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{who}: seed must be an integer, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"{who}: seed must be in [0, 2**64), got {seed}")
    return seed


def is_grad_enabled() -> bool:
    return _core.is_grad_enabled()


class no_grad:
    """Context manager (and decorator) that records nothing on the tape."""

    _enabled = False

    def __enter__(self):
        self._prev = _core.is_grad_enabled()
        _core.set_grad_enabled(self._enabled)
        return self

    def __exit__(self, *exc):
        _core.set_grad_enabled(self._prev)
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)

        return wrapper


class enable_grad(no_grad):
    """Re-enables recording inside a no_grad block."""

    _enabled = True


def set_tape_budget(nbytes: Optional[int]) -> None:
    """Cap the bytes saved payloads may hold; a forward that would exceed it raises
    ``spad.TapeBudgetError`` (a MemoryError). ``None`` removes the cap."""
    if nbytes is not None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
            raise TypeError(f"set_tape_budget: budget must be an integer number of bytes or None, got "
                            f"{type(nbytes).__name__}")
        if not 0 <= int(nbytes) < 2**63:
            raise ValueError(f"set_tape_budget: budget must be >= 0 bytes or None, got {nbytes}")
    _core.set_tape_budget(nbytes)


# ---- Tensor sugar written in Python ---------------------------------------------------
def _getitem(self: Tensor, index: Any) -> Tensor:
    if isinstance(index, Tensor):
        index = index.numpy()
    elif isinstance(index, tuple):
        index = tuple(i.numpy() if isinstance(i, Tensor) else i for i in index)
    try:
        flat = np.arange(self.size, dtype=np.int64).reshape(self.shape)[index]
    except IndexError as e:
        raise IndexError(f"index: {e} (tensor of shape {self.shape})") from None
    flat = np.asarray(flat, dtype=np.int64)
    return _core.take(self, _core.from_numpy(np.ascontiguousarray(flat).reshape(-1)), list(flat.shape))


def _len(self: Tensor) -> int:
    if self.ndim == 0:
        raise TypeError("len() of a 0-d tensor")
    return self.shape[0]


def _repr(self: Tensor) -> str:
    body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
    extra = ""
    if self.grad_fn is not None:
        extra = f", grad_fn={self.grad_fn}"
    elif self.requires_grad:
        extra = ", requires_grad=True"
    dt = "" if self.dtype == np.float32 else f", dtype={self.dtype}"
    return f"tensor({body}{dt}{extra})"


def _float(self: Tensor) -> float:
    return self.item()


def _bool(self: Tensor) -> bool:
    # Without this, bool() fell back to len(): bool(tensor([0.])) was True (numpy and torch raise
    # for several elements and test the value of one).
    if self.size != 1:
        raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous; use .sum(), .max() "
                         "or .item() explicitly")
    return bool(self.item())


def _int(self: Tensor) -> int:
    v = self.item()
    if not math.isfinite(v):
        raise ValueError(f"cannot convert {v} to an integer")
    return int(v)


def _iter(self: Tensor):
    if self.ndim == 0:
        raise TypeError("iteration over a 0-d tensor")
    return (self[i] for i in range(self.shape[0]))


def _format(self: Tensor, spec: str) -> str:
    return format(self.item(), spec) if spec and self.size == 1 else format(repr(self), spec)


def _array(self: Tensor, dtype=None, copy=None):
    a = self.numpy()
    return a if dtype is None else a.astype(dtype)


Tensor.__getitem__ = _getitem
Tensor.__len__ = _len
Tensor.__repr__ = _repr
Tensor.__float__ = _float
Tensor.__bool__ = _bool
Tensor.__int__ = _int
Tensor.__iter__ = _iter
Tensor.__format__ = _format
Tensor.__array__ = _array
Tensor.tolist = lambda self: self.numpy().tolist()
