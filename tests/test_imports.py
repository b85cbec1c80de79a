"""Dependencies point one way: a walk over every import in adapterhub/ and plugins/ (those inside functions
included, those under ``if TYPE_CHECKING:`` not, as they never run) finds no import circle but the ones
listed here, which are still to be taken apart. A new circle fails this test; a listed one that is gone
must be removed from the list."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: circles still to be taken apart (none left: keep it that way)
KNOWN: set[frozenset[str]] = set()


def _modules() -> dict[str, str]:
    found = {}
    for top, base in (("adapterhub", ROOT), ("plugins", os.path.join(ROOT, "plugins"))):
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__")) and not d.endswith(".egg-info")]
            for f in files:
                if f.endswith(".py"):
                    name = os.path.relpath(os.path.join(dirpath, f), base)[:-3].replace(os.sep, ".")
                    found[name.removesuffix(".__init__")] = os.path.join(dirpath, f)
    return found


def _imports(tree: ast.AST):
    """Import nodes, skipping ``if TYPE_CHECKING:`` bodies."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            yield from (n for branch in node.orelse for n in _imports_in(branch))
            continue
        yield from _imports_in(node)


def _imports_in(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def _graph(mods: dict[str, str]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in _imports(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:
                    parts = package.split(".")
                    target = ".".join(parts[:len(parts) - node.level + 1] + ([target] if target else []))
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            else:
                targets = [a.name for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    deps.add(t)
        # the package root is a facade: its lazy __getattr__ hands out adapterhub.api, and every module may
        # import __version__ or hookimpl from it, so its own outgoing edges are not dependencies
        graph[mod] = set() if mod == "adapterhub" else deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: set[frozenset[str]] = set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_new_import_circles():
    found = _cycles(_graph(_modules()))
    new = [sorted(c) for c in found - KNOWN]
    assert not new, f"import circles: {new}"
    gone = [sorted(c) for c in KNOWN - found]
    assert not gone, f"these circles are gone: remove them from KNOWN: {gone}"


def test_the_walk_sees_imports_inside_functions_and_finds_circles():
    assert _cycles({"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg": set()}) == {frozenset({"pkg.a", "pkg.b"})}
    tree = ast.parse("def f():\n    from . import b\nif TYPE_CHECKING:\n    from . import c\n")
    assert [n.names[0].name for n in _imports(tree)] == ["b"]
