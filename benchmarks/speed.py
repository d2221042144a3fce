"""Speed: spad vs hand-written numpy vs PyTorch eager, one training step (forward, backward,
SGD update) per workload and two float32 matmuls, all measured in one run as interleaved
process-CPU-time medians on one thread; plus W1 trained to convergence by all three engines
from the same initial weights and batch order (their test accuracies side by side).

    python benchmarks/speed.py [--quick]
"""
from __future__ import annotations

import benchlib  # noqa: F401  (first: pins BLAS threads)

import argparse

import numpy as np

import engines as E
import spad
from spad.datasets import digits_split

MLP_WORKLOADS = [
    # name, sizes, batch, loss
    ("W1 digits MLP 64-256-256-10, batch 32", [64, 256, 256, 10], 32, "xent"),
    ("W2 MLP 784-1024-1024-10, batch 128", [784, 1024, 1024, 10], 128, "xent"),
    ("W3 MLP 2-16-16-1, batch 1", [2, 16, 16, 1], 1, "mse"),
    ("W3 MLP 2-16-16-1, batch 16", [2, 16, 16, 1], 16, "mse"),
]


def _mlp_fns(torch, sizes, batch, loss, lr=1e-3):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    if loss == "xent":
        y = rng.integers(0, sizes[-1], batch)
    else:
        y = rng.standard_normal((batch, sizes[-1])).astype(np.float32)
    w = benchlib.he_uniform_mlp(sizes, seed=0)
    sp, npy = E.SpadMLP(w, lr, loss), E.NumpyMLP(w, lr, loss)
    xs = spad.tensor(x)
    ys = y if loss == "xent" else spad.tensor(y)
    fns = {"spad": lambda: sp.step(xs, ys), "numpy": lambda: npy.step(x, y)}
    if torch is not None:
        tm = E.TorchMLP(torch, w, lr, loss)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        fns["PyTorch"] = lambda: tm.step(xt, yt)
    return fns


def _cnn_fns(torch, batch=32, lr=1e-3):
    rng = np.random.default_rng(2)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    w = E.cnn_weights(0)
    sp, npy = E.SpadCNN(w, lr), E.NumpyCNN(w, lr)
    xs = spad.tensor(x)
    fns = {"spad": lambda: sp.step(xs, y), "numpy": lambda: npy.step(x, y)}
    if torch is not None:
        tc = E.TorchCNN(torch, w, lr)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        fns["PyTorch"] = lambda: tc.step(xt, yt)
    return fns


def _matmul_fns(torch, m, k, n):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    sa, sb = spad.tensor(a), spad.tensor(b)

    def sp():
        with spad.no_grad():
            return sa @ sb

    fns = {"spad": sp, "numpy": lambda: a @ b}
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fns["PyTorch"] = lambda: ta @ tb
    return fns


def _inner(fn, target=0.02):
    """Calls per measurement so that one measurement takes about ``target`` CPU seconds."""
    import time

    fn()
    t0 = time.process_time()
    n = 0
    while time.process_time() - t0 < 0.01:
        fn()
        n += 1
    per = (time.process_time() - t0) / max(n, 1)
    return max(1, int(target / max(per, 1e-7)))


def timings(torch, quick: bool):
    cases = [(name, _mlp_fns(torch, s, b, l)) for name, s, b, l in MLP_WORKLOADS]
    cases.append(("CNN conv8-pool-conv16-pool-linear, 28x28, batch 32", _cnn_fns(torch)))
    cases.append(("matmul 128x784 @ 784x1024 (float32)", _matmul_fns(torch, 128, 784, 1024)))
    cases.append(("matmul 32x64 @ 64x256 (float32)", _matmul_fns(torch, 32, 64, 256)))
    reps = 5 if quick else 21
    target = 0.01 if quick else 0.03
    rows = []
    for name, fns in cases:
        inner = min(_inner(f, target) for f in fns.values())
        t = benchlib.interleaved(fns, reps=reps, inner=inner)
        rows.append((name, {k: benchlib.median(v) for k, v in t.items()}, reps, inner))
    return rows


def train_w1(torch, epochs: int, lr=0.1, batch=32, seed=0):
    """W1 trained by every engine from the same weights and the same batch order."""
    Xtr, ytr, Xte, yte = digits_split()
    Xtr, Xte = Xtr.astype(np.float32), Xte.astype(np.float32)
    w = benchlib.he_uniform_mlp([64, 256, 256, 10], seed=seed)
    models = {"spad": E.SpadMLP(w, lr), "numpy": E.NumpyMLP(w, lr)}
    if torch is not None:
        models["PyTorch"] = E.TorchMLP(torch, w, lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(len(Xtr))
        for i in range(0, len(Xtr), batch):
            idx = perm[i:i + batch]
            xb, yb = np.ascontiguousarray(Xtr[idx]), ytr[idx]
            for name, m in models.items():
                if name == "PyTorch":
                    m.step(torch.from_numpy(xb), torch.from_numpy(yb))
                else:
                    m.step(xb, yb)
    preds = {k: m.predict(Xte).argmax(1) for k, m in models.items()}
    acc = {k: float((p == yte).mean()) for k, p in preds.items()}
    agree = {k: float((p == preds["numpy"]).mean()) for k, p in preds.items()}
    return acc, agree, len(Xtr), len(Xte)


def run(quick: bool = False) -> str:
    torch = benchlib.import_torch()
    engines = ["spad", "numpy"] + (["PyTorch"] if torch is not None else [])
    rows = timings(torch, quick)
    header = ["workload"] + [f"{e} µs" for e in engines] + ["numpy / spad"]
    if torch is not None:
        header.append("PyTorch / spad")
    body = []
    for name, med, reps, inner in rows:
        r = [name] + [benchlib.fmt_us(med[e]) for e in engines] + [f"{med['numpy'] / med['spad']:.2f}"]
        if torch is not None:
            r.append(f"{med['PyTorch'] / med['spad']:.2f}")
        body.append(r)
    out = ["### Speed: one training step / one matmul", "",
           f"Per-call process CPU time, median of {rows[0][2]} interleaved rounds (each round runs every "
           "engine in turn for ~10-30 ms), one thread everywhere. A step is forward + backward + SGD update "
           "(cross-entropy for W1/W2/CNN, MSE for W3). Ratios above 1 mean spad is faster."
           + ("" if torch is not None else " PyTorch is not installed: its columns are omitted."), "",
           benchlib.table(header, body), ""]
    epochs = 2 if quick else 10
    acc, agree, ntr, nte = train_w1(torch, epochs)
    out += [f"### W1 trained by each engine ({epochs} epochs, SGD lr 0.1, batch 32, same initial weights "
            f"and batch order; digits {ntr} train / {nte} test)", "",
            benchlib.table(["engine", "test accuracy", "predictions equal to numpy's"],
                           [[k, f"{acc[k]:.4f}", f"{agree[k]:.4f}"] for k in acc]), ""]
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(run(ap.parse_args().quick))
