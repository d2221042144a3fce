"""Export a trained ``nn.Sequential`` for the C API (``spad_model_load``), and read it back.

    >>> spad.export(model, "digits.spad", input_shape=(64,))
    >>> same = spad.load_model("digits.spad")       # an nn.Sequential with the same weights

Supported layers: Linear, Conv2d, MaxPool2d, AvgPool2d, ReLU, Tanh, Sigmoid, Flatten (and
Dropout, which is the identity at inference and is left out). Weights are stored as float32.

File format, version 1. Every integer is a u32 and every float an IEEE-754 f32, all
little-endian:

    magic     8 bytes   b"SPADMODL"
    version   u32       1
    n_layers  u32
    in_ndim   u32       rank of one example (0 = not recorded), then in_ndim x u32 dims
    n_layers records:
      kind      u32     1 Linear, 2 Conv2d, 3 MaxPool2d, 4 AvgPool2d, 5 ReLU, 6 Tanh,
                        7 Sigmoid, 8 Flatten
      n_args    u32     then n_args x u32: Linear none; Conv2d [stride, padding]; pools [k]
      n_tensors u32     then per tensor: ndim u32, ndim x u32 dims, prod(dims) x f32, row-major
                        Linear: weight (in, out) [, bias (out,)]
                        Conv2d: weight (C_out, C_in, k, k) [, bias (C_out,)]

Valid records (the one specification, csrc/core/model_format.h, Note [Valid records]):
every dimension in 1..2**24; Linear: no arguments, a 2-d weight, an optional (out,) bias;
Conv2d: stride >= 1 and 0 <= padding < k, a square (C_out, C_in, k, k) weight, an optional
(C_out,) bias; pools: one argument 1 <= k <= 16; activations and Flatten: nothing. Python
and the C API (spad_model_load) read files with the same C++ reader, so they accept and
reject exactly the same files: unknown kinds, wrong shapes, lengths beyond the file, short
files and trailing bytes are a ValueError naming the byte offset.
"""
from __future__ import annotations

import struct
from typing import List, Optional, Sequence

import numpy as np

from . import _core, nn

__all__ = ["export", "load_model"]

MAGIC = b"SPADMODL"
VERSION = 1
LINEAR, CONV2D, MAXPOOL, AVGPOOL, RELU, TANH, SIGMOID, FLATTEN = range(1, 9)
_ACTIVATIONS = {nn.ReLU: RELU, nn.Tanh: TANH, nn.Sigmoid: SIGMOID, nn.Flatten: FLATTEN}


def _u32(*vals: int) -> bytes:
    return struct.pack(f"<{len(vals)}I", *vals)


def _tensor(t) -> bytes:
    a = np.ascontiguousarray(np.asarray(t.numpy() if hasattr(t, "numpy") else t), dtype="<f4")
    return _u32(a.ndim, *a.shape) + a.tobytes()


def _layer(m: nn.Module, path: str) -> Optional[bytes]:
    # Exact type checks: a subclass may change forward(), which the C side would not know.
    kind = type(m)
    if kind is nn.Linear or kind is nn.Conv2d:
        ts = [m.weight] + ([m.bias] if m.bias is not None else [])
        args = [] if kind is nn.Linear else [m.stride, m.padding]
        return _u32(LINEAR if kind is nn.Linear else CONV2D, len(args), *args, len(ts)) + b"".join(map(_tensor, ts))
    if kind is nn.MaxPool2d or kind is nn.AvgPool2d:
        return _u32(MAXPOOL if kind is nn.MaxPool2d else AVGPOOL, 1, m.kernel_size, 0)
    if kind in _ACTIVATIONS:
        return _u32(_ACTIVATIONS[kind], 0, 0)
    if kind is nn.Dropout:
        return None
    raise ValueError(f"export: layer {path} ({kind.__name__}) is not supported; supported: Linear, Conv2d, "
                     "MaxPool2d, AvgPool2d, ReLU, Tanh, Sigmoid, Flatten, Dropout")


def export(model: nn.Sequential, path: str, input_shape: Optional[Sequence[int]] = None) -> None:
    """Write ``model`` (an ``nn.Sequential``, nested ones are flattened) to ``path``.

    ``input_shape`` is the shape of one example without the batch axis, e.g. ``(64,)`` or
    ``(1, 8, 8)``; it is recorded for the reader's information. For a model that starts
    with a Linear layer it defaults to ``(in_features,)``."""
    layers = _flatten(model, "model")
    if input_shape is None and layers and type(layers[0][1]) is nn.Linear:
        input_shape = (layers[0][1].in_features,)
    shape = tuple(int(d) for d in (input_shape or ()))
    if len(shape) > 3:
        raise ValueError(f"export: input_shape {shape} has more than 3 axes")
    records = [r for r in (_layer(m, p) for p, m in layers) if r is not None]
    with open(path, "wb") as f:
        f.write(MAGIC + _u32(VERSION, len(records), len(shape), *shape) + b"".join(records))


def _flatten(model: nn.Module, path: str) -> List:
    if type(model) is not nn.Sequential:
        raise ValueError(f"export: expected an nn.Sequential, got {type(model).__name__} at {path}")
    out = []
    for name, m in model._modules.items():
        out += _flatten(m, f"{path}.{name}") if type(m) is nn.Sequential else [(f"{path}.{name}", m)]
    return out


def _read_bounded(path: str) -> bytes:
    """The file's bytes, bounded whatever ``path`` is (a device such as /dev/zero, a pipe):
    the magic bytes first, then at most the reader's size limit."""
    limit = _core._MODEL_MAX_FILE_BYTES
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8 and head != MAGIC:  # (a shorter file is the parser's to report)
            raise ValueError(f"load_model: {path} is not a spad model (the file does not start with \"SPADMODL\")")
        rest = f.read(limit + 1 - len(head))
    if len(head) + len(rest) > limit:
        raise ValueError(f"load_model: {path} is larger than {limit} bytes; not a spad model")
    return head + rest


def load_model(path: str) -> nn.Sequential:
    """Read a file written by :func:`export` (or by ``spad_model_save`` on a device, e.g.
    after training there) into a new ``nn.Sequential``. A malformed file raises ValueError."""
    _, records = _core._parse_model(_read_bounded(path))
    return nn.Sequential(*[_build(kind, args, ts, i) for i, (kind, args, ts) in enumerate(records)])


def _build(kind: int, args: List[int], ts: List[np.ndarray], i: int) -> nn.Module:
    # The record passed the shared checks (shapes, arguments): only construction is left.
    if kind in (LINEAR, CONV2D):
        w = ts[0]
        if kind == LINEAR:
            m = nn.Linear(w.shape[0], w.shape[1], bias=len(ts) > 1)
        else:
            m = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], stride=args[0], padding=args[1], bias=len(ts) > 1)
        state = {"weight": w} if len(ts) == 1 else {"weight": w, "bias": ts[1]}
        m.load_state_dict(state)
        return m
    if kind in (MAXPOOL, AVGPOOL):
        return (nn.MaxPool2d if kind == MAXPOOL else nn.AvgPool2d)(args[0])
    for cls, k in _ACTIVATIONS.items():
        if k == kind:
            return cls()
    raise ValueError(f"load_model: layer {i} has unknown kind {kind}")
