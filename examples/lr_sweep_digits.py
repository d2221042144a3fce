"""Learning-rate sweep on digits (Smith et al., ICLR 2021, Fig. 1 in miniature).

SGD at a fixed budget of epochs, one run per learning rate and seed. For each final model we
print test accuracy, the training loss C and SGD's modified loss
C + lr/(4m)·Σ_k ‖∇Ĉ_k‖² over the m minibatches of one fixed partition of the training set.
The paper's claim: test accuracy peaks at a learning rate above the one that minimizes the
training loss, because larger steps penalize the minibatch gradient norms more.

    python examples/lr_sweep_digits.py            # ~10 s at 1 thread; writes examples/figures/lr_sweep_digits.png
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


def make_model(seed):
    return nn.Sequential(nn.Linear(64, 128, seed=seed), nn.ReLU(), nn.Linear(128, 10, seed=seed + 1000))


def batch_closures(model, X, y, batch_size):
    """One loss closure per minibatch of a fixed partition (sequential, drop the ragged end)."""
    fns = []
    for i in range(0, len(X) - batch_size + 1, batch_size):
        xb, yb = spad.tensor(X[i:i + batch_size]), y[i:i + batch_size]
        fns.append(lambda xb=xb, yb=yb: F.cross_entropy(model(xb), yb))
    return fns


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "figures", "lr_sweep_digits.png"))
    args = ap.parse_args()
    spad.set_num_threads(1)
    Xtr, ytr, Xte, yte = digits_split()
    perm = np.random.default_rng(0).permutation(len(Xtr))  # the fixed partition for the modified loss
    Xp, yp = Xtr[perm], ytr[perm]
    rows = []
    t0 = time.perf_counter()
    print(f"digits: {len(Xtr)} train / {len(Xte)} test, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.seeds} seeds, SGD without momentum")
    print(f"{'lr':>7} {'test acc':>14} {'train C':>10} {'C_SGD':>10} {'penalty':>10}")
    for lr in args.lrs:
        accs, Cs, mods = [], [], []
        for seed in range(args.seeds):
            model = make_model(seed)
            fit(model, F.cross_entropy, DataLoader(Xtr, ytr, args.batch_size, seed=seed),
                optim.SGD(model.parameters(), lr), args.epochs, progress=False)
            accs.append(evaluate(model, Xte, yte)["accuracy"])
            fns = batch_closures(model, Xp, yp, args.batch_size)
            mod = implicit.sgd_modified_loss(fns, model.parameters(), lr)
            C = float(np.mean([f().item() for f in fns]))
            Cs.append(C)
            mods.append(mod)
        rows.append((lr, np.mean(accs), np.std(accs), np.mean(Cs), np.mean(mods)))
        print(f"{lr:7.3f} {np.mean(accs):8.4f}±{np.std(accs):.3f} {np.mean(Cs):10.4f} {np.mean(mods):10.4f} "
              f"{np.mean(mods) - np.mean(Cs):10.4f}")
    print(f"time: {time.perf_counter() - t0:.1f} s")
    best = max(rows, key=lambda r: r[1])
    lowest = min(rows, key=lambda r: r[3])
    print(f"best test accuracy at lr={best[0]} ({best[1]:.4f}); lowest training loss at lr={lowest[0]} ({lowest[3]:.4f})")
    plt = pyplot()
    if plt is None:
        return
    r = np.array(rows)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].errorbar(r[:, 0], r[:, 1], yerr=r[:, 2], marker="o")
    ax[0].set(xscale="log", xlabel="learning rate", ylabel="test accuracy", title=f"digits, {args.epochs} epochs")
    ax[1].plot(r[:, 0], r[:, 3], marker="o", label="training loss C")
    ax[1].plot(r[:, 0], r[:, 4], marker="s", label="modified loss C + lr/(4m)Σ‖∇Ĉ_k‖²")
    ax[1].set(xscale="log", yscale="log", xlabel="learning rate", title="at the end of training")
    ax[1].legend(fontsize=8)
    save(fig, args.out, dpi=120)


if __name__ == "__main__":
    main()
