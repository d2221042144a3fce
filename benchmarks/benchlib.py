"""Shared helpers for the benchmark scripts: one BLAS thread, machine/version info,
interleaved CPU-time measurement, shared initial weights, and markdown tables.

Import this module before numpy in every benchmark script: it pins BLAS/OpenMP to one thread
through the environment, which only takes effect before the BLAS library is loaded.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, List, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.path.join(HERE, "figures")


def import_torch():
    """PyTorch (an optional peer) pinned to one thread, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    return torch


def import_spad():
    import spad

    spad.set_num_threads(1)
    return spad


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> Dict[str, str]:
    spad = import_spad()
    torch = import_torch()
    info = {
        "CPU": cpu_model(),
        "logical cores": str(os.cpu_count()),
        "OS": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "spad": spad.__version__,
        "torch": torch.__version__ if torch is not None else "not installed",
        "threads": (f"spad {spad.get_num_threads()}, torch {torch.get_num_threads() if torch else '-'}, "
                    f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
                    f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"),
    }
    try:
        from threadpoolctl import threadpool_info

        info["BLAS pools"] = ", ".join(f"{p.get('internal_api')} {p.get('num_threads')}" for p in threadpool_info())
    except ImportError:
        pass
    return info


def interleaved(fns: Dict[str, Callable[[], object]], reps: int, inner: int, warmup: int = 2) -> Dict[str, List[float]]:
    """Per-call process CPU time of each function, measured as ``reps`` rounds in which every
    function runs ``inner`` times in turn, so load on a shared machine hits all of them alike.
    Returns name -> list of per-call seconds (one entry per round)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.process_time()
            for _ in range(inner):
                fn()
            out[name].append((time.process_time() - t0) / inner)
    return out


def median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs)))


def he_uniform_mlp(sizes: Sequence[int], seed: int) -> List[np.ndarray]:
    """Initial weights (in, out) and zero biases for an MLP, float32, from one seed: every
    engine starts from these exact numbers."""
    rng = np.random.default_rng(seed)
    out = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lim = np.sqrt(6.0 / a)
        out.append(rng.uniform(-lim, lim, (a, b)).astype(np.float32))
        out.append(np.zeros(b, np.float32))
    return out


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats are printed as given (format them before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.1f}" if us < 1000 else f"{us:.0f}"


def fmt_mb(nbytes: Optional[float]) -> str:
    return "-" if nbytes is None else f"{nbytes / 1e6:.3f}"


def savefig(fig, name: str) -> str:
    os.makedirs(FIGURES, exist_ok=True)
    path = os.path.join(FIGURES, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return os.path.relpath(path, HERE)


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None (plots are then skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def python_exe() -> str:
    return sys.executable
