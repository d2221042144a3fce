"""Writes digits_mlp.spadplan, the compiled training step train_plan.c trains from: an MLP
64-32-10 on the 8x8 digits, cross-entropy, SGD with momentum 0.9 (lr 0.1), batch 32, recorded
with spad.compile and saved with its parameters and optimizer state (docs/plan_format.md).
With --spad KEEP the forward pass runs under spad.sampling.SPAD(keep=KEEP), saved with the
plan, so the device trains with selective-path backprop (digits_mlp_spad.spadplan: KEEP 0.25).

    python examples/embedded/make_plan.py [out_path] [--spad KEEP]
"""
import argparse
import os

import numpy as np

import spad
import spad.functional as F
import spad.nn as nn
import spad.optim as optim
import spad.sampling as S
from spad.datasets import digits_split

BATCH = 32  # train_plan.c binds batches of this size

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("out", nargs="?")
ap.add_argument("--spad", type=float, default=None, metavar="KEEP")
args = ap.parse_args()
name = "digits_mlp.spadplan" if args.spad is None else "digits_mlp_spad.spadplan"
out = args.out or os.path.join(here, name)
policy = S.SPAD(keep=args.spad, seed=1) if args.spad is not None else None
model = nn.mlp([64, 32, 10], seed=0)
opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def train_step(x, y):
    with S.use(policy):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


X, y, _, _ = digits_split()
step = spad.compile(train_step)
step(np.ascontiguousarray(X[:BATCH], dtype=np.float32), y[:BATCH])  # records (and runs) one step
step.save(out)
print(f"wrote {out}: {step.n_records} records, arena {step.plan_bytes} bytes")
