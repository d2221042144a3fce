"""fit() / evaluate(): convergence on digits and two moons, History contents, early
stopping, callbacks, the regularizer hook and clear errors."""
import time

import numpy as np
import pytest

import spad.functional as F
import spad.nn as nn
import spad.optim as optim
from spad import datasets
from spad.data import DataLoader
from spad.train import EarlyStopping, History, NonFiniteLossError, Regularizer, evaluate, fit


def test_digits_mlp_reaches_97_percent():
    # The reference configuration: 64-256-256-10, plain SGD lr 0.1, batch 32, 20 epochs, fixed split.
    Xtr, ytr, Xte, yte = datasets.digits_split()
    model = nn.mlp([64, 256, 256, 10], seed=0)
    t0 = time.perf_counter()
    hist = fit(model, F.cross_entropy, DataLoader(Xtr, ytr, 32, seed=0), optim.SGD(model.parameters(), lr=0.1),
               epochs=20, progress=False)
    elapsed = time.perf_counter() - t0
    acc = evaluate(model, Xte, yte)["accuracy"]
    assert acc >= 0.97, acc
    assert isinstance(hist, History) and len(hist.loss) == 20 and hist.loss[-1] < hist.loss[0]
    assert len(hist.accuracy) == 20 and hist.accuracy[-1] > 0.97
    assert all(b > 0 for b in hist.peak_tape_bytes) and all(t > 0 for t in hist.step_time)
    assert elapsed < 60


def test_two_moons_converges_with_validation_history():
    X, y = datasets.two_moons(400, noise=0.1, seed=0)
    model = nn.mlp([2, 32, 32, 2], activation=nn.Tanh, seed=1)
    hist = fit(model, F.cross_entropy, DataLoader(X[:300], y[:300], 16, seed=0),
               optim.Adam(model.parameters(), lr=0.01), epochs=30, val=(X[300:], y[300:]), progress=False)
    assert len(hist.val_loss) == 30 and hist.val_accuracy[-1] >= 0.95


def test_regression_history_has_no_accuracy():
    X, y = datasets.teacher_student(256, 8, seed=0)
    model = nn.Linear(8, 1, seed=0)
    hist = fit(model, F.mse_loss, DataLoader(X, y, 32), optim.SGD(model.parameters(), 0.1), 10, progress=False,
               val=(X, y))
    assert hist.accuracy == [] and hist.val_accuracy == [] and hist.val_loss[-1] < 1e-3
    assert evaluate(model, X, y, F.mse_loss)["loss"] < 1e-3


def test_progress_bar_runs(capsys):
    X, y = datasets.two_moons(64, seed=0)
    model = nn.mlp([2, 8, 2], seed=0)
    fit(model, F.cross_entropy, DataLoader(X, y, 16), optim.SGD(model.parameters(), 0.1), 2, progress=True)


def test_nan_loss_names_epoch_and_step():
    X, y = datasets.teacher_student(64, 4, seed=0)
    X = X * 1e3
    model = nn.Linear(4, 1, seed=0)
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+, step \d+") as info:
        fit(model, F.mse_loss, DataLoader(X, y, 8), optim.SGD(model.parameters(), 10.0), 5, progress=False)
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, ValueError)


def test_nan_loss_from_custom_loss_function():
    X, y = datasets.two_moons(32, seed=0)
    model = nn.mlp([2, 4, 2], seed=0)

    def loss_fn(out, target):
        return F.cross_entropy(out, target) * float("nan")

    with pytest.raises(FloatingPointError, match="epoch 0, step 0"):
        fit(model, loss_fn, DataLoader(X, y, 8), optim.SGD(model.parameters(), 0.1), 1, progress=False)


def test_labels_out_of_range_is_a_clear_error():
    X, y = datasets.two_moons(32, seed=0)
    model = nn.mlp([2, 4, 2], seed=0)
    with pytest.raises(ValueError, match="epoch 0, step 0.*out of range"):
        fit(model, F.cross_entropy, DataLoader(X, y + 5, 8), optim.SGD(model.parameters(), 0.1), 1, progress=False)


def test_early_stopping_restores_best_parameters():
    X, y = datasets.two_moons(200, noise=0.3, seed=0)
    model = nn.mlp([2, 64, 2], seed=0)
    snapshots = []
    hist = fit(model, F.cross_entropy, DataLoader(X[:100], y[:100], 10), optim.SGD(model.parameters(), 2.0),
               epochs=40, val=(X[100:], y[100:]), progress=False,
               callbacks=[lambda e, h, m: snapshots.append(m.state_dict())],
               early_stopping=EarlyStopping(patience=3))
    assert hist.stopped_epoch is not None and hist.stopped_epoch < 39
    best = int(np.argmin(hist.val_loss))
    assert hist.best_epoch == best and hist.stopped_epoch == best + 3
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, snapshots[best][k])


def test_early_stopping_needs_validation_and_int_patience():
    X, y = datasets.two_moons(32, seed=0)
    model = nn.mlp([2, 4, 2], seed=0)
    with pytest.raises(ValueError, match="validation"):
        fit(model, F.cross_entropy, DataLoader(X, y, 8), optim.SGD(model.parameters(), 0.1), 1, early_stopping=2)
    with pytest.raises(ValueError):
        EarlyStopping(patience=-1)


def test_callback_can_stop_training():
    X, y = datasets.two_moons(32, seed=0)
    model = nn.mlp([2, 4, 2], seed=0)
    hist = fit(model, F.cross_entropy, DataLoader(X, y, 8), optim.SGD(model.parameters(), 0.1), 10,
               progress=False, callbacks=[lambda e, h, m: e == 2])
    assert hist.stopped_epoch == 2 and len(hist.loss) == 3


def test_regularizer_hook_adds_to_loss():
    class L2(Regularizer):
        calls = 0

        def add(self, loss, closure, params):
            L2.calls += 1
            assert closure().item() == pytest.approx(loss.item(), rel=1e-6)
            return loss + 0.5 * sum((p * p).sum() for p in params)

    X, y = datasets.teacher_student(32, 4, seed=0)
    model = nn.Linear(4, 1, seed=0)
    plain = nn.Linear(4, 1, seed=0)
    fit(model, F.mse_loss, DataLoader(X, y, 8, order="sequential"), optim.SGD(model.parameters(), 0.1), 1,
        progress=False, regularizer=L2())
    fit(plain, F.mse_loss, DataLoader(X, y, 8, order="sequential"), optim.SGD(plain.parameters(), 0.1), 1,
        progress=False)
    assert L2.calls == 4
    assert np.linalg.norm(model.weight.numpy()) < np.linalg.norm(plain.weight.numpy())


def test_evaluate_restores_mode_and_checks_lengths():
    model = nn.mlp([2, 4, 2], seed=0)
    X, y = datasets.two_moons(20, seed=0)
    assert set(evaluate(model, X, y, F.cross_entropy)) == {"loss", "accuracy"}
    assert model.training
    with pytest.raises(ValueError, match="20 examples"):
        evaluate(model, X, y[:5])


def test_sampling_none_is_exact():
    # the same seed with sampling=None twice gives identical parameters (exact, deterministic)
    X, y = datasets.two_moons(64, seed=0)
    outs = []
    for _ in range(2):
        m = nn.mlp([2, 8, 2], seed=0)
        fit(m, F.cross_entropy, DataLoader(X, y, 16, seed=3), optim.SGD(m.parameters(), 0.1), 2,
            sampling=None, progress=False)
        outs.append(m.state_dict())
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k])


def test_cli_train_and_sampling_specs(tmp_path, capsys):
    from spad.__main__ import main, parse_sampling

    import spad.sampling as S

    assert parse_sampling("exact") is None
    pol = parse_sampling("spad:0.1")
    assert isinstance(pol, S.SPAD) and pol.keep == 0.1
    assert isinstance(parse_sampling("rad-same:0.25"), S.RAD) and parse_sampling("rad-same:0.25").mode == "same"
    for bad in ("spad", "spad:x", "nope:0.1", "rad:0", "rad:1.5"):
        with pytest.raises(ValueError):
            parse_sampling(bad)
    path = tmp_path / "m.npz"
    assert main(["train", "--epochs", "1", "--no-progress", "--threads", "1", "--save", str(path)]) == 0
    assert "test accuracy" in capsys.readouterr().out and path.exists()
    assert main(["train", "--dataset", "nope", "--no-progress"]) == 2
    assert main(["train", "--epochs", "1", "--no-progress", "--threads", "1", "--sampling", "rad:0.2"]) == 0
    assert "test accuracy" in capsys.readouterr().out
