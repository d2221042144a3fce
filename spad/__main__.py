"""Command line: ``python -m spad demo`` and ``python -m spad train ...``.

    python -m spad demo
    python -m spad train --dataset digits --model mlp --sampling exact --epochs 20
    python -m spad train --dataset fashion-mnist --hidden 512,512 --optimizer adam --lr 1e-3
    mpiexec -n 2 python -m spad train --dataset fashion-mnist --distributed --batch-size 32
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, List, Optional, Tuple

import numpy as np

from . import _core
from . import functional as F
from . import nn, optim
from . import sampling as S
from .data import DataLoader
from .datasets import digits_split, fashion_mnist, two_moons, train_test_split
from .train import evaluate, fit


_SPECS = {
    "rad": lambda keep, seed: S.RAD(keep=keep, seed=seed),
    "rad-same": lambda keep, seed: S.RAD(keep=keep, mode="same", seed=seed),
    "rad-project": lambda keep, seed: S.RAD(keep=keep, mode="project", seed=seed),
    "crs": lambda keep, seed: S.CRS(keep=keep, seed=seed),
    "spad": lambda keep, seed: S.SPAD(keep=keep, seed=seed),
    "spad-biased": lambda keep, seed: S.SPAD(keep=keep, unbiased=False, seed=seed),
}


def parse_sampling(spec: str, seed: int = 0):
    """A policy from a command-line spec: "exact" -> None (exact backprop); "<name>:<keep>"
    with name in rad, rad-same, rad-project, crs, spad, spad-biased, e.g. "spad:0.1"."""
    name, _, arg = spec.strip().lower().partition(":")
    if name == "exact" and not arg:
        return None
    if name not in _SPECS or not arg:
        raise ValueError(f"unsupported sampling spec {spec!r}: use 'exact' or '<name>:<keep>' with name in "
                         f"{', '.join(_SPECS)} (e.g. spad:0.1)")
    try:
        keep = float(arg)
    except ValueError:
        raise ValueError(f"sampling spec {spec!r}: keep must be a number in (0, 1]") from None
    return _SPECS[name](keep, seed)


def _rank_sampling(spec: str, rank: int):
    """The policy of ``spec`` for one rank. RAD "same" keeps the same features for the whole batch:
    every rank uses the seed, so all draw the same rows and only those rows are all-reduced
    (spad.distributed). Per-example estimators draw per row: each rank offsets the seed, so its rows
    draw independently of the other ranks' (as one process's rows would), and their gradients go dense."""
    pol = parse_sampling(spec)
    if pol is None or getattr(pol, "mode", None) == "same":
        return pol
    return parse_sampling(spec, seed=rank)


# The demo's rows: (name, factory returning a policy or None).
DEMO_POLICIES: List[Tuple[str, Callable[[], object]]] = [
    ("exact", lambda: None),
    ("RAD keep 0.1", lambda: S.RAD(keep=0.1, seed=0)),
    ("SPAD keep 0.1", lambda: S.SPAD(keep=0.1, seed=0)),
    ("SPAD-biased 0.1", lambda: S.SPAD(keep=0.1, unbiased=False, seed=0)),
]


def load_dataset(name: str, seed: int = 0):
    if name == "digits":
        return digits_split(seed=seed)
    if name in ("fashion-mnist", "fashion_mnist"):
        return fashion_mnist()
    if name == "moons":
        X, y = two_moons(1000, noise=0.1, seed=seed)
        return train_test_split(X, y, 0.2, seed)
    raise ValueError(f"unknown dataset {name!r}; choose digits, fashion-mnist or moons")


def build_model(kind: str, n_in: int, n_out: int, hidden: List[int], seed: int):
    if kind == "mlp":
        return nn.mlp([n_in, *hidden, n_out], seed=seed)
    if kind == "linear":
        return nn.Linear(n_in, n_out, seed=seed)
    raise ValueError(f"unknown model {kind!r}; choose mlp or linear")


def build_optimizer(name: str, params, lr: float, momentum: float):
    if name == "sgd":
        return optim.SGD(params, lr, momentum=momentum)
    table = {"adam": optim.Adam, "adamw": optim.AdamW, "rmsprop": optim.RMSprop, "adagrad": optim.Adagrad}
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r}; choose sgd, {', '.join(table)}")
    return table[name](params, lr=lr)


def run(dataset="digits", model="mlp", hidden=(256, 256), sampling=None, epochs=20, batch_size=32, lr=0.1,
        optimizer="sgd", momentum=0.0, order="reshuffle", seed=0, progress=True, data=None, distributed=False):
    """Train once; returns (model, history, test metrics, seconds). ``distributed``: this process is
    one rank of an MPI job (spad.distributed.init() done); ``batch_size`` is then per rank."""
    Xtr, ytr, Xte, yte = data if data is not None else load_dataset(dataset, seed)
    net = build_model(model, Xtr.shape[1], int(ytr.max()) + 1, list(hidden), seed)
    opt = build_optimizer(optimizer, net.parameters(), lr, momentum)
    rank, world, score = 0, 1, evaluate
    if distributed:
        from . import distributed as D

        rank, world, score = D.rank(), D.size(), D.evaluate
        D.broadcast_parameters(net)
        opt = D.DistributedOptimizer(opt)
    loader = DataLoader(Xtr, ytr, batch_size, order=order, seed=seed, rank=rank, world_size=world)
    t0 = time.perf_counter()
    hist = fit(net, F.cross_entropy, loader, opt, epochs, sampling=sampling, progress=progress)
    secs = time.perf_counter() - t0
    return net, hist, score(net, Xte, yte, F.cross_entropy), secs


def demo(epochs: int = 20, threads: Optional[int] = 1) -> str:
    """Digits MLP 64-256-256-10 under each policy in DEMO_POLICIES; returns the table."""
    if threads:
        _core.set_num_threads(threads)
    data = digits_split()
    rows = [f"{'policy':<16} {'test acc':>8} {'peak tape bytes':>16} {'exact tape bytes':>17} {'us/step':>8}"]
    for name, factory in DEMO_POLICIES:
        _, hist, res, _ = run(sampling=factory(), epochs=epochs, progress=False, data=data)
        exact = max(hist.exact_tape_bytes)
        rows.append(f"{name:<16} {res['accuracy']:>8.4f} {max(hist.peak_tape_bytes):>16,d} {exact:>17,d} "
                    f"{1e6 * float(np.median(hist.step_time)):>8.0f}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spad", description="spad training commands")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="digits MLP: exact vs sampled backprop (accuracy, tape bytes, time)")
    d.add_argument("--epochs", type=int, default=20)
    d.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("train", help="train a model and report test metrics")
    t.add_argument("--dataset", default="digits", help="digits | fashion-mnist | moons")
    t.add_argument("--model", default="mlp", help="mlp | linear")
    t.add_argument("--hidden", default="256,256", help="hidden widths of the MLP, comma-separated")
    t.add_argument("--sampling", default="exact", help="exact, or <name>:<keep> with name in rad, rad-same, rad-project, crs, spad, spad-biased")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--optimizer", default="sgd", help="sgd | adam | adamw | rmsprop | adagrad")
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.0)
    t.add_argument("--order", default="reshuffle", help="reshuffle | replacement | fixed")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--save", default=None, help="write the trained parameters to this .npz file")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--distributed", action="store_true",
                   help="data parallel over MPI ranks (run under mpiexec; needs pip install 'spad[distributed]'); "
                        "--batch-size is per rank; only rank 0 prints and saves")
    a = ap.parse_args(argv)
    rank, D = 0, None
    try:
        if a.cmd == "demo":
            print(demo(a.epochs, a.threads))
            return 0
        if a.threads:
            _core.set_num_threads(a.threads)
        if a.distributed:
            from . import distributed as D  # noqa: N812

            D.init()
            rank = D.rank()
        hidden = [int(h) for h in a.hidden.split(",") if h.strip()]
        net, hist, res, secs = run(a.dataset, a.model, hidden, _rank_sampling(a.sampling, rank), a.epochs,
                                   a.batch_size, a.lr, a.optimizer, a.momentum, a.order, a.seed,
                                   progress=not a.no_progress, distributed=a.distributed)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        if D is not None and D.is_initialized():
            D.abort(2)  # a lone failing rank must not leave the others waiting in a collective
        return 2
    if rank != 0:
        return 0
    if a.save:
        net.save(a.save)
    print(f"test accuracy {res['accuracy']:.4f}  test loss {res['loss']:.4f}  "
          f"peak tape {max(hist.peak_tape_bytes):,d} bytes  {1e6 * float(np.median(hist.step_time)):.0f} us/step  "
          f"total {secs:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
