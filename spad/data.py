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

Data parallel (``rank=r, world_size=W``): every rank draws the same global order (same seed)
and splits it into global batches of ``W*batch_size`` rows; rank r takes rows
``[r*batch_size, (r+1)*batch_size)`` of each, so W ranks at ``batch_size`` b see exactly the
batches one process sees at ``W*b``. The tail (a last global batch of t < W*b rows, without
drop_last) is split the same way on every rank: rank r takes rows ``[r*t//W, (r+1)*t//W)``, so
shares differ by at most one row (averaged gradients then weight each rank's rows equally, not
each row: a small difference from the one-process batch); when t < W some rank would get no row,
so that tail is dropped on every rank. Every rank thus runs ``len(loader)`` steps, which the
gradient all-reduce needs.
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
                 drop_last: bool = False, dtype: Any = np.float32, rank: int = 0, world_size: int = 1):
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
        if not isinstance(world_size, (int, np.integer)) or isinstance(world_size, bool) or world_size < 1:
            raise ValueError(f"DataLoader: world_size must be a positive integer, got {world_size!r}")
        if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 0 <= rank < world_size:
            raise ValueError(f"DataLoader: rank must be an integer in [0, {world_size}), got {rank!r}")
        n = len(X)
        self.X = np.ascontiguousarray(X, dtype=dtype)  # one copy up front, if any
        self.labels = y.dtype.kind in "iub"
        self.y = np.ascontiguousarray(y, dtype=np.int64 if self.labels else dtype)
        self.batch_size, self.order, self.drop_last, self.seed = int(batch_size), order, drop_last, seed
        self.rank, self.world_size = int(rank), int(world_size)
        self.global_batch = self.batch_size * self.world_size
        if len(self) == 0:
            what = f"batch_size {batch_size}" + (f" x world_size {world_size}" if world_size > 1 else "")
            raise ValueError(f"DataLoader: {what} > {n} examples with drop_last=True leaves no batch" if drop_last
                             else f"DataLoader: {n} examples cannot give each of {world_size} ranks a row")
        self.rng = np.random.default_rng(seed)
        if order == "fixed":
            self.partition = self._split(self.rng.permutation(n))
        self._buffers: Dict[int, Tuple[np.ndarray, Any, np.ndarray, Any]] = {}

    def __len__(self) -> int:
        n, b = len(self.X), self.global_batch
        tail = n % b
        return n // b + (1 if tail and not self.drop_last and tail >= self.world_size else 0)

    def _split(self, idx: np.ndarray) -> List[np.ndarray]:
        b, W = self.global_batch, self.world_size
        parts = [idx[i:i + b] for i in range(0, len(idx), b)]
        if len(parts[-1]) < b and (self.drop_last or len(parts[-1]) < W):
            parts.pop()
        return parts

    def _local(self, batch: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch (see the module notes)."""
        W, r = self.world_size, self.rank
        if W == 1:
            return batch
        t = len(batch)
        if t == self.global_batch:
            return batch[r * self.batch_size:(r + 1) * self.batch_size]
        return batch[r * t // W:(r + 1) * t // W]

    def global_epoch_indices(self) -> List[np.ndarray]:
        """The global batches of the next epoch, identical on every rank (advances the generator)."""
        n = len(self.X)
        if self.order == "sequential":
            return self._split(np.arange(n))
        if self.order == "reshuffle":
            return self._split(self.rng.permutation(n))
        if self.order == "fixed":
            return [self.partition[i] for i in self.rng.permutation(len(self.partition))]
        sizes = [self.global_batch] * len(self)
        if len(self) * self.global_batch > n:
            sizes[-1] = n % self.global_batch
        return [self.rng.integers(0, n, s) for s in sizes]

    def epoch_indices(self) -> List[np.ndarray]:
        """This rank's index arrays of the next epoch (advances the loader's generator)."""
        return [self._local(b) for b in self.global_epoch_indices()]

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
