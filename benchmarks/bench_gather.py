"""Batch gather: np.take(..., out=) versus a Cython row-copy loop, for the batch shapes
of the digits (n x 64) and Fashion-MNIST (n x 784) loaders. Decides whether DataLoader
needs a compiled gather (it does not unless Cython wins by a margin that matters next
to a training step).

    python benchmarks/bench_gather.py          # needs Cython for the second column
"""
import os
import sys
import tempfile
import timeit

import numpy as np

PYX = r"""
# cython: boundscheck=False, wraparound=False
from libc.string cimport memcpy
def gather(const float[:, ::1] X, const long[::1] idx, float[:, ::1] out):
    cdef Py_ssize_t i, n = idx.shape[0], row = X.shape[1] * sizeof(float)
    with nogil:
        for i in range(n):
            memcpy(&out[i, 0], &X[idx[i], 0], row)
"""


def build_cython():
    try:
        import pyximport  # noqa: F401  (Cython's on-the-fly builder)
    except ImportError:
        return None
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "spad_gather_bench.pyx"), "w") as f:
        f.write(PYX)
    sys.path.insert(0, d)
    pyximport.install(build_dir=d, language_level=3)
    import spad_gather_bench

    return spad_gather_bench.gather


def best_us(fn, number):
    return 1e6 * min(timeit.repeat(fn, number=number, repeat=7)) / number


def main():
    cy = build_cython()
    rng = np.random.default_rng(0)
    print(f"{'data':<16}{'batch':>6}{'np.take raise':>15}{'np.take clip':>14}{'fancy idx':>11}{'cython':>9}  (us)")
    for name, n, d in [("digits", 1438, 64), ("fashion-mnist", 60000, 784)]:
        X = rng.random((n, d), dtype=np.float32)
        for b in (32, 128):
            idx = rng.permutation(n)[:b].astype(np.int64)
            out = np.empty((b, d), np.float32)
            t_raise = best_us(lambda: np.take(X, idx, axis=0, out=out), 2000)
            t_clip = best_us(lambda: np.take(X, idx, axis=0, out=out, mode="clip"), 2000)
            t_fancy = best_us(lambda: X[idx], 2000)
            t_cy = best_us(lambda: cy(X, idx, out), 2000) if cy else float("nan")
            print(f"{name:<16}{b:>6}{t_raise:>15.2f}{t_clip:>14.2f}{t_fancy:>11.2f}{t_cy:>9.2f}")


if __name__ == "__main__":
    main()
