"""Compiled replay: record a training step once, replay it in C++ with a static memory plan.

    >>> model = nn.mlp([64, 256, 256, 10]); opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> def train_step(x, y):
    ...     loss = F.cross_entropy(model(x), y)
    ...     opt.zero_grad(); loss.backward(); opt.step()
    ...     return loss
    >>> step = spad.compile(train_step)
    >>> for xb, yb in batches:
    ...     loss = step(xb, yb)          # first call records (and runs) the step, later calls replay it

The first call runs ``fn`` eagerly while every core call it makes (the ops, backward, the
optimizer's fused update, zero_grad, sampling-policy switches) is recorded as a list of op
records. Later calls bind the new inputs and run those records in a C++ loop: no Python per
op, the same core functions in the same order, so sampling draws, RNG counters and the
tape behave exactly as in eager mode and a replayed step equals the eager step bit for bit.

What is frozen at record time (as in a traced function):

- Python control flow and every Python value: branches, loop counts, learning rates and
  schedules read in Python, ``opt.steps`` (Adam's bias-correction step does advance per
  replay inside the record), anything computed with numpy from the step's tensors.
- Tensors the step did not receive as arguments and no recorded op produced (parameters,
  optimizer state, constants) are captured by reference: in-place updates are seen, a
  rebinding of the Python name is not.

Reading a value of the step into Python while recording (``item()``, ``float()``,
``numpy()``) warns, because the replay keeps the recorded value; so does an input that
does not reach the returned loss. Arguments are spad tensors or numpy arrays (float data
is borrowed; integer arrays, e.g. class labels, become the int64 tensors
``F.cross_entropy`` takes); any other argument is a static value that is part of the cache
key. A call whose argument shapes, dtypes or static values differ from every recorded one
records again (up to ``max_cache`` programs per step), so a plan never runs on inputs it was
not made for.

Lowered execution: at the first replay the program is lowered, when every record is one
the lowering knows (linear layers and ``linear_chain``, relu/tanh/sigmoid, dropout,
cross-entropy and MSE losses, backward of the loss, ``zero_grad``, the optimizers' fused updates), into a flat
list of kernel calls on raw pointers into one workspace, the parameters, their gradient
buffers and the optimizer state: no tensor, tape node or allocation per op. The workspace
holds the step's activations, their gradients and the losses' softmax / residual at offsets
planned from their lifetimes, so buffers that are never live together share bytes
(``step.program.lowered_workspace_bytes``; ``dump()`` shows the offsets). Its kernels
repeat the eager ops' arithmetic (the same gemm calls, the same loops), so a lowered step
still equals the eager step bit for bit, sampled steps included (a linear layer under a
sampling policy packs and reads its payload through the eager sampling calls).
``step.lowered`` says whether the program is lowered, ``step.lower_note`` why not (a conv
layer, a parameter read twice, ...); such programs, and calls the lowered path cannot serve (grad
mode off, an optimizer running in backward, an input that requires grad), replay record by
record as described above. ``spad.compile(fn, lower=False)`` never lowers.

Memory: each heap allocation the recorded step made and freed within the step gets a slice
of one arena planned from the buffers' lifetimes (``plan_bytes``, known right after the
first call; ``dump()`` shows it). Replay hands the k-th allocation its slice after checking
its size and that nothing planned into the same space is alive; a mismatch sends the rest
of that step to the heap and drops the plan (``plan_dropped``), never a wrong slice.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Callable, Optional

import numpy as np

from . import _core
from ._core import Tensor
from .tensor import tensor as _tensor


def _as_input(a: Any) -> Optional[Tensor]:
    """The tensor an argument is recorded as, or None for a static (frozen) argument."""
    if isinstance(a, Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype.kind in "iu":
            return _core.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        if a.dtype.kind == "f":
            return _tensor(a)
        raise TypeError(f"compile: cannot pass an array of dtype {a.dtype} to a compiled step")
    return None


def _key(args: tuple) -> tuple:
    key = []
    for a in args:
        if isinstance(a, (Tensor, np.ndarray)):
            kind = "i" if isinstance(a, np.ndarray) and a.dtype.kind in "iu" else str(a.dtype)
            key.append(("T", tuple(a.shape), kind))
        else:
            try:
                hash(a)
            except TypeError:
                raise TypeError(f"compile: argument of type {type(a).__name__} is neither a tensor, an array nor a "
                                "hashable static value") from None
            key.append(("S", type(a).__name__, a))
    return tuple(key)


class _Entry:
    __slots__ = ("prog", "tensor_pos", "pure")

    def __init__(self, prog, tensor_pos, nargs):
        self.prog = prog
        self.tensor_pos = tensor_pos
        self.pure = len(tensor_pos) == nargs  # every argument is a tensor: the fast path applies


class CompiledStep:
    """A step function recorded on its first call and replayed in C++ afterwards (see the module doc)."""

    def __init__(self, fn: Callable[..., Any], max_cache: int = 8, lower: bool = True):
        if not callable(fn):
            raise TypeError(f"compile: expected a callable, got {type(fn).__name__}")
        if int(max_cache) < 1:
            raise ValueError(f"compile: max_cache must be >= 1, got {max_cache}")
        self.fn = fn
        self.max_cache = int(max_cache)
        self.lower = bool(lower)
        self._cache: "OrderedDict[tuple, _Entry]" = OrderedDict()
        self._last: Optional[_Entry] = None
        self.recordings = 0

    def __call__(self, *args):
        e = self._last
        if e is not None and e.pure:
            try:
                return e.prog.run(args)
            except ValueError as err:  # inputs that do not fit this program: look further
                if not str(err).startswith("ReplayMismatch"):
                    raise
        key = _key(args)
        e = self._cache.get(key)
        if e is None:
            return self._record(key, args)
        self._cache.move_to_end(key)
        self._last = e
        return e.prog.run(tuple(args[i] for i in e.tensor_pos))

    def _record(self, key: tuple, args: tuple):
        call_args = list(args)
        inputs, pos = [], []
        for i, a in enumerate(args):
            t = _as_input(a)
            if t is not None:
                call_args[i] = t
                inputs.append(t)
                pos.append(i)
        rec = _core._Recorder(inputs)
        try:
            out = self.fn(*call_args)
            if out is not None and not isinstance(out, Tensor):
                raise TypeError(f"compile: the step must return the loss tensor or None, got {type(out).__name__}")
            prog, notes = rec.finish(out)
        except BaseException:
            rec.abort()
            raise
        prog.lower_enabled = self.lower
        for note in notes:
            warnings.warn(f"compile: {note}", stacklevel=3)
        e = _Entry(prog, tuple(pos), len(args))
        self._cache[key] = e
        while len(self._cache) > self.max_cache:
            self._cache.popitem(last=False)
        self._last = e
        self.recordings += 1
        return None if out is None else out.detach()

    # ---- introspection (of the program used last) ----
    def _program(self):
        if self._last is None:
            raise RuntimeError("compile: the step has not been recorded yet; call it once")
        return self._last.prog

    @property
    def plan_bytes(self) -> int:
        """Bytes of the planned arena of the current program (known after the first call)."""
        return self._program().plan_bytes

    @property
    def n_records(self) -> int:
        """Number of op records the current program replays."""
        return self._program().n_records

    @property
    def lowered(self) -> bool:
        """Whether the current program runs lowered (decided at its first replay; False before)."""
        return self._program().lowered

    @property
    def lower_note(self) -> str:
        """Why the current program, or its last call, did not run lowered ('' when it did)."""
        return self._program().lower_note

    @property
    def program(self):
        return self._program()

    def save(self, path: str) -> None:
        """Write the current program with its parameters, optimizer state and arena plan to ``path``
        (format: docs/plan_format.md), for ``spad_plan_load`` on a device. A step recorded under a
        sampling policy is saved with the policy: its settings, clock, RNG counter and per-site
        state (scores, distributions, stale norms), so a loaded plan samples what this step would
        sample next."""
        self._program().save(str(path))

    def dump(self) -> str:
        """A readable listing of the records and the arena plan."""
        return self._program().dump()

    def __str__(self) -> str:
        return self.dump() if self._last is not None else f"CompiledStep({getattr(self.fn, '__name__', self.fn)!r}, not recorded)"


def compile(fn: Callable[..., Any], max_cache: int = 8, lower: bool = True) -> CompiledStep:  # noqa: A001
    """Record ``fn`` (forward, backward, optimizer step; returns the loss) on its first call and
    replay it in C++ on later calls with new inputs of the same shapes, lowered to a tape-free
    kernel list when it can be (``lower=False``: never). See ``spad.compile`` module doc."""
    return CompiledStep(fn, max_cache, lower)
