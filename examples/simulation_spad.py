"""Selective-path AD through a simulation loop: fit the rates of a linear ODE system.

    x_{t+1} = x_t + dt * (a * x_t)      (explicit Euler, elementwise rates a, 60 steps)

The loss compares the simulated trajectory with observations of a system whose true rates
are known. In ``a * x_t`` the factor x_t is saved only for the gradient of the leaf ``a``,
so under a sampling policy the tape keeps a Bernoulli sample of every x_t (values + seed)
instead of the whole trajectory; the gradient with respect to ``a`` stays unbiased.

    python examples/simulation_spad.py [--n 2000] [--keep 0.25] [--iters 300]
"""
import argparse

import numpy as np

import spad
import spad.optim as optim
import spad.sampling as S

T, DT = 60, 0.05


def simulate(a, x0, observe):
    x, loss = x0, None
    for t in range(T):
        x = x + DT * (a * x)
        if t % 10 == 9:  # observed every 10 steps
            d = ((x - observe[t // 10]) ** 2).mean()
            loss = d if loss is None else loss + d
    return loss


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    true_a = rng.uniform(-1.0, 0.5, args.n)
    x0 = spad.tensor(rng.uniform(0.5, 1.5, args.n))
    obs, x = [], x0.numpy().copy()
    for t in range(T):
        x = x + DT * true_a * x
        if t % 10 == 9:
            obs.append(spad.tensor(x.copy()))
    print(f"{args.n} rates, {T} Euler steps, {args.iters} Adam iterations (lr {args.lr})")
    print(f"{'backprop':>12} {'final loss':>12} {'rate error':>11} {'peak tape B':>12} {'exact tape B':>13}")
    for keep in (1.0, args.keep):
        a = spad.zeros(args.n, requires_grad=True, dtype=np.float64)
        opt = optim.Adam([a], lr=args.lr)
        policy = None if keep >= 1 else S.RAD(keep=keep, seed=args.seed)
        peak = exact = 0
        for _ in range(args.iters):
            opt.zero_grad()
            spad.reset_peak_memory_stats()
            with S.use(policy):
                loss = simulate(a, x0, obs)
            st = spad.memory_stats()
            peak, exact = max(peak, st["peak_tape_bytes"]), max(exact, st["exact_tape_bytes"])
            loss.backward()
            opt.step()
        with spad.no_grad():
            final = simulate(a, x0, obs).item()
        err = float(np.sqrt(np.mean((a.numpy() - true_a) ** 2)))
        print(f"{'exact' if keep >= 1 else f'keep {keep}':>12} {final:12.4g} {err:11.4g} {peak:12d} {exact:13d}")


if __name__ == "__main__":
    main()
