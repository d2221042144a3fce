"""Sampled vs exact training step of an MLP: tape bytes and step time, measured in one run.

    python benchmarks/bench_sampled_step.py [--sizes 784,1024,1024,10] [--batch 128] [--reps 15]

Times are process CPU-time medians (one BLAS thread, so CPU time is the work done and other
load on a shared machine does not inflate it) over interleaved repetitions (exact, RAD, SPAD, ... in turn), so machine
noise hits every policy alike; ratios are relative to the exact step of the same run.
One BLAS thread. A step = forward under the policy + backward + SGD update.
"""
import argparse
import os
import time

# One BLAS thread, set before numpy loads: idle BLAS worker threads spin and steal a core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import spad
import spad.functional as F
import spad.sampling as S


def make_mlp(sizes, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    params = []
    for a, b in zip(sizes, sizes[1:]):
        W = spad.tensor((rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(dtype), requires_grad=True)
        bias = spad.zeros(b, requires_grad=True, dtype=dtype)
        W._is_param = bias._is_param = True
        params += [W, bias]
    return params


def forward(params, x):
    h = x
    for i in range(0, len(params), 2):
        h = F.linear(h, params[i], params[i + 1])
        if i + 2 < len(params):
            h = F.relu(h)
    return h


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="784,1024,1024,10")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    spad.set_num_threads(1)
    rng = np.random.default_rng(1)
    x = spad.tensor(rng.standard_normal((args.batch, sizes[0])).astype(np.float32))
    y = rng.integers(0, sizes[-1], args.batch)
    params = make_mlp(sizes)
    lr = 1e-3
    policies = {
        "exact": None,
        "RAD different": S.RAD(args.keep, "different", seed=0),
        "RAD same": S.RAD(args.keep, "same", seed=0),
        "SPAD unbiased": S.SPAD(args.keep, refresh=10 ** 9, seed=0),
        "SPAD biased": S.SPAD(args.keep, refresh=10 ** 9, unbiased=False, seed=0),
        "CRS": S.CRS(args.keep, seed=0),
    }
    times = {k: [] for k in policies}
    tape = {}

    def step(name, pol):
        for p in params:
            p.grad = None
        spad.reset_peak_memory_stats()
        with S.use(pol):
            loss = F.cross_entropy(forward(params, x), y)
        st = spad.memory_stats()
        loss.backward()
        with spad.no_grad():
            for p in params:  # plain SGD, in numpy on the shared buffers
                p.numpy()[...] -= lr * p.grad.numpy()
        return st

    for name, pol in policies.items():  # warm-up; SPAD's first pass is its scoring pass
        step(name, pol)
        tape[name] = step(name, pol)
    for _ in range(args.reps):
        for name, pol in policies.items():
            t0 = time.process_time()
            step(name, pol)
            times[name].append(time.process_time() - t0)
    ex_t = np.median(times["exact"])
    ex_b = tape["exact"]["tape_bytes"]
    print(f"MLP {args.sizes}, batch {args.batch}, keep {args.keep}, {args.reps} interleaved reps, 1 BLAS thread")
    print(f"{'policy':16s} {'tape bytes':>11s} {'x exact':>8s} {'step ms':>8s} {'x exact':>8s}")
    for name in policies:
        t = np.median(times[name])
        b = tape[name]["tape_bytes"]
        print(f"{name:16s} {b:11d} {b / ex_b:8.4f} {t * 1e3:8.2f} {t / ex_t:8.3f}")


if __name__ == "__main__":
    main()
