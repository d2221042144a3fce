"""Shared test helpers: one call checks an op's forward against numpy and its backward
against central finite differences in float64."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

import spad


def numeric_grad(f: Callable[[list], float], arrays: list, i: int, eps: float = 1e-6) -> np.ndarray:
    """Central differences of scalar f with respect to arrays[i] (float64)."""
    a = arrays[i]
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        old = a[idx]
        a[idx] = old + eps
        fp = f(arrays)
        a[idx] = old - eps
        fm = f(arrays)
        a[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


def check_op(
    spad_fn: Callable,
    np_fn: Callable | None,
    shapes: Sequence[tuple],
    seed: int = 0,
    positive: bool = False,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    grad_inputs: Sequence[int] | None = None,
    make: Callable[[np.random.Generator, tuple], np.ndarray] | None = None,
) -> None:
    """Forward vs numpy (if np_fn) and backward vs finite differences (spad.gradcheck), float64.

    gradcheck probes <v, out> for random cotangents v along random input directions, so
    every output element's gradient path is exercised with a distinct weight."""
    rng = np.random.default_rng(seed)
    if make is None:
        def make(r, s):
            x = r.standard_normal(s)
            return np.abs(x) + 0.5 if positive else x
    arrays = [np.asarray(make(rng, s), dtype=np.float64) for s in shapes]
    grad_inputs = range(len(arrays)) if grad_inputs is None else grad_inputs
    ts = [spad.tensor(a.copy(), requires_grad=(i in grad_inputs)) for i, a in enumerate(arrays)]
    out = spad_fn(*ts)
    out_np = out.numpy()
    if np_fn is not None:
        np.testing.assert_allclose(out_np, np_fn(*arrays), rtol=1e-10, atol=1e-12)
    # The public check (spad.gradcheck): random directions against central differences.
    spad.gradcheck(spad_fn, arrays, eps=eps, rtol=rtol, atol=atol, seed=seed, wrt=list(grad_inputs), trials=3)
