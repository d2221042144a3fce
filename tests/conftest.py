"""Shared fixtures. Every random draw in the suite comes from a fixed seed, so a failure
reproduces exactly; torch is an optional oracle and tests that need it skip without it."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

# Make `import helpers` work from any working directory.
sys.path.insert(0, os.path.dirname(__file__))

SEED = 20240607


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator with the suite's fixed seed."""
    return np.random.default_rng(SEED)


@pytest.fixture
def torch():
    """The torch module, or skip the test when it is not installed."""
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def digits():
    """The bundled digits training split: float32 features (contiguous) and int labels."""
    from spad.datasets import digits_split

    X, y, _, _ = digits_split()
    return np.ascontiguousarray(X, dtype=np.float32), y


@pytest.fixture(autouse=True)
def _grad_mode_restored():
    """A test that fails inside no_grad() must not leave recording off for the next one."""
    import spad

    yield
    spad._core.set_grad_enabled(True)
