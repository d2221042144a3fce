"""Training steps (forward + backward + SGD update): spad vs hand-written numpy vs PyTorch eager."""
import benchlib  # noqa: F401

import pytest

import speed

torch = benchlib.import_torch()
ENGINES = ["spad", "numpy", "PyTorch"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("workload", speed.MLP_WORKLOADS, ids=["W1", "W2", "W3-b1", "W3-b16"])
def test_mlp_step(benchmark, workload, engine):
    name, sizes, batch, loss = workload
    if engine == "PyTorch" and torch is None:
        pytest.skip("PyTorch not installed")
    benchmark.group = name
    benchmark(speed._mlp_fns(torch, sizes, batch, loss)[engine])


@pytest.mark.parametrize("engine", ENGINES)
def test_cnn_step(benchmark, engine):
    if engine == "PyTorch" and torch is None:
        pytest.skip("PyTorch not installed")
    benchmark.group = "CNN step, batch 32"
    benchmark(speed._cnn_fns(torch)[engine])
