"""Functional ops (``import spad.functional as F``), numpy-broadcasting where it applies."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._core import Tensor


def _clear_types(fn):
    """``fn`` (a _core function) with pybind11's "incompatible function arguments" replaced by
    a message that names the op, what it takes and what it got; a MemoryError names the op."""
    name = fn.__name__

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MemoryError as e:  # the core says how many bytes and which shape; add the op
            if type(e) is not MemoryError or str(e).startswith(name):
                raise
            raise MemoryError(f"{name}: {e}") from None
        except TypeError as e:
            if "incompatible function arguments" not in str(e):
                raise
            from .tensor import tensor  # an array that could not become a tensor: say why
            for a in list(args) + list(kwargs.values()):
                if isinstance(a, np.ndarray):
                    tensor(a)
            got = ", ".join([type(a).__name__ for a in args] + [f"{k}={type(v).__name__}" for k, v in kwargs.items()])
            sig = str(e).split("\n")[1].strip().split(". ", 1)[-1] if "\n" in str(e) else ""
            raise TypeError(f"{name}: invalid argument types ({got}); expected {sig} (spad Tensors or numpy "
                            "float arrays)") from None

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = fn.__doc__
    return wrapper


relu = _clear_types(_core.relu)
tanh = _clear_types(_core.tanh)
sigmoid = _clear_types(_core.sigmoid)
softmax = _clear_types(_core.softmax)
log_softmax = _clear_types(_core.log_softmax)
matmul = _clear_types(_core.matmul)
_conv2d, _max_pool2d, _avg_pool2d = (_clear_types(f) for f in (_core.conv2d, _core.max_pool2d, _core.avg_pool2d))
_cross_entropy = _clear_types(_core.cross_entropy)


linear = _clear_types(_core.linear)  # x @ W + b in one op; W has shape (in_features, out_features)


def _labels(labels: Any) -> Tensor:
    if isinstance(labels, Tensor):
        labels = labels.numpy()
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)  # integral floats (e.g. labels held in a float tensor)
        else:
            raise TypeError(f"cross_entropy: labels must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        # the int64 cast would wrap 2**64-1 to -1 and report a label that was never passed
        raise ValueError(f"cross_entropy: label {int(arr.max())} is out of range")
    return _core.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))


def cross_entropy(logits: Tensor, labels: Any) -> Tensor:
    """Mean softmax cross-entropy over the batch; ``labels`` are class indices of shape (batch,).
    Fused and numerically stable; raises ValueError for out-of-range labels or NaN/inf logits."""
    return _cross_entropy(logits, _labels(labels))


mse_loss = _clear_types(_core.mse_loss)  # mean squared error; target: a tensor or array-like of the same shape


def _int(op: str, name: str, v: Any) -> int:
    """An integer argument that fits the core's int64, else a clear TypeError/ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{op}: {name} must be an integer, got {type(v).__name__}")
    if not -2**63 <= int(v) < 2**63:
        raise ValueError(f"{op}: {name} {int(v)} is out of range")
    return int(v)


def _pair(name: str, v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(v, (int, np.integer, bool)) or not isinstance(v, (tuple, list)):
        return (_int("conv2d", name, v),) * 2
    if len(v) != 2:
        raise ValueError(f"conv2d: {name} must be an int or a pair of ints, got {tuple(v)}")
    return (_int("conv2d", name, v[0]), _int("conv2d", name, v[1]))


def conv2d(
    x: Tensor,
    w: Tensor,
    b: Optional[Tensor] = None,
    stride: Union[int, Sequence[int]] = 1,
    padding: Union[int, Sequence[int]] = 0,
) -> Tensor:
    """2-D convolution (cross-correlation, as in PyTorch) of an NCHW input.

    ``w`` has shape (C_out, C_in, kh, kw), ``b`` (C_out,). ``stride`` and ``padding`` (zeros)
    are an int or an (h, w) pair. The tape keeps the input, not its im2col matrix."""
    return _conv2d(x, w, b, _pair("stride", stride), _pair("padding", padding))


def max_pool2d(x: Tensor, k: int) -> Tensor:
    """Max over k x k windows with stride k and no padding (trailing rows/columns that do
    not fill a window are dropped). The tape keeps the argmax position in its window, one
    byte per output."""
    return _max_pool2d(x, _int("max_pool2d", "kernel size", k))


def avg_pool2d(x: Tensor, k: int) -> Tensor:
    """Mean over k x k windows with stride k and no padding; saves nothing on the tape."""
    return _avg_pool2d(x, _int("avg_pool2d", "kernel size", k))


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by
    1/(1-p). Identity when ``training`` is False or ``p`` is 0. The mask comes from the
    global counter-based RNG (``spad.manual_seed``) and is regenerated in backward, so
    dropout adds nothing to the tape."""
    return _core.dropout(x, float(p), bool(training))
