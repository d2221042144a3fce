"""Plan files (docs/plan_format.md): a saved compiled step, with its sampling policies and their
state, loads and trains like the original; bad, truncated and hostile files are refused."""
from __future__ import annotations

import numpy as np
import pytest

import spad
import spad.sampling as S
from compile_common import _batches, _max_rel, _mlp_step


def _saved_plan(digits, path, steps=1, sizes=(64, 8, 10), policy=None):
    """A compiled MLP step run `steps` times on digits batches and saved to `path`."""
    X, y = digits
    _, step = _mlp_step(sizes, policy=policy)
    compiled = spad.compile(step)
    for xb, yb in _batches(X, y, steps):
        compiled(xb, yb)
    compiled.save(path)
    return compiled


def test_saved_plan_replays_like_the_original(digits, tmp_path):
    X, y = digits
    m1, step = _mlp_step()
    compiled = spad.compile(step)
    batches = list(_batches(X, y, 6))
    compiled(*batches[0])
    path = tmp_path / "step.plan"
    compiled.save(path)
    loaded = spad._core._load_program(str(path))
    assert loaded.n_records == compiled.n_records and loaded.plan_bytes == compiled.plan_bytes
    for p, q in zip(loaded.parameters(), m1.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    for xb, yb in batches[1:]:
        assert float(compiled(xb, yb)) == float(loaded.run((xb, yb)))
    assert _max_rel(m1, type("M", (), {"parameters": lambda self: loaded.parameters()})()) == 0.0
    assert loaded.lowered and loaded.lowered_runs == 5  # a loaded program lowers like a recorded one


def test_plan_reader_rejects_bad_files(digits, tmp_path):
    good = tmp_path / "good.plan"
    _saved_plan(digits, good)
    data = good.read_bytes()
    cases = {"magic": b"XXXX" + data[4:], "truncated": data[: len(data) // 2], "trailing": data + b"\0",
             "huge count": data[:24] + (2**31).to_bytes(4, "little") + data[28:]}
    for name, blob in cases.items():
        p = tmp_path / f"{name}.plan"
        p.write_bytes(blob)
        with pytest.raises(ValueError, match="plan file"):
            spad._core._load_program(str(p))
    rng = np.random.default_rng(0)  # random byte flips: an error or a loadable plan, never a crash
    for _ in range(200):
        b = bytearray(data)
        for i in rng.integers(8, len(b), 4):
            b[i] = int(rng.integers(0, 256))
        p = tmp_path / "flip.plan"
        p.write_bytes(bytes(b))
        try:
            spad._core._load_program(str(p))
        except ValueError:
            pass


@pytest.mark.parametrize("make", [
    lambda: S.RAD(keep=0.3, seed=3),
    lambda: S.RAD(keep=0.25, seed=4, block=8),
    lambda: S.CRS(keep=0.4, seed=5),
    lambda: S.SPAD(keep=0.3, refresh=2, seed=6),
    lambda: S.SPAD(keep=0.3, refresh=3, seed=7, paths="scored", scoring="exact"),
], ids=["rad", "rad-blocks", "crs", "spad", "spad-scored-exact"])
def test_policy_step_saved_with_its_state_continues_like_the_original(digits, tmp_path, make):
    # A sampled step is saved with its policy (settings, clock, RNG counter, per-site scores and
    # norms): the loaded copy and the original, from the same saved state, take the same samples.
    X, y = digits
    pol = make()
    m1, step = _mlp_step((64, 32, 10), policy=pol)
    compiled = spad.compile(step)
    batches = list(_batches(X, y, 12, seed=2))
    for xb, yb in batches[:4]:  # the policy's clock and scores move past their first values
        compiled(xb, yb)
    path = tmp_path / "sampled.plan"
    compiled.save(path)
    loaded = spad._core._load_program(str(path))
    for p, q in zip(loaded.parameters(), m1.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    for xb, yb in batches[4:]:
        assert float(compiled(xb, yb)) == float(loaded.run((xb, yb)))
    for p, q in zip(loaded.parameters(), m1.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    assert pol.step == 12


def test_loaded_sampler_state_is_not_counted_as_tape(digits, tmp_path):
    # The distribution a SPAD site follows is persistent sampler state, like the one the
    # sampler makes itself: a loaded copy's step counts the same tape bytes as the original's.
    X, y = digits
    _, step = _mlp_step((64, 32, 10), policy=S.SPAD(keep=0.3, refresh=3, seed=6, paths="scored"))
    compiled = spad.compile(step)
    batches = list(_batches(X, y, 5, seed=4))
    for xb, yb in batches[:4]:
        compiled(xb, yb)
    compiled.save(tmp_path / "s.plan")
    loaded = spad._core._load_program(str(tmp_path / "s.plan"))
    peaks = []
    for run in (lambda: compiled(*batches[4]), lambda: loaded.run(batches[4])):
        spad.reset_peak_memory_stats()
        run()
        peaks.append(spad.memory_stats()["peak_tape_bytes"])
    assert peaks[0] == peaks[1] > 0


def test_plan_of_format_1_is_still_read(digits, tmp_path):
    # Version 2 appended the policy section (a step without policies: one u32 0).
    path = tmp_path / "v2.plan"
    compiled = _saved_plan(digits, path)
    raw = bytearray(path.read_bytes())
    assert raw[8:12] == (2).to_bytes(4, "little") and raw[-4:] == bytes(4)
    raw[8:12] = (1).to_bytes(4, "little")
    v1 = tmp_path / "v1.plan"
    v1.write_bytes(bytes(raw[:-4]))
    assert spad._core._load_program(str(v1)).n_records == compiled.n_records
    raw[8:12] = (3).to_bytes(4, "little")
    v1.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="version 3"):
        spad._core._load_program(str(v1))


def test_plan_reader_rejects_bad_policy_state(digits, tmp_path):
    pol = S.SPAD(keep=0.3, refresh=2, seed=0x5EED_0123_4567_89AB)  # bytes found nowhere else in the file
    path = tmp_path / "p.plan"
    _saved_plan(digits, path, steps=3, policy=pol)
    raw = path.read_bytes()
    # find the policy's configuration through its seed and break the settings around it
    seed = int(pol.seed).to_bytes(8, "little")
    at = raw.index(seed)  # first: the policy's own configuration (its sites repeat it)
    assert raw.count(seed) == 1 + 2  # the policy and its two sites
    cfg0 = at - (1 + 1 + 8 + 8 + 8 + 1 + 8 + 8)
    for off, val, msg in [(cfg0, 9, "policy kind"), (cfg0 + 1, 0, "estimator"),
                          (cfg0 + 2, None, "out of range")]:
        bad = bytearray(raw)
        if val is None:
            bad[off:off + 8] = np.float64(1.5).tobytes()  # keep 1.5
        else:
            bad[off] = val
        p2 = tmp_path / "bad.plan"
        p2.write_bytes(bytes(bad))
        with pytest.raises(ValueError, match=msg):
            spad._core._load_program(str(p2))
    # a SPAD variant the constructor never makes: top-k paths scored from their own samples
    # (its sites would have no scores to follow)
    bad = bytearray(raw)
    bad[cfg0 + 1] = int(spad._core.Estimator.SPAD_TOPK.value)
    p2 = tmp_path / "bad.plan"
    p2.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="never makes"):
        spad._core._load_program(str(p2))
    # a site whose settings are not its policy's (here: another seed)
    bad = bytearray(raw)
    site_seed = raw.index(seed, at + 8)
    bad[site_seed] ^= 1
    p2.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="other than its policy"):
        spad._core._load_program(str(p2))
    # accumulated steps without their accumulators: rebuild the first site with an empty list
    h = site_seed + 8 + 8  # after the site's seed and block: features n, then the f64 lists
    n = int.from_bytes(raw[h:h + 8], "little", signed=True)
    pos = h + 8
    lists = []
    for _ in range(4):  # scores, distribution, stale norms, accumulators
        c = int.from_bytes(raw[pos:pos + 8], "little")
        lists.append((pos, c))
        pos += 8 + 8 * c
    acc_pos, acc_n = lists[3]
    bad = raw[:acc_pos] + bytes(8) + (3).to_bytes(8, "little") + raw[pos + 8:]  # acc = [], acc_steps = 3
    p2.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="inconsistent state"):
        spad._core._load_program(str(p2))
    assert n > 0 and acc_n in (0, n)
    for cut in range(len(raw) - 40, len(raw), 3):  # truncated inside the policy section
        p2 = tmp_path / "cut.plan"
        p2.write_bytes(raw[:cut])
        with pytest.raises(ValueError):
            spad._core._load_program(str(p2))
