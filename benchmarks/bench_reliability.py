"""What the reliability checks cost: fit() on the bundled digits (MLP 64-128-128-10, batch 64)
with and without the per-step finiteness check of gradients and parameters, interleaved in one
process, one BLAS thread. Prints the median epoch time of each and their ratio.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/bench_reliability.py [--rounds 7]
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import spad  # noqa: E402
import spad.functional as F  # noqa: E402
from spad import datasets, nn, optim, train  # noqa: E402
from spad.data import DataLoader  # noqa: E402


def epoch_time(X, y, check: bool) -> float:
    model = nn.mlp([64, 128, 128, 10], seed=0)
    loader = DataLoader(X, y, 64, seed=0)
    saved = train._check_finite
    if not check:
        train._check_finite = lambda *a: None
    try:
        t0 = time.perf_counter()
        train.fit(model, F.cross_entropy, loader, optim.SGD(model.parameters(), lr=0.05), epochs=1, progress=False)
        return time.perf_counter() - t0
    finally:
        train._check_finite = saved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    spad.set_num_threads(1)
    X, y = datasets.digits()
    epoch_time(X, y, True)  # warm-up
    on, off = [], []
    for _ in range(a.rounds):
        off.append(epoch_time(X, y, False))
        on.append(epoch_time(X, y, True))
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"fit epoch, digits MLP 64-128-128-10, batch 64, {a.rounds} interleaved rounds")
    print(f"  without finiteness check  {m_off * 1e3:8.1f} ms (median)")
    print(f"  with finiteness check     {m_on * 1e3:8.1f} ms (median)")
    print(f"  ratio with/without        {m_on / m_off:8.3f}")


if __name__ == "__main__":
    main()
