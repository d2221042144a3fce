"""Data parallel on MPI: W2 step time on 1 and 2 ranks, all-reduce bytes, a scaling estimate.

    python benchmarks/bench_distributed.py                 # 5 interleaved rounds (needs mpiexec)
    python benchmarks/bench_distributed.py --rounds 9 --steps 30

W2 = MLP 784-1024-1024-10, SGD momentum 0.9, global batch 256 of synthetic Fashion-MNIST-sized
rows, one thread per rank. A round launches ``mpiexec -n 1`` (batch 256) then ``mpiexec -n 2``
(batch 128 per rank, gradients averaged), each timing ``--steps`` full steps (data, forward,
backward, all-reduce, update) after warm-up; the figures are medians over steps, then over rounds.
The 2-rank worker also measures: exact vs RAD(mode="same", keep=0.1, shared seed) all-reduce bytes
per step, and a bare Allreduce of the W2 gradient (bandwidth) and of 8 bytes (latency). The 1-rank
worker times the step's compute at smaller per-rank batches, for the strong-scaling estimate.
On a shared machine the 2-rank figure is pessimistic (both cores must be free); rerun it quiet.
MPICH's algorithm choice passes through the environment, e.g.
``MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM=recursive_doubling python benchmarks/bench_distributed.py``
(one exchange of the whole buffer: the cheapest all-reduce for 2 ranks, not for many).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import benchlib  # noqa: F401  (one BLAS thread, before numpy)
import numpy as np

SIZES = [784, 1024, 1024, 10]
GLOBAL_BATCH = 256


def _worker(steps: int, warmup: int) -> dict:
    spad = benchlib.import_spad()
    import spad.distributed as D
    import spad.functional as F
    from spad import nn, optim
    from spad import sampling as S
    from spad.data import DataLoader

    D.init()
    rank, size = D.rank(), D.size()
    bs = GLOBAL_BATCH // size
    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * (steps + warmup)
    X = rng.random((n, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], n)

    def run(policy, batch=bs, world=size, count=steps):
        net = nn.mlp(SIZES, seed=0)
        opt = optim.SGD(net.parameters(), 0.01, momentum=0.9)
        if world > 1:
            D.broadcast_parameters(net)
            opt = D.DistributedOptimizer(opt, policy=policy)
        loader = iter(DataLoader(X, y, batch, seed=1, rank=rank if world > 1 else 0, world_size=world))
        times, comm, nbytes = [], [], []
        for i in range(warmup + count):
            xb, yb = next(loader)
            if world > 1 and i == warmup:
                D.barrier()  # start the timed steps together
            D.reset_stats()
            t0 = time.perf_counter()
            with S.use(policy):
                loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t = time.perf_counter() - t0
            if i >= warmup:
                st = D.stats()
                times.append(t)
                comm.append(st["allreduce_seconds"])
                nbytes.append(st["allreduce_bytes"])
        return {"step": float(np.median(times)), "allreduce_s": float(np.median(comm)),
                "bytes": float(np.median(nbytes))}

    out = {"size": size, "rank": rank, "exact": run(None)}
    if size > 1:
        out["rad_same"] = run(S.RAD(keep=0.1, mode="same", seed=0))
        grad = np.ones(sum(a * b + b for a, b in zip(SIZES[:-1], SIZES[1:])), np.float32)
        small = np.ones(2, np.float32)
        for key, buf, reps in (("allreduce_full_s", grad, 20), ("allreduce_8B_s", small, 200)):
            ts = []
            D.barrier()
            for _ in range(reps):
                t0 = time.perf_counter()
                D._world.comm.Allreduce(D._world.MPI.IN_PLACE, buf, op=D._world.MPI.SUM)
                ts.append(time.perf_counter() - t0)
            out[key] = float(np.median(ts))
        out["grad_bytes"] = grad.nbytes
    else:  # compute time at the per-rank batches of 2..64 ranks (strong scaling at global 256)
        out["compute_at"] = {b: run(None, batch=b, count=max(steps // 2, 5))["step"] for b in (128, 32, 16, 8, 4)}
    return out


def _launch(n: int, steps: int, warmup: int) -> dict:
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install 'spad[distributed]' (mpi4py + the MPICH wheel)")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    p = subprocess.run([mpiexec, "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker",
                        "--steps", str(steps), "--warmup", str(warmup)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"worker on {n} rank(s) failed (rc {p.returncode}):\n{p.stdout}\n{p.stderr}")
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return next(r for r in rows if r["rank"] == 0)


def _ring(nbytes: float, p: int, bw: float, lat: float) -> float:
    """Ring all-reduce: each rank sends and receives 2(p-1)/p of the buffer in 2(p-1) steps."""
    return 2 * (p - 1) / p * nbytes / bw + 2 * (p - 1) * lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        res = _worker(a.steps, a.warmup)
        if res["rank"] == 0:  # the ranks step in lockstep; rank 0 speaks for the job
            print(json.dumps(res), flush=True)
        return
    one, two = [], []
    load0 = f"{os.getloadavg()[0]:.1f}"
    for r in range(a.rounds):  # interleaved, so machine load hits both alike
        one.append(_launch(1, a.steps, a.warmup))
        two.append(_launch(2, a.steps, a.warmup))
        print(f"round {r}: 1 rank {1e3 * one[-1]['exact']['step']:.1f} ms, 2 ranks {1e3 * two[-1]['exact']['step']:.1f}"
              f" ms (ratio {two[-1]['exact']['step'] / one[-1]['exact']['step']:.3f})", flush=True)
    med = lambda xs: float(np.median(xs))  # noqa: E731
    t1, t2 = med([o["exact"]["step"] for o in one]), med([t["exact"]["step"] for t in two])
    ratio = med([t["exact"]["step"] / o["exact"]["step"] for o, t in zip(one, two)])
    comm2 = med([t["exact"]["allreduce_s"] for t in two])
    b_exact, b_rad = med([t["exact"]["bytes"] for t in two]), med([t["rad_same"]["bytes"] for t in two])
    t_rad, comm_rad = med([t["rad_same"]["step"] for t in two]), med([t["rad_same"]["allreduce_s"] for t in two])
    full, lat = med([t["allreduce_full_s"] for t in two]), med([t["allreduce_8B_s"] for t in two])
    gbytes = two[0]["grad_bytes"]
    bw = gbytes / max(full - 2 * lat, 1e-9)  # inverting _ring(gbytes, 2, bw, lat) = gbytes/bw + 2 lat
    compute = {int(b): med([o["compute_at"][b] for o in one]) for b in one[0]["compute_at"]}
    compute[GLOBAL_BATCH] = t1
    cvars = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MPIR_CVAR_"))
    print(f"\nCPU: {benchlib.cpu_model()}; {a.rounds} rounds x {a.steps} steps; medians; "
          f"load average before/after {load0} / {os.getloadavg()[0]:.1f}; MPI cvars: {cvars or 'defaults'}")
    print("| W2 784-1024-1024-10, global batch 256 | step ms | all-reduce ms/step | all-reduce bytes/step |")
    print("|---|---|---|---|")
    print(f"| 1 rank, batch 256 | {1e3 * t1:.1f} | - | - |")
    print(f"| 2 ranks x 128, exact | {1e3 * t2:.1f} | {1e3 * comm2:.2f} | {b_exact:,.0f} |")
    print(f"| 2 ranks x 128, RAD same keep 0.1 (shared seed) | {1e3 * t_rad:.1f} | {1e3 * comm_rad:.2f} | "
          f"{b_rad:,.0f} |")
    best = min(t["exact"]["step"] / o["exact"]["step"] for o, t in zip(one, two))
    model = (compute[128] + full) / t1
    print(f"\n2-rank / 1-rank step (exact): median {ratio:.3f}, best round {best:.3f} (bar <= 0.7); "
          f"compute(128) + bare all-reduce over compute(256): {model:.3f}")
    print(f"all-reduce bytes RAD same keep 0.1 / exact: {b_rad / b_exact:.4f} (bar <= 0.15)")
    print(f"bare Allreduce of the W2 gradient ({gbytes:,d} B): {1e3 * full:.2f} ms -> ring bus bandwidth "
          f"{bw / 1e9:.2f} GB/s; 8-byte Allreduce {1e6 * lat:.1f} us")
    print("per-rank compute ms by per-rank batch (1 thread): "
          + ", ".join(f"{b}: {1e3 * compute[b]:.2f}" for b in sorted(compute)))
    links = [("measured (shared memory)", bw, lat), ("100 Gb/s InfiniBand (~11 GB/s, 2 us)", 11e9, 2e-6),
             ("10 Gb/s Ethernet (~1.1 GB/s, 30 us)", 1.1e9, 30e-6)]
    print("\nEstimated step ms, strong scaling at global batch 256 (compute at batch 256/p + ring all-reduce; "
          "exact | RAD same keep 0.1 bytes):")
    print("| link | " + " | ".join(f"p={p}" for p in (8, 16, 32, 64)) + " |")
    print("|---|" + "---|" * 4)
    for name, b, l in links:
        cells = []
        for p in (8, 16, 32, 64):
            c = compute[GLOBAL_BATCH // p]
            cells.append(f"{1e3 * (c + _ring(b_exact, p, b, l)):.1f} \\| {1e3 * (c + _ring(b_rad, p, b, l)):.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"(1 rank: {1e3 * t1:.1f} ms; weak scaling at 128 rows per rank adds the same all-reduce to "
          f"{1e3 * compute[128]:.1f} ms of compute)")


if __name__ == "__main__":
    main()
