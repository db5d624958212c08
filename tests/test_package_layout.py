"""The package's shape: no import cycle among rsp's modules, and nothing in it reaches into experiments/.

Why: a cycle makes import order matter (a module half-initialised when its partner reads a name from
it), which is how `rsp.findings` once reached up into `rsp.cli`; and experiments/ (this repository's
own long studies) sits beside the package, not in it, so an installed rsp must never import it. The
graph is read from the source with `ast`, so the check needs no optional dependency installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Modules imported when the module runs: statements at module level, in `try`/`if` blocks there
    too, but not under `if TYPE_CHECKING:` nor inside functions or classes (those run later)."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
            elif isinstance(node, ast.If) and not _is_type_checking(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in (SRC / "rsp").rglob("*.py")}
    modules = {_module_name(p) for p in trees}
    return {
        _module_name(p): {
            m for m in _top_level_imports(t, _module_name(p), p.name == "__init__.py") if m in modules
        }
        - {_module_name(p)}
        for p, t in trees.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (as the list of modules around it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := walk(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert len(graph) > 50 and "rsp.evaluation" in graph["rsp.cli"] | set().union(*graph.values())
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle_it_is_shown():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import rsp.x\n"
        "from . import y\nfrom .z import w\ndef f():\n    import rsp.q\n"
    )
    assert _top_level_imports(tree, "rsp.pkg.mod", False) == {
        "typing",
        "typing.TYPE_CHECKING",
        "rsp.pkg",
        "rsp.pkg.y",
        "rsp.pkg.z",
        "rsp.pkg.z.w",
    }


def test_nothing_in_the_package_imports_experiments():
    offenders = []
    for path in (SRC / "rsp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            offenders += [f"{path.relative_to(SRC)}: {n}" for n in names if n.split(".")[0] == "experiments"]
    assert not offenders, offenders
