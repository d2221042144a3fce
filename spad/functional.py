"""Functional ops (``import spad.functional as F``), numpy-broadcasting where it applies."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._core import Tensor

relu = _core.relu
tanh = _core.tanh
sigmoid = _core.sigmoid
softmax = _core.softmax
log_softmax = _core.log_softmax
matmul = _core.matmul


linear = _core.linear  # x @ W + b in one op; W has shape (in_features, out_features)


def _labels(labels: Any) -> Tensor:
    if isinstance(labels, Tensor):
        labels = labels.numpy()
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)  # integral floats (e.g. labels held in a float tensor)
        else:
            raise TypeError(f"cross_entropy: labels must be integers, got dtype {arr.dtype}")
    return _core.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))


def cross_entropy(logits: Tensor, labels: Any) -> Tensor:
    """Mean softmax cross-entropy over the batch; ``labels`` are class indices of shape (batch,).
    Fused and numerically stable; raises ValueError for out-of-range labels or NaN/inf logits."""
    return _core.cross_entropy(logits, _labels(labels))


mse_loss = _core.mse_loss  # mean squared error; target: a tensor or array-like of the same shape


def _pair(name: str, v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"conv2d: {name} must be an int or a pair of ints, got {v}")
    return v


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
    return _core.conv2d(x, w, b, _pair("stride", stride), _pair("padding", padding))


def max_pool2d(x: Tensor, k: int) -> Tensor:
    """Max over k x k windows with stride k and no padding (trailing rows/columns that do
    not fill a window are dropped). The tape keeps the argmax position in its window, one
    byte per output."""
    return _core.max_pool2d(x, int(k))


def avg_pool2d(x: Tensor, k: int) -> Tensor:
    """Mean over k x k windows with stride k and no padding; saves nothing on the tape."""
    return _core.avg_pool2d(x, int(k))


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p`` and scale the rest by
    1/(1-p). Identity when ``training`` is False or ``p`` is 0. The mask comes from the
    global counter-based RNG (``spad.manual_seed``) and is regenerated in backward, so
    dropout adds nothing to the tape."""
    return _core.dropout(x, float(p), bool(training))
