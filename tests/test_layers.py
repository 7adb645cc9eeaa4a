"""Imports run one way: data -> model -> training -> serving -> backtest and batch scoring -> the
CLIs on top -> benchmarks and reliability. No module imports a layer above its own, and no private
name crosses a package boundary. Fails when an upward import comes back."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tagger"
# the top-level package or module under tagger -> its layer (lower imports nothing higher)
LAYERS = {
    "paths": 0,
    "manifest": 0,
    "data": 0,
    "synth": 0,
    "embed": 0,
    "model": 1,
    "metrics": 1,
    "training": 2,
    "serving": 3,
    "backtest": 4,
    "batch": 4,
    "ablations": 5,
    "bench": 6,
    "reliability": 6,
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


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a data module that imports the backtest is caught."""
    fake = tmp_path / "tagger"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "bad.py").write_text("from tagger.backtest.run import _scored_fit\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    found = _violations()
    assert len(found) == 2 and "layer 4 above 0" in found[0] and "private" in found[1]
