"""One SGD step (forward, backward, update) of the digits MLP 64-256-256-10 at batch 32,
and a 20-epoch training run, in spad and in PyTorch eager on the same machine, 1 thread.

PyTorch runs two ways: the module loop (torch.nn.Sequential with PyTorch's own init and batch
order: the common idiom) and a functional loop (torch.nn.functional on plain tensors holding
spad's initial weights, fed spad's DataLoader batch order), which does the same arithmetic as
spad's fit() on the same examples, so its accuracy should match spad's up to float rounding.

    python benchmarks/bench_train.py          # PyTorch is optional; its rows are skipped without it
"""
import os
import time
import timeit

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: idle BLAS threads spin
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

import spad
import spad.functional as F
import spad.nn as nn
import spad.optim as optim
from spad.data import DataLoader
from spad.datasets import digits_split
from spad.train import evaluate, fit

try:
    import torch
except ImportError:
    torch = None


def best_us(fn, number=200, repeat=7):
    return 1e6 * min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def spad_step():
    rng = np.random.default_rng(0)
    x = spad.tensor(rng.random((32, 64), dtype=np.float32))
    y = rng.integers(0, 10, 32)
    model = nn.mlp([64, 256, 256, 10], seed=0)
    opt = optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return best_us(step)


def torch_model():
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 10))


def torch_step():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((32, 64), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 32))
    model = torch_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return best_us(step)


def spad_fit(data):
    Xtr, ytr, Xte, yte = data
    model = nn.mlp([64, 256, 256, 10], seed=0)
    t0 = time.perf_counter()
    fit(model, F.cross_entropy, DataLoader(Xtr, ytr, 32, seed=0), optim.SGD(model.parameters(), lr=0.1), 20,
        progress=True)  # with its progress bar, per-step loss/accuracy and tape bookkeeping
    return time.perf_counter() - t0, evaluate(model, Xte, yte)["accuracy"]


def torch_fit(data):
    Xtr, ytr, Xte, yte = (torch.from_numpy(a) for a in data)
    torch.manual_seed(0)
    model = torch_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(20):
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
    secs = time.perf_counter() - t0
    with torch.no_grad():
        acc = (model(Xte).argmax(1) == yte).float().mean().item()
    return secs, acc


def torch_functional_fit(data):
    """The same run as spad_fit: spad's initial weights, spad's batch order, plain SGD."""
    Xtr, ytr, Xte, yte = data
    params = [torch.from_numpy(p.numpy().copy()).requires_grad_() for p in nn.mlp([64, 256, 256, 10], seed=0).parameters()]
    order = DataLoader(Xtr, ytr, 32, seed=0)
    epochs = [[torch.from_numpy(i) for i in order.epoch_indices()] for _ in range(20)]
    Xt, yt = torch.from_numpy(np.ascontiguousarray(Xtr, dtype=np.float32)), torch.from_numpy(ytr.astype(np.int64))
    opt = torch.optim.SGD(params, lr=0.1)

    def forward(x):
        h = x
        for i in range(0, len(params), 2):
            h = torch.addmm(params[i + 1], h, params[i])
            if i + 2 < len(params):
                h = torch.relu(h)
        return h

    t0 = time.perf_counter()
    for batches in epochs:
        for idx in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(forward(Xt[idx]), yt[idx]).backward()
            opt.step()
    secs = time.perf_counter() - t0
    with torch.no_grad():
        acc = (forward(torch.from_numpy(Xte.astype(np.float32))).argmax(1) == torch.from_numpy(yte)).float().mean()
    return secs, acc.item()


def main():
    spad.set_num_threads(1)
    if torch is not None:
        torch.set_num_threads(1)
    data = digits_split()
    print("one SGD step, digits MLP 64-256-256-10, batch 32, 1 thread (best of 7 x 200)")
    print(f"  spad           {spad_step():8.1f} us")
    if torch is not None:
        print(f"  PyTorch eager  {torch_step():8.1f} us   (torch {torch.__version__})")
    print("20-epoch fit on digits (1,438 train examples, batch 32, SGD lr 0.1), median of 5 interleaved runs")
    runs = {"spad": [], "torch": [], "torch-f": []}
    for _ in range(5):
        runs["spad"].append(spad_fit(data))
        if torch is not None:
            runs["torch"].append(torch_fit(data))
            runs["torch-f"].append(torch_functional_fit(data))
    s = float(np.median([r[0] for r in runs["spad"]]))
    print(f"  spad fit()                     {s:8.3f} s   test accuracy {runs['spad'][0][1]:.4f}  (progress bar on)")
    if torch is not None:
        t = float(np.median([r[0] for r in runs["torch"]]))
        tf = float(np.median([r[0] for r in runs["torch-f"]]))
        print(f"  PyTorch module loop            {t:8.3f} s   test accuracy {runs['torch'][0][1]:.4f}  "
              "(nn.Sequential, PyTorch's init and batch order)")
        print(f"  PyTorch functional loop        {tf:8.3f} s   test accuracy {runs['torch-f'][0][1]:.4f}  "
              "(spad's init and batch order)")
        print(f"  ratio spad / PyTorch module loop:     {s / t:.3f}")
        print(f"  ratio spad / PyTorch functional loop: {s / tf:.3f}")


if __name__ == "__main__":
    main()
