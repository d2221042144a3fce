"""Sampled vs exact training step of an MLP: tape bytes and step time, measured in one run.

    python benchmarks/bench_sampled_step.py [--reps 21] [--keep 0.1] [--only wide|digits] [--phases]

Two workloads: the wide MLP 784-1024-1024-10 at batch 128, and the digits MLP 64-256-256-10
at batch 32. A step = forward under the policy + backward + an SGD update (spad.optim.SGD).
One BLAS thread. Each repetition runs every policy once, in turn (exact, RAD, SPAD, ...), so
machine noise hits every policy alike; the ratio to exact is taken *within* a repetition
(policy step / the same repetition's exact step) and the table shows the median of those
ratios with their interquartile range (the noise). Times are process CPU time, so other
load on a shared machine does not inflate them (it still slows caches and memory).
--phases adds each policy's median forward / backward / optimizer time (where a step's time goes).
Older CPUs, on this one: a portable build (SPAD_PORTABLE=1 pip install -e .) run with
SPAD_KERNELS=avx2 OPENBLAS_CORETYPE=Haswell (an AVX2 machine) or SPAD_KERNELS=baseline
OPENBLAS_CORETYPE=Nehalem (SSE2 to SSE4.2 only).
"""
import argparse
import os
import platform
import subprocess
import time

# One BLAS thread, set before numpy loads: idle BLAS worker threads spin and steal a core.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

import spad
import spad.functional as F
import spad.optim as optim
import spad.sampling as S

WORKLOADS = {"wide": ([784, 1024, 1024, 10], 128), "digits": ([64, 256, 256, 10], 32)}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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


def policies(keep):
    return {
        "exact": None,
        "RAD (blocks)": S.RAD(keep, "different", seed=0),
        "RAD same": S.RAD(keep, "same", seed=0),
        "SPAD unbiased": S.SPAD(keep, seed=0),
        "SPAD biased": S.SPAD(keep, refresh=10 ** 9, unbiased=False, seed=0),
        "CRS": S.CRS(keep, seed=0),
    }


def bench(sizes, batch, keep, reps):
    rng = np.random.default_rng(1)
    x = spad.tensor(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = rng.integers(0, sizes[-1], batch)
    params = make_mlp(sizes)
    opt = optim.SGD(params, lr=1e-3)
    pols = policies(keep)
    times = {k: [] for k in pols}
    tape = {}

    phases = {k: [] for k in pols}

    def step(pol, split=None):
        t0 = time.process_time()
        opt.zero_grad()
        with S.use(pol):
            loss = F.cross_entropy(forward(params, x), y)
        st = spad.memory_stats()
        t1 = time.process_time()
        loss.backward()
        t2 = time.process_time()
        opt.step()
        if split is not None:
            split.append((t1 - t0, t2 - t1, time.process_time() - t2))
        return st

    for name, pol in pols.items():  # warm-up (SPAD biased: its first pass is its scoring pass)
        step(pol)
        tape[name] = step(pol)
    for _ in range(reps):
        for name, pol in pols.items():
            t0 = time.process_time()
            step(pol, phases[name])
            times[name].append(time.process_time() - t0)
    ex = np.array(times["exact"])
    rows = []
    for name in pols:
        t = np.array(times[name])
        r = t / ex
        q1, med, q3 = np.percentile(r, [25, 50, 75])
        b = tape[name]["tape_bytes"]
        ph = np.median(np.array(phases[name]), axis=0) * 1e3
        rows.append((name, b, b / tape["exact"]["tape_bytes"], np.median(t) * 1e3, med, q1, q3, ph))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--only", choices=sorted(WORKLOADS))
    ap.add_argument("--phases", action="store_true", help="also print forward / backward / optimizer medians")
    args = ap.parse_args(argv)
    spad.set_num_threads(1)
    print(f"CPU: {cpu_model()}; keep {args.keep}; {args.reps} interleaved reps; 1 BLAS thread; "
          "ratio = median over reps of (policy step / exact step of the same rep), [IQR]")
    # What the kernels and the BLAS run with: SPAD_KERNELS=baseline|avx2|avx512 and
    # OPENBLAS_CORETYPE (e.g. Nehalem, Haswell) pick narrower ones, as on an older CPU.
    print(f"sampled kernels: {spad._core.kernel_isa()} (available {','.join(spad._core.available_kernel_isas())}); "
          f"BLAS {spad._core.gemm_backend()}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(auto)')}")
    for wl, (sizes, batch) in WORKLOADS.items():
        if args.only and wl != args.only:
            continue
        rows = bench(sizes, batch, args.keep, args.reps)
        print(f"\nMLP {'-'.join(map(str, sizes))}, batch {batch}, SGD")
        print(f"| policy | tape bytes | x exact | step ms | step / exact [IQR] |")
        print("|---|---:|---:|---:|---:|")
        for name, b, br, ms, med, q1, q3, _ in rows:
            print(f"| {name} | {b} | {br:.4f} | {ms:.2f} | {med:.3f} [{q1:.3f}-{q3:.3f}] |")
        if args.phases:
            print("\n| policy | forward ms | backward ms | optimizer ms |")
            print("|---|---:|---:|---:|")
            for name, *_, ph in rows:
                print(f"| {name} | {ph[0]:.3f} | {ph[1]:.3f} | {ph[2]:.3f} |")


if __name__ == "__main__":
    main()
