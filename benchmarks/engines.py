"""The same small networks written three ways — spad, hand-written numpy, PyTorch eager — each
with ``step(x, y)`` (forward, backward, SGD update; returns nothing) and ``predict(X)``.
All engines are built from the same numpy initial weights, so with the same batches they
follow the same trajectory up to float32 rounding.
"""
from __future__ import annotations

import benchlib  # noqa: F401  (pins BLAS threads before numpy loads)

from typing import List, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import spad
import spad.functional as F
import spad.nn as nn
import spad.optim as optim
import spad.sampling as S


def _softmax_xent_grad(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p / len(y)


def _dloss(out: np.ndarray, y: np.ndarray, loss: str) -> np.ndarray:
    if loss == "xent":
        return _softmax_xent_grad(out, y)
    return (2.0 / out.size) * (out - y)


# ---- MLPs --------------------------------------------------------------------------------
class SpadMLP:
    name = "spad"

    def __init__(self, weights: List[np.ndarray], lr: float, loss: str = "xent", momentum: float = 0.0,
                 policy: Optional[S.Policy] = None):
        sizes = [weights[0].shape[0]] + [w.shape[1] for w in weights[0::2]]
        self.model = nn.mlp(sizes, seed=0)
        self.model.load_state_dict({n: w.copy() for (n, _), w in zip(self.model.named_parameters(), weights)})
        self.opt = optim.SGD(self.model.parameters(), lr=lr, momentum=momentum)
        self.loss = F.cross_entropy if loss == "xent" else F.mse_loss
        self.policy = policy

    def step(self, x, y):
        xb = x if isinstance(x, spad.Tensor) else spad.tensor(x)
        with S.use(self.policy):
            loss = self.loss(self.model(xb), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def predict(self, X):
        with spad.no_grad():
            return self.model(spad.tensor(X)).numpy()


class NumpyMLP:
    """ReLU MLP with explicit forward/backward in float32 numpy; plain SGD in place."""

    name = "numpy"

    def __init__(self, weights: List[np.ndarray], lr: float, loss: str = "xent"):
        self.p = [w.copy() for w in weights]
        self.lr, self.loss = np.float32(lr), loss

    def step(self, x, y):
        p, acts = self.p, [x]
        h = x
        nl = len(p) // 2
        for i in range(nl):
            h = h @ p[2 * i] + p[2 * i + 1]
            if i < nl - 1:
                h = np.maximum(h, 0)
                acts.append(h)
        g = _dloss(h, y, self.loss).astype(np.float32)
        for i in reversed(range(nl)):
            a = acts[i]
            dW, db = a.T @ g, g.sum(0)
            if i > 0:
                g = (g @ p[2 * i].T) * (a > 0)
            p[2 * i] -= self.lr * dW
            p[2 * i + 1] -= self.lr * db

    def predict(self, X):
        h, nl = X, len(self.p) // 2
        for i in range(nl):
            h = h @ self.p[2 * i] + self.p[2 * i + 1]
            if i < nl - 1:
                h = np.maximum(h, 0)
        return h


class TorchMLP:
    name = "PyTorch"

    def __init__(self, torch, weights: List[np.ndarray], lr: float, loss: str = "xent"):
        self.torch = torch
        layers = []
        nl = len(weights) // 2
        for i in range(nl):
            W, b = weights[2 * i], weights[2 * i + 1]
            lin = torch.nn.Linear(W.shape[0], W.shape[1])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W.T.copy()))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if i < nl - 1:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.lossf = torch.nn.functional.cross_entropy if loss == "xent" else torch.nn.functional.mse_loss

    def step(self, x, y):
        self.opt.zero_grad()
        self.lossf(self.model(x), y).backward()
        self.opt.step()

    def predict(self, X):
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(X)).numpy()


# ---- a small CNN: conv(1->8,3,p1) relu pool2 conv(8->16,3,p1) relu pool2 linear(784->10) --------
CNN_SHAPES = [(8, 1, 3, 3), (8,), (16, 8, 3, 3), (16,), (16 * 7 * 7, 10), (10,)]


def cnn_weights(seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for s in CNN_SHAPES:
        if len(s) == 1:
            out.append(np.zeros(s, np.float32))
        else:
            fan_in = int(np.prod(s[1:])) if len(s) == 4 else s[0]
            lim = np.sqrt(6.0 / fan_in)
            out.append(rng.uniform(-lim, lim, s).astype(np.float32))
    return out


class SpadCNN:
    name = "spad"

    def __init__(self, weights, lr, policy=None):
        self.p = [nn.Parameter(w.copy()) for w in weights]
        self.opt = optim.SGD(self.p, lr=lr)
        self.policy = policy

    def forward(self, x):
        c1w, c1b, c2w, c2b, fw, fb = self.p
        h = F.max_pool2d(F.relu(F.conv2d(x, c1w, c1b, padding=1)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, c2w, c2b, padding=1)), 2)
        return F.linear(h.reshape(h.shape[0], -1), fw, fb)

    def step(self, x, y):
        xb = x if isinstance(x, spad.Tensor) else spad.tensor(x)
        with S.use(self.policy):
            loss = F.cross_entropy(self.forward(xb), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


def _conv_fwd(x, w, b):
    """3x3, stride 1, padding 1: im2col with a sliding-window view, one GEMM."""
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = sliding_window_view(xp, (3, 3), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5).reshape(N * H * W, C * 9)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(N, H, W, -1).transpose(0, 3, 1, 2), cols


def _conv_bwd(g, cols, w, xshape, need_dx):
    N, C, H, W = xshape
    g2 = g.transpose(0, 2, 3, 1).reshape(N * H * W, -1)
    dw = (g2.T @ cols).reshape(w.shape)
    db = g2.sum(0)
    dx = None
    if need_dx:
        dcols = (g2 @ w.reshape(w.shape[0], -1)).reshape(N, H, W, C, 3, 3)
        dxp = np.zeros((N, C, H + 2, W + 2), np.float32)
        for i in range(3):
            for j in range(3):
                dxp[:, :, i:i + H, j:j + W] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
        dx = dxp[:, :, 1:-1, 1:-1]
    return dw, db, dx


def _pool_fwd(x):
    N, C, H, W = x.shape
    r = x.reshape(N, C, H // 2, 2, W // 2, 2)
    m = r.max(axis=(3, 5))
    mask = r == m[:, :, :, None, :, None]
    return m, mask


def _pool_bwd(g, mask):
    N, C, H2, _, W2, _ = mask.shape
    return (mask * g[:, :, :, None, :, None]).reshape(N, C, H2 * 2, W2 * 2)


class NumpyCNN:
    name = "numpy"

    def __init__(self, weights, lr):
        self.p = [w.copy() for w in weights]
        self.lr = np.float32(lr)

    def step(self, x, y):
        c1w, c1b, c2w, c2b, fw, fb = self.p
        a1, cols1 = _conv_fwd(x, c1w, c1b)
        r1 = np.maximum(a1, 0)
        p1, m1 = _pool_fwd(r1)
        a2, cols2 = _conv_fwd(p1, c2w, c2b)
        r2 = np.maximum(a2, 0)
        p2, m2 = _pool_fwd(r2)
        flat = p2.reshape(len(x), -1)
        out = flat @ fw + fb
        g = _softmax_xent_grad(out, y).astype(np.float32)
        dfw, dfb = flat.T @ g, g.sum(0)
        g = (g @ fw.T).reshape(p2.shape)
        g = _pool_bwd(g, m2) * (a2 > 0)
        dc2w, dc2b, g = _conv_bwd(g, cols2, c2w, p1.shape, True)
        g = _pool_bwd(g, m1) * (a1 > 0)
        dc1w, dc1b, _ = _conv_bwd(g, cols1, c1w, x.shape, False)
        for p, d in zip(self.p, (dc1w, dc1b, dc2w, dc2b, dfw, dfb)):
            p -= self.lr * d


class TorchCNN:
    name = "PyTorch"

    def __init__(self, torch, weights, lr):
        self.torch = torch
        self.p = [torch.tensor(w.T.copy() if w.ndim == 2 else w, requires_grad=True) for w in weights]
        self.opt = torch.optim.SGD(self.p, lr=lr)

    def step(self, x, y):
        tf = self.torch.nn.functional
        c1w, c1b, c2w, c2b, fw, fb = self.p
        h = tf.max_pool2d(tf.relu(tf.conv2d(x, c1w, c1b, padding=1)), 2)
        h = tf.max_pool2d(tf.relu(tf.conv2d(h, c2w, c2b, padding=1)), 2)
        out = tf.linear(h.reshape(h.shape[0], -1), fw, fb)
        self.opt.zero_grad()
        tf.cross_entropy(out, y).backward()
        self.opt.step()
