"""conv2d forward + backward time, spad vs torch (if installed), one thread each.

    PYTHONPATH=. python benchmarks/bench_conv.py [--n 32] [--cin 1] [--cout 8] [--size 28] [--k 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import spad
import spad.functional as F


def best_of(fn, repeats: int, inner: int) -> float:
    """Best mean time per call (seconds) over `repeats` runs of `inner` calls."""
    fn()  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--cin", type=int, default=1)
    ap.add_argument("--cout", type=int, default=8)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--inner", type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.n, a.cin, a.size, a.size)).astype(np.float32)
    w = (rng.standard_normal((a.cout, a.cin, a.k, a.k)) * 0.1).astype(np.float32)
    b = np.zeros(a.cout, np.float32)

    spad.set_num_threads(1)
    tx = spad.tensor(x)
    tw, tb = spad.tensor(w, requires_grad=True), spad.tensor(b, requires_grad=True)

    def spad_step():
        F.conv2d(tx, tw, tb, padding=1).sum().backward()

    rows = [("spad", best_of(spad_step, a.repeats, a.inner))]
    try:
        import torch

        torch.set_num_threads(1)
        px = torch.tensor(x)
        pw, pb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)

        def torch_step():
            torch.nn.functional.conv2d(px, pw, pb, padding=1).sum().backward()

        rows.append(("torch", best_of(torch_step, a.repeats, a.inner)))
    except ImportError:
        pass
    print(f"conv2d fwd+bwd (dW, db), x {x.shape}, w {w.shape}, padding 1, float32, 1 thread")
    for name, t in rows:
        print(f"  {name:6s} {t * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
