"""RAD's experimental question on Fashion-MNIST: at equal tape memory, does sampled backprop with
a large batch beat exact backprop with the small batch that fits the same memory? And does SPAD
beat uniform RAD?

Runs (MLP 784-300-300-10, SGD lr 0.01 momentum 0.9, the same number of steps and the same
initial weights per seed, 3 seeds):
  exact, batch 150 | exact, batch B_eq (the largest batch whose exact tape fits RAD keep-0.1's
  measured tape at batch 150) | RAD keep 0.1, batch 150 | SPAD keep 0.1 batch 150, unbiased and
  biased. Training loss (on a fixed 10,000-example training subset) and test accuracy every
  ``eval_every`` steps; gradient MSE and sampling variance per layer at a few checkpoints (seed 0).

    python benchmarks/equal_memory.py [--steps 4000] [--seeds 3]     # needs dataset-fashion-mnist
"""
from __future__ import annotations

import benchlib  # noqa: F401  (first: pins BLAS threads)

import argparse
import time

import numpy as np

spad = benchlib.import_spad()
import spad.functional as F  # noqa: E402
import spad.nn as nn  # noqa: E402
import spad.optim as optim  # noqa: E402
import spad.sampling as S  # noqa: E402
from spad.data import DataLoader  # noqa: E402

SIZES = [784, 300, 300, 10]
KEEP, BIG = 0.1, 150
LR, MOMENTUM = 0.01, 0.9
REFRESH = 50


def make_policy(kind, seed):
    if kind == "exact":
        return None
    if kind == "rad":
        return S.RAD(KEEP, seed=seed)
    if kind == "spad":
        return S.SPAD(KEEP, refresh=REFRESH, seed=seed)
    if kind == "spad-biased":
        return S.SPAD(KEEP, refresh=REFRESH, unbiased=False, seed=seed)
    raise KeyError(kind)


def tape_bytes(kind, batch, X, y):
    model = nn.mlp(SIZES, seed=0)
    pol = make_policy(kind, 0)
    with S.use(pol):
        loss = F.cross_entropy(model(spad.tensor(X[:batch])), y[:batch])
    b = spad.memory_stats()["tape_bytes"]
    loss.backward()
    return b


def equal_memory_batch(X, y):
    """The largest batch whose exact tape fits the measured RAD keep-0.1 tape at batch 150
    (exact tape bytes are affine in the batch: measured at two sizes)."""
    budget = tape_bytes("rad", BIG, X, y)
    t1, t2 = tape_bytes("exact", 10, X, y), tape_bytes("exact", 20, X, y)
    slope = (t2 - t1) / 10
    b = int((budget - (t1 - 10 * slope)) // slope)
    while tape_bytes("exact", b + 1, X, y) <= budget:
        b += 1
    while tape_bytes("exact", b, X, y) > budget:
        b -= 1
    return b, budget, tape_bytes("exact", b, X, y), tape_bytes("exact", BIG, X, y)


def evaluate(model, X, y):
    with spad.no_grad():
        out = model(spad.tensor(X))
        loss = F.cross_entropy(out, y).item()
    return loss, float((out.numpy().argmax(1) == y).mean())


def grads(model, x, y, pol):
    for p in model.parameters():
        p.grad = None
    with S.use(pol):
        loss = F.cross_entropy(model(spad.tensor(x)), y)
    loss.backward()
    return [m.weight.grad.numpy().astype(np.float64) for m in model.children() if isinstance(m, nn.Linear)]


def gradient_noise(model, pol, batch, Xs, ys, rng, draws):
    """Per layer: E||g_hat - g_ref||^2 / ||g_ref||^2 where g_ref is the exact gradient on the
    whole 10k subset and g_hat a minibatch gradient (this run's batch size and policy) on a
    random batch of the subset: data noise + sampling noise + any bias. Also the sampling-only
    variance on one fixed batch (S.estimate_variance). The policy's clock advances (seed-0 runs only)."""
    ref = grads(model, Xs, ys, None)
    mse = np.zeros(len(ref))
    for _ in range(draws):
        idx = rng.choice(len(Xs), batch, replace=False)
        g = grads(model, np.ascontiguousarray(Xs[idx]), ys[idx], pol)
        mse += [((a - b) ** 2).sum() for a, b in zip(g, ref)]
    mse /= draws
    rel = mse / np.array([(r ** 2).sum() for r in ref])
    samp = None
    if pol is not None:
        idx = rng.choice(len(Xs), batch, replace=False)
        x, yb = spad.tensor(np.ascontiguousarray(Xs[idx])), ys[idx]
        weights = [m.weight for m in model.children() if isinstance(m, nn.Linear)]
        st = S.estimate_variance(lambda: F.cross_entropy(model(x), yb), weights, pol, draws=draws)
        samp = np.array([s["mse"] / s["exact_norm2"] for s in st])
    for p in model.parameters():
        p.grad = None
    return rel, samp


def same_point_noise(model, b_eq, Xs, ys, rng, draws):
    """At one parameter point: the total gradient noise of each equal-memory estimator (exact at
    b_eq, RAD and SPAD at 150), SPAD warmed up for one refresh period on random batches first."""
    spd = make_policy("spad", 7)
    for _ in range(REFRESH):
        idx = rng.choice(len(Xs), BIG, replace=False)
        grads(model, np.ascontiguousarray(Xs[idx]), ys[idx], spd)
    return {"exact-small": gradient_noise(model, None, b_eq, Xs, ys, rng, draws)[0],
            "rad": gradient_noise(model, make_policy("rad", 7), BIG, Xs, ys, rng, draws)[0],
            "spad": gradient_noise(model, spd, BIG, Xs, ys, rng, draws)[0]}


def train(kind, batch, seed, steps, eval_every, data, checkpoints=(), noise_draws=50, b_eq=None):
    Xtr, ytr, Xte, yte, Xs, ys = data
    model = nn.mlp(SIZES, seed=seed)
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    pol = make_policy(kind, seed)
    loader = DataLoader(Xtr, ytr, batch, order="reshuffle", seed=seed, drop_last=True)
    rng = np.random.default_rng(seed + 1000)
    rec = {"step": [], "train_loss": [], "test_acc": [], "noise": {}, "peak_tape": 0}
    step, t_cpu = 0, 0.0

    def log():
        tl, _ = evaluate(model, Xs, ys)
        _, ta = evaluate(model, Xte, yte)
        rec["step"].append(step)
        rec["train_loss"].append(tl)
        rec["test_acc"].append(ta)

    log()
    while step < steps:
        for xb, yb in loader:
            t0 = time.process_time()
            spad.reset_peak_memory_stats()
            with S.use(pol):
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t_cpu += time.process_time() - t0
            rec["peak_tape"] = max(rec["peak_tape"], spad.memory_stats()["peak_tape_bytes"])
            step += 1
            if step % eval_every == 0 or step == steps:
                log()
            if step in checkpoints:
                rec["noise"][step] = gradient_noise(model, pol, batch, Xs, ys, rng, noise_draws)
                if b_eq is not None:
                    rec.setdefault("same_point", {})[step] = same_point_noise(model, b_eq, Xs, ys, rng, noise_draws)
            if step >= steps:
                break
    rec["cpu_per_step"] = t_cpu / steps
    return rec


def check_dataset(data_dir=None):
    """Raise FileNotFoundError (with the install hint) unless the four IDX files are present."""
    directory = data_dir or spad.datasets.FASHION_MNIST_DIR
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    missing = [s for s in stems if spad.datasets._find(directory, s) is None]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found in {directory} "
                                "(apt-get install dataset-fashion-mnist)")


def run(steps=4000, seeds=3, eval_every=250, quick=False, data_dir=None):
    """The study's RESULTS.md section and raw results; a missing dataset raises FileNotFoundError."""
    Xtr, ytr, Xte, yte = spad.datasets.fashion_mnist(data_dir)
    sub = np.random.default_rng(12345).choice(len(Xtr), 10000, replace=False)
    data = (Xtr, ytr, Xte, yte, np.ascontiguousarray(Xtr[sub]), ytr[sub])
    b_eq, budget, t_eq, t_big = equal_memory_batch(Xtr, ytr)
    configs = [("exact", BIG, "exact, batch 150"), ("exact", b_eq, f"exact, batch {b_eq} (equal memory)"),
               ("rad", BIG, "RAD keep 0.1, batch 150"), ("spad", BIG, "SPAD unbiased keep 0.1, batch 150"),
               ("spad-biased", BIG, "SPAD biased keep 0.1, batch 150")]
    checkpoints = (steps // 8, steps // 2, steps)
    t0 = time.process_time()
    results = {}
    for label_kind, batch, label in configs:
        results[label] = [train(label_kind, batch, s, steps, eval_every, data,
                                checkpoints=checkpoints if s == 0 else (),
                                b_eq=b_eq if (label_kind, batch, s) == ("exact", BIG, 0) else None)
                         for s in range(seeds)]
    cpu = time.process_time() - t0
    return report(results, configs, b_eq, budget, t_eq, t_big, steps, seeds, checkpoints, cpu), results


def report(results, configs, b_eq, budget, t_eq, t_big, steps, seeds, checkpoints, cpu):
    out = ["### Equal-memory study on Fashion-MNIST", "",
           f"MLP 784-300-300-10, SGD lr {LR} momentum {MOMENTUM} (one setting for all runs, not tuned per run), "
           f"{steps} steps for every run, seeds 0..{seeds - 1} (seed = initial weights, data order and sampler). "
           f"Measured tapes: RAD keep 0.1 at batch 150 holds {budget} B; exact backprop fits that at batch "
           f"**{b_eq}** ({t_eq} B); exact at batch 150 holds {t_big} B. SPAD refresh {REFRESH}, mix 0.1; "
           "SPAD unbiased follows per-example paths drawn ∝ |x| (no scores needed), SPAD biased (top-k, no reweighting) scores on an "
           "exact pass every refresh, so its peak tape is the exact one. Training loss: mean cross-entropy on a "
           "fixed 10,000-example training subset; test accuracy on the 10,000 test images. "
           f"Total CPU for the study: {cpu / 60:.1f} min.", ""]
    rows = []
    finals = {}
    for _, batch, label in configs:
        rs = results[label]
        acc = np.array([r["test_acc"][-1] for r in rs])
        tl = np.array([r["train_loss"][-1] for r in rs])
        finals[label] = acc
        rows.append([label, f"{rs[0]['peak_tape']}", f"{acc.mean():.4f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.4f}",
                     f"{tl.mean():.4f} ± {tl.std(ddof=1) if len(tl) > 1 else 0:.4f}",
                     f"{np.mean([r['cpu_per_step'] for r in rs]) * 1e3:.2f}"])
    out += [benchlib.table(["run", "peak tape B", f"test accuracy at step {steps}", "training loss",
                            "CPU ms/step"], rows), "", "(mean ± sample std over seeds)", ""]
    labels = [c[2] for c in configs]
    sp, rad, small = finals[labels[3]], finals[labels[2]], finals[labels[1]]

    def verdict(a, b, name_b):
        d = a.mean() - b.mean()
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if len(a) > 1 else float("nan")
        word = "higher" if d > 0 else "lower"
        return (f"SPAD unbiased reaches {word} mean test accuracy than {name_b}: {a.mean():.4f} vs {b.mean():.4f} "
                f"(difference {d:+.4f}, {abs(d) / se if se > 0 else float('inf'):.1f} standard errors).")

    out += ["**Bar.** " + verdict(sp, small, f"exact at the equal-memory batch {b_eq}") + " "
            + verdict(sp, rad, "uniform RAD") + f" Biased SPAD: {finals[labels[4]].mean():.4f}; "
            f"exact batch 150 (about {t_big / budget:.0f}x the memory): {finals[labels[0]].mean():.4f}.", ""]
    rows = []
    for _, batch, label in configs:
        noise = results[label][0]["noise"]
        for ck in checkpoints:
            if ck not in noise:
                continue
            rel, samp = noise[ck]
            rows.append([label, str(ck)] + [f"{v:.3g}" for v in rel]
                        + ([f"{v:.3g}" for v in samp] if samp is not None else ["-"] * len(rel)))
    out += ["**Gradient noise per layer (seed 0)** at checkpoints: *total* = E‖ĝ − g‖²/‖g‖² with g the exact "
            "gradient on the 10k training subset and ĝ this run's minibatch gradient (batch size and policy) — "
            "what SGD actually sees; *sampling* = `S.estimate_variance` mse/‖g_B‖² on one fixed batch of the "
            "run's size (path sampling alone; for biased SPAD this is mostly bias). 50 draws each.", "",
            benchlib.table(["run", "step", "total W1", "total W2", "total W3", "sampling W1", "sampling W2",
                            "sampling W3"], rows), ""]
    sp_noise = results[labels[0]][0].get("same_point", {})
    rows = []
    for ck, d in sp_noise.items():
        for key, name in (("exact-small", f"exact, batch {b_eq}"), ("rad", "RAD keep 0.1, batch 150"),
                          ("spad", "SPAD unbiased keep 0.1, batch 150")):
            rows.append([str(ck), name] + [f"{v:.3g}" for v in d[key]])
    if rows:
        out += ["**The same comparison at the same parameters** (the exact batch-150 run's weights at each "
                "checkpoint, seed 0): total gradient noise E‖ĝ − g‖²/‖g‖² of the three equal-memory estimators, "
                f"50 draws each; SPAD first runs one refresh period ({REFRESH} sampled steps on random batches) "
                "to build its scores. Lower is a better gradient for the same tape.", "",
                benchlib.table(["step", "estimator", "total W1", "total W2", "total W3"], rows), ""]
    plt = benchlib.pyplot()
    if plt is not None:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for _, batch, label in configs:
            rs = results[label]
            st = np.array(rs[0]["step"])
            for i, key in enumerate(("train_loss", "test_acc")):
                v = np.array([r[key] for r in rs])
                m, s = v.mean(0), v.std(0)
                ax[i].plot(st, m, label=label)
                ax[i].fill_between(st, m - s, m + s, alpha=0.2)
        ax[0].set_ylabel("training loss (10k subset)")
        ax[0].set_yscale("log")
        ax[1].set_ylabel("test accuracy")
        ax[1].set_ylim(0.6, None)
        for a in ax:
            a.set_xlabel("SGD step")
            a.grid(alpha=0.3)
        ax[1].legend(fontsize=8)
        fig.suptitle(f"Fashion-MNIST, equal tape memory (mean ± std over {seeds} seeds)")
        out += [f"![equal-memory study]({benchlib.savefig(fig, 'equal_memory.png')})", ""]
        plt.close(fig)
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eval-every", type=int, default=250)
    a = ap.parse_args()
    print(run(a.steps, a.seeds, a.eval_every)[0])
