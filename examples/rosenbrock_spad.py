"""Selective-path AD on a plain program: minimize a sum of 2-D Rosenbrock functions.

    f(x, y) = sum_i (1 - x_i)^2 + 100 (y_i - x_i^2)^2        (minimum 0 at x = y = 1)

Nothing here is a neural network. In ``x * x`` both factors are the leaf ``x``, so each
saved factor feeds only x's gradient; under a sampling policy the tape keeps a Bernoulli
sample of it (the kept values and an RNG seed, weight 1/keep) instead of the whole vector,
and the gradient stays unbiased. The run compares exact backprop with a sampled tape.

    python examples/rosenbrock_spad.py [--n 10000] [--keep 0.3] [--steps 3000]
"""
import argparse

import numpy as np

import spad
import spad.optim as optim
import spad.sampling as S


def rosenbrock(x, y):
    return ((1.0 - x) ** 2).sum() + (100.0 * (y - x * x) ** 2).sum()


def run(n, keep, steps, lr, seed):
    x = spad.zeros(n, requires_grad=True, dtype=np.float64)
    y = spad.zeros(n, requires_grad=True, dtype=np.float64)
    opt = optim.Adam([x, y], lr=lr)
    policy = None if keep >= 1 else S.RAD(keep=keep, seed=seed)
    mul_bytes = []
    for _ in range(steps):
        opt.zero_grad()
        with S.use(policy):
            sq = x * x  # the op whose saved factors a policy may sample
            mul_bytes.append(spad.memory_stats()["tape_bytes"])
            f = ((1.0 - x) ** 2).sum() + (100.0 * (y - sq) ** 2).sum()
        f.backward()
        opt.step()
    with spad.no_grad():
        final = rosenbrock(x, y).item()
    return final, float(np.abs(x.numpy() - 1).max()), int(np.median(mul_bytes))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--keep", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(f"{a.n} Rosenbrock pairs, Adam lr={a.lr}, {a.steps} steps; f starts at {a.n}")
    print(f"{'backprop':>12} {'final f':>12} {'max|x-1|':>10} {'x*x tape bytes':>15}")
    for keep in (1.0, a.keep):
        f, err, b = run(a.n, keep, a.steps, a.lr, a.seed)
        print(f"{'exact' if keep >= 1 else f'keep {keep}':>12} {f:12.4g} {err:10.3g} {b:15d}")


if __name__ == "__main__":
    main()
