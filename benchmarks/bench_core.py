"""Engine-core bars: forward+backward (no update) of two MLPs and float32 matmul, spad vs
hand-written numpy vs PyTorch eager, in one run with one BLAS thread.

    python benchmarks/bench_core.py [--rounds 15]

Per-call process CPU time (single-threaded work, so other load on a shared machine does not
inflate it), median over rounds in which the engines take turns. PyTorch is optional.
"""
import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: idle BLAS threads spin
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import spad  # noqa: E402
import spad.functional as F  # noqa: E402

try:
    import torch
except ImportError:
    torch = None


def mlp_weights(sizes, seed=0):
    rng = np.random.default_rng(seed)
    ws = []
    for a, b in zip(sizes, sizes[1:]):
        ws += [(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32), np.zeros(b, np.float32)]
    return ws


def spad_fwd_bwd(ws, x, y, loss):
    ps = []
    for w in ws:
        t = spad.tensor(w.copy(), requires_grad=True)
        t._is_param = True
        ps.append(t)
    xt = spad.tensor(x)
    yt = spad.tensor(y) if loss == "mse" else y
    lossf = F.mse_loss if loss == "mse" else F.cross_entropy
    lin, relu, n = F.linear, F.relu, len(ps) // 2

    def run():
        h = xt
        for i in range(n):
            h = lin(h, ps[2 * i], ps[2 * i + 1])
            if i < n - 1:
                h = relu(h)
        lossf(h, yt).backward()  # gradients accumulate into .grad, as in PyTorch's run

    return run


def numpy_fwd_bwd(ws, x, y, loss):
    n = len(ws) // 2

    def run():
        acts, h = [x], x
        for i in range(n):
            h = h @ ws[2 * i] + ws[2 * i + 1]
            if i < n - 1:
                h = np.maximum(h, 0)
                acts.append(h)
        if loss == "mse":
            g = (2.0 / h.size) * (h - y)
        else:
            z = np.exp(h - h.max(1, keepdims=True))
            g = z / z.sum(1, keepdims=True)
            g[np.arange(len(y)), y] -= 1
            g /= len(y)
        grads = []
        for i in reversed(range(n)):
            a = acts[i]
            grads += [a.T @ g, g.sum(0)]
            if i > 0:
                g = (g @ ws[2 * i].T) * (a > 0)
        return grads

    return run


def torch_fwd_bwd(ws, x, y, loss):
    ps = [torch.tensor(w, requires_grad=True) for w in ws]
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    lossf = torch.nn.functional.mse_loss if loss == "mse" else torch.nn.functional.cross_entropy
    n = len(ps) // 2

    def run():
        h = xt
        for i in range(n):
            h = torch.addmm(ps[2 * i + 1], h, ps[2 * i])
            if i < n - 1:
                h = torch.relu(h)
        lossf(h, yt).backward()  # gradients accumulate into .grad

    return run


def cpu_us(fn, budget=0.02):
    n, t = 1, 0.0
    while True:  # calls per sample: enough for ~budget seconds
        t0 = time.process_time()
        for _ in range(n):
            fn()
        t = time.process_time() - t0
        if t >= budget:
            return t / n * 1e6
        n *= 2


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    spad.set_num_threads(1)
    if torch is not None:
        torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    cases = []
    for name, sizes, batch, loss in [("MLP 2-16-16-1, batch 1, MSE", [2, 16, 16, 1], 1, "mse"),
                                      ("MLP 64-256-256-10, batch 32, cross-entropy", [64, 256, 256, 10], 32, "xent")]:
        ws = mlp_weights(sizes)
        x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        y = (rng.standard_normal((batch, 1)).astype(np.float32) if loss == "mse"
             else rng.integers(0, sizes[-1], batch))
        eng = {"spad": spad_fwd_bwd(ws, x, y, loss), "numpy": numpy_fwd_bwd(ws, x, y, loss)}
        if torch is not None:
            eng["PyTorch"] = torch_fwd_bwd(ws, x, y, loss)
        cases.append((f"forward+backward, {name}", eng))
    for M, K, N in [(128, 784, 1024), (32, 64, 256)]:
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        A, B = spad.tensor(a), spad.tensor(b)
        eng = {"spad": lambda A=A, B=B: A @ B, "numpy": lambda a=a, b=b: a @ b}
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            eng["PyTorch"] = lambda ta=ta, tb=tb: ta @ tb
        cases.append((f"matmul {M}x{K} @ {K}x{N} float32", eng))
    print(f"one BLAS thread; CPU-time medians of {args.rounds} interleaved rounds (microseconds)")
    print(f"{'workload':58s} {'spad':>9s} {'numpy':>9s} {'PyTorch':>9s} {'spad/numpy':>11s}")
    for name, eng in cases:
        for f in eng.values():  # warm-up
            cpu_us(f, 0.01)
        t = {k: [] for k in eng}
        for _ in range(args.rounds):
            for k, f in eng.items():
                t[k].append(cpu_us(f))
        m = {k: float(np.median(v)) for k, v in t.items()}
        tp = f"{m['PyTorch']:9.1f}" if "PyTorch" in m else f"{'-':>9s}"
        print(f"{name:58s} {m['spad']:9.1f} {m['numpy']:9.1f} {tp} {m['spad'] / m['numpy']:11.3f}")


if __name__ == "__main__":
    main()
