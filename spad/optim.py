"""Optimizers, learning-rate schedules, parameter averages and gradient clipping.

The optimizers hold hyperparameters and per-parameter state; the update itself is one
fused C++ loop per step over all parameters (``csrc/core/optim.cpp``), which also bumps
each parameter's storage version so a stale tape cannot silently use updated weights.
State lives in numpy arrays (``opt.state[i]["momentum"]`` etc.) that the C++ update
reads and writes in place, zero-copy.

    >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> loss.backward(); opt.step(); opt.zero_grad()

References: Goodfellow, Bengio & Courville, *Deep Learning*, ch. 8 (Alg. 8.1-8.7, §8.3.1).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from . import _core
from ._core import Tensor
from .memory import owned


class Optimizer:
    """Base class: a list of parameters plus named numpy state buffers per parameter."""

    _buffers: tuple = ()  # names of the per-parameter state arrays this optimizer keeps

    def __init__(self, params: Iterable[Tensor], lr: float, weight_decay: float = 0.0):
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

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (the next backward allocates a fresh one)."""
        _core.clear_grads(self.params)

    def step(self) -> None:
        # A schedule (or a user) may have set lr since construction; a NaN would reach every weight.
        _check_real(type(self).__name__, "lr", self.lr)
        self.steps += 1
        self._update()

    def _update(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Hyperparameters, step count and copies of the state arrays."""
        plain = (int, float, bool, tuple)
        hyper = {k: v for k, v in vars(self).items() if not k.startswith("_") and isinstance(v, plain)}
        return {"hyper": hyper, "state": [{k: a.copy() for k, a in st.items()} for st in self.state]}

    def load_state_dict(self, d: dict) -> None:
        if len(d["state"]) != len(self.params):
            raise ValueError(f"load_state_dict: {len(d['state'])} parameter states for {len(self.params)} parameters")
        for st, new in zip(self.state, d["state"]):
            for k, a in st.items():
                if new[k].shape != a.shape:
                    raise ValueError(f"load_state_dict: state '{k}' has shape {new[k].shape}, expected {a.shape}")
                a[...] = new[k]  # in place: the C++ side holds views of these arrays
        for k, v in d["hyper"].items():
            setattr(self, k, v)


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

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        _check("SGD", momentum >= 0, f"momentum must be >= 0, got {momentum}")
        _check("SGD", not nesterov or momentum > 0, "nesterov=True needs momentum > 0")
        self._buffers = ("momentum",) if momentum > 0 else ()
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        super().__init__(params, lr, weight_decay)

    def _update(self):
        _core.sgd_step(self.params, self._views.get("momentum", []), self.lr, self.momentum, self.nesterov,
                       self.weight_decay)


class Adagrad(Optimizer):
    """AdaGrad (Alg. 8.4): ``r += g²; p -= lr*g/(√r + eps)``."""

    _buffers = ("sum_sq",)

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-10, weight_decay: float = 0.0):
        _check("Adagrad", eps >= 0, f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        super().__init__(params, lr, weight_decay)

    def _update(self):
        _core.adagrad_step(self.params, self._views["sum_sq"], self.lr, self.eps, self.weight_decay)


class RMSprop(Optimizer):
    """RMSProp (Alg. 8.5): ``r = alpha*r + (1-alpha)*g²; s = g/(√r + eps)``; ``p -= lr*s``.

    With ``momentum > 0``: ``buf = momentum*buf + s`` and ``p -= lr*buf``; with
    ``nesterov=True`` this is RMSProp with Nesterov momentum (Alg. 8.6), rewritten so the
    stored parameters are the look-ahead point: ``p -= lr*(s + momentum*buf)``.
    """

    def __init__(self, params, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        _check("RMSprop", 0 <= alpha < 1, f"alpha (decay rate) must be in [0, 1), got {alpha}")
        _check("RMSprop", momentum >= 0, f"momentum must be >= 0, got {momentum}")
        _check("RMSprop", not nesterov or momentum > 0, "nesterov=True needs momentum > 0")
        _check("RMSprop", eps >= 0, f"eps must be >= 0, got {eps}")
        self._buffers = ("square_avg", "momentum") if momentum > 0 else ("square_avg",)
        self.alpha, self.eps, self.momentum, self.nesterov = float(alpha), float(eps), float(momentum), bool(nesterov)
        super().__init__(params, lr, weight_decay)

    def _update(self):
        _core.rmsprop_step(self.params, self._views["square_avg"], self._views.get("momentum", []), self.lr,
                           self.alpha, self.eps, self.momentum, self.nesterov, self.weight_decay)


class Adam(Optimizer):
    """Adam (Alg. 8.7) with bias correction; ``weight_decay`` is L2 added to the gradient."""

    _buffers = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        name = type(self).__name__
        b1, b2 = betas
        _check(name, 0 <= b1 < 1 and 0 <= b2 < 1, f"betas must be in [0, 1), got {tuple(betas)}")
        _check(name, eps >= 0, f"eps must be >= 0, got {eps}")
        self.betas, self.eps = (float(b1), float(b2)), float(eps)
        super().__init__(params, lr, weight_decay)

    def _update(self):
        _core.adam_step(self.params, self._views["exp_avg"], self._views["exp_avg_sq"], self.lr, self.betas[0],
                        self.betas[1], self.eps, self.weight_decay, self._decoupled, self.steps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr*wd`` each step."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


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
    grads = [p.grad.numpy() for p in params if p.grad is not None]
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    if total > max_norm:
        scale = max_norm / (total + 1e-12)
        for g in grads:
            g *= g.dtype.type(scale)  # gradients are never saved on a tape: a plain write is safe
    return total
