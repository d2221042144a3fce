"""Helpers shared by the spad.compile tests (test_compile.py, test_plan_files.py); the digits
fixture they use is in conftest.py."""
from __future__ import annotations

import numpy as np
import spad.functional as F
import spad.nn as nn
import spad.optim as optim
import spad.sampling as S


def _mlp_step(sizes=(64, 256, 256, 10), policy=None, opt="sgd", loss=F.cross_entropy, dropout=0.0):
    layers = list(nn.mlp(list(sizes), seed=0)._modules.values())
    if dropout:
        layers.insert(2, nn.Dropout(dropout))
    model = nn.Sequential(*layers)
    if opt == "sgd":
        o = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        o = optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        with S.use(policy):
            out = loss(model(x), y)
        o.zero_grad()
        out.backward()
        o.step()
        return out

    return model, step


def _batches(X, y, n, batch=32, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        idx = rng.choice(len(X), batch, replace=False)
        yield np.ascontiguousarray(X[idx]), y[idx]


def _max_rel(m1, m2):
    return max(float(np.abs(a.numpy() - b.numpy()).max() / max(np.abs(a.numpy()).max(), 1e-30))
               for a, b in zip(m1.parameters(), m2.parameters()))


def _train_step(model, o, loss=F.cross_entropy):
    def step(x, yb):
        out = loss(model(x), yb)
        o.zero_grad()
        out.backward()
        o.step()
        return out

    return step
