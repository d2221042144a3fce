"""Small datasets: bundled digits, Fashion-MNIST from the system, synthetic problems.

All loaders return float32 features and int64 labels (or float32 targets for regression).
"""
from __future__ import annotations

import gzip
import os
from typing import Optional, Tuple

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def digits() -> Tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 handwritten digits: X (1797, 64) float32 in [0, 1], y (1797,) int64.

    This is the UCI ML hand-written digits data (optical recognition of handwritten
    digits, test set), bundled as spad/data/digits.npz exactly as shipped by scikit-learn
    (BSD-3-Clause) in ``sklearn.datasets.load_digits``; pixel counts 0..16 are divided by 16.
    """
    with np.load(os.path.join(_HERE, "data", "digits.npz")) as f:
        images, labels = f["images"], f["labels"]
    return images.reshape(len(images), -1).astype(np.float32) / 16.0, labels.astype(np.int64)


def train_test_split(X: np.ndarray, y: np.ndarray, test_size: float = 0.2, seed: int = 0):
    """A random split, fixed by ``seed``: (X_train, y_train, X_test, y_test)."""
    if len(X) != len(y):
        raise ValueError(f"train_test_split: X has {len(X)} examples but y has {len(y)}")
    n_test = int(round(test_size * len(X))) if isinstance(test_size, float) else int(test_size)
    if not 0 < n_test < len(X):
        raise ValueError(f"train_test_split: test_size {test_size} leaves an empty split of {len(X)} examples")
    perm = np.random.default_rng(seed).permutation(len(X))
    test, train = perm[:n_test], perm[n_test:]
    return X[train], y[train], X[test], y[test]


def digits_split(test_size: float = 0.2, seed: int = 0):
    """The fixed digits split used by tests and the demo: 1,438 train / 359 test examples."""
    X, y = digits()
    return train_test_split(X, y, test_size, seed)


def _read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format), gzip-compressed or raw."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} but holds {arr.size} bytes")
    return arr.reshape(dims)


def _find(directory: str, stem: str) -> Optional[str]:
    for name in (stem + ".gz", stem):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    return None


def fashion_mnist(path: Optional[str] = None, flatten: bool = True):
    """Fashion-MNIST (Xiao et al., 2017): (X_train, y_train, X_test, y_test); X float32 in
    [0, 1], shape (n, 784) or (n, 1, 28, 28) with ``flatten=False``; 60,000 / 10,000 examples.

    Reads the four IDX files (``train-images-idx3-ubyte[.gz]`` ...) from ``path``, by default
    /usr/share/datasets/fashion-mnist, which the Debian/Ubuntu package provides:
    ``sudo apt-get install dataset-fashion-mnist``.
    """
    directory = path or FASHION_MNIST_DIR
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    files = [_find(directory, s) for s in stems]
    if any(f is None for f in files):
        missing = [s for s, f in zip(stems, files) if f is None]
        raise FileNotFoundError(
            f"fashion_mnist: {', '.join(missing)} not found in {directory}. Install the dataset with "
            "`sudo apt-get install dataset-fashion-mnist` or pass path= to a directory holding the IDX files."
        )
    xtr, ytr, xte, yte = (_read_idx(f) for f in files)
    shape = (-1, 784) if flatten else (-1, 1, 28, 28)
    return (xtr.reshape(shape).astype(np.float32) / 255.0, ytr.astype(np.int64),
            xte.reshape(shape).astype(np.float32) / 255.0, yte.astype(np.int64))


def teacher_student(n: int, d: int, out: int = 1, hidden: Optional[int] = None, noise: float = 0.0, seed: int = 0):
    """Regression data from a random teacher: X ~ N(0, I_d) of shape (n, d) and
    y = X W (hidden=None) or y = tanh(X W1) W2 (one hidden layer), plus ``noise``·N(0, 1).
    Teacher weights are N(0, 1/fan_in), so targets have unit scale. Returns (X, y), float32."""
    if n <= 0 or d <= 0 or out <= 0:
        raise ValueError(f"teacher_student: n, d, out must be positive, got n={n}, d={d}, out={out}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if hidden is None:
        y = X @ (rng.standard_normal((d, out)) / np.sqrt(d))
    else:
        h = np.tanh(X @ (rng.standard_normal((d, hidden)) / np.sqrt(d)))
        y = h @ (rng.standard_normal((hidden, out)) / np.sqrt(hidden))
    y = y + noise * rng.standard_normal(y.shape)
    return X.astype(np.float32), y.astype(np.float32)


def two_moons(n: int, noise: float = 0.1, seed: int = 0):
    """Two interleaving half circles in 2-d: X (n, 2) float32, y (n,) int64 in {0, 1}."""
    if n < 2:
        raise ValueError(f"two_moons: need at least 2 points, got {n}")
    rng = np.random.default_rng(seed)
    n0 = n // 2
    t0, t1 = np.linspace(0, np.pi, n0), np.linspace(0, np.pi, n - n0)
    X = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1), np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)])
    y = np.concatenate([np.zeros(n0, np.int64), np.ones(n - n0, np.int64)])
    X = X + noise * rng.standard_normal(X.shape)
    perm = rng.permutation(n)
    return X[perm].astype(np.float32), y[perm]
