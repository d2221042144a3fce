"""DataLoader orders and validation; bundled and synthetic datasets."""
import gzip
import os

import numpy as np
import pytest

import spad
import spad.functional as F
from spad import datasets
from spad.data import DataLoader

N = 103


def loader(order, bs=10, seed=0, drop_last=False, n=N):
    X = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    return DataLoader(X, np.arange(n), bs, order=order, seed=seed, drop_last=drop_last)


@pytest.mark.parametrize("order", ["reshuffle", "fixed", "sequential"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_epoch_visits_every_example_once(order, drop_last):
    dl = loader(order, drop_last=drop_last)
    for _ in range(3):
        batches = [yb.copy() for _, yb in dl]
        seen = np.concatenate(batches)
        if drop_last:
            assert len(batches) == N // 10 and len(seen) == 100 and len(set(seen)) == 100
        else:
            assert len(batches) == len(dl) == 11
            np.testing.assert_array_equal(np.sort(seen), np.arange(N))


def test_batches_carry_matching_x_and_y():
    for xb, yb in loader("reshuffle"):
        np.testing.assert_array_equal(xb.numpy()[:, 0], yb)
        assert isinstance(xb, spad.Tensor) and xb.dtype == np.float32 and yb.dtype == np.int64


def test_replacement_draws_iid_indices():
    dl = loader("replacement", seed=1)
    epochs = [np.concatenate([yb.copy() for _, yb in dl]) for _ in range(5)]
    assert [len(e) for e in epochs] == [N] * 5 and len(dl) == 11
    assert all(e.min() >= 0 and e.max() < N for e in epochs)
    assert any(len(np.unique(e)) < N for e in epochs)  # repeats: not a permutation
    assert len(list(loader("replacement", drop_last=True))) == N // 10


def test_reshuffle_changes_order_between_epochs_fixed_keeps_partition():
    dl = loader("reshuffle")
    e1, e2 = [np.concatenate([yb.copy() for _, yb in dl]) for _ in range(2)]
    assert not np.array_equal(e1, e2)
    fx = loader("fixed")
    p1 = sorted(tuple(sorted(yb.copy())) for _, yb in fx)
    order1 = [tuple(yb.copy()) for _, yb in fx]
    p2 = sorted(tuple(sorted(b)) for b in order1)
    assert p1 == p2  # the same batches every epoch ...
    order2 = [tuple(yb.copy()) for _, yb in fx]
    assert order1 != order2  # ... visited in a new order
    assert sorted(order1) == sorted(order2)


@pytest.mark.parametrize("order", ["reshuffle", "replacement", "fixed"])
def test_same_seed_same_sequence(order):
    a, b, c = loader(order, seed=5), loader(order, seed=5), loader(order, seed=6)
    for _ in range(2):
        ea = [yb.copy() for _, yb in a]
        eb = [yb.copy() for _, yb in b]
        ec = [yb.copy() for _, yb in c]
        assert all(np.array_equal(x, y) for x, y in zip(ea, eb))
        assert not all(np.array_equal(x, y) for x, y in zip(ea, ec))


def test_buffers_are_reused_and_stale_tapes_are_caught():
    dl = loader("sequential", bs=10)
    it = iter(dl)
    xb, _ = next(it)
    W = spad.tensor(np.ones((3, 2), np.float32), requires_grad=True)
    loss = F.linear(xb, W).sum()  # saves the batch for dW
    xb2, _ = next(it)
    assert xb2 is xb  # the same buffer, refilled
    with pytest.raises(RuntimeError, match="modified by an in-place"):
        loss.backward()


def test_float_targets_become_tensors():
    X, y = datasets.teacher_student(20, 4)
    xb, yb = next(iter(DataLoader(X, y, 8)))
    assert isinstance(yb, spad.Tensor) and yb.shape == (8, 1)


@pytest.mark.parametrize(
    "args,match",
    [
        ((np.zeros((5, 2)), np.zeros(4), 2), "lengths must match"),
        ((np.zeros((5, 2)), np.zeros(5), 0), "batch_size"),
        ((np.zeros((5, 2)), np.zeros(5), -3), "batch_size"),
        ((np.zeros((0, 2)), np.zeros(0), 2), "empty"),
        ((np.array([[0.0, np.nan], [1, 1]]), np.zeros(2), 1), "NaN or inf"),
        ((np.array([[0.0, np.inf], [1, 1]]), np.zeros(2), 1), "NaN or inf"),
    ],
)
def test_validation(args, match):
    with pytest.raises(ValueError, match=match):
        DataLoader(*args)


def test_bad_order_and_drop_last_without_batches():
    with pytest.raises(ValueError, match="order"):
        DataLoader(np.zeros((4, 1)), np.zeros(4), 2, order="random")
    with pytest.raises(ValueError, match="no batch"):
        DataLoader(np.zeros((4, 1)), np.zeros(4), 5, drop_last=True)


# ---- datasets ----------------------------------------------------------------------------
def test_digits_bundled():
    X, y = datasets.digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= X.min() and X.max() == 1.0
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    a = datasets.digits_split()
    b = datasets.digits_split()
    assert len(a[0]) == 1438 and len(a[2]) == 359
    np.testing.assert_array_equal(a[3], b[3])


def test_synthetic():
    X, y = datasets.two_moons(200, noise=0.05, seed=1)
    assert X.shape == (200, 2) and np.bincount(y).tolist() == [100, 100]
    np.testing.assert_array_equal(X, datasets.two_moons(200, noise=0.05, seed=1)[0])
    X, y = datasets.teacher_student(500, 10, out=2, noise=0.0, seed=0)
    assert X.shape == (500, 10) and y.shape == (500, 2)
    W, *_ = np.linalg.lstsq(X, y, rcond=None)  # a noiseless linear teacher is recovered exactly
    np.testing.assert_allclose(X @ W, y, atol=1e-4)
    _, yh = datasets.teacher_student(50, 10, hidden=8, noise=0.1)
    assert yh.shape == (50, 1)


def _write_idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    (gzip.open if gz else open)(path, "wb").write(header + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs, labs = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6)
    sfx = ".gz" if gz else ""
    for stem in ("train", "t10k"):
        _write_idx(os.path.join(tmp_path, f"{stem}-images-idx3-ubyte{sfx}"), imgs, gz)
        _write_idx(os.path.join(tmp_path, f"{stem}-labels-idx1-ubyte{sfx}"), labs, gz)
    Xtr, ytr, Xte, yte = datasets.fashion_mnist(str(tmp_path))
    assert Xtr.shape == (6, 784) and Xtr.dtype == np.float32
    np.testing.assert_allclose(Xtr * 255, imgs.reshape(6, -1), atol=1e-4)
    np.testing.assert_array_equal(yte, labs)
    assert datasets.fashion_mnist(str(tmp_path), flatten=False)[0].shape == (6, 1, 28, 28)


def test_fashion_mnist_missing_names_install_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        datasets.fashion_mnist(str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(datasets.FASHION_MNIST_DIR), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_system_copy():
    Xtr, ytr, Xte, yte = datasets.fashion_mnist()
    assert Xtr.shape == (60000, 784) and Xte.shape == (10000, 784)
    assert np.bincount(ytr).tolist() == [6000] * 10
