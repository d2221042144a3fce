"""spad: a compiled autodiff engine whose backward pass can follow a sampled subset of
paths (randomized AD, selective-path AD), so the tape stores a fraction of what exact
backprop stores, with an honest, measured memory figure.

    >>> import numpy as np, spad, spad.functional as F
    >>> W = spad.zeros((4, 2), requires_grad=True)
    >>> loss = F.cross_entropy(spad.ones((3, 4)) @ W, np.array([0, 1, 1]))
    >>> loss.backward(); W.grad.shape
    (4, 2)
"""
from . import _loader  # noqa: F401  (must run before _core is imported)
from . import _core
from ._core import Tensor, TapeBudgetError, memory_stats, reset_peak_memory_stats, get_num_threads
from .tensor import (
    tensor,
    from_numpy,
    zeros,
    ones,
    full,
    randn,
    rand,
    no_grad,
    enable_grad,
    is_grad_enabled,
    set_tape_budget,
    concatenate,
    manual_seed,
    set_num_threads,
)
from . import functional
from . import init, nn, optim, data, datasets, train  # the training stack
from . import analysis  # tools from the seed papers (HVPs, modified losses, spectra)
from .model_io import export, load_model  # models for the C API (devices)
from .gradcheck import gradcheck, GradcheckError  # gradients vs finite differences
from .budget import Budget, MemoryBudgetError  # training under a memory budget
from .checkpoint import checkpoint_sequential  # recomputation baseline (exact gradients, less memory)
from .memory import memory_summary  # allocated bytes by category
from .compile import compile, CompiledStep  # noqa: A001  (record a step once, replay it in C++)

__version__ = "0.1.0"

__all__ = [
    "Tensor",
    "TapeBudgetError",
    "tensor",
    "from_numpy",
    "zeros",
    "ones",
    "full",
    "randn",
    "rand",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "memory_stats",
    "reset_peak_memory_stats",
    "memory_summary",
    "set_tape_budget",
    "set_num_threads",
    "get_num_threads",
    "concatenate",
    "manual_seed",
    "functional",
    "init",
    "nn",
    "optim",
    "data",
    "datasets",
    "train",
    "analysis",
    "export",
    "load_model",
    "gradcheck",
    "GradcheckError",
    "Budget",
    "MemoryBudgetError",
    "checkpoint_sequential",
    "compile",
    "CompiledStep",
]
