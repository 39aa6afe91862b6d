"""The package's layers only look down, and no two modules import each other (issue 33).

Every ``import`` in ``src/defend`` (at the top or inside a function) is read with ``ast``; a
module of one layer may import its own package and lower layers only, and the module graph
has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "defend"

#: the layers, lowest first; a module may import its own layer's packages and lower ones
LAYERS = (
    {"errors", "io", "device", "memory", "cpu_kernels", "intervals", "metrics", "losses", "plots",
     "kspace", "plugins"},
    {"tasks"},
    {"models"},
    {"data"},
    {"estimators"},
    {"attacks"},
    {"train"},
    {"smooth", "detect"},
    {"adaptive"},
    {"matrix", "bench"},
    {"cli"},
)  # fmt: skip
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The ``defend`` names ``path`` imports, ``module.name`` for ``from module import name``
    (:func:`graph` resolves each to the module that holds it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("defend.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "defend" or node.module.startswith("defend."):
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the defend modules it imports (packages resolved to their ``__init__``)."""
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for target in imports(path):
            while target not in modules and "." in target:  # a name imported from a module
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else None
    return RANK.get(top)


def test_every_package_has_a_layer():
    tops = {p.name if p.is_dir() else p.stem for p in SRC.iterdir()
            if p.suffix == ".py" or (p / "__init__.py").exists()}  # fmt: skip
    assert tops - {"__init__", "__main__"} <= set(RANK), tops - set(RANK)


def test_imports_only_look_down():
    ranked = {m: _layer(m) for m in graph()}
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in targets
              if None not in (ranked[a], ranked[b]) and ranked[b] > ranked[a]]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]) if nxt in path else nxt)
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize(("source", "expected"), [
    ("from defend.smooth.core import Smooth\n", {"defend.smooth.core.Smooth"}),
    ("def f():\n    from defend import plots\n", {"defend.plots"}),
    ("import defend.detect.detector as d\n", {"defend.detect.detector"}),
])  # fmt: skip
def test_the_reader_sees_every_kind_of_import(tmp_path, source, expected):
    """The checks above fail on an upward import written in any of these forms."""
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports(path) == expected


#: module names that stand for the same thing in every package: the package's part for one task
PER_TASK = {"recon", "seg", "cls"}


def test_each_module_name_says_one_thing():
    """A module name appears once in the tree (a package counts as a name too), but for the
    per-task parts (``models/recon.py``, ``estimators/recon.py``: the package's recon part)."""
    names: dict[str, list[str]] = {}
    for path in SRC.rglob("*"):
        if path.name in ("__init__.py", "__main__.py") or "__pycache__" in path.parts:
            continue
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
            names.setdefault(path.stem, []).append(str(path.relative_to(SRC)))
    twice = {n: p for n, p in names.items() if len(p) > 1 and n not in PER_TASK}
    assert not twice, twice
