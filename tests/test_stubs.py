"""spad/_core.pyi (generated with pybind11-stubgen, see its header) matches the compiled
module: the same top-level names, and the same public members on each class."""
import ast
from pathlib import Path

import spad._core as C

PYI = Path(__file__).resolve().parents[1] / "spad" / "_core.pyi"


def _stub():
    tree = ast.parse(PYI.read_text())
    top = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top[node.target.id] = node
    return top


def _members(cls_node):
    out = set()
    for m in cls_node.body:
        if isinstance(m, ast.FunctionDef):
            out.add(m.name)
        elif isinstance(m, ast.AnnAssign) and isinstance(m.target, ast.Name):
            out.add(m.target.id)
    return {n for n in out if not n.startswith("_")}


def test_module_names_match_the_stub():
    stub = set(_stub()) - {"__all__"}
    mod = {n for n in dir(C) if not n.startswith("__")}
    assert mod - stub == set(), f"bound but missing from _core.pyi (regenerate it): {sorted(mod - stub)}"
    assert stub - mod == set(), f"in _core.pyi but not bound: {sorted(stub - mod)}"


def test_class_members_match_the_stub():
    for name, node in _stub().items():
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(C, name)
        real = {n for n in dir(cls) if not n.startswith("_")}
        if issubclass(cls, BaseException):
            real -= set(dir(BaseException))
        stub = _members(node)
        assert real == stub, f"{name}: missing from the stub {sorted(real - stub)}, not bound {sorted(stub - real)}"
