"""The training loop used by examples, the CLI and benchmarks.

    >>> hist = fit(model, F.cross_entropy, DataLoader(X, y, 32), optim.SGD(model.parameters(), 0.1),
    ...            epochs=20, val=(X_test, y_test))
    >>> hist.val_accuracy[-1], hist.peak_tape_bytes[-1]

Per step: forward (under the sampling policy, if any) -> loss -> backward -> update.
The tape figure is the peak of ``spad.memory_stats()['peak_tape_bytes']`` over the steps
of an epoch, reset before each forward, so it is the true per-step high-water mark.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from .tensor import no_grad, tensor


class NonFiniteLossError(FloatingPointError, ValueError):
    """The loss became NaN or inf; the message names the epoch and step."""


@dataclass
class History:
    """Per-epoch records (lists indexed by epoch)."""

    loss: List[float] = field(default_factory=list)           # mean training loss
    accuracy: List[float] = field(default_factory=list)       # training accuracy (integer labels only)
    peak_tape_bytes: List[int] = field(default_factory=list)  # max over steps of the per-step tape peak
    exact_tape_bytes: List[int] = field(default_factory=list)  # the same for what an exact tape would hold
    step_time: List[float] = field(default_factory=list)      # mean seconds per step (data + fwd + bwd + update)
    val_loss: List[float] = field(default_factory=list)
    val_accuracy: List[float] = field(default_factory=list)
    peak_allocated_bytes: List[int] = field(default_factory=list)  # max over steps of the step's peak allocation
    budget_plans: List[Any] = field(default_factory=list)  # fit(memory_budget=...): every BudgetPlan solved
    stopped_epoch: Optional[int] = None  # set when early stopping or a callback ended training
    best_epoch: Optional[int] = None     # the epoch whose parameters early stopping restored


@dataclass
class EarlyStopping:
    """Goodfellow Alg. 7.1: after each epoch evaluate on the validation set; keep a copy of
    the best parameters; stop after ``patience`` epochs without improvement by more than
    ``min_delta`` and restore the best copy. ``monitor``: "val_loss" (lower is better) or
    "val_accuracy" (higher is better)."""

    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "val_loss"
    restore_best: bool = True

    def __post_init__(self):
        if self.patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {self.patience}")
        if self.monitor not in ("val_loss", "val_accuracy"):
            raise ValueError(f"EarlyStopping: monitor must be 'val_loss' or 'val_accuracy', got {self.monitor!r}")
        self.best, self.best_epoch, self.best_state, self.waited = None, None, None, 0

    def update(self, epoch: int, value: float, model) -> bool:
        """Record this epoch's metric; True means stop."""
        sign = 1.0 if self.monitor == "val_loss" else -1.0
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.best_epoch, self.waited = value, epoch, 0
            self.best_state = model.state_dict()
            return False
        self.waited += 1
        return self.waited >= self.patience


class Regularizer:
    """Extension point: an object passed as ``fit(..., regularizer=r)``. After the loss of a
    minibatch is computed, fit calls ``r.add(loss, closure, params)`` and backpropagates
    the tensor it returns. ``closure()`` recomputes the minibatch loss (for penalties that
    need gradients or perturbed parameters, e.g. Smith et al.'s explicit ‖∇Ĉ_k‖² term)."""

    def add(self, loss, closure: Callable[[], Any], params: Sequence) -> Any:
        return loss



def _labels(y) -> Optional[np.ndarray]:
    a = y if isinstance(y, np.ndarray) else None
    return a if a is not None and a.dtype.kind in "iu" else None


def evaluate(model, X, y, loss_fn: Optional[Callable] = None, batch_size: int = 1024) -> dict:
    """Loss (if ``loss_fn``) and accuracy (integer ``y``) of ``model`` on (X, y), in eval
    mode and without recording a tape; the model's previous mode is restored."""
    X = np.asarray(X)
    y = np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"evaluate: X has {len(X)} examples but y has {len(y)}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    total_loss, correct, n = 0.0, 0, len(X)
    try:
        with no_grad():
            for i in range(0, n, batch_size):
                xb, yb = tensor(X[i:i + batch_size]), y[i:i + batch_size]
                out = model(xb)
                if loss_fn is not None:
                    target = yb if yb.dtype.kind in "iu" else tensor(yb, dtype=out.dtype)
                    total_loss += loss_fn(out, target).item() * len(yb)
                if yb.dtype.kind in "iu":
                    correct += int((out.numpy().argmax(axis=1) == yb).sum())
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    res = {}
    if loss_fn is not None:
        res["loss"] = total_loss / n
    if y.dtype.kind in "iu":
        res["accuracy"] = correct / n
    return res


_EXACT = contextlib.nullcontext()  # reusable: exact training enters it every step


def _policy_context(sampling):
    if sampling is None:
        return _EXACT
    from . import sampling as S  # lazily: the sampling module is optional for exact training

    return S.use(sampling)


def _world():
    """spad.distributed when this process is one of several MPI ranks, else None. Then only rank 0
    shows progress, epoch metrics are averaged over ranks and validation is split across them, so
    every rank's History (and early-stopping decision) is the same."""
    D = sys.modules.get("spad.distributed")
    return D if D is not None and D.is_initialized() and D.size() > 1 else None


def _progress(epochs: int, loader, enabled: bool):
    """A bar that advances once per batch (total = epochs x batches when the loader has a length)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a declared dependency, but a missing bar must not stop training
        return None
    try:
        total = epochs * len(loader)
    except TypeError:  # a plain iterable: the bar counts batches without a total
        total = None
    return tqdm(total=total, unit="batch", leave=True)


def _regularize(regularizer, loss, closure, params, optimizer):
    """regularizer.add(...), with an in-backward optimizer's hooks off: a regularizer may run
    backward passes of its own (gradient penalties), which must not update the parameters."""
    if not getattr(optimizer, "in_backward", False):
        return regularizer.add(loss, closure, params)
    optimizer.remove_hooks()
    try:
        return regularizer.add(loss, closure, params)
    finally:
        optimizer._attach(type(optimizer).__name__, implicit=getattr(optimizer, "_implicit", True))


def _split_batch(xb, yb, m: int):
    from .budget import split_batch

    return split_batch(xb, yb, m)


def _step_peak_allocated() -> int:
    return int(_core.peak_allocated_bytes())  # one counter, not the whole memory_stats() dict


def _check_finite(params, epoch: int, step: int, grads: bool = True) -> None:
    """A finite loss can still come with NaN/inf gradients (an inf input behind a dead unit,
    an overflow in backward): check them, and the parameters, before the optimizer writes.
    grads=False (an optimizer that updates inside backward): the parameters only, after it wrote."""
    checks = ((True, "the gradient of parameter"), (False, "parameter")) if grads else ((False, "parameter"),)
    for on_grads, what in checks:
        i = _core._first_nonfinite(params, on_grads)
        if i >= 0:
            state = "parameters left untouched" if grads else "updated inside backward"
            raise NonFiniteLossError(f"fit: {what} {i} (shape {tuple(params[i].shape)}) holds NaN or inf at epoch "
                                     f"{epoch}, step {step}; {state}. Lower the learning rate or check the data.")


def fit(model, loss_fn: Callable, train_loader, optimizer, epochs: int, sampling=None,
        val: Optional[Tuple[Any, Any]] = None, progress: bool = True, callbacks: Sequence[Callable] = (),
        early_stopping=None, regularizer=None, memory_budget=None) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader``; returns a History.

    ``loss_fn(output, target)`` returns a scalar tensor. ``sampling``: a spad.sampling
    policy under which every forward pass is recorded (None = exact backprop).
    ``val = (X_val, y_val)`` is evaluated after every epoch. ``callbacks``: callables
    ``cb(epoch, history, model)``; one returning True stops training.
    ``early_stopping``: an int patience or an EarlyStopping (needs ``val``).
    ``regularizer``: see Regularizer. A NaN/inf loss raises NonFiniteLossError (both a
    FloatingPointError and a ValueError) naming the epoch and step.

    ``optimizer`` may update inside backward (``in_backward=True``): the loop is the same.
    ``memory_budget``: bytes a training step may allocate (``memory_stats()['peak_allocated_bytes']``),
    or a spad.Budget. fit() then samples each layer at the keep that fits the step into the
    budget at the least gradient variance, using ``sampling`` (default RAD) as the estimator,
    re-planned every ``Budget.resolve_every`` steps; ``History.budget_plans`` records each plan.
    When no keep fits, a plan may split each batch into accumulated micro-batches (its
    ``micro_batches``; needs an optimizer that updates after backward and a loss that averages).
    A budget below the floor raises spad.MemoryBudgetError before any parameter changes.
    """
    if epochs < 0:
        raise ValueError(f"fit: epochs must be >= 0, got {epochs}")
    budget = None
    if memory_budget is not None:
        from .budget import Budget

        if isinstance(memory_budget, Budget):
            budget = memory_budget
        else:
            from . import sampling as S

            if sampling is not None and not isinstance(sampling, S.Policy):
                raise TypeError(f"fit: sampling must be a spad.sampling policy, got {type(sampling).__name__}")
            budget = Budget(memory_budget, base=None if isinstance(sampling, S.Exact) else sampling)
        sampling = budget
    if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
        early_stopping = EarlyStopping(patience=early_stopping)
    if early_stopping is not None and val is None:
        raise ValueError("fit: early_stopping needs a validation set (val=(X_val, y_val))")
    params = model.parameters()
    hist = History()
    world = _world()
    bar = _progress(epochs, train_loader, progress and (world is None or world.rank() == 0))
    if hasattr(model, "train"):
        model.train()
    total_steps = 0
    try:
        for epoch in range(epochs):
            losses, correct, seen, peak, peak_exact, t_total, steps = [], 0, 0, 0, 0, 0.0, 0
            peak_alloc = 0
            t0 = time.perf_counter()
            for step, (xb, yb) in enumerate(train_loader):
                if isinstance(xb, np.ndarray):
                    xb = tensor(xb)  # the loader's contiguous float buffers are shared, not copied
                if budget is not None and total_steps % budget.resolve_every == 0:
                    # Probe steps on this batch (no update): the first raises MemoryBudgetError
                    # before any parameter has changed. A regularizer's own passes see the whole
                    # batch, so with one the solver may not split it.
                    hist.budget_plans.append(budget.plan(model, loss_fn, xb, yb, optimizer, step=total_steps,
                                                         micro_batches_ok=regularizer is None))
                # The budget may have chosen accumulated micro-batches (spad.budget): one forward and
                # backward each, gradients summed, one update.
                micro = hist.budget_plans[-1].micro_batches if budget is not None else 1
                parts = [(xb, yb, 1.0)] if micro == 1 else _split_batch(xb, yb, micro)
                # Last step's gradients go before the forward pass, not after it: they are not
                # needed any more and would otherwise sit under this step's peak.
                optimizer.zero_grad()
                _core.reset_peak_memory_stats()
                value = 0.0
                for xp, yp, w in parts:
                    try:
                        with _policy_context(sampling):
                            out = model(xp)
                            loss = loss_fn(out, yp)
                            if regularizer is not None:
                                loss = _regularize(regularizer, loss, lambda: loss_fn(model(xb), yb), params, optimizer)
                        v = loss.item()
                        if not math.isfinite(v):
                            raise NonFiniteLossError(f"loss is {v}")
                    except (ValueError, FloatingPointError) as e:
                        if isinstance(e, NonFiniteLossError) or "NaN or inf" in str(e):
                            raise NonFiniteLossError(
                                f"fit: non-finite loss at epoch {epoch}, step {step}: {e}. "
                                "Lower the learning rate or check the data.") from e
                        raise type(e)(f"fit: epoch {epoch}, step {step}: {e}") from e
                    value += w * v
                    # Accuracy before backward, then the output goes: it may view a larger reused
                    # buffer, which backward can free at last use only if nothing else holds it.
                    labels = _labels(yp)
                    if labels is not None and out.ndim == 2:
                        correct += int((out.numpy().argmax(axis=1) == labels).sum())
                    out = None
                    (loss if w == 1.0 else loss * w).backward()  # the weights make the sum the batch's mean
                    loss = None
                in_backward = getattr(optimizer, "in_backward", False)
                # An in-backward optimizer has applied (and freed) the gradients already: only
                # the parameters are left to check, after the fact.
                _check_finite(params, epoch, step, grads=not in_backward)
                optimizer.step()
                step_peak, step_peak_exact = _core.peak_tape_bytes()
                peak, peak_exact = max(peak, step_peak), max(peak_exact, step_peak_exact)
                peak_alloc = max(peak_alloc, _step_peak_allocated())
                total_steps += 1
                losses.append(value)
                seen += len(xb)
                steps += 1
                if bar is not None:
                    bar.update(1)
                t1 = time.perf_counter()
                t_total += t1 - t0
                t0 = t1
            if world is not None:  # every rank runs the same number of steps (spad.data)
                tot = world.allreduce_sum([sum(losses), len(losses), correct, seen])
                losses, correct, seen = [tot[0] / max(tot[1], 1)] if tot[1] else [], int(tot[2]), int(tot[3])
            hist.loss.append(float(np.mean(losses)) if losses else float("nan"))
            if seen and _labels(yb) is not None:
                hist.accuracy.append(correct / seen)
            hist.peak_tape_bytes.append(int(peak))
            hist.exact_tape_bytes.append(int(peak_exact))
            hist.peak_allocated_bytes.append(int(peak_alloc))
            hist.step_time.append(t_total / max(steps, 1))
            if not steps:  # an empty loader trains nothing and would report a NaN loss
                raise ValueError(f"fit: the training loader yielded no batches in epoch {epoch}")
            postfix = {"loss": f"{hist.loss[-1]:.4f}"}
            if val is not None:
                res = (evaluate if world is None else world.evaluate)(model, val[0], val[1], loss_fn)
                hist.val_loss.append(res["loss"])
                if "accuracy" in res:
                    hist.val_accuracy.append(res["accuracy"])
                    postfix["val_acc"] = f"{res['accuracy']:.4f}"
            if bar is not None:
                postfix["epoch"] = epoch + 1
                bar.set_postfix(postfix)
            stop = any(bool(cb(epoch, hist, model)) for cb in callbacks)
            if early_stopping is not None:
                metric = hist.val_loss[-1] if early_stopping.monitor == "val_loss" else hist.val_accuracy[-1]
                stop = early_stopping.update(epoch, metric, model) or stop
            if stop:
                hist.stopped_epoch = epoch
                break
    finally:
        if bar is not None:
            bar.close()
    if early_stopping is not None and early_stopping.restore_best and early_stopping.best_state is not None:
        model.load_state_dict(early_stopping.best_state)
        hist.best_epoch = early_stopping.best_epoch
    return hist
