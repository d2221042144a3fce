"""Data-parallel training over MPI (through mpi4py): one process per rank, gradients averaged.

    import spad.distributed as D
    D.init()                                   # MPI_COMM_WORLD; installs an abort-on-error hook
    model = nn.mlp([784, 256, 256, 10], seed=0)
    D.broadcast_parameters(model)              # rank 0's values everywhere (shapes/dtypes checked first)
    opt = D.DistributedOptimizer(optim.SGD(model.parameters(), 0.1, momentum=0.9))
    loader = DataLoader(X, y, 32, seed=0, rank=D.rank(), world_size=D.size())
    fit(model, F.cross_entropy, loader, opt, epochs=5)   # only rank 0 shows progress

Run it with ``mpiexec -n 2 python train.py`` (``pip install 'spad[distributed]'`` brings mpi4py and
the MPICH wheel; on a cluster mpi4py built against the system MPI runs the same code). Without
mpiexec the world has one rank and every collective is a no-op.

Gradients travel as raw float buffers through mpi4py's buffer-protocol calls (``Allreduce`` on
numpy views of the gradients, never pickled), in buckets of at most ``bucket_bytes``: small
gradients are packed into one contiguous buffer per bucket, a gradient as large as a bucket is
reduced in place. The sum is divided by the world size, so the result is the gradient of the
mean loss over the global batch (every rank holds the same number of rows: see spad.data).

Note [Row-sparse all-reduce]
A sampled weight product that keeps the same input features for the whole batch (RAD
``mode="same"``) yields a dW that is zero outside the k kept rows. With the same policy seed on
every rank, the RNG counters advance identically, so every rank keeps the same rows, and only
those rows need to travel: bytes fall in proportion to ``keep``. The optimizer finds the rows
itself, in Python, from the gradients (no sampler hook): each rank marks its non-zero rows, and one
small Allreduce (bitwise OR of the packed masks and of their complements) gives every rank the
union of the non-zero rows and the rows on which ranks disagree. Sending the union is always
correct (a row outside it is zero on every rank), so disagreement costs bytes, never accuracy;
when the union covers more than ``sparse_threshold`` of a gradient's rows it is sent dense.
Per-example estimators (RAD ``mode="different"`` and its blocks, SPAD magnitude and scored paths,
CRS batch rows, the random projection) touch different rows for different examples, so over a
batch their dW has almost every row non-zero: they send dense gradients, as exact backprop does.
Their saving is the tape, not the wire.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core

__all__ = ["init", "is_initialized", "rank", "size", "barrier", "broadcast_parameters", "DistributedOptimizer",
           "evaluate", "allreduce_sum", "stats", "reset_stats", "abort"]

INSTALL_HINT = ("spad.distributed needs mpi4py and an MPI library: pip install 'spad[distributed]' "
                "(or: pip install mpi4py mpich; on a cluster, mpi4py built against the system MPI)")


class _World:
    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()


_world: Optional[_World] = None
_stats = {"allreduce_bytes": 0, "allreduce_calls": 0, "allreduce_seconds": 0.0}


def init(comm: Any = None, abort_on_error: bool = True) -> None:
    """Join the MPI world (``comm`` defaults to ``MPI.COMM_WORLD``). Idempotent.

    With ``abort_on_error`` an exception that escapes to the top level on any rank prints its
    traceback and calls ``MPI_Abort``, ending every rank, instead of leaving the others blocked in
    a collective. Raises ImportError (with the install command) when mpi4py is missing."""
    global _world
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:  # RuntimeError: mpi4py present but no MPI library to load
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    _world = _World(comm if comm is not None else MPI.COMM_WORLD, MPI)
    if abort_on_error and getattr(sys.excepthook, "_spad_abort", None) is None:
        sys.excepthook = _abort_hook(sys.excepthook)


def _abort_hook(previous: Callable) -> Callable:
    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)  # the traceback first, so the job log says why
        if _world is not None and _world.size > 1:
            sys.stderr.write(f"spad.distributed: rank {_world.rank} raised {exc_type.__name__}; aborting all "
                             f"{_world.size} ranks\n")
            sys.stderr.flush()
            # Abort tears the job down at once, and the launcher may drop what it has not yet
            # forwarded from this rank's stderr pipe: give it a moment, so the log says why.
            time.sleep(0.2)
            _world.comm.Abort(1)

    hook._spad_abort = previous
    return hook


def is_initialized() -> bool:
    return _world is not None


def _need() -> _World:
    if _world is None:
        raise RuntimeError("spad.distributed: call spad.distributed.init() first")
    return _world


def rank() -> int:
    """This process's rank in the world (0 .. size()-1)."""
    return _need().rank


def size() -> int:
    """The number of ranks (1 when the script runs without mpiexec)."""
    return _need().size


def barrier() -> None:
    w = _need()
    if w.size > 1:
        w.comm.Barrier()


def abort(code: int = 1) -> None:
    """End every rank of the job now (MPI_Abort); a plain exit without it leaves the others waiting."""
    w = _need()
    if w.size > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        w.comm.Abort(code)
    sys.exit(code)


def stats() -> Dict[str, float]:
    """Gradient traffic since the last reset_stats(): bytes each rank contributed to Allreduce
    (row masks included), the number of Allreduce calls and the seconds spent inside them."""
    return dict(_stats)


def reset_stats() -> None:
    _stats.update(allreduce_bytes=0, allreduce_calls=0, allreduce_seconds=0.0)


def _allreduce(w: _World, buf: np.ndarray, op=None) -> None:
    """In-place Allreduce of a contiguous numpy buffer (buffer protocol, no pickling), counted."""
    t0 = time.perf_counter()
    w.comm.Allreduce(w.MPI.IN_PLACE, buf, op=w.MPI.SUM if op is None else op)
    _stats["allreduce_seconds"] += time.perf_counter() - t0
    _stats["allreduce_bytes"] += buf.nbytes
    _stats["allreduce_calls"] += 1


def allreduce_sum(values) -> np.ndarray:
    """The element-wise sum of a small float64 vector over ranks (metrics, counts)."""
    buf = np.array(values, dtype=np.float64).ravel()
    w = _need()
    if w.size > 1:
        w.comm.Allreduce(w.MPI.IN_PLACE, buf, op=w.MPI.SUM)
    return buf


def _named(params) -> List[Tuple[str, Any]]:
    if hasattr(params, "named_parameters"):
        return list(params.named_parameters())
    if isinstance(params, dict):
        return list(params.items())
    return [(f"parameter {i}", p) for i, p in enumerate(params)]


def _array(t) -> np.ndarray:
    a = np.asarray(t)
    if not (a.flags.c_contiguous and a.flags.writeable):
        raise ValueError(f"spad.distributed: tensor of shape {a.shape} is not a writable contiguous buffer "
                         "(is it saved on a live tape?)")
    return a


def broadcast_parameters(params, root: int = 0) -> None:
    """Overwrite every rank's parameters with rank ``root``'s values, in place.

    ``params``: a Module (names from named_parameters), a dict name -> tensor, or a list. First
    every rank's (name, shape, dtype) list is compared with the root's; any difference raises the
    same ValueError/TypeError on every rank, naming the parameter, both shapes/dtypes and the rank."""
    w = _need()
    named = _named(params)
    if not 0 <= root < w.size:
        raise ValueError(f"broadcast_parameters: root {root} is not a rank of a world of size {w.size}")
    if w.size == 1:
        return
    meta = [(name, tuple(p.shape), str(np.dtype(p.dtype))) for name, p in named]
    everyone = w.comm.allgather(meta)  # small metadata; the values below go as raw buffers
    ref = everyone[root]
    for r, theirs in enumerate(everyone):
        if len(theirs) != len(ref):
            raise ValueError(f"broadcast_parameters: rank {r} has {len(theirs)} parameters, root rank {root} has "
                             f"{len(ref)}")
        for (name, shape, dt), (rname, rshape, rdt) in zip(theirs, ref):
            if shape != rshape:
                raise ValueError(f"broadcast_parameters: '{name}' has shape {shape} on rank {r} but {rshape} on "
                                 f"root rank {root} (was '{rname}' there)")
            if dt != rdt:
                raise TypeError(f"broadcast_parameters: '{name}' has dtype {dt} on rank {r} but {rdt} on root "
                                f"rank {root}")
    for _, p in named:
        w.comm.Bcast(_array(p), root=root)
        _core.bump_version(p)


def _nonzero_rows(g: np.ndarray) -> np.ndarray:
    """Which rows of g hold a non-zero. A row whose first entry is non-zero needs no further look,
    so a dense gradient costs one column read; only rows starting with 0 are scanned whole."""
    g2 = g.reshape(g.shape[0], -1)
    m = g2[:, 0] != 0
    rest = np.flatnonzero(~m)
    if rest.size:
        m[rest] = np.any(g2[rest] != 0, axis=1)
    return m


class DistributedOptimizer:
    """Wraps an optimizer: ``step()`` first averages every parameter's gradient over the ranks
    (in place, Allreduce on contiguous buffers), then runs the wrapped update. Everything else
    (``lr``, ``state``, ``zero_grad``, schedules, state dicts) reaches the wrapped optimizer.

    ``bucket_bytes``: small gradients (and the gathered rows of row-sparse ones) are fused into
    buckets of at most this size (fewer calls); a dense gradient of ``inplace_bytes`` or more is
    reduced where it lies, in one call, with no copy.
    ``sparse_rows``: send only the rows that are non-zero on some rank (see Note [Row-sparse
    all-reduce]); a gradient whose union of such rows exceeds ``sparse_threshold`` of its rows goes
    dense. ``policy``: the sampling policy the ranks share; its seed and step are then checked to
    agree on every step, and a disagreement raises RuntimeError on every rank.

    Seam for optimizers that update inside backward: ``reduce_gradient(i)`` averages parameter i's
    gradient alone (same protocol, one mask and one data Allreduce); call it from the hook that
    fires when that gradient is complete, in the same parameter order on every rank."""

    def __init__(self, optimizer, bucket_bytes: int = 4 << 20, sparse_rows: bool = True,
                 sparse_threshold: float = 0.5, policy=None, inplace_bytes: int = 1 << 16):
        if not 0.0 <= sparse_threshold <= 1.0:
            raise ValueError(f"DistributedOptimizer: sparse_threshold must be in [0, 1], got {sparse_threshold}")
        if int(bucket_bytes) <= 0:
            raise ValueError(f"DistributedOptimizer: bucket_bytes must be > 0, got {bucket_bytes}")
        d = self.__dict__  # plain attributes here; everything else forwards to the wrapped optimizer
        d["optimizer"] = optimizer
        d["bucket_bytes"], d["inplace_bytes"] = int(bucket_bytes), int(inplace_bytes)
        d["sparse_rows"], d["sparse_threshold"] = bool(sparse_rows), float(sparse_threshold)
        d["policy"] = policy
        d["last_elements"] = (0, 0)  # (elements sent, elements of the reduced gradients) at the last reduction
        d["_bufs"] = {}

    def __getattr__(self, name):
        return getattr(self.__dict__["optimizer"], name)

    def __setattr__(self, name, value):
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.optimizer, name, value)  # e.g. a schedule setting lr

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        self.synchronize()
        self.optimizer.step()

    def synchronize(self) -> None:
        """Average every parameter's gradient over the ranks, in place (step() calls this)."""
        self._reduce(list(range(len(self.optimizer.params))))

    def reduce_gradient(self, i: int) -> None:
        """Average parameter ``i``'s gradient over the ranks (the per-parameter seam)."""
        self._reduce([i])

    # ---- the protocol ----
    def _grads(self, idx: Sequence[int]) -> List[np.ndarray]:
        out = []
        for i in idx:
            p = self.optimizer.params[i]
            if p.grad is None:  # every rank must take part in every call: a missing gradient is zero here
                p.grad = _core.from_numpy(np.zeros(p.shape, dtype=p.dtype))
            out.append(_array(p.grad))
        return out

    def _reduce(self, idx: Sequence[int]) -> None:
        w = _need()
        if w.size == 1:
            return
        grads = self._grads(idx)
        rows = self._sparse_rows(w, grads)
        pieces = []  # (grad index, rows or None, element count)
        for j, g in enumerate(grads):
            r = rows[j]
            pieces.append((j, r, g.size if r is None else len(r) * (g.size // max(g.shape[0], 1))))
        inv = 1.0 / w.size
        for bucket in self._buckets(grads, pieces):
            self._reduce_bucket(w, grads, bucket, inv)
        for i in idx:
            _core.bump_version(self.optimizer.params[i].grad)
        self.__dict__["last_elements"] = (sum(n for _, _, n in pieces), sum(g.size for g in grads))

    def _sparse_rows(self, w: _World, grads: List[np.ndarray]) -> List[Optional[np.ndarray]]:
        """Per gradient: the rows to send (sorted), or None for dense (Note [Row-sparse all-reduce])."""
        cand = [j for j, g in enumerate(grads) if g.ndim >= 2 and g.shape[0] > 1 and g.size] \
            if self.sparse_rows else []
        header = b""
        if self.policy is not None:
            header = np.array([self.policy.seed, self.policy.step], np.int64).tobytes()
        if not cand and not header:
            return [None] * len(grads)
        masks = [np.packbits(_nonzero_rows(grads[j])) for j in cand]
        flat = np.concatenate([np.frombuffer(header, np.uint8)] + masks)
        both = np.concatenate([flat, ~flat])  # OR of x and of ~x: union, and the complement of the intersection
        _allreduce(w, both, op=w.MPI.BOR)
        union, not_inter = both[:len(flat)], both[len(flat):]
        if header and np.any(union[:len(header)] & not_inter[:len(header)]):
            raise RuntimeError("DistributedOptimizer: ranks disagree on the sampling policy's seed or step, so they "
                               "sample different rows; use the same policy seed on every rank and one forward "
                               "pass per step")
        out: List[Optional[np.ndarray]] = [None] * len(grads)
        off = len(header)
        for j, m in zip(cand, masks):
            n = grads[j].shape[0]
            u = np.unpackbits(union[off:off + len(m)], count=n).astype(bool)
            off += len(m)
            if u.sum() <= self.sparse_threshold * n:
                out[j] = np.flatnonzero(u)
        return out

    def _buckets(self, grads, pieces):
        """Large dense gradients alone (reduced in place); the rest packed in parameter order."""
        bucket, nbytes, dtype = [], 0, None
        for piece in pieces:
            g = grads[piece[0]]
            b = piece[2] * g.itemsize
            if piece[1] is None and b >= self.inplace_bytes:
                yield [piece]
                continue
            if bucket and (g.dtype != dtype or nbytes + b > self.bucket_bytes):
                yield bucket
                bucket, nbytes = [], 0
            bucket.append(piece)
            nbytes += b
            dtype = g.dtype
        if bucket:
            yield bucket

    def _reduce_bucket(self, w: _World, grads, bucket, inv: float) -> None:
        if len(bucket) == 1 and bucket[0][1] is None:  # one whole gradient: reduce it where it lies
            g = grads[bucket[0][0]]
            _allreduce(w, g.reshape(-1))
            g *= g.dtype.type(inv)
            return
        dtype = grads[bucket[0][0]].dtype
        total = sum(n for _, _, n in bucket)
        if total == 0:  # only gradients that are zero on every rank: nothing to send
            return
        key = (dtype.str, total)
        buf = self._bufs.get(key)
        if buf is None:
            buf = self._bufs[key] = np.empty(total, dtype)
        off = 0
        for j, r, n in bucket:
            g = grads[j]
            src = g.reshape(-1) if r is None else g.reshape(g.shape[0], -1)[r].reshape(-1)
            buf[off:off + n] = src
            off += n
        _allreduce(w, buf)
        buf *= dtype.type(inv)
        off = 0
        for j, r, n in bucket:
            g = grads[j]
            if r is None:
                g.reshape(-1)[:] = buf[off:off + n]
            else:
                g.reshape(g.shape[0], -1)[r] = buf[off:off + n].reshape(len(r), g.size // g.shape[0])
            off += n


def evaluate(model, X, y, loss_fn: Optional[Callable] = None, batch_size: int = 1024) -> dict:
    """spad.train.evaluate over all ranks: each rank scores a contiguous shard of (X, y), the sums
    are all-reduced, so every rank returns the metrics of the whole set."""
    from .train import evaluate as local_evaluate

    w = _need()
    X, y = np.asarray(X), np.asarray(y)
    n = len(X)
    if w.size == 1:
        return local_evaluate(model, X, y, loss_fn, batch_size)
    lo, hi = w.rank * n // w.size, (w.rank + 1) * n // w.size
    res = local_evaluate(model, X[lo:hi], y[lo:hi], loss_fn, batch_size) if hi > lo else {}
    m = hi - lo
    tot = allreduce_sum([res.get("loss", 0.0) * m, res.get("accuracy", 0.0) * m])
    out = {}
    if loss_fn is not None:
        out["loss"] = tot[0] / n
    if y.dtype.kind in "iu":
        out["accuracy"] = tot[1] / n
    return out
