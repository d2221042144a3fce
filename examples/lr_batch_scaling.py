"""The ε/B scaling of SGD's implicit regularizer (Smith et al., ICLR 2021) on digits.

SGD with learning rate ε and batch size B follows, to first order, the modified loss
C + ε/(4m)·Σ_k ‖∇Ĉ_k‖². Each minibatch gradient norm ‖∇Ĉ_k‖² grows like 1/B (its noise part),
so the regularizer's strength scales like ε/B: runs with the same ε/B should train alike,
whatever B (as long as B is small and ε stable). This script trains one MLP per (B, ε/B) pair
for the same number of epochs and prints the test accuracy and the regularizer's value.

    python examples/lr_batch_scaling.py        # ~1 minute at 1 thread; writes examples/figures/lr_batch_scaling.png
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import spad
import spad.functional as F
from spad import nn, optim
from spad.analysis import implicit
from spad.data import DataLoader
from spad.datasets import digits_split
from _figures import pyplot, save
from spad.train import evaluate, fit

HERE = os.path.dirname(os.path.abspath(__file__))


def batch_losses(model, X, y, B):
    """Loss closures of one fixed partition into batches of B (the ragged end dropped)."""
    return [lambda xb=spad.tensor(X[i:i + B]), yb=y[i:i + B]: F.cross_entropy(model(xb), yb)
            for i in range(0, len(X) - B + 1, B)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.00125, 0.0025, 0.005, 0.01, 0.02])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "figures", "lr_batch_scaling.png"))
    args = ap.parse_args()
    spad.set_num_threads(1)
    Xtr, ytr, Xte, yte = digits_split()
    perm = np.random.default_rng(0).permutation(len(Xtr))
    Xp, yp = Xtr[perm], ytr[perm]
    t0 = time.perf_counter()
    acc = np.zeros((len(args.batches), len(args.ratios)))
    pen = np.zeros_like(acc)
    print(f"digits MLP 64-128-10, plain SGD, {args.epochs} epochs, {args.seeds} seeds; lr = (ε/B)·B")
    print(f"{'B':>4} " + " ".join(f"{'ε/B=' + format(r, 'g'):>16}" for r in args.ratios))
    for i, B in enumerate(args.batches):
        cells = []
        for j, r in enumerate(args.ratios):
            lr = r * B
            a, p = [], []
            for seed in range(args.seeds):
                model = nn.Sequential(nn.Linear(64, 128, seed=seed), nn.ReLU(), nn.Linear(128, 10, seed=seed + 99))
                fit(model, F.cross_entropy, DataLoader(Xtr, ytr, B, seed=seed), optim.SGD(model.parameters(), lr=lr),
                    args.epochs, progress=False)
                a.append(evaluate(model, Xte, yte)["accuracy"])
                fns = batch_losses(model, Xp, yp, B)
                c = float(np.mean([f().item() for f in fns]))
                p.append(implicit.sgd_modified_loss(fns, model.parameters(), lr) - c)
            acc[i, j], pen[i, j] = np.mean(a), np.mean(p)
            cells.append(f"{acc[i, j]:.4f} ({pen[i, j]:.1e})")
        print(f"{B:>4} " + " ".join(f"{c:>16}" for c in cells))
    print("cells: mean test accuracy (mean implicit penalty ε/(4m)·Σ‖∇Ĉ_k‖² at the end)")
    spread_ratio = acc.std(axis=0).mean()   # across B at fixed ε/B
    spread_lr = np.mean([np.std([acc[i, j] for i, B in enumerate(args.batches) for j, r in enumerate(args.ratios)
                                 if abs(r * B - lr) < 1e-12]) for lr in {r * B for B in args.batches for r in args.ratios}
                         if sum(abs(r * B - lr) < 1e-12 for B in args.batches for r in args.ratios) > 1])
    print(f"mean spread of accuracy across B at fixed ε/B: {spread_ratio:.4f}; at fixed ε: {spread_lr:.4f}")
    print(f"time: {time.perf_counter() - t0:.1f} s")
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for i, B in enumerate(args.batches):
        ax[0].plot(args.ratios, acc[i], "o-", label=f"B={B}")
        ax[1].plot([r * B for r in args.ratios], acc[i], "o-", label=f"B={B}")
    ax[0].set(xscale="log", xlabel="ε / B", ylabel="test accuracy", title="against ε/B")
    ax[1].set(xscale="log", xlabel="ε", ylabel="test accuracy", title="against ε")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend()
    save(fig, args.out, dpi=110)


if __name__ == "__main__":
    main()
