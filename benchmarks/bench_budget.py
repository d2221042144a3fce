"""Optimizers inside backward and fit(memory_budget=...) on an MLP, one thread.

Prints: (1) the largest relative parameter difference between in_backward=True and backward();
step() after a few steps, for every optimizer; (2) the step peak allocation of exact backprop
with the ordinary optimizer and with the optimizer in backward, and of SPAD/RAD keep 0.1 with the
optimizer in backward; (3) the budget solver's floor and, for b = half the exact step's peak (and,
when that is below the floor, for b halfway between floor and exact peak), every step's measured
peak under fit(memory_budget=b).

    python benchmarks/bench_budget.py [--sizes 784,1024,1024,1024,1024,10] [--batch 1024] [--steps 6]
"""
from __future__ import annotations

import benchlib  # noqa: F401  (first: pins BLAS threads)

import argparse

import numpy as np

spad = benchlib.import_spad()
import spad.functional as F  # noqa: E402
import spad.nn as nn  # noqa: E402
import spad.optim as optim  # noqa: E402
import spad.sampling as S  # noqa: E402
from spad.data import DataLoader  # noqa: E402
from spad.train import fit  # noqa: E402

OPTIMIZERS = [
    ("SGD", optim.SGD, dict(lr=0.05)),
    ("SGD momentum", optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("SGD Nesterov + wd", optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("Adagrad", optim.Adagrad, dict(lr=0.05)),
    ("RMSprop momentum", optim.RMSprop, dict(lr=0.01, momentum=0.9)),
    ("Adam", optim.Adam, dict(lr=0.01)),
    ("AdamW", optim.AdamW, dict(lr=0.01)),
]


def equality(steps=5):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 32)).astype(np.float32), rng.integers(0, 10, 64)
    rows = []
    for name, cls, kw in OPTIMIZERS:
        out = []
        for ib in (False, True):
            model = nn.mlp([32, 64, 64, 10], seed=1)
            opt = cls(model.parameters(), in_backward=ib, **kw)
            for s in range(steps):
                opt.zero_grad()
                F.cross_entropy(model(spad.tensor(X)), y).backward()
                opt.step()
            out.append([p.numpy().copy() for p in model.parameters()])
        rel = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-30)) for a, b in zip(*out))
        rows.append((name, rel))
    return rows


def step_peak(sizes, X, y, batch, policy, in_backward, steps=2):
    model = nn.mlp(sizes, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, in_backward=in_backward)
    peak = 0
    for i in range(steps):
        opt.zero_grad()
        spad.reset_peak_memory_stats()
        with S.use(policy):
            loss = F.cross_entropy(model(spad.tensor(X[i * batch:(i + 1) * batch])), y[i * batch:(i + 1) * batch])
        loss.backward()
        opt.step()
        peak = max(peak, spad.memory_stats()["peak_allocated_bytes"])
    return peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="784,1024,1024,1024,1024,10")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    spad.set_num_threads(1)
    print("in_backward=True vs backward(); step(): max relative parameter difference after 5 steps")
    for name, rel in equality():
        print(f"  {name:20s} {rel:.2e}")
    sizes = [int(v) for v in a.sizes.split(",")]
    rng = np.random.default_rng(0)
    n = a.batch * max(a.steps, 2)
    X, y = rng.standard_normal((n, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], n)
    exact = step_peak(sizes, X, y, a.batch, None, False)
    print(f"MLP {a.sizes}, batch {a.batch}, SGD momentum: step peak allocation (bytes)")
    print(f"  exact, ordinary optimizer        {exact}")
    print(f"  exact, optimizer in backward     {step_peak(sizes, X, y, a.batch, None, True)}")
    for pol in (S.RAD(0.1), S.SPAD(0.1)):
        p = step_peak(sizes, X, y, a.batch, pol, True)
        print(f"  {type(pol).__name__} keep 0.1, in backward   {p}   ({p / exact:.2f}x exact)")
    model = nn.mlp(sizes, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, in_backward=True)
    floor = spad.Budget(10 ** 15).plan(model, F.cross_entropy, spad.tensor(X[:a.batch]), y[:a.batch], opt).floor
    del model, opt
    print(f"  budget floor (min_keep 0.05, in backward) {floor}   ({floor / exact:.2f}x exact)")
    budgets = [exact // 2] + ([(floor + exact) // 2] if floor > exact // 2 else [])
    for b in budgets:
        model = nn.mlp(sizes, seed=0)
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, in_backward=True)
        loader = DataLoader(X[:a.batch * a.steps], y[:a.batch * a.steps], a.batch, seed=0)
        try:
            hist = fit(model, F.cross_entropy, loader, opt, 1, memory_budget=spad.Budget(b, resolve_every=3),
                       progress=False)
        except spad.MemoryBudgetError as e:
            print(f"  fit(memory_budget={b}): MemoryBudgetError, floor {e.floor} B")
            continue
        plan = hist.budget_plans[-1]
        print(f"  fit(memory_budget={b}): max step peak {hist.peak_allocated_bytes[-1]} "
              f"({'within' if hist.peak_allocated_bytes[-1] <= b else 'OVER'}); {plan.summary()}")


if __name__ == "__main__":
    main()
