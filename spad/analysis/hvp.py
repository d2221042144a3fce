"""Gradients and Hessian-vector products of a scalar loss with respect to parameters.

    >>> hv = hvp(lambda: F.cross_entropy(model(x), y), model.parameters(), vs)            # double backward
    >>> hv_fd = hvp(lambda: F.cross_entropy(model(x), y), model.parameters(), vs, method="fd")

``method="exact"`` differentiates the recorded backward pass (``backward(create_graph=True)``),
so every op in the loss must have a twice-differentiable backward rule (conv2d's is not), and
it refuses to run under a sampling policy (a sampled tape holds detached activation samples,
so the recorded backward would miss terms and be biased).
``method="fd"`` takes central differences of two ordinary gradients,
``(g(θ + h v) − g(θ − h v)) / 2h``: it needs first derivatives only, so it works with any op
and inside a sampling policy (then each gradient is a sampled estimate and the result is an
unbiased estimate of the finite difference, with variance ~ Var[ĝ] / (2 h²)).

Both leave the parameters bit-for-bit as they found them and restore any ``p.grad`` the
caller had, so they can be called in the middle of a training step.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, List, Optional, Tuple

import numpy as np

from .. import _core
from .._core import Tensor

__all__ = ["flatten", "grad", "hvp", "unflatten"]


def _params(params: Sequence) -> List[Tensor]:
    params = list(params)
    if not params:
        raise ValueError("no parameters given")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"parameter {i} is a {type(p).__name__}, expected a spad Tensor")
        if not p.requires_grad or not p.is_leaf:
            raise ValueError(f"parameter {i} (shape {p.shape}) must be a leaf tensor with requires_grad=True")
    return params


def _vectors(vs, params: List[Tensor]) -> List[np.ndarray]:
    if isinstance(vs, (np.ndarray, Tensor)):
        vs = [vs]
    vs = list(vs)
    if len(vs) != len(params):
        raise ValueError(f"got {len(vs)} vectors for {len(params)} parameters")
    out = []
    for i, (v, p) in enumerate(zip(vs, params)):
        a = v.numpy() if isinstance(v, Tensor) else np.asarray(v)
        if a.shape != p.shape:
            raise ValueError(f"vector {i} has shape {a.shape}, parameter {i} has shape {p.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"vector {i} contains NaN or inf")
        out.append(np.asarray(a, dtype=p.dtype))
    return out


def _scalar(loss, who: str) -> Tensor:
    if not isinstance(loss, Tensor):
        raise TypeError(f"{who}: loss_fn() must return a spad Tensor, got {type(loss).__name__}")
    if loss.size != 1:
        raise ValueError(f"{who}: loss_fn() must return a scalar, got shape {loss.shape}")
    return loss


class _SavedGrads:
    """Clear ``p.grad`` on entry and put the caller's gradients back on exit, so our own
    backward passes neither accumulate into nor clobber a training step's gradients."""

    def __init__(self, params):
        self.params = params

    def __enter__(self):
        self.saved = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        return self

    def __exit__(self, *exc):
        for p, g in zip(self.params, self.saved):
            p.grad = g
        return False


def _grad_arrays(params) -> List[np.ndarray]:
    # A parameter the loss does not use has no gradient: that is a zero gradient.
    return [np.zeros(p.shape, p.dtype) if p.grad is None else p.grad.numpy().copy() for p in params]


def grad(loss_fn: Callable[[], Tensor], params: Sequence) -> Tuple[float, List[np.ndarray]]:
    """``(loss value, [∂loss/∂p as numpy arrays])`` for one call of ``loss_fn()``.

    Uses whatever sampling policy is active; ``p.grad`` is left as it was."""
    params = _params(params)
    with _SavedGrads(params):
        loss = _scalar(loss_fn(), "grad")
        value = loss.item()
        if loss.requires_grad:
            loss.backward()
        return value, _grad_arrays(params)


def _default_h(params, vs) -> float:
    # Central differences balance truncation O(h²) against rounding O(eps/h): h ~ eps^(1/3),
    # scaled to the size of θ and measured in units of ‖v‖.
    eps = max(np.finfo(p.dtype).eps for p in params)
    theta = np.sqrt(sum(float(np.sum(np.square(p.numpy(), dtype=np.float64))) for p in params))
    vnorm = np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in vs))
    return float(np.cbrt(eps) * (1.0 + theta) / max(vnorm, 1e-300))


def _refuse_sampled_tape(who: str) -> None:
    # A sampled payload is a stored sample of an activation, cut from the graph: the recorded
    # backward pass then misses every second-derivative term that flows through it, and the
    # result is biased (measured: mean over 2000 RAD draws off by ~500 standard errors).
    if _core.active_policy() is not None:
        raise ValueError(f'{who}: method="exact" differentiates the backward pass, which a sampling policy '
                         'records with detached samples; use method="fd" under a policy')


def _hvp_exact(loss_fn, params, vs) -> List[np.ndarray]:
    _refuse_sampled_tape("hvp")
    with _SavedGrads(params):
        loss = _scalar(loss_fn(), "hvp")
        if not loss.requires_grad:
            return [np.zeros(p.shape, p.dtype) for p in params]
        loss.backward(create_graph=True)
        gs = [p.grad for p in params]
        for p in params:
            p.grad = None
        # <g, v> with g recorded as a function of θ; its gradient is H v.
        dot = None
        for g, v in zip(gs, vs):
            if g is None or not g.requires_grad:
                continue  # g does not depend on θ (p unused, or the loss is linear in p)
            term = (g * _core.from_numpy(v)).sum()
            dot = term if dot is None else dot + term
        if dot is None:
            return [np.zeros(p.shape, p.dtype) for p in params]
        dot.backward()
        return _grad_arrays(params)


def _hvp_fd(loss_fn, params, vs, h) -> List[np.ndarray]:
    theta = [p.numpy().copy() for p in params]
    try:
        gp, gm = None, None
        for sign in (1.0, -1.0):
            for p, t, v in zip(params, theta, vs):
                _core.assign_(p, _core.from_numpy(np.ascontiguousarray(t + sign * h * v, dtype=p.dtype)))
            _, g = grad(loss_fn, params)
            if sign > 0:
                gp = g
            else:
                gm = g
    finally:
        # Exactly the caller's bits, whatever happened in between.
        for p, t in zip(params, theta):
            _core.assign_(p, _core.from_numpy(t))
    return [((a.astype(np.float64) - b.astype(np.float64)) / (2.0 * h)).astype(p.dtype)
            for a, b, p in zip(gp, gm, params)]


def hvp(loss_fn: Callable[[], Tensor], params: Sequence, vs, method: str = "exact",
        h: Optional[float] = None) -> List[np.ndarray]:
    """Hessian-vector products ``H v`` of the scalar ``loss_fn()`` with respect to ``params``.

    ``vs``: one array (or tensor) per parameter, same shapes; H v is returned as a list of
    numpy arrays in the parameters' dtype. ``method``: "exact" (double backward) or "fd"
    (central differences of gradients with step ``h``; by default h = eps^(1/3)(1 + ‖θ‖)/‖v‖,
    about 6e-6 relative in float64). ``loss_fn`` is called once ("exact") or twice ("fd").
    Parameters and existing ``p.grad`` values are restored exactly.
    """
    params = _params(params)
    vs = _vectors(vs, params)
    if method == "exact":
        return _hvp_exact(loss_fn, params, vs)
    if method == "fd":
        if all(not v.any() for v in vs):
            return [np.zeros(p.shape, p.dtype) for p in params]
        if h is None:
            h = _default_h(params, vs)
        h = float(h)
        if not (h > 0 and np.isfinite(h)):
            raise ValueError(f"hvp: h must be a positive finite number, got {h}")
        return _hvp_fd(loss_fn, params, vs, h)
    raise ValueError(f'hvp: method must be "exact" or "fd", got {method!r}')


def flatten(arrays: Sequence) -> np.ndarray:
    """Concatenate arrays (or tensors) into one float64 vector."""
    return np.concatenate([np.asarray(a.numpy() if isinstance(a, Tensor) else a, np.float64).ravel()
                           for a in arrays]) if len(arrays) else np.zeros(0)


def unflatten(vector: np.ndarray, like: Sequence) -> List[np.ndarray]:
    """Split a flat vector into arrays shaped (and typed) like the tensors in ``like``."""
    vector = np.asarray(vector)
    total = sum(int(np.prod(p.shape)) for p in like)
    if vector.shape != (total,):
        raise ValueError(f"unflatten: vector has shape {vector.shape}, parameters hold {total} values")
    out, i = [], 0
    for p in like:
        k = int(np.prod(p.shape))
        out.append(vector[i:i + k].reshape(p.shape).astype(p.dtype))
        i += k
    return out
