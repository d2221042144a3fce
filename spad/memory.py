"""Memory accounting: what spad allocates, by category, and the tape's share of it.

    >>> spad.reset_peak_memory_stats()
    >>> loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
    >>> spad.memory_stats()["peak_allocated_bytes"]      # the step's high-water mark
    >>> print(spad.memory_summary())                      # a table by category

What counts (Note [Allocation accounting] in ``csrc/core/memory.h``): the data bytes of
every tensor storage spad allocated, from its creation to its release: parameters,
gradients, optimizer state, activations, tape payloads and backward temporaries.
Buffers that spad only *borrows* are not spad's allocation and never count: a numpy array
passed zero-copy (``spad.tensor(x)`` / ``spad.from_numpy(x)`` on a float array, a data
loader's batch buffer) stays numpy's memory even while the tape holds it (it does count in
``tape_bytes``, which measures what the tape keeps alive, whoever allocated it).
Parameters made by ``nn.Parameter`` and optimizer state are copied into spad's own storage
so that they do count. Tensor headers, tape nodes and BLAS workspace are not counted.

Categories: a storage is ``parameters``, ``gradients`` (``.grad`` buffers) or
``optimizer_state`` once it becomes one; an ``other`` storage that saved payloads hold
counts as ``tape`` while they hold it; everything else (inputs, activations, temporaries,
sampler state) is ``other``. The counters are atomic: threads training separate models
leave every figure at its baseline once their tensors are gone.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from . import _core

CATEGORIES = ("parameters", "gradients", "optimizer_state", "tape", "other")


def _fmt(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


class MemorySummary(dict):
    """``{category: {"current": bytes, "peak": bytes}, "total": {...}, "live_storages": n,
    "total_allocated_bytes": n, "tape_bytes": n, "exact_tape_bytes": n}``; ``str()`` is a
    readable table (in the spirit of ``torch.cuda.memory_summary``).

    Each category's peak is its own high-water mark since ``reset_peak_memory_stats()``;
    the peaks of different categories need not occur at the same moment, so they do not
    sum to the total's peak.
    """

    def __str__(self) -> str:
        rows = [("category", "current", "peak")]
        for c in CATEGORIES + ("total",):
            rows.append((c, _fmt(self[c]["current"]), _fmt(self[c]["peak"])))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "+" + "+".join("-" * (x + 2) for x in w) + "+"
        out = ["spad memory summary (bytes spad allocated; borrowed numpy buffers excluded)", line]
        for i, r in enumerate(rows):
            if i == len(rows) - 1:
                out.append(line)
            out.append("| " + r[0].ljust(w[0]) + " | " + r[1].rjust(w[1]) + " | " + r[2].rjust(w[2]) + " |")
            if i == 0:
                out.append(line)
        out.append(line)
        out.append(f"live storages: {self['live_storages']}, allocated over the run: "
                   f"{_fmt(self['total_allocated_bytes'])}")
        out.append(f"tape: {_fmt(self['tape_bytes'])} held now (exact backprop would hold "
                   f"{_fmt(self['exact_tape_bytes'])}), peak {_fmt(self['peak_tape_bytes'])}")
        return "\n".join(out)


def memory_summary() -> MemorySummary:
    """Allocated bytes by category, current and peak, plus the tape figures; print it for a table."""
    d = MemorySummary(_core._memory_categories())
    st = _core.memory_stats()
    for k in ("tape_bytes", "peak_tape_bytes", "exact_tape_bytes", "peak_exact_tape_bytes"):
        d[k] = st[k]
    return d


def owned(values: np.ndarray, category: str = "other") -> Tuple[np.ndarray, _core.Tensor]:
    """A spad-allocated copy of ``values`` in ``category``, as (numpy view, tensor).

    The numpy view shares the tensor's storage (and keeps it alive), so state kept as numpy
    arrays (optimizer buffers) is spad's own, counted allocation. Used by ``nn.Parameter``
    and the optimizers.
    """
    t = _core._owned_copy(values)
    t._memory_category = category
    return t.numpy(), t
