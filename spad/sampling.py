"""Sampling policies: randomized (RAD), row-sampled (CRS) and selective-path (SPAD) backprop.

A policy active during the forward pass decides what the tape stores for each weight
gradient: the exact layer input, or a sampled payload (a fraction ``keep`` of it plus an
RNG seed). ``backward()`` then follows only the sampled paths::

    import spad.sampling as S
    policy = S.SPAD(keep=0.1, refresh=50, seed=0)
    with S.use(policy):
        loss = F.cross_entropy(model(x), y)   # records a sampled, smaller tape
    loss.backward()                           # dW estimated from the kept paths; dx exact

Placement follows RAD's rule: inject once per parameter->loss path, on the operand saved for
a weight's gradient: the input of each linear layer, either side of ``x @ W`` / ``W @ x`` with
``W`` a 2-D leaf, conv2d's input, and (model-agnostically) any elementwise product with a leaf;
activation gradients stay exact. ``placement="everywhere"`` additionally samples every
layer's output gradient, a research option that shows why that is a bad idea.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from . import _core

__all__ = ["Policy", "Exact", "RAD", "CRS", "SPAD", "use", "estimate_variance"]


def _check_keep(keep: float) -> float:
    keep = float(keep)
    if not (0.0 < keep <= 1.0) or not np.isfinite(keep):
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    return keep


def _check_placement(placement: str) -> bool:
    if placement not in ("weights", "everywhere"):
        raise ValueError(f'placement must be "weights" or "everywhere", got {placement!r}')
    return placement == "everywhere"


class Policy:
    """Base class: holds the C++ policy state (RNG counter, per-site scores)."""

    _impl: _core.Policy

    def __init__(self, kind, estimator, keep=1.0, deterministic=0.0, refresh=1, unbiased=True, mix=0.0,
                 ema=0.0, everywhere=False, seed=0, sampled_scores=True, block=1):
        from .tensor import _seed
        for name, v in (("refresh", refresh), ("block", block)):  # int64 in the core
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not -2**63 <= int(v) < 2**63:
                raise ValueError(f"{type(self).__name__}: {name} must be an integer below 2**63, got {v!r}")
        self.keep = keep
        self.seed = _seed(type(self).__name__, seed)
        self._impl = _core.Policy(kind, estimator, keep, deterministic, int(refresh), bool(unbiased), float(mix),
                                  float(ema), bool(everywhere), self.seed, bool(sampled_scores), int(block))

    @property
    def step(self) -> int:
        """Forward passes through this policy's sites so far (see ``use`` for the clock)."""
        return self._impl.step

    def state_bytes(self) -> int:
        """Bytes of persistent sampler state (per-site scores, distributions, stale norms). Like
        parameters, it lives across steps, so it is reported here rather than in tape_bytes."""
        return self._impl.state_bytes()

    def next_is_scoring(self) -> bool:
        """Whether the next forward pass keeps exact inputs to refresh scores (SPAD)."""
        return False

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"

    def _repr_fields(self) -> dict:
        return {"keep": self.keep, "seed": self.seed}


class Exact(Policy):
    """Exact backprop (the default when no policy is active)."""

    def __init__(self):
        super().__init__(_core.PolicyKind.EXACT, _core.Estimator.EXACT)

    def _repr_fields(self) -> dict:
        return {}


class RAD(Policy):
    """Randomized AD (Oktay et al., ICLR 2021): keep a uniform fraction of each layer input's features.

    mode="different": per-example indices (the right choice for MLPs). With ``block=b`` > 1
    (default 16) each example keeps whole blocks of b consecutive features, drawn uniformly
    (the number of blocks nearest to keep*n/b; layers too narrow for two blocks use single features):
    still unbiased, variance (n-b)/k · Σ_b ‖x_b‖²‖dy_b‖² (no more than per-feature RAD's
    (n-1)/k), and a backward pass that runs near GEMM speed. ``block=1`` is the paper's
    per-feature estimator.
    mode="same": indices shared by the batch, so dW is a real GEMM over the kept features;
    mode="project": a Rademacher random projection of the input to keep*n features.
    All are unbiased; keep=1 is exact backprop.
    """

    _MODES = {"different": _core.Estimator.RAD_DIFF, "same": _core.Estimator.RAD_SAME,
              "project": _core.Estimator.PROJECT}

    def __init__(self, keep: float = 0.1, mode: str = "different", seed: int = 0, placement: str = "weights",
                 block: int = 16):
        if mode not in self._MODES:
            raise ValueError(f'RAD mode must be one of "different", "same", "project"; got {mode!r}')
        if int(block) != block or block < 1 or (block > 1 and block % 8):
            raise ValueError(f"block must be 1 or a positive multiple of 8, got {block}")
        self.mode, self.block = mode, int(block)
        est = self._MODES[mode]
        if mode == "different" and self.block > 1:
            est = _core.Estimator.RAD_BLOCK
        super().__init__(_core.PolicyKind.RAD, est, _check_keep(keep), everywhere=_check_placement(placement),
                         seed=seed, block=self.block)

    def layer_block(self, n: int) -> int:
        """The block size used for a layer with n input features (1: single features, when
        keep*n is too small for two blocks per example)."""
        if self.mode != "different":
            return 1
        return _core.rad_block_size(self.block, min(n, max(1, math.floor(self.keep * n + 0.5))))

    def _repr_fields(self) -> dict:
        fields = {"keep": self.keep, "mode": self.mode, "seed": self.seed}
        if self.mode == "different":
            fields["block"] = self.block
        return fields


class CRS(Policy):
    """Column-row sampling over the batch (WTA-CRS, NeurIPS 2023): keep s = keep*B rows of each
    layer input. The top ``deterministic*s`` rows by ||x_b||*||dy_b|| (dy from the previous
    backward at the same batch position) are kept exactly; the rest are drawn in proportion to
    the score with importance weights. rows="bernoulli" keeps each row with probability keep."""

    def __init__(self, keep: float = 0.1, deterministic: float = 0.5, seed: int = 0, rows: str = "importance"):
        deterministic = float(deterministic)
        if not 0.0 <= deterministic <= 1.0:
            raise ValueError(f"deterministic must be in [0, 1], got {deterministic}")
        if rows not in ("importance", "bernoulli"):
            raise ValueError(f'rows must be "importance" or "bernoulli", got {rows!r}')
        self.deterministic, self.rows = deterministic, rows
        est = _core.Estimator.CRS if rows == "importance" else _core.Estimator.BERNOULLI
        super().__init__(_core.PolicyKind.CRS, est, _check_keep(keep), deterministic=deterministic, seed=seed)

    def _repr_fields(self) -> dict:
        return {"keep": self.keep, "deterministic": self.deterministic, "rows": self.rows, "seed": self.seed}


class SPAD(Policy):
    """Selective-path AD (Peseux et al., IEEE Access 2023): follow the paths that matter.

    A path from a weight row j to the loss runs through the layer input x_bj; its share of
    dW is x_bj * dy_b. Two ways to choose which paths to follow (``paths``):

    - "magnitude" (default): per example, draw features with probability q_bj ∝ |x_bj|. This is
      the variance-optimal per-example distribution, and it is known in the forward pass, so no
      stale scores are needed. Each kept entry equals sign(x_bj) * ||x_b||_1 / k, so the tape
      stores a 2-byte signed index per entry and one scale per row: ``keep`` (a fraction of the
      exact tape's bytes, as for every policy) buys about twice the entries uniform RAD keeps.
      The k draws are systematic (one uniform per example), so unbiased with a variance at most
      sum_b (||x_b||_1^2 - ||x_b||_2^2) ||dy_b||^2 / k. On wide layers (keep*n >= 32) whole
      blocks of 16 features are drawn ∝ their L2 norm (the variance-optimal block distribution)
      and kept as values, so dW runs at block-GEMM speed.
    - "scored": "score now, follow later". Each feature j is scored by
      sqrt(sum_b x_bj^2 ||dy_b||^2) and the scores are renewed every ``refresh`` steps; the
      steps in between draw keep*n features per example from q = (1-mix)*score/sum + mix/n,
      weighted by 1/(k q_j). The uniform share ``mix`` keeps every path reachable, so stale
      scores cannot blow up variance (with mix=0 a feature that scored exactly 0 is never
      followed: unbiased only while it stays 0). ``scoring`` says where scores come from:
      "sampled" (default) estimates them without bias from the sampled passes since the last
      refresh, so the tape never holds more than the sampled payload (the first ``refresh``
      steps sample uniformly, like RAD); "exact" keeps the exact layer inputs on the first step
      of every refresh period and scores from that backward pass (those steps hold a full tape).
      ``ema`` blends old scores into new ones at each refresh (0 = replace).

    unbiased=False follows the keep*n top-scored features, not reweighted (SPAD's "backprop
    dropout", a deliberately biased regularizer); it implies paths="scored", scoring="exact".
    Convolutions sample spatial positions (see csrc/core/sampling/conv.cpp) whatever ``paths`` says.
    """

    def __init__(self, keep: float = 0.1, refresh: int = 50, unbiased: bool = True, mix: float = 0.1,
                 seed: int = 0, ema: float = 0.0, scoring: Optional[str] = None, paths: Optional[str] = None):
        if int(refresh) < 1 or int(refresh) != refresh:
            raise ValueError(f"refresh must be an integer >= 1, got {refresh}")
        mix = float(mix)
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        if not 0.0 <= float(ema) < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        if paths is None:
            paths = "magnitude" if unbiased else "scored"
        if paths not in ("magnitude", "scored"):
            raise ValueError(f'paths must be "magnitude" or "scored", got {paths!r}')
        if not unbiased and paths != "scored":
            raise ValueError('SPAD(unbiased=False) follows the top-scored paths: use paths="scored"')
        if scoring is None:
            scoring = "sampled" if unbiased else "exact"
        if scoring not in ("sampled", "exact"):
            raise ValueError(f'scoring must be "sampled" or "exact", got {scoring!r}')
        if not unbiased and scoring == "sampled":
            raise ValueError("SPAD(unbiased=False) follows only the top-scored paths, so it cannot score from its "
                             'own samples; use scoring="exact"')
        self.refresh, self.unbiased, self.mix, self.ema = int(refresh), bool(unbiased), mix, float(ema)
        self.scoring, self.paths = scoring, paths
        if not unbiased:
            est = _core.Estimator.SPAD_TOPK
        else:
            est = _core.Estimator.SPAD_MAG if paths == "magnitude" else _core.Estimator.SPAD
        sampled = scoring == "sampled" or paths == "magnitude"
        super().__init__(_core.PolicyKind.SPAD, est, _check_keep(keep), refresh=refresh, unbiased=unbiased, mix=mix,
                         ema=ema, seed=seed, sampled_scores=sampled)

    def next_is_scoring(self) -> bool:
        return (self.paths == "scored" and self.scoring == "exact" and self.keep < 1.0
                and (self._impl.upcoming_step() - 1) % self.refresh == 0)

    def scores(self) -> List[np.ndarray]:
        """The current per-feature scores of every injection site."""
        return list(self._impl.site_scores())

    def _repr_fields(self) -> dict:
        if self.paths == "magnitude":
            return {"keep": self.keep, "paths": self.paths, "seed": self.seed}
        return {"keep": self.keep, "paths": self.paths, "refresh": self.refresh, "unbiased": self.unbiased,
                "mix": self.mix, "scoring": self.scoring, "seed": self.seed}


@contextlib.contextmanager
def use(policy: Optional[Policy]) -> Iterator[Optional[Policy]]:
    """Record the forward passes inside the block under ``policy`` (None or Exact: exact).

    The policy's clock (SPAD's ``refresh`` period, exact scoring passes) counts forward passes
    through its sampling sites, not ``use`` blocks: a step begins when a site is packed after
    the previous pass's payloads were read by a backward pass or dropped. So one ``use`` around
    a training loop and one ``use`` per step give the same steps and the same gradients.
    A block under which no site was recorded (no weight product with a parameter, or grad mode
    off) warns once: the policy did nothing there.
    """
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"use() expects a spad.sampling policy, got {type(policy).__name__}")
    prev = _core.active_policy()
    impl = None if policy is None or isinstance(policy, Exact) else policy._impl
    visits = impl.visits if impl is not None else 0
    _core.set_active_policy(impl)
    ok = False
    try:
        yield policy
        ok = True
    finally:
        _core.set_active_policy(prev)
    if ok and impl is not None and impl.visits == visits:
        warnings.warn(f"spad.sampling.use({policy!r}): no sampling site was recorded in this block (no weight "
                      "product with a parameter that requires grad, or grad mode was off), so nothing was sampled",
                      UserWarning, stacklevel=3)


def _grads(loss_fn: Callable[[], object], params: Sequence, policy: Optional[Policy]) -> List[np.ndarray]:
    for p in params:
        p.grad = None
    with use(policy):
        loss = loss_fn()
    loss.backward()
    out = []
    for p in params:
        if p.grad is None:
            raise ValueError("estimate_variance: a parameter received no gradient from loss_fn")
        out.append(np.array(p.grad.numpy(), dtype=np.float64))
    return out


def estimate_variance(loss_fn: Callable[[], object], params: Sequence, policy: Policy, draws: int = 100,
                      include_scoring: bool = False, warmup: int = 0) -> List[Dict[str, float]]:
    """Measure an estimator's bias and variance against the exact gradient at a fixed point.

    Runs ``loss_fn()`` (which must rebuild the same loss from the same data each call) once
    exactly and ``draws`` times under ``policy``. Per parameter returns a dict with
    ``variance`` (E||g_hat - E g_hat||^2, summed over elements), ``mse`` (E||g_hat - g||^2),
    ``bias_norm`` (||mean(g_hat) - g||), ``bias_z`` (the largest |z| of the per-element mean
    error) and ``chi2`` (the sum of squared z: about chi^2 with one degree of freedom per
    element when the estimator is unbiased), ``exact_norm2`` (||g||^2) and ``draws``. SPAD scoring
    passes (exact by construction) are skipped unless ``include_scoring``; the first ``warmup``
    draws are run but not counted (e.g. CRS's first step, which has no stale dy norms yet).
    """
    if draws < 2:
        raise ValueError(f"estimate_variance: draws must be >= 2, got {draws}")
    params = list(params)
    if not params:
        raise ValueError("estimate_variance: no parameters given")
    exact = _grads(loss_fn, params, None)
    for _ in range(warmup):
        _grads(loss_fn, params, policy)
    sums = [np.zeros_like(g) for g in exact]
    sq = [np.zeros_like(g) for g in exact]
    taken = 0
    while taken < draws:
        if not include_scoring and policy.next_is_scoring():
            _grads(loss_fn, params, policy)  # advances the policy past its scoring pass
            continue
        gs = _grads(loss_fn, params, policy)
        for i, g in enumerate(gs):
            d = g - exact[i]
            sums[i] += d
            sq[i] += d * d
        taken += 1
    out = []
    for i, g in enumerate(exact):
        mean_err = sums[i] / taken
        mse_el = sq[i] / taken
        var_el = np.maximum(mse_el - mean_err ** 2, 0.0) * taken / (taken - 1)
        se = np.sqrt(var_el / taken)
        z = np.where(se > 0, np.abs(mean_err) / np.where(se > 0, se, 1), np.where(np.abs(mean_err) > 0, np.inf, 0))
        out.append({
            "variance": float(var_el.sum()),
            "mse": float(mse_el.sum()),
            "bias_norm": float(np.sqrt((mean_err ** 2).sum())),
            "bias_z": float(z.max()) if z.size else 0.0,
            "chi2": float((z[np.isfinite(z)] ** 2).sum() + np.isinf(z).sum() * 1e30),
            "exact_norm2": float((g ** 2).sum()),
            "draws": taken,
        })
    return out
