"""Imports run one way: data -> model -> metrics -> estimators and training -> serving -> backtest
and batch scoring -> the CLIs on top; the benchmarks and reliability tools (the top-level bench/ and
reliability/, outside the installed package) sit above it all and reach the product only through its
public names. No module imports a layer above its own, no two packages import each other (directly
or round a longer loop, inside one layer too), and no private name crosses a package boundary. Fails
when an upward import or a cycle comes back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tagger"
TOOLS = ("bench", "reliability")  # top-level packages beside src/: they use the product, it never uses them
# the top-level package or module under tagger -> its layer (lower imports nothing higher)
LAYERS = {
    "paths": 0,
    "schema": 0,  # conf's dataclasses: imports nothing of the project
    "manifest": 0,
    "data": 0,
    "synth": 0,
    "embed": 0,
    "model": 1,
    "metrics": 2,  # scores the model's Predictions; the model is handed its selection score
    "estimators": 3,
    "training": 3,
    "protocol": 3,
    "serving": 4,
    "backtest": 5,
    "batch": 5,
    "monitor": 6,  # drift reports: scores with batch, reads the serving registry
    "ablations": 6,
}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tagger" else None


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tagger"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            yield from ((a.name, []) for a in node.names if a.name.startswith("tagger"))


def _edges() -> set[tuple[str, str]]:
    """(importer, imported) between the top-level packages and modules under tagger."""
    edges = set()
    for path in sorted(SRC.rglob("*.py")):
        me = path.relative_to(SRC).parts[0].removesuffix(".py")
        for module, _ in _imports(path):
            other = _part(module)
            if me != "__init__" and other is not None and other != me:
                edges.add((me, other))
    return edges


def _cycles() -> list[list[str]]:
    """Every import loop between packages, each as the packages round it (depth-first search)."""
    graph: dict[str, set[str]] = {}
    for a, b in _edges():
        graph.setdefault(a, set()).add(b)
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def _violations() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        me = path.relative_to(SRC).parts[0].removesuffix(".py")
        if me == "__init__":
            continue
        assert me in LAYERS, f"{me}: give the new package a layer in tests/test_layers.py"
        for module, names in _imports(path):
            other = _part(module)
            if other is None or other == me:
                continue
            where = path.relative_to(SRC.parent)
            if LAYERS[other] > LAYERS[me]:
                out.append(f"{where} imports {module} (layer {LAYERS[other]} above {LAYERS[me]})")
            private = [n for n in names if n.startswith("_")]
            if private:
                out.append(f"{where} imports private {module}.{', '.join(private)}")
    return out


def test_no_module_imports_a_layer_above_its_own_or_a_private_name_across_packages():
    assert _violations() == []


def test_no_import_cycle_between_packages():
    assert _cycles() == []


def test_the_cycle_check_sees_a_loop_inside_one_layer(tmp_path, monkeypatch):
    fake = tmp_path / "tagger"
    for package, imported in (("data", "synth"), ("synth", "data")):
        (fake / package).mkdir(parents=True)
        (fake / package / "m.py").write_text(f"from tagger.{imported}.m import thing\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert _cycles() == [["data", "synth", "data"]]


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a data module that imports the backtest is caught."""
    fake = tmp_path / "tagger"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "bad.py").write_text("from tagger.backtest.run import _scored_fit\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    found = _violations()
    assert len(found) == 2 and "layer 5 above 0" in found[0] and "private" in found[1]


def _top_level_imports(path: Path):
    """The modules ``path`` imports, absolute ones only."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            yield from ((a.name, []) for a in node.names)


def test_the_package_never_imports_the_benchmarks_or_reliability_tools():
    found = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted(SRC.rglob("*.py"))
        for module, _ in _top_level_imports(path)
        if module.split(".")[0] in TOOLS
    ]
    assert found == []


def test_the_tools_use_the_product_only_through_its_public_names():
    """bench/ and reliability/ import the installed ``tagger`` (no private name, nothing that was
    once ``tagger.bench`` or ``tagger.reliability``), and neither imports the other's private names."""
    found = []
    for tool in TOOLS:
        for path in sorted((ROOT / tool).rglob("*.py")):
            for module, names in _top_level_imports(path):
                top = module.split(".")
                private = [n for n in names if n.startswith("_")]
                if top[0] == "tagger" and ((len(top) > 1 and top[1] in TOOLS) or private):
                    found.append(f"{path.relative_to(ROOT)} imports {module} {private}")
                elif top[0] in TOOLS and top[0] != tool and private:
                    found.append(f"{path.relative_to(ROOT)} imports private {module}.{', '.join(private)}")
    assert found == []


def test_the_tools_check_sees_the_package_importing_a_tool(tmp_path, monkeypatch):
    fake = tmp_path / "src" / "tagger"
    (fake / "serving").mkdir(parents=True)
    (fake / "serving" / "bad.py").write_text("from bench.load import run_load\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"bench\.load"):
        test_the_package_never_imports_the_benchmarks_or_reliability_tools()
