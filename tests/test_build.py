"""The Python build (setup.py) and the standalone build (CMakeLists.txt) compile the same
core sources: both glob csrc/core/**/*.cpp, and this test checks that the two globs agree
(see cmake/spad_sources.cmake for why a glob and not a checked-in list)."""
import ast
import glob
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def setup_py_core_sources(monkeypatch) -> list:
    """Evaluates the `CORE = ...` assignment of setup.py (without running setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CORE" for t in node.targets):
            monkeypatch.chdir(ROOT)
            return list(eval(compile(ast.Expression(node.value), "setup.py", "eval"), {"glob": glob}))
    raise AssertionError("setup.py no longer defines CORE = <list of core sources>")


def cmake_core_sources() -> list:
    out = subprocess.run(
        ["cmake", f"-DSPAD_ROOT={ROOT}", "-P", str(ROOT / "cmake" / "spad_sources.cmake")],
        capture_output=True, text=True, check=True,
    )
    # message(NOTICE) writes to stderr, one path per line.
    return [line.strip() for line in out.stderr.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_setup_py_and_cmake_compile_the_same_core_sources(monkeypatch):
    py = setup_py_core_sources(monkeypatch)
    cm = cmake_core_sources()
    assert py, "setup.py found no core sources"
    assert sorted(py) == py, "setup.py's core source list is not sorted"
    assert set(py) == set(cm), f"only in setup.py: {set(py) - set(cm)}; only in CMake: {set(cm) - set(py)}"
    assert py == cm  # same order too, so both builds link objects in the same order


def test_setup_py_compiles_every_core_file(monkeypatch):
    py = setup_py_core_sources(monkeypatch)
    on_disk = sorted(str(p.relative_to(ROOT).as_posix()) for p in (ROOT / "csrc" / "core").rglob("*.cpp"))
    assert py == on_disk


def test_the_extension_is_built_and_importable():
    """Fails (instead of erroring at collection) when `spad` resolves to sources without
    their compiled extension, e.g. tests run against a checkout that was never built."""
    import spad

    assert Path(spad._core.__file__).exists()
    x = spad.tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()
    assert x.grad.numpy().tolist() == [[2.0, 4.0]]
