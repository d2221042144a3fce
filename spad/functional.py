"""Functional ops (``import spad.functional as F``), numpy-broadcasting where it applies."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core
from ._core import Tensor

relu = _core.relu
tanh = _core.tanh
sigmoid = _core.sigmoid
softmax = _core.softmax
log_softmax = _core.log_softmax
matmul = _core.matmul


def linear(x: Tensor, W: Tensor, b: Optional[Tensor] = None) -> Tensor:
    """``x @ W + b`` in one op; W has shape (in_features, out_features)."""
    return _core.linear(x, W, b)


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


def mse_loss(pred: Tensor, target: Any) -> Tensor:
    """Mean squared error over all elements; shapes must match exactly."""
    if not isinstance(target, Tensor):
        from .tensor import tensor

        target = tensor(target, dtype=pred.dtype)
    return _core.mse_loss(pred, target)
