"""The plugin system: entry points, allowlist, duplicates, contracts checked at registration, lazy loading, and the
README's plugin guide checked against every hook and contract."""

import ast
import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import adapterhub
from adapterhub import hookspecs
from adapterhub.errors import NotFound, PluginError
from adapterhub.interfaces import BaseTransform, BlobStore, Format, Method, Metric, Quantizer, Tracker
from adapterhub.plugins import Plugins

HOOKS = [name for name, f in vars(hookspecs).items() if name.startswith("register_") and callable(f)]


def test_every_hook_is_documented():
    assert set(HOOKS) == {
        "register_methods",
        "register_quantizers",
        "register_formats",
        "register_stores",
        "register_trackers",
        "register_metrics",
        "register_commands",
    }
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and ":param" in doc and ":returns:" in doc and "Called" in doc, name


@dataclasses.dataclass
class _Config:
    r: int = 1


def _thing(kind, name):
    """The least object that keeps the contract of ``kind``, registered as ``name``."""
    if kind == "methods":
        return type("M", (Method,), {"name": name, "config_class": _Config})()
    if kind in ("stores", "trackers"):
        return type("C", (BlobStore if kind == "stores" else Tracker,), {"name": name})
    if kind == "metrics":
        return type("Metric", (), {"name": name, "higher_is_better": True, "compute": lambda self, p, r: 1.0})()
    obj = (Quantizer if kind == "quantizers" else Format)()
    obj.name = name
    return obj


def _plugin(hook, *names):
    """A plugin module-like object implementing ``hook`` and registering ``names``."""

    class P:
        pass

    def impl(register):
        for n in names:
            register(_thing(hook[len("register_") :], n))

    impl.__name__ = hook
    setattr(P, hook, staticmethod(adapterhub.hookimpl(impl)))
    return P


@pytest.mark.parametrize("hook", [h for h in HOOKS if h != "register_commands"])
def test_every_registration_hook_registers_and_refuses_duplicates(hook):
    kind = hook[len("register_") :]
    pl = Plugins(load_entrypoints=False, plugins={"alpha": _plugin(hook, "foo"), "beta": _plugin(hook, "bar")})
    assert {"foo", "bar"} <= set(pl.names(kind))
    assert pl.get(kind, "foo").name == "foo"
    with pytest.raises(NotFound, match="unknown"):
        pl.get(kind, "nope")
    dup = Plugins(load_entrypoints=False, plugins={"alpha": _plugin(hook, "foo"), "beta": _plugin(hook, "foo")})
    with pytest.raises(PluginError) as exc:
        dup.names(kind)
    assert "alpha" in str(exc.value) and "beta" in str(exc.value) and "'foo'" in str(exc.value)


def test_register_commands_hook_adds_a_command():
    import click

    class P:
        @staticmethod
        @adapterhub.hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                click.echo("hi")

    group = click.Group()
    Plugins(load_entrypoints=False, plugins={"p": P}).add_commands(group)
    assert "hello" in group.commands


def test_invalid_name_refused():
    pl = Plugins(load_entrypoints=False, plugins={"bad": _plugin("register_methods", "Bad Name")})
    with pytest.raises(PluginError, match="invalid name"):
        pl.names("methods")


@pytest.mark.parametrize("kind", ["methods", "quantizers", "formats", "stores", "trackers"])
def test_an_object_that_does_not_keep_its_contract_is_refused(kind):
    """The contract is checked once, when the plugin registers: the core never probes a plugin's attributes."""
    duck = type("Duck", (), {"name": "duck"})

    class P:
        pass

    def impl(register):
        register(duck if kind in ("stores", "trackers") else duck())

    impl.__name__ = f"register_{kind}"
    setattr(P, impl.__name__, staticmethod(adapterhub.hookimpl(impl)))
    with pytest.raises(
        PluginError,
        match=f"plugin 'quack' registered a {kind[:-1]} .*Duck.* that is not (an instance of|a subclass of) adapterhub",
    ):
        Plugins(load_entrypoints=False, plugins={"quack": P}).names(kind)


def test_a_method_whose_config_class_is_not_a_dataclass_is_refused():
    class P:
        @staticmethod
        @adapterhub.hookimpl
        def register_methods(register):
            register(type("M", (Method,), {"name": "plain", "config_class": dict})())

    with pytest.raises(PluginError, match="method 'plain' whose config_class is not a dataclass"):
        Plugins(load_entrypoints=False, plugins={"p": P}).names("methods")


def test_builtins_load_through_entry_points_and_allowlist(monkeypatch):
    pl = Plugins()
    assert "file" in pl.names("stores")
    assert "peft" in pl.names("formats")
    described = {p["name"]: p for p in pl.describe()}
    assert described["file"]["stores"] == ["file"]
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "peft")
    only = Plugins()
    assert only.names("stores") == []
    assert only.names("formats") == ["peft"]
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "")
    assert Plugins().describe() == []


def test_loading_is_lazy_and_idempotent():
    pl = Plugins()
    assert pl.pm.list_name_plugin() == []  # nothing loaded at construction
    pl.load()
    n = len(pl.pm.list_name_plugin())
    pl.load()
    assert len(pl.pm.list_name_plugin()) == n > 0


def test_cli_plugins_json(cli):
    r = cli("plugins", "--json")
    assert r.exit_code == 0, r.output
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert rows["file"]["stores"] == ["file"] and rows["peft"]["formats"] == ["peft"]
    text = cli("plugins")
    assert "file" in text.stdout and "stores: file" in text.stdout


def test_help_and_list_do_not_import_torch(home):
    code = (
        "import sys\n"
        "from adapterhub.cli import main\n"
        "for args in (['--help'], ['list'], ['list', '--json']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "bad = [m for m in ('torch', 'transformers', 'safetensors', 'boto3') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('OK')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("OK")


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path, home):
    """A third-party plugin that fails to import never breaks the tool: one warning, the rest works."""
    dist = tmp_path / "site" / "adapterhub_broken-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: adapterhub-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[adapterhub]\nbroken = adapterhub_no_such_module\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(
        [sys.executable, "-m", "adapterhub", "plugins", "--json"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert "ModuleNotFoundError" in rows["broken"]["error"] and rows["file"]["stores"] == ["file"]
    assert p.stderr.count("Warning: plugin 'broken'") == 1 and "Traceback" not in p.stderr


# -- the plugin guide documents every hook and every contract, with the code's signatures ------------------
def _guide() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    return readme[readme.index("## Writing a plugin") : readme.index("## Layout")]


def _documented_classes() -> dict[str, ast.ClassDef]:
    """The classes of the guide's ``python`` blocks, by name (the contract reference is valid Python)."""
    found = {}
    for block in re.findall(r"```python\n(.*?)```", _guide(), re.S):
        for node in ast.parse(block).body:
            if isinstance(node, ast.ClassDef):
                found[node.name] = node
    return found


def _members(cls: ast.ClassDef) -> dict[str, str]:
    """Each attribute (``name: annotation``) and function (``def name(args) -> returns``) of ``cls``, normalised."""
    out = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign):
            out[node.target.id] = f"{node.target.id}: {ast.unparse(node.annotation)}"
        elif isinstance(node, ast.FunctionDef) and (not node.name.startswith("_") or node.name == "__call__"):
            returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
            decorators = "".join(f"@{ast.unparse(d)} " for d in node.decorator_list)
            out[node.name] = f"{decorators}def {node.name}({ast.unparse(node.args)}){returns}"
    return out


CONTRACTS = [Method, Quantizer, BaseTransform, Format, BlobStore, Tracker, Metric]


def test_every_hook_is_documented_in_the_plugin_guide_with_its_parameters():
    guide = _guide()
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"`{name}({params})`" in guide, f"README's plugin guide does not document `{name}({params})`"


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.__name__)
def test_every_contract_member_is_declared_documented_and_its_signature_matches_the_guide(contract):
    """As datasette tests its plugin docs: the guide's reference lists every attribute and operation of each
    contract, with the signature the code has, and each operation has a docstring in the code."""
    code = _members(ast.parse(textwrap.dedent(inspect.getsource(contract))).body[0])
    documented = _documented_classes().get(contract.__name__)
    assert documented is not None, f"README's plugin guide has no `class {contract.__name__}` in its reference"
    docs = _members(documented)
    assert sorted(docs) == sorted(code), f"{contract.__name__}: documented {sorted(docs)}, declared {sorted(code)}"
    for name, signature in code.items():
        assert docs[name] == signature, f"README documents {docs[name]!r}; the code says {signature!r}"
        if signature.split("def ", 1)[0] != signature:  # an operation, not an attribute
            assert inspect.getdoc(getattr(contract, name)), f"{contract.__name__}.{name} has no docstring"


def test_the_guide_check_sees_a_changed_signature():
    class Changed(Quantizer):
        def quantize(self, model_dir: str, out_dir: str) -> dict:
            """Changed."""
            return {}

    mine = _members(ast.parse(textwrap.dedent(inspect.getsource(Changed))).body[0])
    assert mine["quantize"] != _members(_documented_classes()["Quantizer"])["quantize"]


def test_the_guide_documents_the_toolkit_s_peft_rules_with_their_parameters():
    """Each toolkit helper the guide's "PEFT's rules" section names exists in adapterhub.tuning with the
    parameters the guide gives, and the section names every one of them and the default-target tables."""
    from adapterhub import tuning

    guide = _guide()
    section = guide[guide.index("### PEFT's rules in the toolkit") :]
    documented = dict(re.findall(r"`([a-z_]+)\(([a-z_, ]*)\)`", section))
    for name in (
        "resolve_targets",
        "peft_default",
        "select_targets",
        "layer_kinds",
        "check_pattern",
        "pattern_value",
        "pattern_key",
        "exact_pattern_key",
        "adapter_dtype",
        "upcast_adapter",
    ):
        assert name in documented, f"the guide's toolkit section does not document `{name}(...)`"
    for name, params in documented.items():
        assert params == ", ".join(inspect.signature(getattr(tuning, name)).parameters), name
    for table in ("LORA_TARGETS", "VERA_TARGETS", "IA3_TARGETS", "IA3_FEEDFORWARD"):
        assert f"`{table}`" in section and isinstance(getattr(tuning, table), dict)
