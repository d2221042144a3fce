"""Realized memory: what one training step really allocates (spad's own accounting) and what the
OS sees (peak RSS growth of a fresh process over three steps), exact vs RAD / SPAD / CRS at keep
0.1, next to PyTorch's saved-tensor bytes and RSS growth on the same step. Also writes the plot of
allocated bytes over one step (forward, then backward and the optimizer), exact vs keep 0.1.

    python benchmarks/realized_memory.py [--quick] [--only deep]
    python benchmarks/realized_memory.py --rows [--only w2]   # row-sparse dW applied in backward
    python benchmarks/realized_memory.py --child '{"arch": "deep", "engine": "spad", "policy": "rad"}'

Every configuration runs in its own fresh interpreter (RSS must not bleed between them; spad
children never import torch). One BLAS thread. SGD with momentum 0.9; gradients are dropped
(zero_grad) after each update. "step peak" = peak_allocated_bytes during the step minus the
bytes allocated when it began (parameters and optimizer state), the maximum over the steps.
"RSS growth" = VmHWM after three steps minus VmRSS before the first (after the model, optimizer
and data exist). When the optimizers accept in_backward=True, those rows are measured too.
"""
from __future__ import annotations

import benchlib  # noqa: F401  (first: pins BLAS threads)

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from memory import _reset_peak_rss, _status, spad_model, torch_forward_saved, torch_model  # noqa: E402  (shared probes)

ARCHS = {
    # name: (description, batch)
    "w2": ("W2: MLP 784-1024-1024-10", 128),
    "deep": ("deep MLP 784-1024x4-10", 4096),
    "cnn": ("CNN 3x32x32: conv5x5(16)-relu-pool2-conv5x5(32)-relu-pool2-linear(2048,10)", 150),
}
POLICIES = ["exact", "rad", "spad", "crs"]
KEEP = 0.1
STEPS = 3
ROOT = os.path.dirname(benchlib.HERE)
MiB = 1 << 20




def _data(arch):
    batch = ARCHS[arch][1]
    rng = np.random.default_rng(0)
    shape = (batch, 3, 32, 32) if arch == "cnn" else (batch, 784)
    return rng.random(shape, dtype=np.float32), rng.integers(0, 10, batch)


def _sizes(arch):
    return [784, 1024, 1024, 10] if arch == "w2" else [784, 1024, 1024, 1024, 1024, 10]


def _policy(S, name):
    return {"exact": lambda: None, "rad": lambda: S.RAD(KEEP, seed=0), "crs": lambda: S.CRS(KEEP, seed=0),
            "spad": lambda: S.SPAD(KEEP, refresh=2, seed=0),
            "rad-same": lambda: S.RAD(KEEP, mode="same", seed=0)}[name]()


def child_spad(cfg):
    spad = benchlib.import_spad()
    import spad.functional as F
    import spad.nn as nn
    import spad.optim as optim
    import spad.sampling as S

    arch = cfg["arch"]
    x, y = _data(arch)
    model = spad_model(nn, None if arch == "cnn" else _sizes(arch))
    kw = {"in_backward": True} if cfg.get("in_backward") else {}
    opt = optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, **kw)
    if cfg.get("dense_dW"):  # in backward, but every sampled dW built dense (the path before row-sparse apply)
        opt.remove_hooks()
        opt._attach("SGD", implicit=False)
    pol = _policy(S, cfg["policy"])
    xs = spad.tensor(x)  # borrowed: numpy's memory, not spad's allocation
    param_bytes = sum(p.numpy().nbytes for p in model.parameters())
    rss0 = _reset_peak_rss()
    tape = exact_tape = step_peak = 0
    trace = fwd_end = None
    times = []
    for i in range(STEPS + 1):
        last = i == STEPS  # an extra, traced step after the RSS window
        if last:
            rss_growth = _status("VmHWM") - rss0
            spad._core._set_memory_trace(True)
        base = spad.memory_stats()["allocated_bytes"]
        spad.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with S.use(pol):
            loss = F.cross_entropy(model(xs), y)
        st = spad.memory_stats()
        tape, exact_tape = max(tape, st["tape_bytes"]), max(exact_tape, st["exact_tape_bytes"])
        if last:
            fwd_end = len(spad._core._memory_trace())
        loss.backward()
        opt.step()
        opt.zero_grad()
        del loss
        times.append(time.perf_counter() - t0)
        if not last:
            step_peak = max(step_peak, spad.memory_stats()["peak_allocated_bytes"] - base)
        else:
            spad._core._set_memory_trace(False)
            trace = [v - base for v in spad._core._memory_trace()]
    summary = spad.memory_summary()
    return {"tape": tape, "exact_tape": exact_tape, "step_peak": step_peak, "rss_growth": rss_growth,
            "param_bytes": param_bytes, "trace": trace, "fwd_end": fwd_end,
            "step_s": float(np.median(times[1:STEPS])),  # steps after the first, untraced
            "peak_by_category": {c: summary[c]["peak"] for c in ("gradients", "tape", "other")}}


def child_torch(cfg):
    torch = benchlib.import_torch()
    arch = cfg["arch"]
    x, y = _data(arch)
    torch.manual_seed(0)
    model = torch_model(torch.nn, None if arch == "cnn" else _sizes(arch))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    rss0 = _reset_peak_rss()
    saved = 0
    for _ in range(STEPS):
        loss, _, act = torch_forward_saved(torch, model, xt, yt, param_ptrs)
        saved = max(saved, act)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
    return {"tape": saved, "rss_growth": _status("VmHWM") - rss0}


def measure(cfg):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    out = subprocess.run([benchlib.python_exe(), os.path.abspath(__file__), "--child", json.dumps(cfg)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"config {cfg} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def has_in_backward() -> bool:
    """True when the optimizers take in_backward= (the optimizer-in-backward work)."""
    import inspect

    if ROOT not in sys.path:  # the children get it through PYTHONPATH; an in-place build lives here
        sys.path.insert(0, ROOT)
    import spad.optim as optim

    return "in_backward" in inspect.signature(optim.SGD.__init__).parameters


def configs(archs, rows=False):
    if rows:  # RAD mode="same": row-sparse dW, applied from its k compact rows in backward or dense
        for arch in archs:
            yield {"arch": arch, "engine": "spad", "policy": "exact", "in_backward": False}
            yield {"arch": arch, "engine": "spad", "policy": "exact", "in_backward": True}
            yield {"arch": arch, "engine": "spad", "policy": "rad-same", "in_backward": False}
            yield {"arch": arch, "engine": "spad", "policy": "rad-same", "in_backward": True, "dense_dW": True}
            yield {"arch": arch, "engine": "spad", "policy": "rad-same", "in_backward": True}
        return
    ib = [False, True] if has_in_backward() else [False]
    for arch in archs:
        yield {"arch": arch, "engine": "torch", "policy": "exact"}
        for pol in POLICIES:
            for flag in ib:
                yield {"arch": arch, "engine": "spad", "policy": pol, "in_backward": flag}


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for (cfg, r), style in zip(results, ("-", "--", ":", "-.")):
        tr = np.asarray(r["trace"]) / MiB
        t = np.linspace(0, 1, len(tr))
        label = f"{cfg['policy']}" + (" keep 0.1" if cfg["policy"] != "exact" else "")
        ax.plot(t, tr, style, label=label)
        ax.axvline(t[min(r["fwd_end"], len(t) - 1)], color=ax.lines[-1].get_color(), lw=0.6, alpha=0.6)
    ax.set_xlabel("allocation events over one step (vertical lines: end of forward)")
    ax.set_ylabel("allocated MiB above the step's start")
    ax.set_title(f"{ARCHS[results[0][0]['arch']][0]}, batch {ARCHS[results[0][0]['arch']][1]}: allocated bytes")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def report(results):
    mb = lambda b: f"{b / 1e6:.1f}"  # noqa: E731
    out = ["| workload | engine | in_backward | tape MB | step peak MB | peak / exact's | RSS growth MB | "
           "RSS / (1.3 peak + 8 MiB) |", "|---|---|---|---|---|---|---|---|"]
    exact_peak = {}
    for cfg, r in results:
        if cfg["engine"] == "spad" and cfg["policy"] == "exact" and not cfg.get("in_backward"):
            exact_peak[cfg["arch"]] = r["step_peak"]
    for cfg, r in results:
        name = ARCHS[cfg["arch"]][0] + f", batch {ARCHS[cfg['arch']][1]}"
        if cfg["engine"] == "torch":
            out.append(f"| {name} | PyTorch (saved tensors) | - | {mb(r['tape'])} | - | - | {mb(r['rss_growth'])} | - |")
            continue
        eng = "exact" if cfg["policy"] == "exact" else f"{cfg['policy'].upper()} keep {KEEP}"
        ratio = r["step_peak"] / exact_peak[cfg["arch"]]
        rss_bar = r["rss_growth"] / (1.3 * r["step_peak"] + 8 * MiB)
        ibs = ("yes, dense dW" if cfg.get("dense_dW") else "yes") if cfg.get("in_backward") else "no"
        out.append(f"| {name} | {eng} | {ibs} | {mb(r['tape'])} | "
                   f"{mb(r['step_peak'])} | {ratio:.2f} | {mb(r['rss_growth'])} | {rss_bar:.2f} |")
    return "\n".join(out)


def bars(results):
    """The issue's bars, checked on the deep MLP (and RSS everywhere)."""
    lines = []
    by = {(c["arch"], c["engine"], c["policy"], bool(c.get("in_backward"))): r for c, r in results}
    ex = by.get(("deep", "spad", "exact", False))
    if ex:
        lim = 1.5 * (ex["exact_tape"] + ex["param_bytes"])
        lines.append(f"- deep MLP exact step peak {ex['step_peak'] / 1e6:.1f} MB <= 1.5 x (tape + params) = "
                     f"{lim / 1e6:.1f} MB: {'holds' if ex['step_peak'] <= lim else 'FAILS'}")
        for pol in ("rad", "spad"):
            for ib in (True, False):
                r = by.get(("deep", "spad", pol, ib))
                if r:
                    q = r["step_peak"] / ex["step_peak"]
                    lines.append(f"- deep MLP {pol.upper()} keep 0.1{' in_backward' if ib else ''}: step peak "
                                 f"{q:.2f}x exact's (bar 0.40): {'holds' if q <= 0.40 else 'FAILS'}")
    for (arch, eng, pol, ib), r in by.items():
        if eng == "spad":
            ok = r["rss_growth"] <= 1.3 * r["step_peak"] + 8 * MiB
            if not ok:
                lines.append(f"- RSS bar FAILS: {arch} {pol}{' in_backward' if ib else ''}: "
                             f"{r['rss_growth'] / 1e6:.1f} MB > 1.3 x {r['step_peak'] / 1e6:.1f} MB + 8 MiB")
    for arch in ARCHS:
        t, s = by.get((arch, "torch", "exact", False)), by.get((arch, "spad", "exact", False))
        if t and s:
            lines.append(f"- {arch}: exact spad RSS growth {s['rss_growth'] / 1e6:.1f} MB vs PyTorch "
                         f"{t['rss_growth'] / 1e6:.1f} MB: {'holds' if s['rss_growth'] <= t['rss_growth'] else 'FAILS'}")
    return "\n".join(lines)


def allocators():
    """The same deep-MLP step under each SPAD_MALLOC mode (see malloc_mode in csrc/core/tensor.cpp)."""
    out = ["| SPAD_MALLOC | engine | step peak MB | RSS growth MB | RSS / (1.3 peak + 8 MiB) | s/step |",
           "|---|---|---|---|---|---|"]
    for mode in ("cache", "mmap", "reuse", "system"):
        for pol in ("exact", "rad"):
            os.environ["SPAD_MALLOC"] = mode
            r = measure({"arch": "deep", "engine": "spad", "policy": pol})
            out.append(f"| {mode} | {pol} | {r['step_peak'] / 1e6:.1f} | {r['rss_growth'] / 1e6:.1f} | "
                       f"{r['rss_growth'] / (1.3 * r['step_peak'] + 8 * MiB):.2f} | {r['step_s']:.2f} |")
    os.environ.pop("SPAD_MALLOC", None)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child")
    ap.add_argument("--only", choices=list(ARCHS), action="append", help="workloads to run (default: all)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--allocators", action="store_true", help="only the SPAD_MALLOC comparison (deep MLP)")
    ap.add_argument("--rows", action="store_true",
                    help="only RAD mode='same' (row-sparse dW): in backward from compact rows vs dense dW (no PyTorch)")
    args = ap.parse_args()
    if args.child:
        cfg = json.loads(args.child)
        r = child_torch(cfg) if cfg["engine"] == "torch" else child_spad(cfg)
        print(json.dumps(r))
        return
    if args.allocators:
        print(f"CPU: {benchlib.cpu_model()}; deep MLP 784-1024x4-10, batch 4096, one thread\n")
        print(allocators())
        return
    archs = args.only or ([a for a in ARCHS if a != "cnn"] if args.rows else list(ARCHS))  # rows: linear layers
    torch_ok = not args.no_torch and benchlib.import_torch() is not None
    results = []
    for cfg in configs(archs, args.rows):
        if cfg["engine"] == "torch" and not torch_ok:
            continue
        r = measure(cfg)
        results.append((cfg, r))
        print(f"{cfg}: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in r.items()
                                     if isinstance(v, int) and k not in ("fwd_end",)), flush=True)
    print(f"\nCPU: {benchlib.cpu_model()}; one thread; SGD momentum 0.9; {STEPS} steps per fresh process\n")
    print(report(results))
    if args.rows:
        return
    print()
    print(bars(results))
    for arch in archs:
        pair = [(c, r) for c, r in results if c["arch"] == arch and c["engine"] == "spad" and not c.get("in_backward")
                and c["policy"] in ("exact", "rad", "spad")]
        if pair:
            p = plot(pair, os.path.join(benchlib.FIGURES, f"realized_memory_{arch}.png"))
            if p:
                print(f"plot: {os.path.relpath(p, ROOT)}")


if __name__ == "__main__":
    main()
