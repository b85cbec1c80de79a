"""The plugin manager: entry-point loading, the allowlist, and the per-kind registries.

Nothing is loaded at import time. :func:`get_plugins` returns a process-wide :class:`Plugins`, created on
first use; tests build their own with ``Plugins()``.

``ADAPTERHUB_LOAD_PLUGINS=a,b`` loads only the named plugins (entry-point names, built-ins included);
an empty value loads none.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from importlib import metadata
from typing import Any, Literal, overload

import pluggy

from . import hookspecs
from .errors import NotFound, PluginError
from .interfaces import BlobStore, Format, Method, Metric, Quantizer, Tracker

GROUP = "adapterhub"
#: The public surface: what a plugin (a built-in one too) may import from adapterhub, and why. Everything else
#: is internal and may change without notice. A plugin never imports another plugin (what two plugins share
#: belongs in one of these) nor a ``_private`` name; ``tests/test_imports.py`` holds every plugin module to it.
PUBLIC_MODULES: dict[str, str] = {
    "adapterhub": "hookimpl, __version__ and the user API (attach, fingerprint, open_registry ...)",
    "adapterhub.errors": "the errors, each one 'Error:' line on the command line",
    "adapterhub.method": "Method, the contract of a PEFT method",
    "adapterhub.interfaces": "the other contracts: Quantizer, Format, BlobStore, Tracker (and Method, Metric)",
    "adapterhub.tuning": "the toolkit of method plugins: targets, attach bookkeeping, combine maths, placements, "
    "quantized layers",
    "adapterhub.tuning.combine": "the combine maths on ΔW (cat, linear, svd, TIES, DARE): a method's combine",
    "adapterhub.infra": "the helpers of store, format and quantizer plugins: digests, output directories, "
    "base-model checks, exporting stored versions",
    "adapterhub.api": "the Python API (registries, push, pull, fingerprints)",
    "adapterhub.registry.entities": "the registry's typed results (VersionInfo ...), what show and the API return",
    "adapterhub.testing": "tiny models and the conformance suite, for a plugin's tests",
    "adapterhub.testing.models": "tiny models, for a plugin's tests",
    "adapterhub.testing.conformance": "the conformance suite, for a plugin's tests",
}
#: what a plugin's ``commands`` module (its ``register_commands``) may import besides :data:`PUBLIC_MODULES`
COMMAND_MODULES: dict[str, str] = {"adapterhub.cli.app": "App, pass_app, emit, json_option, BASE, format_table"}
KINDS = ("methods", "quantizers", "formats", "stores", "trackers", "metrics")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: kind -> (its contract, whether plugins register the class rather than an instance); metrics are checked where
#: they are scored (:func:`adapterhub.metrics.check_metric`), a structural contract with its own messages
CONTRACTS: dict[str, tuple[type, bool]] = {
    "methods": (Method, False),
    "quantizers": (Quantizer, False),
    "formats": (Format, False),
    "stores": (BlobStore, True),
    "trackers": (Tracker, True),
}


def check_contract(kind: str, obj: Any, plugin: str) -> str:
    """The name ``obj`` registers under, after checking that it keeps the contract of ``kind`` (an instance of
    it, or a subclass for the kinds registered as classes) and has a valid name; :class:`PluginError` otherwise."""
    what = kind[:-1]
    if kind in CONTRACTS:
        contract, as_class = CONTRACTS[kind]
        ok = isinstance(obj, type) and issubclass(obj, contract) if as_class else isinstance(obj, contract)
        if not ok:
            expected = (
                f"a subclass of {contract.__module__}.{contract.__name__}"
                if as_class
                else f"an instance of {contract.__module__}.{contract.__name__}"
            )
            raise PluginError(f"plugin '{plugin}' registered a {what} ({obj!r}) that is not {expected}")
        if kind == "methods" and not dataclasses.is_dataclass(obj.config_class):
            raise PluginError(f"plugin '{plugin}' registered method {obj.name!r} whose config_class is not a dataclass")
        name = obj.name
    else:
        name = getattr(obj, "name", None)  # a metric: its own check comes when it is scored
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PluginError(f"plugin '{plugin}' registered a {what} with an invalid name {name!r}")
    return name


class Plugins:
    """A plugin manager plus the objects each plugin registered, looked up lazily by kind."""

    def __init__(self, load_entrypoints: bool = True, plugins: dict[str, Any] | None = None):
        self.pm = pluggy.PluginManager("adapterhub")
        self.pm.add_hookspecs(hookspecs)
        self._load_entrypoints = load_entrypoints
        self._loaded = False
        self._extra = dict(plugins or {})
        self._registries: dict[str, dict[str, tuple[str, Any]]] = {}
        self.failed: dict[str, str] = {}  # plugin name -> why it failed to load

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> "Plugins":
        """Load entry-point plugins once (idempotent)."""
        if self._loaded:
            return self
        self._loaded = True
        allow = os.environ.get("ADAPTERHUB_LOAD_PLUGINS")
        allowed = None if allow is None else {p.strip() for p in allow.split(",") if p.strip()}
        if self._load_entrypoints:
            for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
                if allowed is not None and ep.name not in allowed:
                    continue
                if self.pm.get_plugin(ep.name) is not None:
                    continue
                try:
                    module = ep.load()
                except Exception as exc:  # a broken plugin must not break the tool: warn and skip it
                    self.failed[ep.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    warnings.warn(
                        f"plugin '{ep.name}' ({ep.value}) failed to load and is skipped: {self.failed[ep.name]}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
                self.pm.register(module, name=ep.name)
        for name, module in self._extra.items():
            if allowed is None or name in allowed:
                self.pm.register(module, name=name)
        return self

    def register(self, module: Any, name: str) -> None:
        """Register a plugin object directly (used by tests and embedding applications)."""
        self.load()
        self.pm.register(module, name=name)
        self._registries.clear()

    # -- registries ----------------------------------------------------------------------------
    def _registry(self, kind: str) -> dict[str, tuple[str, Any]]:
        if kind not in self._registries:
            self.load()
            found: dict[str, tuple[str, Any]] = {}
            hook = getattr(self.pm.hook, f"register_{kind}")
            for impl in reversed(hook.get_hookimpls()):

                def register(obj: Any, _plugin: str = impl.plugin_name) -> None:
                    name = check_contract(kind, obj, _plugin)
                    if name in found:
                        raise PluginError(
                            f"{kind[:-1]} '{name}' is registered by both plugin '{found[name][0]}' "
                            f"and plugin '{_plugin}'; uninstall one or leave one out of "
                            "ADAPTERHUB_LOAD_PLUGINS"
                        )
                    found[name] = (_plugin, obj)

                impl.function(register=register)
            self._registries[kind] = found
        return self._registries[kind]

    def names(self, kind: str) -> list[str]:
        return sorted(self._registry(kind))

    @overload
    def get(self, kind: Literal["methods"], name: str) -> Method: ...
    @overload
    def get(self, kind: Literal["quantizers"], name: str) -> Quantizer: ...
    @overload
    def get(self, kind: Literal["formats"], name: str) -> Format: ...
    @overload
    def get(self, kind: Literal["stores"], name: str) -> type[BlobStore]: ...
    @overload
    def get(self, kind: Literal["trackers"], name: str) -> type[Tracker]: ...
    @overload
    def get(self, kind: Literal["metrics"], name: str) -> Metric: ...
    @overload
    def get(self, kind: str, name: str) -> Any: ...

    def get(self, kind: str, name: str) -> Any:
        """The object of ``kind`` registered as ``name`` (typed by its contract); :class:`NotFound` naming the
        installed ones otherwise."""
        reg = self._registry(kind)
        if name not in reg:
            known = ", ".join(sorted(reg)) or "none installed"
            raise NotFound(f"unknown {kind[:-1]} '{name}' (available: {known})")
        return reg[name][1]

    def items(self, kind: str) -> list[tuple[str, str, Any]]:
        """``(name, plugin name, object)`` for every object of ``kind``, sorted by name."""
        return [(n, p, o) for n, (p, o) in sorted(self._registry(kind).items())]

    def describe(self) -> list[dict[str, Any]]:
        """Every loaded plugin with what it registers (for ``adapterhub plugins``)."""
        self.load()
        out = []
        for plugin_name, module in sorted(self.pm.list_name_plugin(), key=lambda x: x[0]):
            entry: dict[str, Any] = {"name": plugin_name, "module": getattr(module, "__name__", str(module))}
            dist = _distribution_of(module)
            if dist:
                entry["package"], entry["version"] = dist
            hooks = sorted(h.name for h in self.pm.get_hookcallers(module) or [])
            entry["hooks"] = hooks
            for kind in KINDS:
                names = [n for n, (p, _) in self._registry(kind).items() if p == plugin_name]
                if names:
                    entry[kind] = sorted(names)
            out.append(entry)
        out.extend({"name": n, "module": None, "hooks": [], "error": why} for n, why in sorted(self.failed.items()))
        return out

    def add_commands(self, cli: Any, done: set[str] | None = None) -> None:
        """Call every plugin's ``register_commands`` once; ``done`` (plugin names already added to this
        ``cli``) makes repeated calls with other plugin managers add only the missing ones."""
        self.load()
        for impl in self.pm.hook.register_commands.get_hookimpls():
            if done is None or impl.plugin_name not in done:
                impl.function(cli=cli)
                if done is not None:
                    done.add(impl.plugin_name)


def _distribution_of(module: Any) -> tuple[str, str] | None:
    top = getattr(module, "__name__", "").split(".")[0]
    try:
        for dist in metadata.packages_distributions().get(top, []):
            return dist, metadata.version(dist)
    except Exception:
        return None
    return None


_default: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin manager, created and loaded on first use."""
    global _default
    if _default is None:
        _default = Plugins()
    return _default.load()


def reset_plugins() -> None:
    """Forget the process-wide plugin manager (tests, or after installing a plugin)."""
    global _default
    _default = None
