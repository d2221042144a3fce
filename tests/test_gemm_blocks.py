"""gemm's column blocks (Note [Column blocks for OpenBLAS's small-matrix kernels] in
csrc/core/gemm.cpp): with one BLAS thread on an AVX-512 OpenBLAS core, batch-sized products
are split into column blocks. Whatever the split, every product must stay within the float32
rounding bound of its float64 value, be deterministic, and match the unsplit call's bound."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import spad

# (rows, inner, cols, layout): nn = a @ b, tn = a.T @ b (dW), nt = a @ b.T (dx); the digits
# MLP's products and a few the rule splits differently (narrow blocks, wide outputs).
SHAPES = [
    (32, 256, 256, "nn"), (256, 32, 256, "tn"), (32, 256, 256, "nt"),
    (4, 1024, 1024, "nt"), (16, 784, 256, "nn"), (64, 256, 256, "tn"), (32, 64, 1024, "nn"),
    (32, 256, 10, "nn"), (32, 10, 256, "nt"),
]


def _operands(rows, inner, cols, layout, seed=0):
    r = np.random.default_rng(seed)
    a = r.standard_normal((inner, rows) if layout == "tn" else (rows, inner)).astype(np.float32)
    b = r.standard_normal((cols, inner) if layout == "nt" else (inner, cols)).astype(np.float32)
    return a, b


def _spad_product(a, b, layout):
    ta, tb = spad.tensor(a), spad.tensor(b)
    out = (ta.T @ tb) if layout == "tn" else (ta @ tb.T) if layout == "nt" else (ta @ tb)
    return out.numpy()


def _np_parts(a, b, layout):
    A = (a.T if layout == "tn" else a).astype(np.float64)
    B = (b.T if layout == "nt" else b).astype(np.float64)
    return A @ B, np.abs(A) @ np.abs(B)


@pytest.fixture
def one_thread():
    old = spad.get_num_threads()
    spad.set_num_threads(1)  # the split is made only with one BLAS thread
    yield
    spad.set_num_threads(old)


@pytest.mark.parametrize("rows,inner,cols,layout", SHAPES)
def test_products_within_rounding_bound(rows, inner, cols, layout, one_thread):
    a, b = _operands(rows, inner, cols, layout)
    got = _spad_product(a, b, layout)
    exact, mags = _np_parts(a, b, layout)
    # Higham's bound for a float32 dot product of length K: |err| <= gamma_K * sum |a_i b_i|
    u = 2.0 ** -24
    gamma = inner * u / (1 - inner * u)
    assert got.shape == exact.shape
    assert np.all(np.abs(got - exact) <= gamma * mags)
    # deterministic: the same product twice gives the same bits
    assert np.array_equal(got, _spad_product(a, b, layout))


def test_split_off_switch_gives_products_within_the_same_bound(one_thread):
    code = (
        "import sys, numpy as np, spad; sys.path.insert(0, {d!r}); import test_gemm_blocks as t; "
        "spad.set_num_threads(1); a, b = t._operands(32, 256, 256, 'nt'); "
        "np.save(sys.argv[1], t._spad_product(a, b, 'nt'))"
    ).format(d=os.path.dirname(__file__))
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"spad_gemm_blocks_{os.getpid()}.npy")
    env = dict(os.environ, SPAD_GEMM_BLOCKS="0")
    subprocess.run([sys.executable, "-c", code, out], check=True, env=env)
    try:
        whole = np.load(out)
    finally:
        os.remove(out)
    a, b = _operands(32, 256, 256, "nt")
    exact, mags = _np_parts(a, b, "nt")
    gamma = 256 * 2.0 ** -24 / (1 - 256 * 2.0 ** -24)
    assert np.all(np.abs(whole - exact) <= gamma * mags)
    split = _spad_product(a, b, "nt")
    assert np.all(np.abs(split - exact) <= gamma * mags)
