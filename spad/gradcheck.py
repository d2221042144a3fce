"""Gradient checking: the reverse-mode gradient against finite differences.

    >>> def f(x, W):
    ...     return spad.tanh(x @ W)
    >>> spad.gradcheck(f, [np.random.randn(4, 3), np.random.randn(3, 2)])   # float64 inputs
    True

The check is directional, as HIPS autograd's ``check_grads`` does: for a random output
cotangent ``v`` and a random input direction ``u``, the VJP ``<v^T J, u>`` (one backward
pass) must match the central difference ``<v, f(x + eps u) - f(x - eps u)> / (2 eps)``
(two forward passes). Every entry of the Jacobian contributes with a random weight, so a
wrong entry is caught with probability one, at the cost of two forwards per input and
trial instead of two per input *element*. Each input is probed on its own, so a failure
names the input whose gradient is wrong.

Use float64 inputs: in float32 the difference quotient loses about half of its 7 digits,
and the tolerances must grow to match (a warning says so).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import _core
from ._core import Tensor
from .tensor import no_grad

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """The backward pass disagrees with finite differences (or gave no gradient)."""


def _as_array(x: Any, i: int) -> np.ndarray:
    a = x.numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        raise TypeError(f"gradcheck: input {i} has dtype {a.dtype}; inputs must be float32 or float64 "
                        "(float64 recommended)")
    return np.array(a, dtype=a.dtype.newbyteorder("="), copy=True)


def _scalar(out: Any, v: np.ndarray) -> float:
    return float(np.sum(out.numpy().astype(np.float64) * v))


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Any], *, eps: Optional[float] = None,
              rtol: Optional[float] = None, atol: Optional[float] = None, trials: int = 2, seed: int = 0,
              wrt: Optional[Sequence[int]] = None) -> bool:
    """Check ``fn``'s gradients at ``inputs`` (tensors or float arrays) by directional finite
    differences. Returns True, or raises :class:`GradcheckError` naming the input, the two
    directional derivatives and their error.

    ``wrt`` lists the inputs to check (default: all); ``trials`` random directions per input;
    ``eps``, ``rtol``, ``atol`` default to 1e-6, 1e-5, 1e-8 in float64 and 1e-3, 1e-2, 1e-4
    in float32. ``fn`` must return a float tensor; it is called with fresh tensors each time.
    """
    if not callable(fn):
        raise TypeError(f"gradcheck: fn must be callable, got {type(fn).__name__}")
    if isinstance(inputs, (Tensor, np.ndarray)):
        inputs = [inputs]
    arrays = [_as_array(x, i) for i, x in enumerate(inputs)]
    if not arrays:
        raise ValueError("gradcheck: need at least one input")
    wrt = list(range(len(arrays))) if wrt is None else [int(i) for i in wrt]
    for i in wrt:
        if not 0 <= i < len(arrays):
            raise ValueError(f"gradcheck: wrt index {i} is out of range for {len(arrays)} inputs")
    if int(trials) < 1:
        raise ValueError(f"gradcheck: trials must be >= 1, got {trials}")
    single = any(a.dtype == np.float32 for a in arrays)
    if single:
        warnings.warn("gradcheck: float32 inputs; finite differences are far less accurate than in float64 "
                      "(float64 recommended), tolerances widened", stacklevel=2)
    eps = (1e-3 if single else 1e-6) if eps is None else float(eps)
    rtol = (1e-2 if single else 1e-5) if rtol is None else float(rtol)
    atol = (1e-4 if single else 1e-8) if atol is None else float(atol)
    rng = np.random.default_rng(seed)

    def call(arrs, grad_for=()):
        ts = [_core.from_numpy(np.array(a, copy=True)) for a in arrs]
        for i in grad_for:
            ts[i].requires_grad = True
        out = fn(*ts)
        if not isinstance(out, Tensor):
            raise TypeError(f"gradcheck: fn must return a spad Tensor, got {type(out).__name__}")
        return ts, out

    for trial in range(int(trials)):
        ts, out = call(arrays, wrt)
        if out.dtype.kind != "f":
            raise TypeError(f"gradcheck: fn returned a tensor of dtype {out.dtype}; it must be float")
        v = rng.standard_normal(out.shape)
        if out.size == 0:
            return True
        (out * _core.from_numpy(v.astype(out.dtype))).sum().backward()
        for i in wrt:
            u = rng.standard_normal(arrays[i].shape)
            g = ts[i].grad
            if g is None:
                raise GradcheckError(f"gradcheck: input {i} (shape {arrays[i].shape}) got no gradient")
            vjp = float(np.sum(g.numpy().astype(np.float64) * u))
            with no_grad():
                plus = [a if j != i else (a + eps * u).astype(a.dtype) for j, a in enumerate(arrays)]
                minus = [a if j != i else (a - eps * u).astype(a.dtype) for j, a in enumerate(arrays)]
                fd = (_scalar(call(plus)[1], v) - _scalar(call(minus)[1], v)) / (2 * eps)
            err = abs(vjp - fd)
            if not err <= atol + rtol * max(abs(vjp), abs(fd)):  # also fails on NaN
                raise GradcheckError(
                    f"gradcheck: gradient of input {i} (shape {arrays[i].shape}, {arrays[i].dtype}) disagrees with "
                    f"finite differences in trial {trial}: directional derivative from backward = {vjp:.10g}, "
                    f"from finite differences = {fd:.10g} (abs error {err:.3g}, allowed {atol:.1g} + {rtol:.1g} x "
                    f"magnitude, eps = {eps:g})" + ("; float32 inputs: use float64" if single else ""))
    return True

