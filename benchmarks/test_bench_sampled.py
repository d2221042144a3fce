"""Sampled vs exact training steps of an MLP (784-1024-1024-10, batch 128, keep 0.1)."""
import benchlib  # noqa: F401

import numpy as np
import pytest

import engines as E
import spad
import spad.sampling as S

POLICIES = {
    "exact": lambda: None,
    "rad-different": lambda: S.RAD(0.1, seed=0),
    "rad-same": lambda: S.RAD(0.1, "same", seed=0),
    "crs": lambda: S.CRS(0.1, seed=0),
    "spad": lambda: S.SPAD(0.1, refresh=50, seed=0),
    "spad-biased": lambda: S.SPAD(0.1, refresh=50, unbiased=False, seed=0),
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_sampled_step(benchmark, policy):
    sizes, batch = [784, 1024, 1024, 10], 128
    rng = np.random.default_rng(0)
    x = spad.tensor(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = rng.integers(0, 10, batch)
    model = E.SpadMLP(benchlib.he_uniform_mlp(sizes, 0), lr=1e-3, policy=POLICIES[policy]())
    benchmark.group = "MLP 784-1024-1024-10 step, batch 128, keep 0.1"
    benchmark(lambda: model.step(x, y))
    spad.reset_peak_memory_stats()
    model.step(x, y)
    benchmark.extra_info["peak_tape_bytes"] = spad.memory_stats()["peak_tape_bytes"]
