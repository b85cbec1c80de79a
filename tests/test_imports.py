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
                    target = ".".join(parts[: len(parts) - node.level + 1] + ([target] if target else []))
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


# -- the public surface: what a plugin may import ------------------------------------------------------------
def _plugin_modules() -> dict[str, str]:
    """Every module of every built-in plugin (``adapterhub_x.y`` -> path)."""
    return {name: path for name, path in _modules().items() if name.startswith("adapterhub_")}


def _boundary_violations(mod: str, path: str, source: str, adapterhub_modules: set[str]) -> list[str]:
    """What ``mod`` (a module of a plugin, at ``path``) imports that a plugin may not: another plugin, a module of
    adapterhub that is not public, or a ``_private`` name of either. Every import counts, those inside functions
    and under ``if TYPE_CHECKING:`` too (a type-only import still ties the plugin to the internals)."""
    from adapterhub.plugins import COMMAND_MODULES, PUBLIC_MODULES

    plugin = mod.split(".")[0]
    package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
    allowed = set(PUBLIC_MODULES) | (set(COMMAND_MODULES) if mod.rpartition(".")[2] == "commands" else set())
    found = []

    def check_module(target: str, line: int) -> None:
        top = target.split(".")[0]
        if top.startswith("adapterhub_") and top != plugin:
            found.append(f"{mod}:{line} imports another plugin: {target}")
        elif top == "adapterhub" and target not in allowed:
            found.append(f"{mod}:{line} imports {target}, which is not public (adapterhub.plugins.PUBLIC_MODULES)")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([target] if target else []))
            if target.split(".")[0] == plugin:
                continue  # the plugin's own modules, private ones included
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in adapterhub_modules:  # ``from adapterhub import api``: the module adapterhub.api
                    check_module(full, node.lineno)
                else:
                    check_module(target, node.lineno)
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{mod}:{node.lineno} imports the private name {alias.name} from {target}")
    return found


def test_plugins_import_only_the_public_surface():
    """Plugins, built-in ones included, import only what adapterhub declares public, never another plugin, never a
    private name: the contract and the toolkit are enough to write one (issues 17 and 18)."""
    core = {name for name in _modules() if name == "adapterhub" or name.startswith("adapterhub.")}
    found = []
    for mod, path in sorted(_plugin_modules().items()):
        found += _boundary_violations(mod, path, open(path, encoding="utf-8").read(), core)
    assert not found, "\n".join(found)


def test_every_public_module_exists_and_the_plugin_guide_lists_it():
    from adapterhub.plugins import COMMAND_MODULES, PUBLIC_MODULES

    mods = _modules()
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    guide = readme[readme.index("## Writing a plugin") : readme.index("## Layout")]
    for name in [*PUBLIC_MODULES, *COMMAND_MODULES]:
        assert name in mods, f"{name} is declared public but does not exist"
        assert f"`{name}`" in guide, f"README's plugin guide does not list the public module {name}"


def test_the_boundary_walk_sees_what_a_plugin_may_not_import():
    core = {"adapterhub", "adapterhub.api", "adapterhub.registry", "adapterhub.registry.blobs", "adapterhub.tuning"}
    source = (
        "from adapterhub.tuning import TunerMethod, _private\n"
        "from adapterhub import api, errors\n"
        "from . import _own\n"
        "def f():\n"
        "    from adapterhub.registry.blobs import hash_file\n"
        "    import adapterhub_other.layer\n"
        "    from adapterhub.cli.app import emit\n"
    )
    found = _boundary_violations("adapterhub_x.model", "plugins/adapterhub_x/model.py", source, core)
    assert [f.split(" ", 1)[1] for f in found] == [
        "imports the private name _private from adapterhub.tuning",
        "imports adapterhub.registry.blobs, which is not public (adapterhub.plugins.PUBLIC_MODULES)",
        "imports another plugin: adapterhub_other.layer",
        "imports adapterhub.cli.app, which is not public (adapterhub.plugins.PUBLIC_MODULES)",
    ]
    assert (
        _boundary_violations(
            "adapterhub_x.commands", "plugins/adapterhub_x/commands.py", "from adapterhub.cli.app import emit\n", core
        )
        == []
    )
