"""gemm's column blocks (Note [Column blocks for OpenBLAS's small-matrix kernels] in
csrc/core/gemm.cpp) on and off: the digits MLP's products one by one, a few other batch-sized
products, and the whole digits training step, eager and compiled. Each setting runs in its own
process (SPAD_GEMM_BLOCKS=0 turns the split off when the library loads); the two processes
alternate for --rounds rounds and the table gives the median per-call process CPU time of each.

    python benchmarks/bench_gemm_blocks.py [--rounds 3]
"""
from __future__ import annotations

import benchlib

import argparse
import json
import os
import subprocess
import sys

import numpy as np

# name, rows, inner, cols, layout (nn: a @ b; tn: a.T @ b, a dW; nt: a @ b.T, a dx)
PRODUCTS = [
    ("digits fwd 1", 32, 64, 256, "nn"), ("digits fwd 2", 32, 256, 256, "nn"),
    ("digits dW 2", 256, 32, 256, "tn"), ("digits dx 2", 32, 256, 256, "nt"),
    ("digits dW 1", 64, 32, 256, "tn"), ("batch 16, 784 -> 256", 16, 784, 256, "nn"),
    ("batch 4 dx, 1024 <- 1024", 4, 1024, 1024, "nt"), ("W2 fwd 1 (not split)", 128, 784, 1024, "nn"),
]


def child(reps: int) -> dict:
    import engines as E
    import spad

    spad.set_num_threads(1)
    rng = np.random.default_rng(0)
    fns = {}
    for name, m, k, n, lay in PRODUCTS:
        a = spad.tensor(rng.standard_normal((k, m) if lay == "tn" else (m, k)).astype(np.float32))
        b = spad.tensor(rng.standard_normal((n, k) if lay == "nt" else (k, n)).astype(np.float32))

        def fn(a=a, b=b, lay=lay):
            with spad.no_grad():
                return (a.T @ b) if lay == "tn" else (a @ b.T) if lay == "nt" else (a @ b)

        fns[name] = fn
    x = rng.standard_normal((32, 64)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    w = benchlib.he_uniform_mlp([64, 256, 256, 10], seed=0)
    eager, compiled = E.SpadMLP(w, 1e-3, "xent"), spad.compile(E.SpadMLP(w, 1e-3, "xent").step)
    compiled(x, y)
    fns["digits step, eager"] = lambda: eager.step(x, y)
    fns["digits step, compiled"] = lambda: compiled(x, y)
    times = benchlib.interleaved(fns, reps=reps, inner=20)
    return {k: benchlib.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.reps)))
        return
    runs = {"on": [], "off": []}
    for _ in range(a.rounds):
        for setting in ("on", "off"):
            env = dict(os.environ, SPAD_GEMM_BLOCKS="1" if setting == "on" else "0")
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--reps", str(a.reps)],
                                 env=env, check=True, capture_output=True, text=True, cwd=benchlib.HERE).stdout
            runs[setting].append(json.loads(out.strip().splitlines()[-1]))
    import spad

    print(f"CPU: {benchlib.cpu_model()}; BLAS {spad._core.gemm_backend()}, one thread; "
          f"median per-call process CPU time over {a.rounds} alternating processes per setting\n")
    rows = []
    for name in runs["on"][0]:
        on = benchlib.median([r[name] for r in runs["on"]])
        off = benchlib.median([r[name] for r in runs["off"]])
        rows.append([name, benchlib.fmt_us(off), benchlib.fmt_us(on), f"{on / off:.2f}"])
    print(benchlib.table(["product or step", "one call µs", "column blocks µs", "blocks / one call"], rows))
    c = {s: benchlib.median([r["digits step, compiled"] / r["digits step, eager"] for r in runs[s]]) for s in runs}
    print(f"\ndigits step compiled / eager: column blocks {c['on']:.2f}, one call {c['off']:.2f}")


if __name__ == "__main__":
    main()
