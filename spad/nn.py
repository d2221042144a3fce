"""Neural-network modules, micrograd-sized.

A Module registers parameters (spad tensors with requires_grad) and sub-modules as plain
attributes. ``parameters()`` lists a module's own parameters, then its sub-modules', each in
registration order (as PyTorch does); optimizers and state dicts use that order.

    >>> model = Sequential(Linear(64, 256, seed=0), ReLU(), Linear(256, 10, seed=1))
    >>> logits = model(x)              # x: spad tensor (batch, 64)

Parameters are float32 tensors in spad-allocated storage marked ``_is_param`` (they live
anyway, so the tape-memory figure does not count them; ``spad.memory_summary()`` does).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterator, List, Tuple

import numpy as np

from . import _core
from . import functional as F
from . import init as I
from ._core import Tensor


def Parameter(values: np.ndarray) -> Tensor:
    """A trainable leaf tensor holding a copy of ``values`` (a float array) in spad's own
    storage, so that it counts in ``spad.memory_stats()`` as a parameter."""
    t = _core._owned_copy(values)
    t.requires_grad = True
    t._is_param = True
    return t


class Module:
    """Base class: subclasses set parameters/sub-modules as attributes and define forward()."""

    def __init_subclass__(cls, **kwargs):
        # Calling a module *is* calling its forward: binding __call__ to forward per class saves
        # a Python frame and an argument repack per layer, which is most of a batch-1 step.
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.__call__ = cls.__dict__["forward"]

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        self._params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Tensor) and value.requires_grad:
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- traversal ----
    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, Tensor]]:
        seen = set()
        for name, p in self._named(prefix):
            if id(p) not in seen:  # a shared parameter is listed (and updated) once
                seen.add(id(p))
                yield name, p

    def _named(self, prefix):
        for name, p in self._params.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m._named(prefix + name + ".")

    def parameters(self) -> List[Tensor]:
        return [p for _, p in self.named_parameters()]

    def children(self) -> List["Module"]:
        return list(self._modules.values())

    def train(self, mode: bool = True) -> "Module":
        object.__setattr__(self, "training", mode)
        for m in self._modules.values():
            m.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # ---- state ----
    def state_dict(self) -> Dict[str, np.ndarray]:
        """Name -> copy of each parameter's values."""
        return OrderedDict((n, p.numpy().copy()) for n, p in self.named_parameters())

    def load_state_dict(self, state: Dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy values into the existing parameters in place (optimizers keep working).
        Missing/unexpected names (strict), shape or dtype mismatches raise before anything is written."""
        own = OrderedDict(self.named_parameters())
        if strict:
            missing, extra = own.keys() - state.keys(), state.keys() - own.keys()
            if missing or extra:
                raise KeyError(f"load_state_dict: missing {sorted(missing)}, unexpected {sorted(extra)}")
        todo = []
        for name, p in own.items():
            if name not in state:
                continue
            a = np.asarray(state[name])
            if a.shape != p.shape:
                raise ValueError(f"load_state_dict: '{name}' has shape {a.shape}, the model expects {p.shape}")
            if a.dtype != p.dtype:
                raise TypeError(f"load_state_dict: '{name}' has dtype {a.dtype}, the model expects {p.dtype}")
            todo.append((p, a))
        for p, a in todo:
            _core.assign_(p, _core.from_numpy(np.array(a, copy=True, order="C")))

    def save(self, path: str) -> None:
        """Write the state dict to a compressed ``.npz`` file."""
        np.savez_compressed(path, **self.state_dict())

    def load(self, path: str) -> None:
        with np.load(path) as f:
            self.load_state_dict({k: f[k] for k in f.files})

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        body = "\n".join(f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items())
        return f"{type(self).__name__}(\n{body}\n)"

    def extra_repr(self) -> str:
        return ""


class Linear(Module):
    """``y = x @ weight + bias`` via the fused ``F.linear``; weight has shape (in, out) so a
    sampled backward computes whole rows of dW. Default init: He uniform weights, zero bias."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init="he_uniform", seed=None):
        super().__init__()
        g = I.rng(seed)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(I.get(init)((in_features, out_features), seed=g))
        self.bias = Parameter(np.zeros(out_features, np.float32)) if bias else None

    def forward(self, x):
        return _core.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-d convolution, weight (C_out, C_in, k, k); needs ``F.conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, init="he_uniform", seed=None):
        super().__init__()
        g = I.rng(seed)
        self.stride, self.padding = stride, padding
        self.weight = Parameter(I.get(init)((out_channels, in_channels, kernel_size, kernel_size), seed=g))
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        co, ci, k, _ = self.weight.shape
        return f"{ci}, {co}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size)


class AvgPool2d(MaxPool2d):
    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size)


class Dropout(Module):
    """Zeroes each element with probability p in training mode (scaled by 1/(1-p)); identity in eval."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class Flatten(Module):
    """(batch, ...) -> (batch, prod(...))."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Sequential(Module):
    """Applies its modules in order; they are registered as "0", "1", ..."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x):
        for step in self._plan():
            if type(step) is list:  # a run of Linear (+ ReLU) layers: one core call
                x = _core.linear_chain(x, [(m.weight, m.bias, relu) for m, relu in step])
            elif type(step) is ReLU:  # hand over this loop's reference: in place if it was the last
                box = [x]
                del x
                x = _core._relu_owned(box)
            else:
                x = step(x)
        return x

    def _plan(self):
        """Modules in order, with each run of two or more plain ``Linear`` (each optionally
        followed by a plain ``ReLU``) grouped as ``[(linear, relu_after), ...]``. Inside such
        a run the core owns every intermediate activation, so a layer's output can overwrite
        its input once the tape no longer needs it (Note [Buffer reuse] in csrc/core/reuse.h):
        the same nodes and numbers as calling the modules one by one, with less memory."""
        mods = list(self._modules.values())
        plan, i = [], 0
        while i < len(mods):
            start, run = i, []
            while i < len(mods) and type(mods[i]) is Linear:
                relu = i + 1 < len(mods) and type(mods[i + 1]) is ReLU
                run.append((mods[i], relu))
                i += 2 if relu else 1
            if len(run) >= 2:
                plan.append(run)
            elif run:
                plan.extend(mods[start:i])
            else:
                plan.append(mods[i])
                i += 1
        return plan

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)


def mlp(sizes, activation=ReLU, seed=0, init="he_uniform") -> Sequential:
    """``mlp([64, 256, 256, 10])``: Linear layers with ``activation`` between them, all
    initialized from one generator seeded by ``seed`` (reproducible)."""
    g = I.rng(seed)
    layers: List[Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b, init=init, seed=g))
        if i < len(sizes) - 2:
            layers.append(activation())
    return Sequential(*layers)
