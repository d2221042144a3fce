"""Compiled replay vs eager: one training step (forward, backward, SGD update) per workload,
spad eager, spad compiled (``spad.compile``: lowered to a tape-free kernel list when the step
allows it), the same compiled step replayed record by record (``lower=False``), hand-written
numpy and, when installed, PyTorch in functional style, measured interleaved in one process
(process-CPU-time medians and the spread of the rounds, one thread); plus each compiled
step's planned arena next to the eager peak of the step's buffers.

    python benchmarks/bench_compile.py [--quick]

Bars (issue 13): W3 compiled <= 0.25x eager, W1 (digits MLP, batch 32) compiled <= 0.8x eager.
"""
from __future__ import annotations

import benchlib  # noqa: F401  (first: pins BLAS threads)

import argparse

import numpy as np

import engines as E
import spad
import spad.sampling as S

# name, sizes, batch, loss ("cnn": the engines' small CNN on 28x28)
WORKLOADS = [
    ("W3 MLP 2-16-16-1, batch 1, mse", [2, 16, 16, 1], 1, "mse"),
    ("W1 digits MLP 64-256-256-10, batch 32", [64, 256, 256, 10], 32, "xent"),
    # spad engines under RAD keep 0.1 (sampled packs, lowered too); numpy and PyTorch stay exact
    ("W1 digits MLP, RAD keep 0.1 (spad only)", [64, 256, 256, 10], 32, "xent-rad"),
    ("W2 MLP 784-1024-1024-10, batch 128", [784, 1024, 1024, 10], 128, "xent"),
    ("CNN conv8-pool-conv16-pool-linear, 28x28, batch 32", None, 32, "cnn"),
]


def _torch_mlp_step(torch, weights, lr, loss):
    """PyTorch, functional style: parameters as plain tensors, autograd.grad, in-place SGD."""
    tf = torch.nn.functional
    ps = [torch.tensor(w.T.copy() if w.ndim == 2 else w, requires_grad=True) for w in weights]
    lossf = tf.cross_entropy if loss == "xent" else tf.mse_loss

    def step(x, y):
        h = x
        nl = len(ps) // 2
        for i in range(nl):
            h = tf.linear(h, ps[2 * i], ps[2 * i + 1])
            if i < nl - 1:
                h = tf.relu(h)
        grads = torch.autograd.grad(lossf(h, y), ps)
        with torch.no_grad():
            for p, g in zip(ps, grads):
                p.sub_(lr * g)

    return step


def _cases(torch, lr=1e-3):
    for name, sizes, batch, loss in WORKLOADS:
        rng = np.random.default_rng(1)
        if loss == "cnn":
            x = rng.random((batch, 1, 28, 28), dtype=np.float32)
            y = rng.integers(0, 10, batch)
            w = E.cnn_weights(0)
            eager, comp_model, npy = E.SpadCNN(w, lr), E.SpadCNN(w, lr), E.NumpyCNN(w, lr)
            rec_model = E.SpadCNN(w, lr)
            tstep = E.TorchCNN(torch, w, lr).step if torch is not None else None
        else:
            pol = (lambda: S.RAD(keep=0.1, seed=0)) if loss.endswith("-rad") else (lambda: None)
            loss = loss.replace("-rad", "")
            x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
            y = rng.integers(0, sizes[-1], batch) if loss == "xent" else \
                rng.standard_normal((batch, sizes[-1])).astype(np.float32)
            w = benchlib.he_uniform_mlp(sizes, seed=0)
            eager, comp_model = E.SpadMLP(w, lr, loss, policy=pol()), E.SpadMLP(w, lr, loss, policy=pol())
            npy, rec_model = E.NumpyMLP(w, lr, loss), E.SpadMLP(w, lr, loss, policy=pol())
            tstep = _torch_mlp_step(torch, w, lr, loss) if torch is not None else None
        compiled, records = spad.compile(comp_model.step), spad.compile(rec_model.step, lower=False)
        xs = spad.tensor(x)
        ys = y if loss != "mse" else spad.tensor(y)
        compiled(x, y)  # records
        records(x, y)
        fns = {"eager": lambda: eager.step(xs, ys), "compiled": lambda: compiled(x, y),
               "records": lambda: records(x, y), "numpy": lambda: npy.step(x, y)}
        if tstep is not None:
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            fns["PyTorch"] = lambda: tstep(xt, yt)
        yield name, fns, compiled


def run(quick: bool = False) -> str:
    torch = benchlib.import_torch()
    reps = 5 if quick else 21
    target = 0.01 if quick else 0.03
    rows, mem = [], []
    engines = ["eager", "compiled", "records", "numpy"] + (["PyTorch"] if torch is not None else [])
    for name, fns, compiled in _cases(torch):
        if quick and name.startswith(("W2", "CNN")):
            continue
        from speed import _inner  # calls per measurement for ~target s

        inner = min(_inner(f, target) for f in fns.values())
        t = benchlib.interleaved(fns, reps=reps, inner=inner)
        med = {k: benchlib.median(v) for k, v in t.items()}
        # The spread of the per-round ratio compiled/eager (rounds are interleaved: a load burst
        # hits both engines of a round alike).
        ratios = sorted(c / e for c, e in zip(t["compiled"], t["eager"]))
        row = [name] + [benchlib.fmt_us(med[e]) for e in engines] + [
            f"{med['compiled'] / med['eager']:.3f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"]  # 3 digits: bars sit at 0.80
        if torch is not None:
            row.append(f"{med['PyTorch'] / med['compiled']:.2f}")
        rows.append(row)
        p = compiled.program
        mem.append([name, str(p.n_records), "yes" if p.lowered else f"no ({p.lower_note})",
                    f"{p.lowered_workspace_bytes:,}", f"{p.plan_bytes:,}", f"{p.eager_peak_bytes:,}",
                    f"{p.heap_bytes:,}", "yes" if p.plan_dropped else "no"])
    header = ["workload"] + [f"{e} µs" for e in engines] + ["compiled / eager (round min-max)"]
    if torch is not None:
        header.append("PyTorch / compiled")
    out = ["### Compiled replay: one training step", "",
           f"Per-call process CPU time, median of {reps} interleaved rounds, one thread. eager: spad's Python "
           "step (engines.SpadMLP/SpadCNN, SGD); compiled: the same step through spad.compile (lowered to a "
           "tape-free kernel list where possible, else replayed record by record); records: spad.compile(..., "
           "lower=False), every replay record by record through the core ops and the tape; "
           "numpy: forward/backward by hand; PyTorch: functional style (autograd.grad + in-place update) for the "
           "MLPs, the engines' module step for the CNN.", "",
           benchlib.table(header, rows), "",
           "Memory of the compiled step: whether it runs lowered and its workspace (every activation and "
           "activation gradient, placed by liveness and allocated once), the planned arena of the record-by-record replay (buffers allocated and freed within the step, placed "
           "by liveness; tensors up to 256 bytes live inside their Storage and are never planned), the eager peak of "
           "all the step's tensor buffers (traced while recording), and "
           "the bytes that outlive the step (gradients), which stay on the heap.", "",
           benchlib.table(["workload", "records", "lowered", "lowered workspace bytes", "arena bytes",
                           "eager peak bytes", "outlive the step", "plan dropped"], mem), ""]
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="W3 and W1 only, fewer rounds")
    args = ap.parse_args()
    print(benchlib.cpu_model())
    print(run(args.quick))
