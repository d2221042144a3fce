"""Minibatches with explicit data-order semantics.

``order`` decides which examples an epoch visits (Smith et al. compare these):
  - "reshuffle":   a new random permutation every epoch (random reshuffling);
  - "replacement": i.i.d. indices drawn with replacement, len(X)//batch_size batches
                   (ceil unless drop_last), the textbook SGD model;
  - "fixed":       one random partition into batches chosen once from the seed; only the
                   order of the batches is shuffled each epoch;
  - "sequential":  0, 1, 2, ... (evaluation).
The same seed gives the same sequence of epochs.

Batches are gathered into reused contiguous buffers (``np.take(..., out=)``), so a batch is
valid until the next one is drawn; copy it to keep it. Each refill bumps the buffer's
storage version, so a tape that still holds an old batch fails loudly instead of
computing gradients with the new one.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from . import _core

ORDERS = ("reshuffle", "replacement", "fixed", "sequential")


class DataLoader:
    """Iterate ``(x_batch, y_batch)`` over ``X`` (n, ...) and ``y`` (n, ...).

    ``x_batch`` is a spad tensor of ``dtype``; ``y_batch`` is an int64 numpy array for
    integer labels (what ``F.cross_entropy`` takes) or a spad tensor for float targets.
    """

    def __init__(self, X: Any, y: Any, batch_size: int, order: str = "reshuffle", seed: int = 0,
                 drop_last: bool = False, dtype: Any = np.float32):
        X, y = np.asarray(X), np.asarray(y)
        if X.ndim == 0 or len(X) == 0:
            raise ValueError(f"DataLoader: empty data (X has shape {X.shape})")
        if y.ndim == 0 or len(X) != len(y):
            raise ValueError(f"DataLoader: X has {len(X)} examples but y has shape {y.shape}; lengths must match")
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        if order not in ORDERS:
            raise ValueError(f"DataLoader: order must be one of {ORDERS}, got {order!r}")
        if X.dtype.kind not in "fiub":
            raise TypeError(f"DataLoader: X must be numeric, got dtype {X.dtype}")
        if X.dtype.kind == "f" and not np.isfinite(X).all():
            bad = np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))
            raise ValueError(f"DataLoader: X contains NaN or inf in {len(bad)} examples (first: index {bad[0]})")
        n = len(X)
        if drop_last and batch_size > n:
            raise ValueError(f"DataLoader: batch_size {batch_size} > {n} examples with drop_last=True leaves no batch")
        self.X = np.ascontiguousarray(X, dtype=dtype)  # one copy up front, if any
        self.labels = y.dtype.kind in "iub"
        self.y = np.ascontiguousarray(y, dtype=np.int64 if self.labels else dtype)
        self.batch_size, self.order, self.drop_last, self.seed = int(batch_size), order, drop_last, seed
        self.rng = np.random.default_rng(seed)
        if order == "fixed":
            self.partition = self._split(self.rng.permutation(n))
        self._buffers: Dict[int, Tuple[np.ndarray, Any, np.ndarray, Any]] = {}

    def __len__(self) -> int:
        n, b = len(self.X), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _split(self, idx: np.ndarray) -> List[np.ndarray]:
        b = self.batch_size
        parts = [idx[i:i + b] for i in range(0, len(idx), b)]
        if self.drop_last and len(parts[-1]) < b:
            parts.pop()
        return parts

    def epoch_indices(self) -> List[np.ndarray]:
        """The index arrays of the next epoch (advances the loader's generator)."""
        n = len(self.X)
        if self.order == "sequential":
            return self._split(np.arange(n))
        if self.order == "reshuffle":
            return self._split(self.rng.permutation(n))
        if self.order == "fixed":
            return [self.partition[i] for i in self.rng.permutation(len(self.partition))]
        sizes = [self.batch_size] * len(self)
        if not self.drop_last and n % self.batch_size:
            sizes[-1] = n % self.batch_size
        return [self.rng.integers(0, n, s) for s in sizes]

    def _buffer(self, size: int):
        if size not in self._buffers:
            xb = np.empty((size,) + self.X.shape[1:], self.X.dtype)
            yb = np.empty((size,) + self.y.shape[1:], self.y.dtype)
            self._buffers[size] = (xb, _core.from_numpy(xb), yb, yb if self.labels else _core.from_numpy(yb))
        return self._buffers[size]

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        for idx in self.epoch_indices():
            xb, xt, yb, yt = self._buffer(len(idx))
            # mode="clip" skips numpy's bounds-checked buffered path; our indices are in range.
            np.take(self.X, idx, axis=0, out=xb, mode="clip")
            np.take(self.y, idx, axis=0, out=yb, mode="clip")
            _core.bump_version(xt)
            if not self.labels:
                _core.bump_version(yt)
            yield xt, yt
