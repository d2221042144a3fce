"""Recomputation (gradient checkpointing) for nn.Sequential models: the exact-backprop baseline a
practitioner reaches for first when activations do not fit.

    >>> loss = checkpoint_sequential(model, 3, x, F.cross_entropy, y)   # forward + backward, exact
    >>> opt.step()

The forward pass runs without a tape and keeps only the inputs of ``segments`` contiguous
segments of the model's layers. The backward pass then walks the segments from last to first:
each is re-run with a tape from its saved input, and backpropagated with the gradient that
arrived at its output, which yields the gradient at its input for the segment before it. The
gradients equal exact backprop's (the same ops on the same values); the price is one extra
forward pass per step, and the step holds one segment's tape at a time instead of the whole
model's. Each parameter belongs to one segment, so its gradient is complete after that
segment's backward: optimizers with ``in_backward=True`` work as usual.

A sampling policy (``policy=``) applies to the recomputed forward passes; policies that draw
in forward (RAD, SPAD) then sample once per step, as without checkpointing, because the first
forward pass records nothing.
"""
from __future__ import annotations

from typing import Callable, List, Optional

from . import nn
from .tensor import no_grad

__all__ = ["checkpoint_sequential"]


def _segments(n: int, k: int) -> List[range]:
    """k contiguous, nearly equal ranges covering 0..n-1 (the first ones one longer)."""
    q, r = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        stop = start + q + (1 if i < r else 0)
        out.append(range(start, stop))
        start = stop
    return out


def checkpoint_sequential(model: "nn.Sequential", segments: int, x, loss_fn: Callable, target,
                          policy=None) -> float:
    """Forward and backward of ``loss_fn(model(x), target)`` with recomputation; returns the loss
    value. Gradients accumulate into the parameters' ``.grad`` as with ``loss.backward()``."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"checkpoint_sequential: expected an nn.Sequential, got {type(model).__name__}")
    layers = model.children()
    if isinstance(segments, bool) or not isinstance(segments, int) or not 1 <= segments <= max(len(layers), 1):
        raise ValueError(f"checkpoint_sequential: segments must be an integer in [1, {len(layers)}] for this "
                         f"model of {len(layers)} layers, got {segments!r}")
    from . import sampling as S  # lazily: sampling imports the training stack's modules

    parts = _segments(len(layers), segments)

    def run(part, h):
        for i in part:
            h = layers[i](h)
        return h

    inputs = []
    with no_grad():
        h = x
        for part in parts[:-1]:
            inputs.append(h)
            h = run(part, h)
    inputs.append(h)
    grad = None
    value = None
    for s in range(len(parts) - 1, -1, -1):
        h_in = inputs[s]
        if s > 0:  # a leaf standing for the segment's input: its .grad is the gradient to pass on
            h_in = h_in.detach()
            h_in.requires_grad = True
        inputs[s] = None  # the saved boundary is not needed after this segment
        with S.use(policy):
            out = run(parts[s], h_in)
            if grad is None:
                loss = loss_fn(out, target)
        if grad is None:
            value = loss.item()
            loss.backward()
            del loss
        else:
            out.backward(grad)
        del out
        grad = h_in.grad if s > 0 else None
    return value
