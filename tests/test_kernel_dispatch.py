"""Run-time kernel dispatch (csrc/core/kernels.cpp): the sampled-backward kernels run with
the widest instruction set this build and CPU support; SPAD_KERNELS and set_kernel_isa pick
another one, and every one gives the same gradients up to rounding. (tests/cpp/test_kernels.cpp
checks each kernel against plain loops; CI also runs it under emulated older CPUs.)"""
import os
import subprocess
import sys

import numpy as np
import pytest

import spad
import spad.functional as F
import spad.sampling as S
from spad import _core


def test_the_default_is_the_best_available():
    avail = _core.available_kernel_isas()
    assert avail and set(avail) <= {"baseline", "avx", "avx2", "avx512"}
    # (SPAD_KERNELS in the environment chooses another: the suite can run with each copy.)
    want = os.environ.get("SPAD_KERNELS") if os.environ.get("SPAD_KERNELS") in avail else avail[-1]
    assert _core.kernel_isa() == want


def test_an_unknown_or_unsupported_isa_is_refused():
    before = _core.kernel_isa()
    with pytest.raises(ValueError, match="not one of"):
        _core.set_kernel_isa("sse9")
    missing = [n for n in ("baseline", "avx2", "avx512") if n not in _core.available_kernel_isas()]
    for name in missing:
        with pytest.raises(ValueError, match=name):
            _core.set_kernel_isa(name)
    assert _core.kernel_isa() == before


def _isa_in_subprocess(value):
    env = dict(os.environ, SPAD_KERNELS=value)
    out = subprocess.run([sys.executable, "-c", "from spad import _core; print(_core.kernel_isa())"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip(), out.stderr


def test_the_environment_variable_picks_a_copy_or_warns():
    avail = _core.available_kernel_isas()
    assert _isa_in_subprocess(avail[0])[0] == avail[0]
    isa, err = _isa_in_subprocess("sse9")
    assert isa == avail[-1]
    assert "SPAD_KERNELS=sse9" in err


def _sampled_grads(policy, width):
    rng = np.random.default_rng(3)
    x = spad.tensor(np.maximum(rng.standard_normal((24, 64)), 0).astype(np.float32))
    W1 = spad.tensor((rng.standard_normal((64, width)) * 0.1).astype(np.float32), requires_grad=True)
    W2 = spad.tensor((rng.standard_normal((width, 10)) * 0.1).astype(np.float32), requires_grad=True)
    with S.use(policy):
        loss = F.cross_entropy(F.linear(F.relu(F.linear(x, W1)), W2), rng.integers(0, 10, 24))
    loss.backward()
    return [W1.grad.numpy().copy(), W2.grad.numpy().copy()]


@pytest.mark.parametrize("make", [lambda: S.SPAD(0.2, seed=5), lambda: S.RAD(0.2, "different", seed=5),
                                  lambda: S.RAD(0.2, "same", seed=5)], ids=["SPAD", "RAD-blocks", "RAD-same"])
@pytest.mark.parametrize("width", [40, 256])
def test_every_copy_gives_the_same_gradients(make, width):
    before = _core.kernel_isa()
    try:
        results = {}
        for name in _core.available_kernel_isas():
            _core.set_kernel_isa(name)
            results[name] = _sampled_grads(make(), width)
    finally:
        _core.set_kernel_isa(before)
    ref = results[_core.available_kernel_isas()[0]]
    for name, grads in results.items():
        for g, r in zip(grads, ref):
            assert np.isfinite(g).all()
            # Copies differ only in summation order (float32 rounding of sums of a few terms).
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6, err_msg=name)
