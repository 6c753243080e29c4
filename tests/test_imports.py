"""No import cycle among edgeprune's modules, not even through imports inside functions.

Every module under edgeprune/ is parsed with ``ast`` (nothing is imported). Each import of an edgeprune module is an
edge: at module level, inside functions and under ``if TYPE_CHECKING:``; relative imports are resolved; and
``from edgeprune.x import y`` is an import of ``edgeprune.x.y`` when y is a submodule, else of ``edgeprune.x``, whose
``__init__`` is a node of its own. Names looked up at run time by string (``edgeprune/__init__``'s lazy table) are
not imports of anything until an attribute is read, and are not edges.

Two graphs must be acyclic:

* every import, as written. Python also runs ``edgeprune/a/__init__`` when anything imports ``edgeprune.a.b``, but
  these parent-package edges are left out here: each package ``__init__`` re-exports its package's workflow functions,
  so with them a leaf used across packages (models.loading → structured.layout) would close a loop through the
  structured package's own ``structured()`` (which loads models) although no module needs another that needs it.
* module-level imports only (not those in functions or under ``if TYPE_CHECKING:``), with the parent-package edges:
  what runs at import time, where a cycle leaves a module half-initialised and imports fail depending on the order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "edgeprune"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _nodes(tree: ast.AST, module_level_only: bool):
    """Every node of ``tree``; with ``module_level_only``, not those in functions or under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(tree):
        if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if module_level_only and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for node in child.orelse:
                yield node
                yield from _nodes(node, module_level_only)
            continue
        yield child
        yield from _nodes(child, module_level_only)


def import_graph(root: Path = ROOT, parents: bool = False, module_level_only: bool = False) -> dict[str, dict[str, str]]:
    """Module → {imported module: where ("path:line")}, for the modules of the package at ``root``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    packages = {module_name(p, root) for p in root.rglob("__init__.py")}
    top = root.name
    graph: dict[str, dict[str, str]] = {}
    for name, path in files.items():
        here = name if name in packages else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node in _nodes(ast.parse(path.read_text(), str(path)), module_level_only):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                if target != top and not target.startswith(top + "."):
                    continue
                while target not in files:  # an attribute path, or a module that does not exist: its nearest module
                    target = target.rpartition(".")[0]
                found = [target]
                if parents:  # importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer is inside them
                    pieces = target.split(".")
                    found += [p for p in (".".join(pieces[:i]) for i in range(2, len(pieces)))
                              if name != p and not name.startswith(p + ".")]
                for t in found:
                    if t != name:
                        edges.setdefault(t, f"{path.relative_to(root.parent)}:{node.lineno}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def _describe(graph, cycle: list[str]) -> str:
    return "import cycle:\n" + "\n".join(f"  {a} -> {b}   ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


@pytest.mark.parametrize("parents, module_level_only", [(False, False), (True, True)],
                         ids=["all-imports-as-written", "module-level-with-parent-packages"])
def test_edgeprune_has_no_import_cycle(parents, module_level_only):
    graph = import_graph(parents=parents, module_level_only=module_level_only)
    assert len(graph) > 50 and "edgeprune.onnx" in graph and "edgeprune.onnx.verify" in graph
    cycle = find_cycle(graph)
    assert cycle is None, _describe(graph, cycle)


def test_the_import_graph_sees_function_level_relative_and_submodule_imports(tmp_path):
    """The graph on a hand-made package: each kind of import is an edge, and a cycle through a function is found."""
    pkg = tmp_path / "edgeprune"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from edgeprune.sub import b\n",  # function level; b is a submodule
        "sub/__init__.py": "from .c import X\n",  # relative, from a package's __init__
        "sub/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\n",  # relative, typing-only
        "sub/c.py": "import edgeprune.sub.b\nimport json\nX = 1\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    graph = import_graph(pkg)
    assert {k: sorted(v) for k, v in graph.items()} == {
        "edgeprune": [], "edgeprune.a": ["edgeprune.sub.b"], "edgeprune.sub": ["edgeprune.sub.c"],
        "edgeprune.sub.b": ["edgeprune.a"], "edgeprune.sub.c": ["edgeprune.sub.b"]}
    assert find_cycle(graph) == ["edgeprune.a", "edgeprune.sub.b", "edgeprune.a"]
    assert graph["edgeprune.a"]["edgeprune.sub.b"] == "edgeprune/a.py:2"
    # at import time nothing above runs in a function or for type checkers, but sub/__init__ runs before sub.b and sub.c
    assert {k: sorted(v) for k, v in import_graph(pkg, parents=True, module_level_only=True).items()} == {
        "edgeprune": [], "edgeprune.a": [], "edgeprune.sub": ["edgeprune.sub.c"], "edgeprune.sub.b": [],
        "edgeprune.sub.c": ["edgeprune.sub.b"]}
    assert sorted(import_graph(pkg, parents=True)["edgeprune.a"]) == ["edgeprune.sub", "edgeprune.sub.b"]
