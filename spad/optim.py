"""Optimizers, learning-rate schedules, parameter averages and gradient clipping.

The optimizers hold hyperparameters and per-parameter state; the update itself is one
fused C++ loop per step over all parameters (``csrc/core/optim.cpp``), which also bumps
each parameter's storage version so a stale tape cannot silently use updated weights.
State lives in numpy arrays (``opt.state[i]["momentum"]`` etc.) that the C++ update
reads and writes in place, zero-copy.

    >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> loss.backward(); opt.step(); opt.zero_grad()

Every optimizer also takes ``in_backward=True`` (the LOMO / on-device pattern): each
parameter is updated *inside* ``backward()`` as soon as its gradient is complete, and the
gradient is freed at once, so a step never holds all gradients at the same time. The same
loop runs unchanged; see Optimizer for what step() and zero_grad() then do.

References: Goodfellow, Bengio & Courville, *Deep Learning*, ch. 8 (Alg. 8.1-8.7, §8.3.1).
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from . import _core
from ._core import Tensor
from .memory import owned


class Optimizer:
    """Base class: a list of parameters plus named numpy state buffers per parameter.

    ``in_backward=True`` moves the update into ``backward()``: a gradient-complete hook on each
    parameter (``_core.set_grad_complete_hook``) runs this optimizer's fused update on that
    parameter as soon as the reverse sweep has delivered its last gradient contribution, then
    drops ``p.grad``. The parameters come out the same as with ``backward(); step()`` (the same
    kernels, so up to float rounding). For such an optimizer:

    - ``step()`` updates nothing (the updates already ran); it only advances ``steps``, the count
      schedules and ``state_dict()`` see, so ``backward(); step(); zero_grad()`` loops, fit() and
      LRScheduler work unchanged. The bias correction of Adam/AdamW in backward uses each
      parameter's own update count, so it is right even if step() is never called.
    - ``zero_grad()`` has nothing to drop (gradients are freed when applied); it still clears any
      gradient set by hand.
    - a backward() whose loss does not reach a parameter leaves that parameter alone; every
      backward() that does reach it is one update (no accumulation over micro-batches).
    - ``clip_grad_norm`` raises: the global norm is known only after every gradient is freed.
    - ``lr`` and the other hyperparameters are read at each update, so a schedule applies from
      the next backward(); an lr that is not a finite number raises ValueError from backward()
      before that parameter (and any later one) is touched. ``remove_hooks()`` turns the
      optimizer back into an ordinary one; hooks hold the optimizer weakly and stop when it is
      garbage-collected.
    - a sampled weight gradient is applied without its dense dW where the estimator allows:
      row-sparse ones (``RAD(mode="same")``, ``SPAD(unbiased=False)``: only the k sampled input
      features' rows are non-zero) from the compact (k x out) rows, by every optimizer; the
      untouched rows get the update with a zero gradient, so momentum and moment estimates decay
      exactly as in the dense update (the work is the dense update's, the memory is not). Plain
      ``SGD`` (no momentum) also adds ``-lr * dW`` of the per-example estimators (RAD, SPAD)
      straight into the weight when dW is larger than the output gradient it must keep until
      then. Parameters come out the same as with the dense dW up to float rounding.
    """

    _buffers: tuple = ()  # names of the per-parameter state arrays this optimizer keeps

    def __init__(self, params: Iterable[Tensor], lr: float, weight_decay: float = 0.0, in_backward: bool = False):
        self.params: List[Tensor] = list(params)
        name = type(self).__name__
        if not self.params:
            raise ValueError(f"{name}: got an empty parameter list (did the model register its parameters?)")
        seen: Dict[int, int] = {}
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: parameter {i} is a {type(p).__name__}, not a spad.Tensor")
            if not p.requires_grad:
                raise ValueError(f"{name}: parameter {i} of shape {p.shape} does not require grad")
            # The same tensor twice would be stepped twice per step (and share state twice).
            if id(p) in seen:
                raise ValueError(f"{name}: parameter {i} of shape {p.shape} is the same tensor as parameter "
                                 f"{seen[id(p)]}; pass each parameter once")
            seen[id(p)] = i
        hyper = [("lr", lr), ("weight_decay", weight_decay)]
        hyper += [(k, getattr(self, k)) for k in ("momentum", "eps", "alpha") if hasattr(self, k)]
        hyper += [("betas", b) for b in getattr(self, "betas", ())]
        for key, v in hyper:
            _check_real(name, key, v)
        _check(name, lr > 0, f"learning rate must be > 0, got {lr}")
        _check(name, weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.steps = 0
        # state[i][buf] is a numpy array; _views[buf] the matching borrowed spad tensors.
        self.state: List[Dict[str, np.ndarray]] = [{} for _ in self.params]
        self._views: Dict[str, List[Tensor]] = {}
        for buf in self._buffers:
            self._views[buf] = []
            for p, st in zip(self.params, self.state):
                st[buf], view = owned(np.zeros(p.shape, dtype=p.dtype), "optimizer_state")  # counted, spad's own
                self._views[buf].append(view)
        self.in_backward = False
        self._counts = [0] * len(self.params)  # per-parameter updates done inside backward()
        if in_backward:
            self._attach(name)

    def _attach(self, name: str, implicit: bool = True) -> None:
        for i, p in enumerate(self.params):
            if _core.has_grad_complete_hook(p):
                raise ValueError(f"{name}: parameter {i} of shape {p.shape} is already updated inside backward() "
                                 "(another optimizer with in_backward=True, or a gradient-complete hook)")
        ref = weakref.ref(self)
        rows, add = self._implicit_forms() if implicit else (False, False)
        self._implicit = implicit  # re-attaching after a probe keeps the caller's choice
        for i, p in enumerate(self.params):
            _core.set_grad_complete_hook(p, _InBackwardHook(ref, i), rows=rows, add=add)
        self.in_backward = True

    def _implicit_forms(self):
        """Which gradients without a dense dW this optimizer's update reads (rows, add into p).
        Every fused update reads row-sparse ones; only an update linear in the gradient with no
        state (plain SGD) can take one added into the parameter."""
        return True, False

    def remove_hooks(self) -> None:
        """Stop updating inside backward(): from now on step() updates, as usual."""
        if self.in_backward:
            for p in self.params:
                _core.set_grad_complete_hook(p, None)
            self.in_backward = False

    def __del__(self):
        try:
            self.remove_hooks()
        except Exception:  # interpreter shutdown: _core may already be gone
            pass

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (the next backward allocates a fresh one). With
        in_backward=True there is normally nothing to drop: gradients are freed when applied."""
        _core.clear_grads(self.params)

    def step(self) -> None:
        """Apply the gradients and advance ``steps``. With in_backward=True the updates already
        ran inside backward(): this only advances ``steps``."""
        # A schedule (or a user) may have set lr since construction; a NaN would reach every weight.
        _check_real(type(self).__name__, "lr", self.lr)
        self.steps += 1
        if not self.in_backward:
            self._update()

    def _update(self) -> None:
        """One fused update of every parameter that has a gradient, at step count ``steps``."""
        self._apply(self.params, self._views, self.steps)

    def _update_one(self, i: int) -> None:
        """The in-backward update of parameter i (called by its gradient-complete hook)."""
        p = self.params[i]
        # Checked here, not only in step(): with in_backward the updates run before step(). Raising
        # leaves this parameter (and the ones backward reaches later) untouched.
        _check_real(type(self).__name__, "lr", self.lr)
        self._counts[i] += 1
        self._apply([p], {k: [v[i]] for k, v in self._views.items()}, self._counts[i])
        _core.clear_grads([p])

    def _apply(self, params: List[Tensor], views: Dict[str, List[Tensor]], step: int) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def state_dict(self) -> dict:
        """Hyperparameters, step count and copies of the state arrays."""
        plain = (int, float, bool, tuple)
        hyper = {k: v for k, v in vars(self).items()
                 if not k.startswith("_") and k != "in_backward" and isinstance(v, plain)}
        return {"hyper": hyper, "state": [{k: a.copy() for k, a in st.items()} for st in self.state],
                "update_counts": list(self._counts)}

    def load_state_dict(self, d: dict) -> None:
        if len(d["state"]) != len(self.params):
            raise ValueError(f"load_state_dict: {len(d['state'])} parameter states for {len(self.params)} parameters")
        for st, new in zip(self.state, d["state"]):
            for k, a in st.items():
                if new[k].shape != a.shape:
                    raise ValueError(f"load_state_dict: state '{k}' has shape {new[k].shape}, expected {a.shape}")
                a[...] = new[k]  # in place: the C++ side holds views of these arrays
        for k, v in d["hyper"].items():
            if k != "in_backward":  # a property of this object (its hooks), not of the saved state
                setattr(self, k, v)
        counts = d.get("update_counts")
        self._counts = list(counts) if counts is not None else [self.steps] * len(self.params)


class _InBackwardHook:
    """The gradient-complete hook of one parameter; holds its optimizer weakly."""

    __slots__ = ("ref", "i")

    def __init__(self, ref, i: int):
        self.ref, self.i = ref, i

    def __call__(self, _param) -> None:
        opt = self.ref()
        if opt is not None and opt.in_backward:
            opt._update_one(self.i)


def _check(name: str, ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {msg}")


def _check_real(name: str, key: str, v) -> None:
    """A hyperparameter must be a finite real number (NaN or inf would reach every weight)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: {key} must be a number, got {type(v).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{name}: {key} must be a finite number, got {v}")


class SGD(Optimizer):
    """Stochastic gradient descent with optional heavy-ball or Nesterov momentum (Alg. 8.1-8.3).

    ``buf = momentum*buf + g; p -= lr*buf`` (heavy ball) or ``p -= lr*(g + momentum*buf)``
    (Nesterov, evaluated at the look-ahead point). ``weight_decay`` adds ``wd*p`` to g.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 in_backward: bool = False):
        _check("SGD", momentum >= 0, f"momentum must be >= 0, got {momentum}")
        _check("SGD", not nesterov or momentum > 0, "nesterov=True needs momentum > 0")
        self._buffers = ("momentum",) if momentum > 0 else ()
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        super().__init__(params, lr, weight_decay, in_backward)

    def _apply(self, params, views, step):
        _core.sgd_step(params, views.get("momentum", []), self.lr, self.momentum, self.nesterov, self.weight_decay)

    def _implicit_forms(self):
        return True, self.momentum == 0


class Adagrad(Optimizer):
    """AdaGrad (Alg. 8.4): ``r += g²; p -= lr*g/(√r + eps)``."""

    _buffers = ("sum_sq",)

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-10, weight_decay: float = 0.0,
                 in_backward: bool = False):
        _check("Adagrad", eps >= 0, f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        super().__init__(params, lr, weight_decay, in_backward)

    def _apply(self, params, views, step):
        _core.adagrad_step(params, views["sum_sq"], self.lr, self.eps, self.weight_decay)


class RMSprop(Optimizer):
    """RMSProp (Alg. 8.5): ``r = alpha*r + (1-alpha)*g²; s = g/(√r + eps)``; ``p -= lr*s``.

    With ``momentum > 0``: ``buf = momentum*buf + s`` and ``p -= lr*buf``; with
    ``nesterov=True`` this is RMSProp with Nesterov momentum (Alg. 8.6), rewritten so the
    stored parameters are the look-ahead point: ``p -= lr*(s + momentum*buf)``.
    """

    def __init__(self, params, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, in_backward: bool = False):
        _check("RMSprop", 0 <= alpha < 1, f"alpha (decay rate) must be in [0, 1), got {alpha}")
        _check("RMSprop", momentum >= 0, f"momentum must be >= 0, got {momentum}")
        _check("RMSprop", not nesterov or momentum > 0, "nesterov=True needs momentum > 0")
        _check("RMSprop", eps >= 0, f"eps must be >= 0, got {eps}")
        self._buffers = ("square_avg", "momentum") if momentum > 0 else ("square_avg",)
        self.alpha, self.eps, self.momentum, self.nesterov = float(alpha), float(eps), float(momentum), bool(nesterov)
        super().__init__(params, lr, weight_decay, in_backward)

    def _apply(self, params, views, step):
        _core.rmsprop_step(params, views["square_avg"], views.get("momentum", []), self.lr, self.alpha, self.eps,
                           self.momentum, self.nesterov, self.weight_decay)


class Adam(Optimizer):
    """Adam (Alg. 8.7) with bias correction; ``weight_decay`` is L2 added to the gradient."""

    _buffers = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 in_backward: bool = False):
        name = type(self).__name__
        b1, b2 = betas
        _check(name, 0 <= b1 < 1 and 0 <= b2 < 1, f"betas must be in [0, 1), got {tuple(betas)}")
        _check(name, eps >= 0, f"eps must be >= 0, got {eps}")
        self.betas, self.eps = (float(b1), float(b2)), float(eps)
        super().__init__(params, lr, weight_decay, in_backward)

    def _apply(self, params, views, step):
        _core.adam_step(params, views["exp_avg"], views["exp_avg_sq"], self.lr, self.betas[0], self.betas[1],
                        self.eps, self.weight_decay, self._decoupled, step)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr*wd`` each step."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 in_backward: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, in_backward)


# ---- learning-rate schedules: functions of the step k returning the learning rate ----------
def step_decay(lr0: float, step_size: int, gamma: float = 0.1) -> Callable[[int], float]:
    """``lr0 * gamma**(k // step_size)``."""
    return lambda k: lr0 * gamma ** (k // step_size)


def linear_decay(lr0: float, tau: int, eps_tau: Optional[float] = None) -> Callable[[int], float]:
    """Goodfellow §8.3.1: ``(1-a)*lr0 + a*eps_tau`` with ``a = k/tau``, constant after tau.
    ``eps_tau`` defaults to 1% of lr0, the book's rule of thumb."""
    end = lr0 * 0.01 if eps_tau is None else eps_tau
    return lambda k: (1 - min(k, tau) / tau) * lr0 + min(k, tau) / tau * end


def cosine(lr0: float, total: int, lr_min: float = 0.0) -> Callable[[int], float]:
    """Cosine annealing from lr0 to lr_min over ``total`` steps, then lr_min."""
    return lambda k: lr_min + 0.5 * (lr0 - lr_min) * (1 + math.cos(math.pi * min(k, total) / total))


def warmup(schedule: Callable[[int], float], steps: int) -> Callable[[int], float]:
    """Linear warm-up over ``steps`` steps to ``schedule(0)``, then ``schedule(k - steps)``."""
    return lambda k: schedule(0) * (k + 1) / steps if k < steps else schedule(k - steps)


class LRScheduler:
    """Sets ``optimizer.lr = schedule(k)``; call ``.step()`` once per optimizer step (or epoch)."""

    def __init__(self, optimizer: Optimizer, schedule: Callable[[int], float]):
        self.optimizer, self.schedule, self.k = optimizer, schedule, 0
        optimizer.lr = schedule(0)

    def step(self) -> float:
        self.k += 1
        self.optimizer.lr = self.schedule(self.k)
        return self.optimizer.lr


# ---- parameter averages -------------------------------------------------------------------
class ParameterAverage:
    """Polyak average (``decay=None``: the running mean of all iterates since the start) or
    an exponential moving average (``avg = decay*avg + (1-decay)*p``) of the parameters.

    Call ``update()`` after each optimizer step. ``with avg.applied(): evaluate(...)``
    swaps the averages into the model and restores the live weights afterwards.
    """

    def __init__(self, params: Iterable[Tensor], decay: Optional[float] = None):
        self.params = list(params)
        if not self.params:
            raise ValueError("ParameterAverage: got an empty parameter list")
        if decay is not None and not 0 <= decay < 1:
            raise ValueError(f"ParameterAverage: decay must be in [0, 1), got {decay}")
        self.decay, self.count = decay, 0
        self.averages = [p.numpy().copy() for p in self.params]

    def update(self) -> None:
        self.count += 1
        w = 1.0 / (self.count + 1) if self.decay is None else 1.0 - self.decay
        for a, p in zip(self.averages, self.params):
            a += w * (p.numpy() - a)

    def applied(self):
        avg = self

        class _Swap:
            def __enter__(self):
                self.saved = [p.numpy().copy() for p in avg.params]
                for p, a in zip(avg.params, avg.averages):
                    _core.assign_(p, _core.from_numpy(a))

            def __exit__(self, *exc):
                for p, s in zip(avg.params, self.saved):
                    _core.assign_(p, _core.from_numpy(s))
                return False

        return _Swap()


def EMA(params: Iterable[Tensor], decay: float = 0.999) -> ParameterAverage:
    """Exponential moving average of the parameters."""
    return ParameterAverage(params, decay)


def Polyak(params: Iterable[Tensor]) -> ParameterAverage:
    """Polyak-Ruppert averaging: the mean of all iterates."""
    return ParameterAverage(params, None)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``;
    returns the norm before clipping. Parameters without a gradient are ignored."""
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    params = list(params)
    for i, p in enumerate(params):
        if _core.has_grad_complete_hook(p):
            raise RuntimeError(
                f"clip_grad_norm: parameter {i} of shape {p.shape} is updated inside backward() (an optimizer with "
                "in_backward=True): its gradient is applied and freed before the global norm over all parameters "
                "is known. Use an ordinary optimizer (in_backward=False) to clip by the global norm.")
    grads = [p.grad.numpy() for p in params if p.grad is not None]
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    if total > max_norm:
        scale = max_norm / (total + 1e-12)
        for g in grads:
            g *= g.dtype.type(scale)  # gradients are never saved on a tape: a plain write is safe
    return total
