"""Model files through the Python reader (spad.load_model): the test vectors shared with the
C API's reader (tests/data/model_vectors.txt, also run by tests/cpp/test_model_fuzz.cpp),
deterministic mutation fuzzing, and reads bounded whatever the path is."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import spad

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_vectors  # noqa: E402

VECTORS = model_vectors.read()


def test_vector_file_is_current():
    # The committed file is what both readers' tests use; it must match its generator.
    with open(model_vectors.PATH) as f:
        assert f.read() == model_vectors.render(), "run: python tests/model_vectors.py"


def _write(tmp_path, data: bytes) -> str:
    path = str(tmp_path / "m.spad")
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("name,expect,fragment,data", VECTORS, ids=[v[0] for v in VECTORS])
def test_shared_vectors(tmp_path, name, expect, fragment, data):
    path = _write(tmp_path, data)
    if expect == "ok":
        model = spad.load_model(path)
        assert isinstance(model, spad.nn.Sequential)
        _, records = spad._core._parse_model(data)
        in_shape = records and records[0]
        if name == "ok_mlp":
            y = model(spad.ones((1, 2)))
            assert y.shape == (1, 1)
        if name == "ok_conv":
            y = model(spad.ones((1, 1, 4, 4)))
            assert y.shape == (1, 2)
        assert in_shape is not None
    else:
        with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            spad.load_model(path)


def test_round_trip_is_a_valid_vector(tmp_path):
    # The writer produces what the shared specification accepts (and the same bytes again).
    model = spad.nn.Sequential(spad.nn.Conv2d(1, 2, 3, padding=1, seed=0), spad.nn.ReLU(), spad.nn.MaxPool2d(2),
                               spad.nn.Flatten(), spad.nn.Linear(8, 3, seed=1))
    a, b = str(tmp_path / "a.spad"), str(tmp_path / "b.spad")
    spad.export(model, a, input_shape=(1, 4, 4))
    spad.export(spad.load_model(a), b, input_shape=(1, 4, 4))
    assert open(a, "rb").read() == open(b, "rb").read()


def test_conv_padding_from_file_is_bounded(tmp_path):
    # The crash: a Conv2d of padding 2**31 - 1 loaded and its first forward segfaulted.
    data = dict((v[0], v[3]) for v in VECTORS)["conv_padding_huge"]
    with pytest.raises(ValueError, match="padding must be in 0..2"):
        spad.load_model(_write(tmp_path, data))


def test_dev_zero_does_not_hang():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(ValueError, match="not a spad model"):
        spad.load_model("/dev/zero")


def test_oversized_stream_is_refused(tmp_path, monkeypatch):
    # A valid header followed by more than the size limit: refused after reading the limit.
    monkeypatch.setattr(spad._core, "_MODEL_MAX_FILE_BYTES", 64, raising=False)
    path = _write(tmp_path, dict((v[0], v[3]) for v in VECTORS)["ok_mlp"] + bytes(100))
    with pytest.raises(ValueError, match="larger than 64 bytes"):
        spad.load_model(path)


def _mutate(data: bytearray, rng: np.random.Generator) -> bytearray:
    interesting = [0, 1, 2, 3, 16, 17, 255, 2**24, 2**24 + 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 6))
        if op == 0 and data:
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        elif op == 1 and len(data) >= 4:
            at = int(rng.integers(len(data) // 4)) * 4
            data[at:at + 4] = int(interesting[int(rng.integers(len(interesting)))]).to_bytes(4, "little")
        elif op == 2:
            del data[int(rng.integers(len(data) + 1)):]
        elif op == 3:
            at = int(rng.integers(len(data) + 1))
            data[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
        elif op == 4 and data:
            at = int(rng.integers(len(data)))
            chunk = data[at:at + int(rng.integers(1, 65))]
            pos = int(rng.integers(len(data) + 1))
            data[pos:pos] = chunk
        elif data:
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
    return data


def test_mutation_fuzz_python_reader():
    """A few thousand mutated files from a fixed seed: each loads into a model that runs (or
    fails with a clear ValueError), or is refused with ValueError; nothing else escapes.
    The same contract as the C reader's test_model_fuzz (which runs under ASan + UBSan)."""
    rng = np.random.default_rng(20261206)
    seeds = [v[3] for v in VECTORS if v[1] == "ok"]
    loaded = 0
    for i in range(2000):
        data = bytes(_mutate(bytearray(seeds[int(rng.integers(len(seeds)))]), rng))
        try:
            _, records = spad._core._parse_model(data)
        except ValueError:
            continue
        loaded += 1
        model = spad.nn.Sequential(*[spad.model_io._build(k, a, ts, j) for j, (k, a, ts) in enumerate(records)])
        first = records[0][2][0] if records and records[0][2] else None
        shape = None if first is None else (1, first.shape[0]) if first.ndim == 2 else (1, first.shape[1], 4, 4)
        if shape is not None:
            try:
                model(spad.ones(shape)).numpy()
            except ValueError:
                pass  # a later layer that does not fit: a clear error
    assert loaded > 20  # the fuzzer also reaches the loading path, not only the refusals
