"""spad.export / spad.load_model, the C API reading the same files (through ctypes on the
C API built as a shared library), and the tape budget seen from Python."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import spad
import spad.functional as F
import spad.nn as nn
import spad.optim as optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mlp():
    return nn.Sequential(nn.Linear(64, 32, seed=0), nn.Tanh(), nn.Linear(32, 16, seed=1), nn.Sigmoid(),
                         nn.Linear(16, 10, bias=False, seed=2))


def _convnet():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, seed=0), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, stride=1, seed=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Dropout(0.1), nn.Linear(6, 10, seed=2))


def _digits(n=96):
    X, y = spad.datasets.digits()
    return np.ascontiguousarray(X[:n], np.float32), np.asarray(y[:n], np.int64)


def _train(model, X, y, steps=5):
    opt = optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(spad.tensor(X)), y).backward()
        opt.step()


def _predict(model, X):
    model.eval()
    with spad.no_grad():
        return model(spad.tensor(X)).numpy().copy()


@pytest.mark.parametrize("make, shape", [(_mlp, (64,)), (_convnet, (1, 8, 8))])
def test_python_round_trip(tmp_path, make, shape):
    X, y = _digits()
    X = X.reshape((-1,) + shape)
    model = make()
    _train(model, X, y)
    path = str(tmp_path / "m.spad")
    spad.export(model, path, input_shape=shape)
    back = spad.load_model(path)
    np.testing.assert_array_equal(_predict(model, X), _predict(back, X))


def test_export_rejects_unknown_layers(tmp_path):
    class Twice(nn.Module):
        def forward(self, x):
            return x * 2.0

    with pytest.raises(ValueError, match="Twice.*not supported"):
        spad.export(nn.Sequential(nn.Linear(2, 2), Twice()), str(tmp_path / "m.spad"))


def test_load_rejects_truncated_files(tmp_path):
    path = str(tmp_path / "m.spad")
    spad.export(_mlp(), path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        spad.load_model(path)


# ---- the C API, through ctypes ----
def _capi_library():
    """libspad.so: from $SPAD_C_LIBRARY, or built here once with CMake (build-pytest-capi/)."""
    lib = os.environ.get("SPAD_C_LIBRARY")
    if lib:
        return lib
    if not sys.platform.startswith("linux") or shutil.which("cmake") is None:
        pytest.skip("building the C API needs cmake on Linux (or set SPAD_C_LIBRARY)")
    build = os.path.join(ROOT, "build-pytest-capi")
    args = ["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DSPAD_BUILD_SHARED=ON",
            "-DSPAD_BUILD_TESTS=OFF", "-DSPAD_BUILD_EXAMPLES=OFF"]
    if shutil.which("ccache"):
        args += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    subprocess.run(args, check=True, capture_output=True)
    jobs = os.environ.get("SPAD_BUILD_JOBS", "2")
    subprocess.run(["cmake", "--build", build, "--target", "spad_shared", "-j", jobs], check=True,
                   capture_output=True)
    return os.path.join(build, "libspad.so")


@pytest.fixture(scope="module")
def capi():
    lib = ctypes.CDLL(_capi_library())
    P, I64P = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    for name, args in {
        "spad_ctx_init": [P, ctypes.POINTER(P)],
        "spad_model_load": [P, ctypes.c_char_p, ctypes.POINTER(P)],
        "spad_model_save": [P, ctypes.c_char_p],
        "spad_tensor_from_data": [P, ctypes.c_int, ctypes.c_int32, I64P, P, ctypes.POINTER(P)],
        "spad_model_forward": [P, P, P, ctypes.POINTER(P)],
        "spad_model_train_step": [P, P, P, P, ctypes.c_double, ctypes.POINTER(ctypes.c_double)],
        "spad_tensor_numel": [P],
    }.items():
        getattr(lib, name).argtypes = args
    lib.spad_tensor_data.argtypes, lib.spad_tensor_data.restype = [P], P
    lib.spad_tensor_numel.restype = ctypes.c_int64
    lib.spad_last_error.restype = ctypes.c_char_p
    lib.spad_ctx_free.argtypes = [P]
    return lib


class _C:
    """A context and the helpers the tests need; every status is checked."""

    def __init__(self, lib):
        self.lib, self.ctx = lib, ctypes.c_void_p()
        self.ok(lib.spad_ctx_init(None, ctypes.byref(self.ctx)))

    def ok(self, status):
        assert status == 0, self.lib.spad_last_error().decode()

    def tensor(self, a):
        a = np.ascontiguousarray(a)
        dt = {np.float32: 0, np.int64: 2}[a.dtype.type]
        shape = (ctypes.c_int64 * a.ndim)(*a.shape)
        out = ctypes.c_void_p()
        self.ok(self.lib.spad_tensor_from_data(self.ctx, dt, a.ndim, shape, a.ctypes.data, ctypes.byref(out)))
        return out

    def load(self, path):
        m = ctypes.c_void_p()
        self.ok(self.lib.spad_model_load(self.ctx, path.encode(), ctypes.byref(m)))
        return m

    def forward(self, model, X, n_out):
        out = ctypes.c_void_p()
        self.ok(self.lib.spad_model_forward(self.ctx, model, self.tensor(X), ctypes.byref(out)))
        assert self.lib.spad_tensor_numel(out) == X.shape[0] * n_out
        ptr = ctypes.cast(self.lib.spad_tensor_data(out), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(ptr, shape=(X.shape[0], n_out)).copy()

    def free(self):
        self.lib.spad_ctx_free(self.ctx)


@pytest.mark.parametrize("make, shape", [(_mlp, (64,)), (_convnet, (1, 8, 8))])
def test_c_predictions_match_python(tmp_path, capi, make, shape):
    X, y = _digits()
    X = np.ascontiguousarray(X.reshape((-1,) + shape))
    model = make()
    _train(model, X, y)
    path = str(tmp_path / "m.spad")
    spad.export(model, path, input_shape=shape)
    c = _C(capi)
    try:
        got = c.forward(c.load(path), X, 10)
    finally:
        c.free()
    np.testing.assert_allclose(got, _predict(model, X), rtol=1e-5, atol=1e-5)


def test_c_training_continues_python_training(tmp_path, capi):
    """SGD steps on the device give the model Python gets with the same steps."""
    X, y = _digits(64)
    model = _mlp()
    _train(model, X, y, steps=3)
    path, trained = str(tmp_path / "m.spad"), str(tmp_path / "trained.spad")
    spad.export(model, path)
    c = _C(capi)
    try:
        m = c.load(path)
        xs, ys, loss = c.tensor(X), c.tensor(y), ctypes.c_double()
        losses = []
        for _ in range(4):
            c.ok(capi.spad_model_train_step(c.ctx, m, xs, ys, 0.05, ctypes.byref(loss)))
            losses.append(loss.value)
        c.ok(capi.spad_model_save(m, trained.encode()))
    finally:
        c.free()
    ref = []
    opt = optim.SGD(model.parameters(), lr=0.05)
    for _ in range(4):
        opt.zero_grad()
        L = F.cross_entropy(model(spad.tensor(X)), y)
        ref.append(L.item())
        L.backward()
        opt.step()
    np.testing.assert_allclose(losses, ref, rtol=1e-5)
    np.testing.assert_allclose(_predict(spad.load_model(trained), X), _predict(model, X), rtol=1e-4, atol=1e-5)


def test_too_small_budget_raises_and_leaves_parameters(tmp_path):
    X, y = _digits(32)
    model = _mlp()
    before = [p.numpy().copy() for p in model.parameters()]
    spad.set_tape_budget(1024)
    try:
        with pytest.raises(spad.TapeBudgetError, match="tape budget exceeded.*1024 bytes") as err:
            F.cross_entropy(model(spad.tensor(X)), y).backward()
        assert isinstance(err.value, MemoryError)
    finally:
        spad.set_tape_budget(None)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)
        assert p.grad is None
    assert spad.memory_stats()["tape_bytes"] == 0
