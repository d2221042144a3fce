"""Training under a memory budget: per-layer keep chosen so that a step's peak allocation fits.

    >>> budget = spad.Budget(64 << 20, base=S.RAD())          # bytes a training step may allocate
    >>> plan = budget.plan(model, F.cross_entropy, xb, yb, optimizer=opt)   # probes, sets the keeps
    >>> with S.use(budget):                                     # a policy like any other
    ...     loss = F.cross_entropy(model(xb), yb)
    >>> fit(model, loss_fn, loader, opt, epochs, memory_budget=64 << 20)  # the same, re-planned as it trains

The model (DESIGN.md §1): sampling layer i's input at keep k_i costs about b_i k_i tape bytes
(b_i = the bytes of the exact input, which the payload is a fraction k_i of) and adds gradient
variance c_i / k_i (up to a constant). The peak allocation of a step is modelled as
F + sum_i b_i k_i, where F (parameters, gradients, optimizer state, activations that are not
weight inputs, backward transients) is *measured*: ``plan()`` runs probe steps (forward and
backward, no update) on a real batch. Minimising sum c_i/k_i subject to sum b_i k_i <= budget - F
gives k_i proportional to sqrt(c_i / b_i), clipped to [min_keep, 1] (water-filling on the
Lagrange multiplier). c_i is measured too: the spread of the sampled dW_i over ``probe_draws``
probe steps at min_keep, divided by (1/min_keep - 1). The solution is then checked by one more
probe at the chosen keeps; if its measured peak overshoots, the room is cut by the overshoot and
the keeps re-solved. Scores change as the model trains, so fit() re-plans every
``resolve_every`` steps.

The floor is the measured peak of a probe step with every layer at ``min_keep``: the smallest
tape the budget policy uses, plus what no keep removes (parameters, optimizer state, the widest
layer's dy and dx, one or all layers' dW). A budget below the floor raises MemoryBudgetError
naming the floor, before any parameter changes. The peak is memory_stats()['peak_allocated_bytes']
(every byte spad allocates; numpy buffers it only borrows, such as input batches, are not counted).

Sampling sites are the weights of nn.Linear and nn.Conv2d modules; a weight the model uses
outside such a module keeps the base policy's keep. Variance is what the solver balances, so a
biased estimator (SPAD unbiased=False), whose error is mostly bias, gets little guidance from it.
Micro-batches: when even min_keep everywhere does not fit the budget (the floor is too high:
activations, dy and dx scale with the batch, the keeps only shrink the tape), the solver may split
the batch into m accumulated micro-batches (forward and backward per micro-batch, gradients summed,
one update), taking the fewest m in 2, 4, 8, ... up to ``max_micro_batches`` whose measured floor
fits, and then solves the keeps for that micro-batch. It prefers keeps alone whenever they reach
the budget: accumulation costs wall time (m smaller passes) and keeps cost variance, and time is
the cost a user did not ask to pay. The plan says what it chose (``micro_batches``, the floor of
the whole batch in ``batch_floor``). It needs an ordinary optimizer: one that updates inside
backward applies every backward's gradient at once, so it cannot accumulate (the solver then
raises MemoryBudgetError as before). The loss must average over the batch (the default reductions
do): micro-batch j's loss is weighted by its share of the examples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from . import nn
from . import sampling as S
from .tensor import no_grad, tensor

__all__ = ["MemoryBudgetError", "Budget", "BudgetPlan", "solve_keeps", "split_batch"]


class MemoryBudgetError(ValueError):
    """A memory budget below what a training step needs at the smallest keep. ``floor`` is that
    step's measured peak in bytes, ``budget`` the requested one. A ValueError: the argument is
    impossible for this model and batch (raised before any parameter changes)."""

    def __init__(self, message: str, floor: int, budget: int):
        super().__init__(message)
        self.floor, self.budget = int(floor), int(budget)


@dataclass
class BudgetPlan:
    """What the solver chose at one re-plan."""

    budget: int                    # bytes a step may allocate
    floor: int                     # measured peak with every site at min_keep
    fixed: int                     # F: the measured peak less the modelled weight-input bytes
    keeps: Dict[str, float]        # site (module path) -> keep
    input_bytes: Dict[str, int]    # site -> b_i, the bytes of its exact input
    variance: Dict[str, float]     # site -> c_i: measured dW variance per unit of (1/k - 1)
    predicted_peak: int            # F + sum b_i k_i
    measured_peak: int             # a probe step at the chosen keeps
    micro_batches: int = 1         # accumulated micro-batches per step (1: the whole batch at once)
    step: int = 0                  # the training step at which it was solved
    metric: str = "peak_allocated_bytes"
    batch_floor: int = 0           # the floor of the whole batch (> budget when micro_batches > 1)

    def summary(self) -> str:
        ks = ", ".join(f"{k}={v:.3g}" for k, v in self.keeps.items())
        mb = (f"; {self.micro_batches} accumulated micro-batches (the whole batch's floor is {self.batch_floor} B)"
              if self.micro_batches > 1 else "")
        return (f"budget {self.budget} B, floor {self.floor} B, measured peak {self.measured_peak} B "
                f"(predicted {self.predicted_peak} B); keeps: {ks}{mb}")


def _rows(v, a: int, b: int):
    """Rows a:b of a batch (numpy array or spad tensor), without copying a contiguous one."""
    if isinstance(v, np.ndarray):
        return v[a:b]
    return tensor(np.ascontiguousarray(v.numpy()[a:b]))


def split_batch(x, y, m: int) -> List[Tuple[object, object, float]]:
    """(x_j, y_j, weight_j) for m micro-batches of (x, y) (the last may be smaller); weight_j is
    micro-batch j's share of the examples, the factor on its mean loss in an accumulated step."""
    n = len(x)
    size = -(-n // m)
    return [(_rows(x, a, a + size), _rows(y, a, a + size), min(size, n - a) / n) for a in range(0, n, size)]


def solve_keeps(c: Sequence[float], b: Sequence[float], room: float, min_keep: float) -> np.ndarray:
    """argmin sum c_i/k_i subject to sum b_i k_i <= room and min_keep <= k_i <= 1.

    The KKT solution is k_i = clip(sqrt(c_i / (lam b_i)), min_keep, 1) with lam chosen so the
    bytes constraint is tight (bisection in log lam; the bytes are monotone in lam). Raises
    ValueError when even min_keep everywhere does not fit."""
    c = np.maximum(np.asarray(c, dtype=np.float64), 0.0)
    b = np.asarray(b, dtype=np.float64)
    if np.any(b <= 0):
        raise ValueError("solve_keeps: every site must have positive input bytes")
    if not 0 < min_keep <= 1:
        raise ValueError(f"solve_keeps: min_keep must be in (0, 1], got {min_keep}")
    if float(b.sum()) <= room:
        return np.ones_like(b)
    if float((b * min_keep).sum()) > room:
        raise ValueError(f"solve_keeps: {int((b * min_keep).sum())} bytes at min_keep exceed the room {int(room)}")
    if not np.any(c > 0):
        return np.full_like(b, min_keep)

    def keeps(log_lam):
        return np.clip(np.sqrt(c / (math.exp(log_lam) * b)), min_keep, 1.0)

    lo, hi = -200.0, 200.0  # keeps(lo) = 1 everywhere (too many bytes), keeps(hi) = min_keep
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float((b * keeps(mid)).sum()) > room:
            lo = mid
        else:
            hi = mid
    return keeps(hi)


def sites_of(model) -> List[Tuple[str, "nn.Module"]]:
    """(path, module) of every nn.Linear / nn.Conv2d in ``model``, in registration order."""
    out, seen = [], set()
    stack = [(model, "")]  # iterative: a recursive closure would be a reference cycle holding the model
    while stack:
        m, prefix = stack.pop()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append((prefix.rstrip(".") or type(m).__name__, m))
        stack.extend(reversed([(child, prefix + name + ".") for name, child in m._modules.items()]))
    return out


def _input_bytes(model, sites, x) -> Tuple[List[int], List[bool]]:
    """Bytes of each site's input on batch x, and whether that input is the batch itself: one
    forward without a tape, the inputs recorded by wrapping the site classes' __call__ (modules
    bind __call__ per class)."""
    seen: Dict[int, int] = {}
    is_batch: Dict[int, bool] = {}
    classes = {type(m) for _, m in sites}
    saved = {cls: cls.__dict__.get("__call__") for cls in classes}

    def wrap(cls, orig):
        def call(self, inp, *a, **kw):
            if hasattr(inp, "shape"):
                seen[id(self)] = seen.get(id(self), 0) + int(np.prod(inp.shape)) * np.dtype(inp.dtype).itemsize
                is_batch[id(self)] = is_batch.get(id(self), True) and inp is x
            return orig(self, inp, *a, **kw)
        return call

    # Sequential fuses runs of Linear layers into one core call; for this trace, the modules are
    # called one by one (the same values, no tape).
    plan = nn.Sequential.__dict__.get("_plan")
    try:
        for cls in classes:
            cls.__call__ = wrap(cls, cls.__dict__.get("__call__") or cls.forward)
        if plan is not None:
            nn.Sequential._plan = lambda self: list(self._modules.values())
        with no_grad():
            model(x)
    finally:
        for cls, orig in saved.items():
            if orig is None:
                del cls.__call__
            else:
                cls.__call__ = orig
        if plan is not None:
            nn.Sequential._plan = plan
    return [seen.get(id(m), 0) for _, m in sites], [is_batch.get(id(m), False) for _, m in sites]



class Budget(S.Policy):
    """A sampling policy whose per-layer keep is chosen to fit a step's peak allocation into
    ``nbytes`` at the least total gradient variance (see the module docstring).

    ``base``: the sampling policy whose estimator is used (default RAD(mode="different")); its
    own keep is ignored for the sites the solver manages. Use it with ``S.use(budget)`` after
    ``budget.plan(...)``, or pass ``fit(..., memory_budget=nbytes, sampling=base)``. ``min_keep``:
    the smallest keep the solver assigns (it sets the floor); ``resolve_every``: fit() re-plans
    every this many steps; ``probe_draws``: sampled probe steps per plan (>= 2); ``margin``: the
    fraction of the budget held back for step-to-step variation. ``metric``: what the budget
    bounds, "peak_allocated_bytes" (every byte a step allocates, the default) or
    "peak_tape_bytes" (the tape alone). ``max_micro_batches``: the most accumulated micro-batches
    the solver may split a batch into when no keep fits (1: never split).

    Under "peak_allocated_bytes", a layer whose input is the batch itself (the first layer) is
    kept exact: the batch is a numpy buffer spad only borrows, so its exact save costs no
    allocation while a sampled payload would.
    """

    def __init__(self, nbytes: int, base: Optional[S.Policy] = None, min_keep: float = 0.05,
                 resolve_every: int = 100, probe_draws: int = 3, margin: float = 0.02,
                 metric: str = "peak_allocated_bytes", max_micro_batches: int = 16):
        if metric not in ("peak_allocated_bytes", "peak_tape_bytes"):
            raise ValueError(f'Budget: metric must be "peak_allocated_bytes" or "peak_tape_bytes", got {metric!r}')
        self.metric = metric
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes <= 0:
            raise ValueError(f"Budget: nbytes must be a positive integer number of bytes, got {nbytes!r}")
        if base is None:
            base = S.RAD(keep=1.0)
        if not isinstance(base, S.Policy) or isinstance(base, (S.Exact, Budget)):
            raise TypeError(f"Budget: base must be a sampling policy (RAD, CRS, SPAD), got {type(base).__name__}")
        if not 0 < min_keep <= 1:
            raise ValueError(f"Budget: min_keep must be in (0, 1], got {min_keep}")
        if int(resolve_every) < 1:
            raise ValueError(f"Budget: resolve_every must be >= 1, got {resolve_every}")
        if int(probe_draws) < 2:
            raise ValueError(f"Budget: probe_draws must be >= 2 (variance needs two draws), got {probe_draws}")
        if not 0 <= margin < 0.5:
            raise ValueError(f"Budget: margin must be in [0, 0.5), got {margin}")
        if isinstance(max_micro_batches, bool) or int(max_micro_batches) != max_micro_batches or max_micro_batches < 1:
            raise ValueError(f"Budget: max_micro_batches must be an integer >= 1, got {max_micro_batches!r}")
        self.max_micro_batches = int(max_micro_batches)
        self.nbytes, self.base, self.min_keep = int(nbytes), base, float(min_keep)
        self.resolve_every, self.probe_draws, self.margin = int(resolve_every), int(probe_draws), float(margin)
        self._impl = base._impl  # S.use(budget) records under the base policy with per-site keeps
        self.keep, self.seed = base.keep, base.seed
        self.plans: List[BudgetPlan] = []

    def next_is_scoring(self) -> bool:
        return self.base.next_is_scoring()

    def _repr_fields(self) -> dict:
        return {"nbytes": self.nbytes, "base": self.base, "min_keep": self.min_keep}

    # ---- probing ------------------------------------------------------------------------
    def _probe(self, model, loss_fn, parts, sites, keeps, optimizer) -> Tuple[int, List[np.ndarray]]:
        """One forward + backward per micro-batch in ``parts`` (split_batch), gradients accumulated,
        at the given per-site keeps, no update: (peak bytes, dW per site).
        The peak is measured with gradients held the way the real step holds them: consumed at
        once (in the optimizer's implicit forms) when it updates in backward, all alive until the
        end otherwise."""
        for (_, m), k in zip(sites, keeps):
            self._impl.set_site_keep(m.weight, float(k))
        params = model.parameters()
        in_bwd = optimizer is not None and getattr(optimizer, "in_backward", False)
        grads: Dict[int, np.ndarray] = {}
        weights = {id(m.weight): i for i, (_, m) in enumerate(sites)}

        def run():
            _core.clear_grads(params)
            _core.reset_peak_memory_stats()
            for x, y, w in parts:
                with S.use(self):
                    loss = loss_fn(model(x), y)
                (loss if w == 1.0 else loss * w).backward()
                loss = None
            return int(_core.memory_stats()[self.metric])

        if not in_bwd:
            peak = run()
            for i, (_, m) in enumerate(sites):
                if m.weight.grad is not None:
                    grads[i] = np.array(m.weight.grad.numpy(), dtype=np.float64)
            _core.clear_grads(params)
            return peak, [grads.get(i) for i in range(len(sites))]

        # In backward the real step takes a sampled dW in the optimizer's own forms (row-sparse,
        # or added into the weight) and never builds it dense; copying dW out for the scores
        # would, so the peak comes from one pass that drops each gradient the way the step
        # consumes it, and dW from a second pass with dense hooks.
        def drop(p):
            if not _core._discard_implicit_grad(p):
                _core.clear_grads([p])

        def capture(p):
            i = weights.get(id(p))
            if i is not None:
                grads[i] = np.array(p.grad.numpy(), dtype=np.float64)
            _core.clear_grads([p])

        implicit = getattr(optimizer, "_implicit", True)
        rows, add = optimizer._implicit_forms() if implicit else (False, False)
        optimizer.remove_hooks()
        try:
            for p in params:
                _core.set_grad_complete_hook(p, drop, rows=rows, add=add)
            peak = run()
            for p in params:
                _core.set_grad_complete_hook(p, capture)
            run()
            _core.clear_grads(params)
        finally:
            for p in params:
                _core.set_grad_complete_hook(p, None)
            optimizer._attach(type(optimizer).__name__, implicit=implicit)
        return peak, [grads.get(i) for i in range(len(sites))]

    def plan(self, model, loss_fn: Callable, x, y, optimizer=None, step: int = 0,
             micro_batches_ok: bool = True) -> BudgetPlan:
        """Measure, solve and set the per-site keeps for batches like (x, y), splitting them into
        accumulated micro-batches when no keep fits (module docstring; ``micro_batches_ok=False``
        forbids it, e.g. for a caller that cannot accumulate). Parameters are not changed. Raises
        MemoryBudgetError when the floor exceeds the budget."""
        if isinstance(x, np.ndarray):
            x = tensor(x)
        sites = sites_of(model)
        if not sites:
            raise ValueError("Budget.plan: the model has no nn.Linear or nn.Conv2d layer to sample")
        names = [n for n, _ in sites]
        if not (optimizer is not None and getattr(optimizer, "in_backward", False)):
            for i, p in enumerate(model.parameters()):
                if _core.has_grad_complete_hook(p):
                    raise ValueError(f"Budget.plan: parameter {i} of shape {p.shape} is updated inside backward() by "
                                     "an optimizer that was not passed as optimizer=; the probe steps would update it")
        nb, batch_input = _input_bytes(model, sites, x)
        b = np.array(nb, dtype=np.float64)
        if np.any(b <= 0):
            raise ValueError(f"Budget.plan: site {names[int(np.argmin(b))]} was not called by the forward pass")
        free = np.array(batch_input, dtype=bool) & (self.metric == "peak_allocated_bytes")
        lo = np.where(free, 1.0, self.min_keep)
        def floor_of(parts):
            draws, peaks = [], []
            for _ in range(self.probe_draws):
                pk, g = self._probe(model, loss_fn, parts, sites, lo, optimizer)
                peaks.append(pk)
                draws.append(g)
            return max(peaks), draws

        parts = [(x, y, 1.0)]
        floor, draws = floor_of(parts)
        batch_floor, m, tried = floor, 1, []
        can_split = micro_batches_ok and not getattr(optimizer, "in_backward", False)
        while floor > self.nbytes and can_split and 2 * m <= min(self.max_micro_batches, len(x)):
            m *= 2
            parts = split_batch(x, y, m)
            # The batch input is borrowed, not allocated: the micro-batches' sites stay as free as the batch's.
            nb, _ = _input_bytes(model, sites, parts[0][0])
            b = np.array(nb, dtype=np.float64)
            floor, draws = floor_of(parts)
            tried.append(f"{m} micro-batches: {floor} B")
        if floor > self.nbytes:
            also = f"; accumulated micro-batches do not reach it either ({', '.join(tried)})" if tried else ""
            raise MemoryBudgetError(
                f"memory budget {self.nbytes} B is below the floor of {batch_floor} B for this model and batch "
                f"(a step with every layer at keep {self.min_keep}: the smallest tape, parameters, optimizer "
                f"state, and the backward transients no keep removes){also}. Raise the budget, lower min_keep, or "
                "use a smaller batch.", min(batch_floor, floor), self.nbytes)
        c = np.zeros(len(sites))
        for i in range(len(sites)):
            gs = [d[i] for d in draws if d[i] is not None]
            if len(gs) >= 2 and not free[i]:
                var = float(np.stack(gs).var(axis=0, ddof=1).sum())
                c[i] = var / (1.0 / self.min_keep - 1.0) if self.min_keep < 1 else 0.0
        solved = ~free  # sites the solver manages; the free ones stay exact
        fixed = floor - float((b * lo)[solved].sum())
        target = self.nbytes * (1.0 - self.margin)
        room = target - fixed
        keeps, measured, predicted = lo, floor, floor
        for _ in range(4):
            k = lo.copy()
            try:
                if solved.any():
                    k[solved] = solve_keeps(c[solved], b[solved], room, self.min_keep)
            except ValueError:
                break  # even min_keep overshoots the margin: the floor (<= budget) is the plan
            predicted_k = int(fixed + (b * k)[solved].sum())
            measured_k, _ = self._probe(model, loss_fn, parts, sites, k, optimizer)
            if measured_k <= target:
                keeps, measured, predicted = k, measured_k, predicted_k
                break
            room -= measured_k - target  # the linear model missed: give the overshoot back
        for (_, m), k in zip(sites, keeps):
            self._impl.set_site_keep(m.weight, float(k))
        plan = BudgetPlan(budget=self.nbytes, floor=int(floor), fixed=int(fixed),
                          keeps={n: float(k) for n, k in zip(names, keeps)},
                          input_bytes={n: int(v) for n, v in zip(names, b)},
                          variance={n: float(v) for n, v in zip(names, c)},
                          predicted_peak=int(predicted), measured_peak=int(measured), step=int(step),
                          metric=self.metric, micro_batches=len(parts), batch_floor=int(batch_floor))
        self.plans.append(plan)
        return plan
