"""Single ops: spad vs numpy (and PyTorch when installed), float32, one thread."""
import benchlib  # noqa: F401

import numpy as np
import pytest

import spad
import spad.functional as F

torch = benchlib.import_torch()
spad.set_num_threads(1)
SHAPES = [(128, 784, 1024), (32, 64, 256)]


def _ab(m, k, n):
    rng = np.random.default_rng(0)
    return rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("engine", ["spad", "numpy", "torch"])
def test_matmul(benchmark, engine, m, k, n):
    a, b = _ab(m, k, n)
    benchmark.group = f"matmul {m}x{k}@{k}x{n}"
    if engine == "spad":
        sa, sb = spad.tensor(a), spad.tensor(b)

        def fn():
            with spad.no_grad():
                return sa @ sb
    elif engine == "numpy":
        def fn():
            return a @ b
    else:
        if torch is None:
            pytest.skip("PyTorch not installed")
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)

        def fn():
            return ta @ tb
    out = benchmark(fn)
    np.testing.assert_allclose(np.asarray(out.numpy() if hasattr(out, "numpy") else out), a @ b, rtol=1e-3,
                               atol=1e-2)


def test_linear_relu_backward(benchmark):
    rng = np.random.default_rng(1)
    x = spad.tensor(rng.standard_normal((128, 784)).astype(np.float32))
    W = spad.tensor(rng.standard_normal((784, 1024)).astype(np.float32) * 0.03, requires_grad=True)
    benchmark.group = "linear+relu fwd/bwd 128x784x1024"

    def fn():
        W.grad = None
        F.relu(F.linear(x, W)).sum().backward()

    benchmark(fn)


def test_conv2d_backward(benchmark):
    rng = np.random.default_rng(2)
    x = spad.tensor(rng.random((32, 8, 14, 14), dtype=np.float32))
    w = spad.tensor(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.1, requires_grad=True)
    benchmark.group = "conv2d fwd/bwd 32x8x14x14, 16 3x3"

    def fn():
        w.grad = None
        F.conv2d(x, w, padding=1).sum().backward()

    benchmark(fn)
