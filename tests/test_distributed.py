"""Data parallel: spad.distributed, DataLoader(rank=, world_size=) and fit()/CLI on MPI ranks.

Single-process parts run in the normal suite. Multi-rank parts launch this file under
``mpiexec -n 2`` (the worker cases at the bottom); they skip when mpiexec is missing unless
SPAD_REQUIRE_MPI=1 (set by CI), which turns the skip into a failure. Each rank prints one
"OK <case> rank <r>" line when its checks pass; a rank that fails aborts the whole job through
the hook that D.init() installs, so a failure can never hang.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import spad
import spad.distributed as D
import spad.functional as F
from spad import nn, optim
from spad import sampling as S
from spad.data import DataLoader

HERE = os.path.abspath(__file__)
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None


# ---------------- single process ----------------

def test_import_without_mpi_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if mpi4py were not installed
    monkeypatch.setattr(D, "_world", None)
    with pytest.raises(ImportError, match=r"pip install 'spad\[distributed\]'"):
        D.init()
    with pytest.raises(RuntimeError, match="init"):
        D.rank()
    assert not D.is_initialized()


@pytest.mark.parametrize("order", ["reshuffle", "replacement", "fixed", "sequential"])
@pytest.mark.parametrize("n", [100, 96, 97, 193])
def test_ranks_split_the_one_process_batches(order, n):
    """W ranks at batch b see exactly the rows one process sees at batch W*b (tail: module notes)."""
    X, y = np.arange(n, dtype=np.float32)[:, None], np.arange(n)
    W, b = 2, 16
    # a tail under W rows is dropped by the ranks: the matching one-process loader drops it too
    one = DataLoader(X, y, W * b, order=order, seed=3, drop_last=0 < n % (W * b) < W)
    ranks = [DataLoader(X, y, b, order=order, seed=3, rank=r, world_size=W) for r in range(W)]
    assert len({len(dl) for dl in ranks}) == 1
    for _ in range(2):  # two epochs: the generators stay in step
        full = one.epoch_indices()
        parts = [dl.epoch_indices() for dl in ranks]
        assert len(parts[0]) == len(ranks[0]) == len(full)
        for whole, p0, p1 in zip(full, *parts):
            np.testing.assert_array_equal(np.concatenate([p0, p1]), whole)
            t = len(whole)
            assert (len(p0), len(p1)) == ((b, b) if t == W * b else (t // 2, t - t // 2))


def test_tail_smaller_than_world_is_dropped_on_every_rank():
    X, y = np.zeros((9, 1), np.float32), np.arange(9)
    dls = [DataLoader(X, y, 2, order="sequential", rank=r, world_size=4) for r in range(4)]
    assert [len(dl) for dl in dls] == [1, 1, 1, 1]  # 8 rows in one global batch; the ninth is dropped
    assert [list(dl.epoch_indices()[0]) for dl in dls] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    X, y = np.zeros((11, 1), np.float32), np.arange(11)
    dls = [DataLoader(X, y, 2, order="sequential", rank=r, world_size=4) for r in range(4)]
    assert [len(dl) for dl in dls] == [1, 1, 1, 1]  # a tail of 3 rows cannot feed 4 ranks


def test_loader_rank_and_world_size_are_validated():
    X, y = np.zeros((10, 1), np.float32), np.arange(10)
    for kw in ({"rank": 2, "world_size": 2}, {"rank": -1, "world_size": 2}, {"rank": 0, "world_size": 0},
               {"rank": 0.0, "world_size": 2}, {"rank": True, "world_size": 2}):
        with pytest.raises(ValueError, match="rank|world_size"):
            DataLoader(X, y, 2, **kw)
    with pytest.raises(ValueError, match="cannot give each of 16 ranks"):
        DataLoader(X, y, 1, rank=0, world_size=16)
    with pytest.raises(ValueError, match="world_size 8 > 10 examples"):
        DataLoader(X, y, 2, rank=0, world_size=8, drop_last=True)


def test_cli_seeds_shared_only_for_shared_coordinates():
    from spad.__main__ import _rank_sampling

    assert _rank_sampling("exact", 1) is None
    assert _rank_sampling("rad-same:0.1", 1).seed == 0  # every rank keeps the same rows
    assert _rank_sampling("spad:0.1", 1).seed == 1      # per-example draws independent across ranks
    assert _rank_sampling("rad:0.1", 0).seed == 0


def test_world_of_one_is_a_no_op():
    """Without mpiexec the world has one rank: broadcast, reduction and evaluation change nothing."""
    pytest.importorskip("mpi4py")
    D.init(abort_on_error=False)
    assert (D.rank(), D.size()) == (0, 1)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 8)).astype(np.float32), rng.integers(0, 3, 64)
    a, b = nn.mlp([8, 16, 3], seed=0), nn.mlp([8, 16, 3], seed=0)
    D.broadcast_parameters(a)
    opt_a = D.DistributedOptimizer(optim.SGD(a.parameters(), 0.1, momentum=0.9))
    opt_b = optim.SGD(b.parameters(), 0.1, momentum=0.9)
    D.reset_stats()
    for net, opt in ((a, opt_a), (b, opt_b)):
        spad.train.fit(net, F.cross_entropy, DataLoader(X, y, 16, seed=1), opt, 2, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.numpy(), pb.numpy())
    assert D.stats() == {"allreduce_bytes": 0, "allreduce_calls": 0, "allreduce_seconds": 0.0}
    assert D.evaluate(a, X, y, F.cross_entropy) == spad.train.evaluate(a, X, y, F.cross_entropy)
    opt_a.lr = 0.01  # schedules set lr on the wrapper: it must reach the wrapped optimizer
    assert opt_b.lr == 0.1 and opt_a.optimizer.lr == 0.01


def test_distributed_optimizer_arguments():
    opt = optim.SGD(nn.mlp([4, 2], seed=0).parameters(), 0.1)
    with pytest.raises(ValueError, match="sparse_threshold"):
        D.DistributedOptimizer(opt, sparse_threshold=1.5)
    with pytest.raises(ValueError, match="bucket_bytes"):
        D.DistributedOptimizer(opt, bucket_bytes=0)


# ---------------- several ranks (mpiexec -n 2) ----------------

def _mpirun(*args, timeout=180):
    if MPIEXEC is None or not HAVE_MPI4PY:
        if os.environ.get("SPAD_REQUIRE_MPI") == "1":
            pytest.fail("SPAD_REQUIRE_MPI=1 but mpiexec or mpi4py is missing (pip install mpi4py mpich)")
        pytest.skip("mpiexec or mpi4py not found (pip install 'spad[distributed]')")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([MPIEXEC, "-n", "2", *args], capture_output=True, text=True, timeout=timeout, env=env)


def _run_case(case):
    p = _mpirun(sys.executable, HERE, case)
    assert p.returncode == 0, f"rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    for r in range(2):
        assert f"OK {case} rank {r}" in p.stdout, p.stdout + p.stderr
    return p.stdout


def test_two_ranks_match_one_process_at_twice_the_batch():
    """Bar: 2 ranks x 32 == 1 process x 64 (MLP 784-256-256-10, SGD momentum, 30 steps) within
    relative 1e-5, both ranks bitwise identical; also under RAD same keep 0.1 with a shared seed,
    whose all-reduce carries <= 0.15x exact's bytes."""
    out = _run_case("equivalence")
    assert "bytes ratio" in out


def test_mismatched_parameters_fail_at_broadcast_on_every_rank():
    _run_case("mismatch")


def test_row_sparse_edge_cases_average_correctly():
    _run_case("rows")


def test_fit_on_two_ranks_agrees_everywhere():
    _run_case("fit")


def test_a_rank_that_raises_aborts_the_job():
    p = _mpirun(sys.executable, HERE, "abort", timeout=60)  # a hang would time out and fail
    assert p.returncode != 0
    assert "boom on rank 1" in p.stderr and "aborting all 2 ranks" in p.stderr
    assert "unreachable" not in p.stdout


def test_cli_trains_on_two_ranks_and_prints_once():
    p = _mpirun(sys.executable, "-m", "spad", "train", "--dataset", "digits", "--distributed", "--epochs", "2",
                "--no-progress", "--threads", "1", "--sampling", "rad-same:0.25")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("test accuracy") == 1, p.stdout


# ---------------- worker cases (run under mpiexec) ----------------

def _train(world, batch, steps, policy_seed=None, keep=0.1, seed=0):
    """MLP 784-256-256-10 with SGD momentum on a fixed synthetic set; returns (params, bytes per step)."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((batch * world * steps, 784)).astype(np.float32)
    y = (X[:, :10] @ rng.standard_normal((10, 10))).argmax(axis=1)
    r = D.rank() if world > 1 else 0
    net = nn.mlp([784, 256, 256, 10], seed=seed + r)  # different values per rank: broadcast must fix them
    opt = optim.SGD(net.parameters(), 0.01, momentum=0.9)
    policy = None if policy_seed is None else S.RAD(keep=keep, mode="same", seed=policy_seed)
    if world > 1:
        D.broadcast_parameters(net)
        opt = D.DistributedOptimizer(opt, policy=policy)  # checks each step that seeds and steps agree
    loader = DataLoader(X, y, batch, seed=5, rank=r, world_size=world)
    D.reset_stats()
    n = 0
    for xb, yb in loader:
        with S.use(policy):
            loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += 1
    assert n == steps
    return [p.numpy().copy() for p in net.parameters()], D.stats()["allreduce_bytes"] / steps


def _same_everywhere(arrays):
    mine = np.concatenate([a.ravel() for a in arrays]).view(np.uint8)
    other = D._world.comm.allgather(mine.tobytes())
    assert all(o == other[0] for o in other), "ranks hold different parameters"


def _close(got, ref, tol=1e-5):
    for g, r in zip(got, ref):
        err = float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-30))
        assert err <= tol, f"relative difference {err:.2e} > {tol}"


def case_equivalence():
    exact, exact_bytes = _train(2, 32, 30)
    _same_everywhere(exact)
    rad, rad_bytes = _train(2, 32, 30, policy_seed=11)
    _same_everywhere(rad)
    ratio = rad_bytes / exact_bytes
    assert ratio <= 0.15, f"RAD same keep 0.1 all-reduce bytes ratio {ratio:.3f} > 0.15"
    if D.rank() == 0:  # the one-process reference, after the collective part
        _close(exact, _train(1, 64, 30)[0])
        _close(rad, _train(1, 64, 30, policy_seed=11)[0])
        print(f"bytes ratio {ratio:.4f} ({rad_bytes:.0f} / {exact_bytes:.0f} per step)")


def case_mismatch():
    r = D.rank()
    net = nn.mlp([20, 16 if r == 0 else 12, 3], seed=0)
    try:
        D.broadcast_parameters(net)
        raise AssertionError("no error for mismatched shapes")
    except ValueError as e:
        msg = str(e)
        assert "'0.weight' has shape (20, 12) on rank 1 but (20, 16) on root rank 0" in msg, msg
    ps = [spad.zeros((3, 4), dtype=np.float32 if r == 0 else np.float64, requires_grad=True)]
    try:
        D.broadcast_parameters(ps)
        raise AssertionError("no error for mismatched dtypes")
    except TypeError as e:
        assert "'parameter 0' has dtype float64 on rank 1 but float32 on root rank 0" in str(e), str(e)
    # a sampling policy whose seed differs across ranks: the optimizer refuses on every rank
    net = nn.mlp([20, 16, 3], seed=0)
    policy = S.RAD(keep=0.25, mode="same", seed=r)
    opt = D.DistributedOptimizer(optim.SGD(net.parameters(), 0.1), policy=policy)
    with S.use(policy):
        loss = F.cross_entropy(net(spad.ones((4, 20))), np.array([0, 1, 2, 0]))
    loss.backward()
    try:
        opt.step()
        raise AssertionError("no error for different policy seeds")
    except RuntimeError as e:
        assert "disagree on the sampling policy's seed or step" in str(e), str(e)
    D.barrier()  # nothing is left half-done: the world still works


def case_rows():
    """Row-sparse reduction against the dense mean: rows non-zero on one rank only, a gradient zero
    everywhere, a missing gradient on one rank, ranks disagreeing (union), and a dense fallback."""
    r = D.rank()
    shapes = [(40, 3), (40, 3), (40, 3), (8,), (40, 5), (6, 2, 2)]
    ps = [spad.zeros(s, requires_grad=True) for s in shapes]
    rng = np.random.default_rng(100 + r)
    g = [np.zeros(s, np.float32) for s in shapes]
    g[0][[1, 7, 30]] = rng.standard_normal((3, 3))               # the same rows on both ranks
    g[1][[2, 9] if r == 0 else [9, 11]] = rng.standard_normal((2, 3))  # disagreeing rows: the union travels
    g[3][:] = rng.standard_normal(8)                              # 1-d: always dense
    g[4][:] = rng.standard_normal((40, 5))                        # dense rows: falls back to dense
    g[5][1] = rng.standard_normal((2, 2))
    # g[2] stays zero on both ranks: nothing to send
    for i, p in enumerate(ps):
        if not (i == 5 and r == 1):  # parameter 5 has no gradient on rank 1 (counts as zero)
            p.grad = spad.tensor(g[i])
    if r == 1:
        g[5][:] = 0
    everyone = D._world.comm.allgather(g)
    want = [(a + b) / 2 for a, b in zip(*everyone)]
    opt = D.DistributedOptimizer(optim.SGD(ps, 0.1))
    D.reset_stats()
    opt.synchronize()
    for i, (p, w) in enumerate(zip(ps, want)):
        np.testing.assert_allclose(p.grad.numpy(), w, rtol=1e-6, atol=0, err_msg=f"parameter {i}")
    sent, total = opt.last_elements
    assert sent == (3 + 3) * 3 + 8 + 40 * 5 + 1 * 4, (sent, total)  # rows 1,7,30 | 2,9,11 | - | 8 | 40x5 | row 1
    dense = sum(int(np.prod(s)) for s in shapes)
    assert total == dense and D.stats()["allreduce_calls"] >= 2


def case_fit():
    Xtr, ytr, Xte, yte = spad.datasets.digits_split(seed=0)
    net = nn.mlp([64, 32, 10], seed=D.rank())
    D.broadcast_parameters(net)
    opt = D.DistributedOptimizer(optim.SGD(net.parameters(), 0.1, momentum=0.9))
    dl = DataLoader(Xtr, ytr, 16, seed=0, rank=D.rank(), world_size=D.size())
    hist = spad.train.fit(net, F.cross_entropy, dl, opt, 2, val=(Xte, yte), progress=False)
    rows = D._world.comm.allgather((hist.loss, hist.accuracy, hist.val_loss, hist.val_accuracy))
    assert rows[0] == rows[1], rows
    _same_everywhere([p.numpy() for p in net.parameters()])
    assert hist.val_accuracy[-1] > 0.8, hist.val_accuracy


def case_abort():
    if D.rank() == 1:
        raise RuntimeError("boom on rank 1")
    D.barrier()  # rank 0 waits here until the abort ends it
    print("unreachable")


if __name__ == "__main__":
    spad.set_num_threads(1)
    D.init()
    name = sys.argv[1]
    globals()[f"case_{name}"]()
    print(f"OK {name} rank {D.rank()}", flush=True)
