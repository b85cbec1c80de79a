"""The plugin system: entry points, allowlist, duplicates, docs of every hook, lazy loading."""

import inspect
import json
import subprocess
import sys

import pytest

import adapterhub
from adapterhub import hookspecs
from adapterhub.errors import NotFound, PluginError
from adapterhub.plugins import Plugins

HOOKS = [name for name, f in vars(hookspecs).items() if name.startswith("register_") and callable(f)]


def test_every_hook_is_documented():
    assert set(HOOKS) == {"register_methods", "register_quantizers", "register_formats", "register_stores",
                          "register_trackers", "register_metrics", "register_commands"}
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and ":param" in doc and ":returns:" in doc and "Called" in doc, name


class _Thing:
    def __init__(self, name):
        self.name = name


def _plugin(hook, *names):
    """A plugin module-like object implementing ``hook`` and registering ``names``."""

    class P:
        pass

    def impl(register):
        for n in names:
            register(_Thing(n))

    impl.__name__ = hook
    setattr(P, hook, staticmethod(adapterhub.hookimpl(impl)))
    return P


@pytest.mark.parametrize("hook", [h for h in HOOKS if h != "register_commands"])
def test_every_registration_hook_registers_and_refuses_duplicates(hook):
    kind = hook[len("register_"):]
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


def test_builtins_load_through_entry_points_and_allowlist(monkeypatch):
    pl = Plugins()
    assert "file" in pl.names("stores")
    assert "peft" in pl.names("formats")
    described = {p["name"]: p for p in pl.describe()}
    assert described["file"]["stores"] == ["file"]
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "peft_format")
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
    assert rows["file"]["stores"] == ["file"] and rows["peft_format"]["formats"] == ["peft"]
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
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    p = subprocess.run([sys.executable, "-m", "adapterhub", "plugins", "--json"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert "ModuleNotFoundError" in rows["broken"]["error"] and rows["file"]["stores"] == ["file"]
    assert p.stderr.count("Warning: plugin 'broken'") == 1 and "Traceback" not in p.stderr


def test_every_method_hook_and_attribute_is_declared_and_documented():
    """The Method contract is declared once (each public hook has a docstring) and the README's plugin guide
    names every one, so a plugin author never has to read a built-in plugin to find a capability."""
    import inspect
    import pathlib

    from adapterhub.method import Method

    readme = pathlib.Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    guide = readme[readme.index("## Writing a plugin"):readme.index("## Layout")]
    public = [n for n in vars(Method) if not n.startswith("_") and n not in ("config_fields", "family")]
    assert {"attach_stack", "attach_routed", "detach_multi", "multi_family", "default_learning_rate",
            "supports_quantized_base", "base_quantizer"} <= set(public)
    for name in public:
        mentions = (f"`{name}", f"    {name} = ", f"def {name}(")  # in the text, or in the example class
        assert any(m in guide for m in mentions), f"README's plugin guide does not mention Method.{name}"
        member = vars(Method)[name]
        if inspect.isfunction(member):
            assert member.__doc__, f"Method.{name} has no docstring"
