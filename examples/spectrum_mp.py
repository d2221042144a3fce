"""Weight spectra against random-matrix theory (Park, Favoni, Lucini & Aarts; Aarts, Lucini & Park).

Part 1: the first-layer weight W (784 × 256) of a Fashion-MNIST MLP, eigenvalues of WᵀW/n at
initialization and after SGD, against Marchenko–Pastur with σ² fitted (the mean eigenvalue):
KS distance, outliers above the MP edge. Falls back to digits (64 × 32) without Fashion-MNIST.
Part 2: teacher–student regression (a fixed random tanh teacher, a student trained by SGD with
batch noise): MP distance and level-spacing statistics (unfolded spacings vs the GOE Wigner
surmise, mean spacing ratio r: GOE ≈ 0.531, Poisson ≈ 0.386) before and after training.

    python examples/spectrum_mp.py                # ~30 s at 1 thread; writes examples/figures/spectrum_mp.png
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import spad
import spad.functional as F
from spad import nn, optim
from spad.analysis import spectrum as Sp
from spad.data import DataLoader
from spad.datasets import digits_split, fashion_mnist
from _figures import pyplot, save
from spad.train import evaluate, fit

HERE = os.path.dirname(os.path.abspath(__file__))


def classifier_spectra(epochs, lr, batch_size):
    try:
        Xtr, ytr, Xte, yte = fashion_mnist()
        name, hidden = "Fashion-MNIST", 256
    except FileNotFoundError:
        Xtr, ytr, Xte, yte = digits_split()
        name, hidden = "digits", 32
    d = Xtr.shape[1]
    model = nn.Sequential(nn.Linear(d, hidden, seed=0), nn.ReLU(), nn.Linear(hidden, 10, seed=1))
    tracker = Sp.SpectrumTracker()
    tracker.record(model)
    fit(model, F.cross_entropy, DataLoader(Xtr, ytr, batch_size, seed=0), optim.SGD(model.parameters(), lr),
        epochs, callbacks=[tracker], progress=False)
    acc = evaluate(model, Xte, yte)["accuracy"]
    key = "0.weight"
    q = tracker.q[key]
    print(f"[{name}] MLP {d}-{hidden}-10, SGD lr={lr}, batch {batch_size}, {epochs} epochs: test acc {acc:.4f}")
    print(f"  first-layer W ({d} × {hidden}), q = {q:.3f}; σ² fitted as the mean eigenvalue")
    print(f"  {'epoch':>6} {'KS to MP':>9} {'outliers':>9} {'λmax/λ+':>8}")
    for ep, e, ks, n_out in zip(tracker.epochs, tracker.eigs[key], tracker.ks[key], tracker.outliers[key]):
        rep = Sp.mp_outliers(e, q, e.mean())
        print(f"  {'init' if ep < 0 else ep:>6} {ks:9.4f} {n_out:9d} {rep['largest_ratio']:8.2f}")
    return name, q, tracker.eigs[key][0], tracker.eigs[key][-1], tracker.epochs, tracker.ks[key]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ts-epochs", type=int, default=60)
    ap.add_argument("--out", default=os.path.join(HERE, "figures", "spectrum_mp.png"))
    args = ap.parse_args()
    spad.set_num_threads(1)
    t0 = time.perf_counter()
    name, q, e0, e1, epochs, ks = classifier_spectra(args.epochs, args.lr, args.batch_size)
    ts = Sp.teacher_student_spectra(n=8000, d=400, hidden=200, teacher_hidden=20, noise=0.1, lr=0.1,
                                    batch_size=16, epochs=args.ts_epochs, seed=0)
    print(f"[teacher-student] X ~ N(0, I_400), teacher 400-20-1 (tanh), student 400-200-1, SGD lr=0.1, "
          f"batch 16, {args.ts_epochs} epochs: train MSE {ts['history'].loss[0]:.4f} -> {ts['history'].loss[-1]:.4f}")
    for tag in ("init", "final"):
        print(f"  {tag:>5}: KS to MP {ts[tag + '_mp_ks']:.4f}, outliers {ts[tag + '_outliers']}, "
              f"mean spacing ratio {ts[tag + '_ratio']:.3f}, KS of unfolded spacings to Wigner {ts[tag + '_wigner_ks']:.4f}")
    print(f"time: {time.perf_counter() - t0:.1f} s")
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for e, label in ((e0, "init"), (e1, "trained")):
        s2 = e.mean()
        ax[0].hist(e / s2, bins=60, density=True, alpha=0.5, label=f"{label} (KS {Sp.mp_ks_distance(e, q, s2):.3f})")
    xs = np.linspace(0, Sp.mp_edges(q)[1] * 1.05, 400)
    ax[0].plot(xs, Sp.marchenko_pastur_pdf(xs, q), "k", label=f"MP, q={q:.2f}")
    ax[0].set(xlabel="eigenvalue of WᵀW/n ÷ σ²", ylabel="density", title=f"{name}: first layer")
    ax[0].legend(fontsize=8)
    ax[1].plot([max(ep, -1) + 1 for ep in epochs], ks, marker="o")
    ax[1].set(xlabel="epoch (0 = init)", ylabel="KS distance to MP", title=f"{name}: leaving the bulk")
    s = Sp.unfolded_spacings(ts["final_eigs"])
    ax[2].hist(s, bins=30, density=True, alpha=0.6, label="student, trained")
    grid = np.linspace(0, 4, 200)
    ax[2].plot(grid, Sp.wigner_surmise_pdf(grid), "k", label="Wigner surmise (GOE)")
    ax[2].plot(grid, np.exp(-grid), "k--", label="Poisson")
    ax[2].set(xlabel="unfolded spacing s", ylabel="density", title="teacher–student: level spacings")
    ax[2].legend(fontsize=8)
    save(fig, args.out, dpi=120)


if __name__ == "__main__":
    main()
