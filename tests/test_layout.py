"""compiler/ reads as the flow: every import between its parts runs one way, from the commands down to
the base (README.md, Layout), with no cycle between two modules of one subpackage."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "compiler"
# lower numbers are imported by higher ones, never the other way
LAYERS = {"errors": 0, "console": 0, "artifact": 0, "resources": 0, "targets": 0, "options": 0, "lowering": 1, "runtime": 2,
          "deploy": 3, "stages": 4, "measure": 5, "cli": 6, "pipeline": 6, "inspect": 6, "__init__": 6,
          "__main__": 7}


def _part(module: str) -> str:
    """squeezeedge.stages.build -> stages; squeezeedge.runtime -> runtime; squeezeedge -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    edges = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        name = ".".join(("squeezeedge", *(p for p in rel.parts if p != "__init__")))
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "squeezeedge":
                found |= {f"{node.module}.{a.name}" if node.module == "squeezeedge" else node.module for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{name}: relative import (the layout reads from absolute ones)")
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "squeezeedge"}
        edges[name] = found
    return edges


def test_every_module_has_a_layer():
    assert {_part(m) for m in _imports()} <= set(LAYERS), {_part(m) for m in _imports()} - set(LAYERS)


def test_imports_run_down_the_layers():
    bad = [f"{m} -> {d}" for m, deps in _imports().items() for d in deps
           if LAYERS[_part(d)] > LAYERS[_part(m)]]
    assert not bad, "imports against the flow: " + ", ".join(sorted(bad))


def test_no_cycle_between_modules():
    edges = {m: {d for d in deps if d in _imports() and d != m} for m, deps in _imports().items()}

    def reach(a, seen):
        for b in edges.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen
    cycles = sorted(f"{a} <-> {b}" for a in edges for b in edges[a] if a in reach(b, set()) and a < b)
    assert not cycles, cycles


MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_the_limit():
    """Long functions are split along their steps, and the steps named."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_no_private_tvm_api_and_no_work_history_in_the_code():
    """No private TVM call (relax.expr._update_type), and no issue or step numbers: history belongs in
    results/PERFORMANCE-LOG.md and git."""
    import re

    history = re.compile(r"\b(issue|step) #?\d+", re.IGNORECASE)
    found = []
    for path in [*PACKAGE.rglob("*.py"), PACKAGE.parent / "README.md"]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "_update_type" in line or history.search(line):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, found
