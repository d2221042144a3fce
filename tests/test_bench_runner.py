"""benchmarks/run.py: the equal-memory study without its dataset fails with the install hint
and leaves RESULTS.md as it was (never rewrites the section as "Skipped")."""
import hashlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def _digest():
    with open(RESULTS, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_equal_memory_without_dataset_fails_and_keeps_results(tmp_path):
    before = _digest()
    for args in (["--equal-memory"], ["--only", "equal_memory"]):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), *args, "--data", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0, r.stderr
        assert "apt-get install dataset-fashion-mnist" in r.stderr
        assert _digest() == before, "RESULTS.md must not be rewritten when the study cannot run"
