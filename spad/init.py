"""Weight initializers. Each returns a new numpy array and takes ``seed``: an int, None
(fresh entropy) or a ``numpy.random.Generator`` (so one generator can seed a whole model
reproducibly, layer after layer).

Fan-in/fan-out follow the layout of the weight: ``(in, out)`` for ``F.linear`` weights,
``(C_out, C_in, kh, kw)`` for convolutions (fan_in = C_in*kh*kw, fan_out = C_out*kh*kw).
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import numpy as np

Seed = Union[int, None, np.random.Generator]


def rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def fans(shape: Tuple[int, ...]) -> Tuple[int, int]:
    """(fan_in, fan_out) of a weight; 4-d shapes are convolution kernels."""
    if len(shape) == 2:
        return shape[0], shape[1]  # linear weight (in, out)
    if len(shape) == 4:
        rf = shape[2] * shape[3]
        return shape[1] * rf, shape[0] * rf
    n = int(np.prod(shape))
    return n, n


def _out(a: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


def glorot_uniform(shape, seed: Seed = None, gain: float = 1.0, dtype=np.float32) -> np.ndarray:
    """Glorot & Bengio (2010): U(-a, a), a = gain*sqrt(6/(fan_in+fan_out))."""
    fi, fo = fans(shape)
    a = gain * math.sqrt(6.0 / (fi + fo))
    return _out(rng(seed).uniform(-a, a, shape), dtype)


def glorot_normal(shape, seed: Seed = None, gain: float = 1.0, dtype=np.float32) -> np.ndarray:
    """N(0, s²), s = gain*sqrt(2/(fan_in+fan_out))."""
    fi, fo = fans(shape)
    return _out(rng(seed).normal(0.0, gain * math.sqrt(2.0 / (fi + fo)), shape), dtype)


def he_uniform(shape, seed: Seed = None, gain: float = math.sqrt(2.0), dtype=np.float32) -> np.ndarray:
    """He et al. (2015) for ReLU: U(-a, a), a = gain*sqrt(3/fan_in), gain = sqrt(2)."""
    fi, _ = fans(shape)
    a = gain * math.sqrt(3.0 / fi)
    return _out(rng(seed).uniform(-a, a, shape), dtype)


def he_normal(shape, seed: Seed = None, gain: float = math.sqrt(2.0), dtype=np.float32) -> np.ndarray:
    """N(0, s²), s = gain/sqrt(fan_in)."""
    fi, _ = fans(shape)
    return _out(rng(seed).normal(0.0, gain / math.sqrt(fi), shape), dtype)


def orthogonal(shape, seed: Seed = None, gain: float = 1.0, dtype=np.float32) -> np.ndarray:
    """Saxe et al. (2014): a (semi-)orthogonal matrix from the QR decomposition of a
    Gaussian one, signs fixed so the result is uniformly (Haar) distributed. Shapes with
    more than two axes are flattened to (shape[0], rest)."""
    rows = shape[0]
    cols = int(np.prod(shape[1:]))
    a = rng(seed).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _out(gain * q.reshape(shape), dtype)


def zeros(shape, seed: Seed = None, dtype=np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


INITIALIZERS = {
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "orthogonal": orthogonal,
    "zeros": zeros,
}


def get(init) -> callable:
    """An initializer from its name or the callable itself."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except KeyError:
        raise ValueError(f"unknown initializer {init!r}; choose one of {sorted(INITIALIZERS)}") from None
