"""The core's headers are layered bottom-up, tensor < saved < node < tape < sampling < ops,
with no include cycles: a file may include only headers of its own layer or below. Checked
by parsing the #include "..." lines of csrc/core."""
import re
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "csrc" / "core"
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)

# Layer of each header (paths relative to csrc/core). Kernels and utilities that know
# nothing of the tape sit at the tensor layer or below.
LAYERS = {
    "common.h": 0, "rng.h": 0, "arena.h": 0, "gemm.h": 0,
    "kernels.h": 0, "kernels_body.h": 0,  # the dispatched hot loops: pointers and sizes only
    "tensor.h": 1, "memory.h": 1, "conv.h": 1, "model_format.h": 1, "reuse.h": 1,
    "saved.h": 2,
    "node.h": 3, "ops.def": 3,
    "tape.h": 4,
    "sampling/sampling.h": 5, "sampling/detail.h": 5,
    "ops.h": 6, "optim.h": 6,
    # Compiled replay records and replays whole steps (ops, optimizers, policies): above ops.
    # Its allocation hook is a bare declaration that alloc_storage (tensor layer) consults.
    "replay/alloc_hook.h": 1,
    "replay/program.h": 7, "replay/plan.h": 7, "replay/plan_file.h": 7,
    "replay/lower.h": 7, "replay/lower_ir.h": 7,
}


def layer_of(path: Path) -> int:
    rel = path.relative_to(CORE).as_posix()
    if rel in LAYERS:
        return LAYERS[rel]
    if rel.startswith("sampling/"):
        return LAYERS["sampling/sampling.h"]
    if rel.startswith("ops/"):
        return LAYERS["ops.h"]
    if rel == "replay/exec.cpp":  # the op table of program.h
        return LAYERS["replay/program.h"]
    if rel == "replay/lower_exec.cpp":  # the kernels of lower.h
        return LAYERS["replay/lower.h"]
    if rel == "tape.cpp":  # the reverse sweep runs the op table and accumulates with ops
        return LAYERS["ops.h"]
    header = rel[: -len(".cpp")] + ".h"
    assert header in LAYERS, f"{rel}: give the new source a layer in tests/test_layering.py"
    return LAYERS[header]


def includes(path: Path):
    for name in INCLUDE.findall(path.read_text()):
        target = (path.parent / name).resolve()
        assert target.exists(), f"{path}: #include \"{name}\" does not exist"
        yield target


def core_files():
    return sorted(p for p in CORE.rglob("*") if p.suffix in (".h", ".cpp", ".def"))


def test_every_header_has_a_layer():
    for p in CORE.rglob("*.h"):
        rel = p.relative_to(CORE).as_posix()
        assert rel in LAYERS, f"{rel}: give the new header a layer in tests/test_layering.py"


def test_includes_go_down_the_layers():
    bad = []
    for p in core_files():
        for t in includes(p):
            if layer_of(t) > layer_of(p):
                bad.append(f"{p.relative_to(CORE)} (layer {layer_of(p)}) includes "
                           f"{t.relative_to(CORE)} (layer {layer_of(t)})")
    assert not bad, "\n".join(bad)


def test_sampling_never_calls_ops():
    for p in (CORE / "sampling").glob("*"):
        text = p.read_text()
        assert "ops.h" not in text and "ops::" not in text, f"{p.name} reaches up into the ops layer"


def test_no_include_cycles():
    graph = {p: list(includes(p)) for p in core_files() if p.suffix in (".h", ".def")}
    state = {}

    def visit(p, stack):
        state[p] = 1
        for t in graph.get(p, []):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t] if t in stack else [p, t]
                raise AssertionError("include cycle: " + " -> ".join(str(c.relative_to(CORE)) for c in cycle))
            if t not in state:
                visit(t, stack + [t])
        state[p] = 2

    for p in graph:
        if p not in state:
            visit(p, [p])
