"""Implicit regularization of gradient descent and SGD, made explicit.

Backward error analysis (Barrett & Dherin, ICLR 2021) shows that gradient descent with
learning rate ε follows, to O(ε²), the gradient flow of the *modified loss*

    C_GD(θ) = C(θ) + ε/4 · ‖∇C(θ)‖².

For SGD with random shuffling over m minibatches per epoch, the mean iterate after one epoch
follows the flow of (Smith, Dherin, Barrett & De, ICLR 2021)

    C_SGD(θ) = C(θ) + ε/(4m) · Σ_k ‖∇Ĉ_k(θ)‖²,    C = (1/m) Σ_k Ĉ_k.

Their gradients need Hessian-vector products: ∇(‖∇C‖²) = 2 H ∇C, so
∇C_GD = g + ε/2 · H g. Smith et al. also add the penalty explicitly, λ/4 · ‖∇Ĉ_k‖² on each
minibatch loss, and find it recovers the test accuracy of large learning rates when the
learning rate is small: ``ExplicitRegularizer`` does that inside ``spad.train.fit``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, List, Optional, Tuple

import numpy as np

from .. import _core
from .._core import Tensor
from .hvp import _params, _refuse_sampled_tape, _SavedGrads, _scalar, flatten, grad, hvp, unflatten

__all__ = [
    "ExplicitRegularizer",
    "gd_modified_grad",
    "gd_modified_loss",
    "gradient_flow",
    "sgd_modified_grad",
    "sgd_modified_loss",
]


def _check_lr(lr, who: str, name: str = "lr") -> float:
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a number, got {type(lr).__name__}") from None
    if not (lr > 0 and np.isfinite(lr)):
        raise ValueError(f"{who}: {name} must be a positive finite number, got {lr}")
    return lr


def _sq_norm(arrays) -> float:
    return float(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays))


def _batch_fns(batch_loss_fns, who: str) -> list:
    fns = list(batch_loss_fns)
    if not fns:
        raise ValueError(f"{who}: batch_loss_fns is empty; pass one loss closure per minibatch")
    for i, f in enumerate(fns):
        if not callable(f):
            raise TypeError(f"{who}: batch_loss_fns[{i}] is a {type(f).__name__}, expected a callable")
    return fns


def gd_modified_loss(loss_fn: Callable[[], Tensor], params: Sequence, lr: float) -> float:
    """``C + lr/4 · ‖∇C‖²``: the loss whose gradient flow full-batch gradient descent with
    learning rate ``lr`` follows to second order (Barrett & Dherin). A float."""
    lr = _check_lr(lr, "gd_modified_loss")
    value, g = grad(loss_fn, _params(params))
    return value + lr / 4.0 * _sq_norm(g)


def sgd_modified_loss(batch_loss_fns: Sequence[Callable[[], Tensor]], params: Sequence, lr: float) -> float:
    """``C + lr/(4m) · Σ_k ‖∇Ĉ_k‖²`` over the m minibatch losses ``Ĉ_k = batch_loss_fns[k]()``,
    with ``C`` their mean: the modified loss of one epoch of SGD with random shuffling
    (Smith et al., ICLR 2021). A float."""
    lr = _check_lr(lr, "sgd_modified_loss")
    fns = _batch_fns(batch_loss_fns, "sgd_modified_loss")
    params = _params(params)
    values, penalty = [], 0.0
    for f in fns:
        value, g = grad(f, params)
        values.append(value)
        penalty += _sq_norm(g)
    return float(np.mean(values)) + lr / (4.0 * len(fns)) * penalty


def gd_modified_grad(loss_fn: Callable[[], Tensor], params: Sequence, lr: float,
                     method: str = "exact") -> List[np.ndarray]:
    """∇(C + lr/4 ‖∇C‖²) = g + lr/2 · H g, with H g from ``hvp(..., method)``. ``lr = 0`` gives ∇C."""
    params = _params(params)
    lr = float(lr)
    if lr < 0 or not np.isfinite(lr):
        raise ValueError(f"gd_modified_grad: lr must be >= 0 and finite, got {lr}")
    _, g = grad(loss_fn, params)
    if lr == 0:
        return g
    hg = hvp(loss_fn, params, g, method=method)
    return [a + lr / 2.0 * b for a, b in zip(g, hg)]


def sgd_modified_grad(batch_loss_fns: Sequence[Callable[[], Tensor]], params: Sequence, lr: float,
                      method: str = "exact") -> List[np.ndarray]:
    """∇ of ``sgd_modified_loss``: mean_k g_k + lr/(2m) · Σ_k H_k g_k."""
    fns = _batch_fns(batch_loss_fns, "sgd_modified_grad")
    params = _params(params)
    lr = float(lr)
    if lr < 0 or not np.isfinite(lr):
        raise ValueError(f"sgd_modified_grad: lr must be >= 0 and finite, got {lr}")
    m = len(fns)
    total = [np.zeros(p.shape, np.float64) for p in params]
    for f in fns:
        _, g = grad(f, params)
        hg = hvp(f, params, g, method=method) if lr > 0 else [0.0] * len(g)
        for t, a, b in zip(total, g, hg):
            t += a / m + lr / (2.0 * m) * np.asarray(b, np.float64)
    return [t.astype(p.dtype) for t, p in zip(total, params)]


class ExplicitRegularizer:
    """Smith et al.'s explicit regularizer for ``spad.train.fit(..., regularizer=...)``:
    each minibatch loss Ĉ_k becomes ``Ĉ_k + lam/4 · ‖∇Ĉ_k‖²``.

    The backpropagated gradient is ``g + lam/2 · H g``. ``method="exact"`` records the
    backward pass of Ĉ_k (``create_graph=True``) and lets the training step differentiate
    through it (every op needs a twice-differentiable backward rule). ``method="fd"``
    computes H g by central differences of two extra gradients (three more forward and two
    more backward passes through ``closure``), so it works with any op and under a sampling policy
    ("exact" refuses one: see ``hvp``); its
    gradient enters the step as a fixed vector (the penalty's value is still reported).

    The returned loss (and so ``History.loss``) includes the penalty; ``last_penalty``
    holds the most recent ``lam/4 · ‖∇Ĉ_k‖²``.
    """

    def __init__(self, lam: float, method: str = "fd", h: Optional[float] = None):
        self.lam = _check_lr(lam, "ExplicitRegularizer", "lam")
        if method not in ("fd", "exact"):
            raise ValueError(f'ExplicitRegularizer: method must be "fd" or "exact", got {method!r}')
        self.method, self.h = method, h
        self.last_penalty = float("nan")

    def __repr__(self) -> str:
        return f"ExplicitRegularizer(lam={self.lam!r}, method={self.method!r})"

    def add(self, loss: Tensor, closure: Callable[[], Tensor], params: Sequence) -> Tensor:
        """The regularized minibatch loss (a scalar tensor to backpropagate)."""
        loss = _scalar(loss, "ExplicitRegularizer")
        params = _params(params)
        if not loss.requires_grad:
            return loss  # evaluated without a tape (no_grad): nothing to regularize
        if self.method == "exact":
            return self._add_exact(loss, params)
        return self._add_fd(loss, closure, params)

    def _add_exact(self, loss, params):
        _refuse_sampled_tape("ExplicitRegularizer")
        with _SavedGrads(params):
            loss.backward(create_graph=True)  # keeps loss's graph for the caller's backward
            gs = [p.grad for p in params]
        sq = None
        for g in gs:
            if g is None:
                continue
            term = (g * g).sum()
            sq = term if sq is None else sq + term
        if sq is None:
            self.last_penalty = 0.0
            return loss
        penalty = sq * (self.lam / 4.0)
        self.last_penalty = penalty.item()
        return loss + penalty

    def _add_fd(self, loss, closure, params):
        with _SavedGrads(params):
            loss.backward()  # g from the step's own forward: no extra pass
            g = [np.zeros(p.shape, p.dtype) if p.grad is None else p.grad.numpy().copy() for p in params]
        self.last_penalty = self.lam / 4.0 * _sq_norm(g)
        if self.last_penalty == 0.0:
            return _scalar(closure(), "ExplicitRegularizer")
        hg = hvp(closure, params, g, method="fd", h=self.h)
        # The perturbed evaluations wrote the parameters (restored bit for bit, but their
        # storage version moved on), so the step's tape is stale: record the loss afresh.
        out = _scalar(closure(), "ExplicitRegularizer")
        # (p − p₀)·c has value 0 and gradient c: it injects c = lam/2 · H g into p.grad
        # without changing the loss value by float rounding.
        for p, v in zip(params, hg):
            c = np.ascontiguousarray(self.lam / 2.0 * v, dtype=p.dtype)
            p0 = _core.from_numpy(p.numpy().copy())
            out = out + ((p - p0) * _core.from_numpy(c)).sum()
        return out + self.last_penalty


def _flow_field(loss_fn, params, modified, lr, batch_loss_fns, method):
    if modified is None:
        if loss_fn is None:
            return lambda: sgd_modified_grad(batch_loss_fns, params, 0.0)
        return lambda: grad(loss_fn, params)[1]
    if modified == "gd":
        lr = _check_lr(lr, "gradient_flow")
        if loss_fn is None:
            # C = mean of the batch losses; GD on C follows C + lr/4 ‖∇C‖².
            fns = batch_loss_fns
            loss_fn = lambda: _mean_loss(fns)
        return lambda: gd_modified_grad(loss_fn, params, lr, method)
    if modified == "sgd":
        lr = _check_lr(lr, "gradient_flow")
        if batch_loss_fns is None:
            raise ValueError('gradient_flow: modified="sgd" needs batch_loss_fns (one closure per minibatch)')
        return lambda: sgd_modified_grad(batch_loss_fns, params, lr, method)
    raise ValueError(f'gradient_flow: modified must be None, "gd" or "sgd", got {modified!r}')


def _mean_loss(fns):
    total = None
    for f in fns:
        v = f()
        total = v if total is None else total + v
    return total * (1.0 / len(fns))


def gradient_flow(loss_fn: Optional[Callable[[], Tensor]], params: Sequence, t: float, steps: int,
                  modified: Optional[str] = None, lr: Optional[float] = None,
                  batch_loss_fns: Optional[Sequence[Callable[[], Tensor]]] = None, method: str = "exact",
                  record_every: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Integrate the gradient flow dθ/dt = −∇L(θ) from the current parameters to time ``t``
    with ``steps`` classical Runge–Kutta (RK4) steps; the parameters end at θ(t).

    L is ``loss_fn`` (``modified=None``), GD's modified loss C + lr/4 ‖∇C‖² (``"gd"``) or
    SGD's C + lr/(4m) Σ_k ‖∇Ĉ_k‖² (``"sgd"``, needs ``batch_loss_fns``; C is their mean,
    and ``loss_fn`` may be None). One epoch of SGD with learning rate lr corresponds to
    t = m·lr. Returns ``(times, thetas)``: the times recorded (every ``record_every`` steps,
    plus the end) and the flattened float64 parameters there, shape (len(times), P).
    Run it without a sampling policy: RK4 assumes a deterministic vector field.
    """
    params = _params(params)
    if loss_fn is None and batch_loss_fns is None:
        raise ValueError("gradient_flow: pass loss_fn or batch_loss_fns")
    if batch_loss_fns is not None:
        batch_loss_fns = _batch_fns(batch_loss_fns, "gradient_flow")
    t = float(t)
    if not (t >= 0 and np.isfinite(t)):
        raise ValueError(f"gradient_flow: t must be >= 0 and finite, got {t}")
    if not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ValueError(f"gradient_flow: steps must be a positive integer, got {steps!r}")
    if record_every <= 0:
        raise ValueError(f"gradient_flow: record_every must be positive, got {record_every}")
    field = _flow_field(loss_fn, params, modified, lr, batch_loss_fns, method)
    dt = t / steps

    def set_theta(vec):
        for p, a in zip(params, unflatten(vec, params)):
            _core.assign_(p, _core.from_numpy(np.ascontiguousarray(a)))

    def f(vec):
        set_theta(vec)
        return -flatten(field())

    theta = flatten(params)
    times, thetas = [0.0], [theta.copy()]
    for i in range(1, steps + 1):
        k1 = f(theta)
        k2 = f(theta + 0.5 * dt * k1)
        k3 = f(theta + 0.5 * dt * k2)
        k4 = f(theta + dt * k3)
        theta = theta + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        if i % record_every == 0 or i == steps:
            times.append(i * dt)
            thetas.append(theta.copy())
    set_theta(theta)
    return np.array(times), np.array(thetas)
