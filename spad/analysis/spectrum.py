"""Random-matrix diagnostics of weight matrices (Park, Favoni, Lucini & Aarts; Aarts, Lucini & Park).

For W of shape (n, m), m ≤ n, with i.i.d. entries of variance σ², the eigenvalues of
WᵀW/n follow, as n, m → ∞ with q = m/n fixed, the Marchenko–Pastur law on
[σ²(1 − √q)², σ²(1 + √q)²]. A weight matrix at initialization fits it; training moves
eigenvalues out of the bulk (outliers above the upper edge carry what was learned), and the
KS distance to MP measures how far the spectrum has left the random bulk. Local statistics
are universal: nearest-neighbour spacings of the unfolded eigenvalues of a real random
matrix follow the GOE Wigner surmise p(s) = (π s/2) exp(−π s²/4), uncorrelated levels
the Poisson law exp(−s).

    >>> eigs = eigenvalues(W)                        # ascending
    >>> mp_ks_distance(eigs, q=W.shape[1] / W.shape[0], sigma2=eigs.mean())
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np

from .._core import Tensor

__all__ = [
    "SpectrumTracker",
    "eigenvalues",
    "marchenko_pastur_cdf",
    "marchenko_pastur_pdf",
    "mp_edges",
    "mp_ks_distance",
    "mp_outliers",
    "spacing_ratios",
    "teacher_student_spectra",
    "unfolded_spacings",
    "wigner_ks_distance",
    "wigner_surmise_cdf",
    "wigner_surmise_pdf",
]

# Mean of r = min(s_i, s_{i+1}) / max(...) for GOE (Atas et al., PRL 2013) and Poisson levels.
GOE_MEAN_RATIO = 4 - 2 * np.sqrt(3)  # 0.5359 (surmise); large-matrix value 0.5307
POISSON_MEAN_RATIO = 2 * np.log(2) - 1  # 0.3863


def _matrix(W) -> np.ndarray:
    a = W.numpy() if isinstance(W, Tensor) else np.asarray(W)
    if a.ndim != 2:
        raise ValueError(f"eigenvalues: W must be 2-D (n, m), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"eigenvalues: W is empty (shape {a.shape})")
    if not np.isfinite(a).all():
        raise ValueError("eigenvalues: W contains NaN or inf")
    return a.astype(np.float64)


def eigenvalues(W) -> np.ndarray:
    """Eigenvalues of WᵀW/n for W of shape (n, m) (numpy array or spad tensor), ascending, float64.

    For ``nn.Linear`` the weight is (in_features, out_features), so n = in_features."""
    a = _matrix(W)
    n = a.shape[0]
    return np.linalg.eigvalsh(a.T @ a / n)


def _check_q(q, sigma2):
    q, sigma2 = float(q), float(sigma2)
    if not (0 < q <= 1):
        raise ValueError(f"Marchenko–Pastur needs 0 < q = m/n <= 1, got q={q}; "
                         "transpose W so that it has at least as many rows as columns")
    if not (sigma2 > 0 and np.isfinite(sigma2)):
        raise ValueError(f"sigma2 must be positive and finite, got {sigma2}")
    return q, sigma2


def mp_edges(q: float, sigma2: float = 1.0):
    """The support ``(λ−, λ+) = σ²(1 ∓ √q)²`` of the Marchenko–Pastur law."""
    q, sigma2 = _check_q(q, sigma2)
    return sigma2 * (1 - np.sqrt(q)) ** 2, sigma2 * (1 + np.sqrt(q)) ** 2


def marchenko_pastur_pdf(x, q: float, sigma2: float = 1.0) -> np.ndarray:
    """Density √((λ+ − x)(x − λ−)) / (2π σ² q x) on [λ−, λ+], zero elsewhere (q = m/n ≤ 1)."""
    lo, hi = mp_edges(q, sigma2)
    q, sigma2 = float(q), float(sigma2)
    x = np.asarray(x, dtype=np.float64)
    inside = (x > lo) & (x < hi) & (x > 0)
    xs = np.where(inside, x, 1.0)
    pdf = np.sqrt(np.clip((hi - xs) * (xs - lo), 0, None)) / (2 * np.pi * sigma2 * q * xs)
    return np.where(inside, pdf, 0.0)


def _mp_cdf_table(q, sigma2, points=8193):
    # Substitute x = λ− + (λ+ − λ−)(1 − cos φ)/2: the square-root edges (and, at q = 1, the
    # 1/√x pole at 0) become a smooth integrand in φ, so the trapezoid rule converges fast.
    lo, hi = mp_edges(q, sigma2)
    phi = np.linspace(0.0, np.pi, points)
    half = (hi - lo) / 2
    x = lo + half * (1 - np.cos(phi))
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (half * np.sin(phi)) ** 2 / (2 * np.pi * sigma2 * q * x)
    f[~np.isfinite(f)] = 0.0 if q < 1 else 2 * half / (2 * np.pi * sigma2 * q)  # the limit at x = 0, q = 1
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(phi))])
    return x, cdf / cdf[-1]  # the total is 1 up to ~1e-9; pin it so the CDF ends at exactly 1


def marchenko_pastur_cdf(x, q: float, sigma2: float = 1.0) -> np.ndarray:
    """CDF of the Marchenko–Pastur law (q ≤ 1), by numerical integration of the density."""
    q, sigma2 = _check_q(q, sigma2)
    xs, cdf = _mp_cdf_table(q, sigma2)
    return np.interp(np.asarray(x, dtype=np.float64), xs, cdf, left=0.0, right=1.0)


def _ks(sorted_values: np.ndarray, cdf_values: np.ndarray) -> float:
    n = len(sorted_values)
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - cdf_values), np.max(cdf_values - (i - 1) / n)))


def _eigs(eigs, who) -> np.ndarray:
    e = np.sort(np.asarray(eigs, dtype=np.float64).ravel())
    if e.size == 0:
        raise ValueError(f"{who}: no eigenvalues given")
    if not np.isfinite(e).all():
        raise ValueError(f"{who}: eigenvalues contain NaN or inf")
    return e


def mp_ks_distance(eigs, q: float, sigma2: float = 1.0) -> float:
    """Kolmogorov–Smirnov distance sup |F_emp − F_MP| between the empirical distribution of
    ``eigs`` and Marchenko–Pastur(q, σ²). Pass ``sigma2=eigs.mean()`` to fit the scale (the
    MP mean is σ²). ~0.02 for a 2000×500 Gaussian matrix; → 1 as eigenvalues leave the bulk."""
    e = _eigs(eigs, "mp_ks_distance")
    return _ks(e, marchenko_pastur_cdf(e, q, sigma2))


def mp_outliers(eigs, q: float, sigma2: float = 1.0, tol: float = 0.0) -> dict:
    """Eigenvalues above the MP upper edge λ+·(1 + tol): a dict with ``edges``, ``outliers``
    (ascending), ``count``, ``fraction`` and ``largest_ratio`` (max eigenvalue / λ+)."""
    e = _eigs(eigs, "mp_outliers")
    lo, hi = mp_edges(q, sigma2)
    out = e[e > hi * (1 + tol)]
    return {"edges": (lo, hi), "outliers": out, "count": int(out.size), "fraction": out.size / e.size,
            "largest_ratio": float(e[-1] / hi)}


def wigner_surmise_pdf(s) -> np.ndarray:
    """GOE Wigner surmise p(s) = (π s / 2) exp(−π s² / 4), s ≥ 0 (zero for s < 0)."""
    s = np.asarray(s, dtype=np.float64)
    return np.where(s >= 0, np.pi * s / 2 * np.exp(-np.pi * s * s / 4), 0.0)


def wigner_surmise_cdf(s) -> np.ndarray:
    """CDF of the GOE Wigner surmise: 1 − exp(−π s² / 4) for s ≥ 0, 0 for s < 0."""
    s = np.asarray(s, dtype=np.float64)
    return np.where(s >= 0, 1.0 - np.exp(-np.pi * s * s / 4), 0.0)


def unfolded_spacings(eigs, degree: int = 9, trim: float = 0.1) -> np.ndarray:
    """Nearest-neighbour spacings of the unfolded spectrum, normalized to mean 1.

    Unfolding maps each eigenvalue to the smooth counting function N̄(λ), here a polynomial
    of ``degree`` fitted to the staircase (rank vs λ), so the local density becomes 1 and
    spacings of different parts of the spectrum are comparable. ``trim``: the fraction
    dropped at each end, where the density vanishes and the fit is poor.
    """
    e = _eigs(eigs, "unfolded_spacings")
    if not 0 <= trim < 0.5:
        raise ValueError(f"unfolded_spacings: trim must be in [0, 0.5), got {trim}")
    if e.size < 4:
        raise ValueError(f"unfolded_spacings: need at least 4 eigenvalues, got {e.size}")
    rank = np.arange(e.size, dtype=np.float64)
    scale = e[-1] - e[0] if e[-1] > e[0] else 1.0
    u = (e - e[0]) / scale * 2 - 1  # [-1, 1]: a well-conditioned Chebyshev fit
    fit = np.polynomial.Chebyshev.fit(u, rank, min(degree, e.size - 1))
    unfolded = fit(u)
    k = int(trim * e.size)
    s = np.diff(unfolded[k:e.size - k])
    if s.size == 0 or s.mean() <= 0:
        raise ValueError("unfolded_spacings: degenerate spectrum (all eigenvalues equal?)")
    return s / s.mean()


def spacing_ratios(eigs) -> np.ndarray:
    """Ratios r_i = min(s_i, s_{i+1}) / max(s_i, s_{i+1}) of consecutive raw spacings. They need
    no unfolding; their mean is ≈ 0.531 for GOE and 2 ln 2 − 1 ≈ 0.386 for Poisson levels."""
    e = _eigs(eigs, "spacing_ratios")
    s = np.diff(e)
    a, b = s[:-1], s[1:]
    big = np.maximum(a, b)
    ok = big > 0
    return np.minimum(a, b)[ok] / big[ok]


def wigner_ks_distance(spacings) -> float:
    """KS distance between unfolded spacings and the GOE Wigner surmise."""
    s = _eigs(spacings, "wigner_ks_distance")
    return _ks(s, wigner_surmise_cdf(s))


def _oriented(W) -> np.ndarray:
    a = _matrix(W)
    return a if a.shape[0] >= a.shape[1] else a.T  # so that q = m/n <= 1


class SpectrumTracker:
    """A ``fit`` callback recording, after every ``every``-th epoch, the eigenvalues of each
    ``nn.Linear`` weight (oriented so q = m/n ≤ 1: WᵀW/n with n the larger dimension).

    ``eigs[name]``: list of eigenvalue arrays; ``epochs``: the epochs recorded (−1 for
    ``record(model)`` before training); ``ks[name]``: the KS distance to MP with σ² fitted
    as the mean eigenvalue; ``outliers[name]``: the count above λ+.

        >>> tracker = SpectrumTracker(); tracker.record(model)       # at initialization
        >>> fit(model, ..., callbacks=[tracker])
    """

    def __init__(self, every: int = 1):
        if every <= 0:
            raise ValueError(f"SpectrumTracker: every must be positive, got {every}")
        self.every = every
        self.epochs: List[int] = []
        self.eigs: Dict[str, List[np.ndarray]] = OrderedDict()
        self.q: Dict[str, float] = {}
        self.ks: Dict[str, List[float]] = OrderedDict()
        self.outliers: Dict[str, List[int]] = OrderedDict()

    @staticmethod
    def weights(model) -> OrderedDict[str, np.ndarray]:
        from ..nn import Linear

        out = OrderedDict()

        def walk(mod, prefix):
            if isinstance(mod, Linear):
                out[prefix + "weight"] = mod.weight.numpy()
            for name, child in mod._modules.items():
                walk(child, prefix + name + ".")

        walk(model, "")
        return out

    def record(self, model, epoch: int = -1) -> None:
        """Record the current spectra (call before ``fit`` for the initial ones)."""
        self.epochs.append(epoch)
        for name, W in self.weights(model).items():
            a = _oriented(W)
            e = eigenvalues(a)
            q = a.shape[1] / a.shape[0]
            self.q[name] = q
            self.eigs.setdefault(name, []).append(e)
            sigma2 = max(float(e.mean()), np.finfo(np.float64).tiny)
            self.ks.setdefault(name, []).append(mp_ks_distance(e, q, sigma2))
            self.outliers.setdefault(name, []).append(mp_outliers(e, q, sigma2)["count"])

    def __call__(self, epoch: int, history, model) -> bool:
        if (epoch + 1) % self.every == 0:
            self.record(model, epoch)
        return False  # never stops training


def teacher_student_spectra(n: int = 2000, d: int = 100, hidden: int = 50, teacher_hidden: Optional[int] = 20,
                            noise: float = 0.1, lr: float = 0.05, batch_size: int = 16, epochs: int = 10,
                            seed: int = 0, progress: bool = False) -> dict:
    """Park et al.'s teacher–student setup: a fixed random teacher
    (``spad.datasets.teacher_student``) labels Gaussian inputs; a student MLP
    d → hidden (tanh) → 1 learns it by SGD with minibatch noise (MSE loss). Returns the
    first-layer spectra at initialization and after training (``init_eigs``, ``final_eigs``),
    their KS distances to MP (σ² fitted), outlier counts, mean spacing ratios and KS
    distances of the unfolded spacings to the Wigner surmise, the tracker and the History.
    """
    from .. import functional as F
    from .. import nn, optim
    from ..data import DataLoader
    from ..datasets import teacher_student
    from ..train import fit

    if hidden > d:
        raise ValueError(f"teacher_student_spectra: hidden ({hidden}) must be <= d ({d}) so that q <= 1")
    X, y = teacher_student(n, d, out=1, hidden=teacher_hidden, noise=noise, seed=seed)
    model = nn.Sequential(nn.Linear(d, hidden, seed=seed + 1),
                          nn.Tanh(), nn.Linear(hidden, 1, seed=seed + 2))
    tracker = SpectrumTracker()
    tracker.record(model)
    hist = fit(model, F.mse_loss, DataLoader(X, y, batch_size, seed=seed), optim.SGD(model.parameters(), lr),
               epochs, callbacks=[tracker], progress=progress)
    name = next(iter(tracker.eigs))
    q = tracker.q[name]
    res = {"tracker": tracker, "history": hist, "q": q, "layer": name}
    for tag, e in (("init", tracker.eigs[name][0]), ("final", tracker.eigs[name][-1])):
        s = unfolded_spacings(e)
        res[f"{tag}_eigs"] = e
        res[f"{tag}_mp_ks"] = mp_ks_distance(e, q, e.mean())
        res[f"{tag}_outliers"] = mp_outliers(e, q, e.mean())["count"]
        res[f"{tag}_ratio"] = float(spacing_ratios(e).mean())
        res[f"{tag}_wigner_ks"] = wigner_ks_distance(s)
    return res
