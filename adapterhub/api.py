"""The Python API: what the CLI calls. Opening registries, push, pull, fingerprints.

from adapterhub import api
reg = api.open_registry()                       # ~/.adapterhub, or $ADAPTERHUB_HOME
info = reg.show("acme/bot@production")          # a VersionInfo (registry.entities): info.ref, info.files ...
pub = api.push(reg, "./my-adapter", "acme/bot", base="./base-model")
api.pull(reg, "acme/bot@production", "./out")
handle = api.attach(model, "acme/bot@production")   # any method, base fingerprint checked
handle.detach()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import urlparse

from . import config
from .errors import AdapterhubError, BaseMismatch, InvalidInput
from .plugins import Plugins, get_plugins
from .registry.blobs import Progress

if TYPE_CHECKING:  # pragma: no cover - the registry module imports SQLAlchemy: loaded on use
    from .files.fingerprint import Fingerprint
    from .interfaces import BlobStore
    from .registry.client import HttpRegistry
    from .registry.registry import ParentSpec, Published, Registry


def open_store(url: str, plugins: Plugins | None = None) -> BlobStore:
    """A blob store for ``url`` from the store plugin registered for its scheme."""
    plugins = plugins or get_plugins()
    scheme = urlparse(url).scheme or "file"
    return plugins.get("stores", scheme).from_url(url)


def open_registry(
    home: str | None = None, plugins: Plugins | None = None, remote: str | None = None
) -> Registry | HttpRegistry:
    """A registry: the named ``remote`` (a registry server's client for an ``http(s)://`` remote); else the one
    ``ADAPTERHUB_REGISTRY_DB`` + ``ADAPTERHUB_REGISTRY_STORE`` name; else the local one (SQLite + the ``file``
    store) under ``home``. Its refs may name ``remote`` (``team:acme/bot:3``), never another registry."""
    from functools import partial

    from .registry import remotes

    home = config.home_dir(home)
    spec = remotes.get_remote(home, remote) if remote else remotes.env_registry()
    names = partial(remotes.remote_names, home)
    if spec and "url" in spec:
        from .registry.client import HttpRegistry

        return HttpRegistry(
            spec["url"],
            remotes.token_for(home, remote or "", spec),
            label=remote or "server",
            remote=remote,
            remotes=names,
        )
    if spec:
        from .registry.registry import Registry

        return Registry(
            spec["db"], open_store(spec["store"], plugins), label=remote or "team", remote=remote, remotes=names
        )
    return local_registry(home, plugins)


def local_registry(home: str | None = None, plugins: Plugins | None = None) -> Registry:
    """The local registry under ``home``, whatever remotes or environment variables say."""
    from functools import partial

    from .registry import remotes
    from .registry.registry import Registry

    home = config.home_dir(home)
    return Registry(
        config.local_db_url(home),
        open_store("file://" + home, plugins),
        label="local",
        remotes=partial(remotes.remote_names, home),
    )


def check_remote(spec: dict[str, str], plugins: Plugins | None = None) -> None:
    """Connect to a remote's database (migrating it) and store; raise if either fails. What
    ``remotes.add_remote(..., check=...)`` runs before it saves a remote."""
    if "url" in spec:  # a registry server: it answers (the token, if any, is checked at first use)
        from .registry.client import HttpRegistry

        HttpRegistry(spec["url"], None, label="new remote").health()
        return
    from .registry.registry import Registry

    reg = Registry(spec["db"], open_store(spec["store"], plugins), label="new remote")
    try:
        reg.ready()
        reg.store.has("0" * 64)
    finally:
        reg.close()


def fingerprint(base_dir: str, home: str | None = None, progress: Progress | None = None) -> Fingerprint:
    """The fingerprint of the base model in ``base_dir`` (or of a Hugging Face id ``ORG/NAME[@REVISION]``,
    see :func:`files.hub.resolve_base`), cached under the registry home."""
    from .files.fingerprint import fingerprint as _fp
    from .files.hub import resolve_base

    return _fp(
        resolve_base(base_dir).path,
        cache_dir=config.cache_dir(config.home_dir(home), "fingerprints"),
        progress=progress,
    )


def check_base(expected: str | None, actual: str, base_dir: str, hint: str | None = None) -> None:
    """Refuse a base whose fingerprint differs from the one an adapter was trained on."""
    if expected and expected != actual:
        raise BaseMismatch(
            f"base mismatch: the adapter expects base {expected}"
            + (f" ({hint})" if hint else "")
            + f", but {base_dir} is {actual}"
        )


def push(
    reg: Registry,
    src: str,
    name: str,
    *,
    base: str | None = None,
    aliases: Iterable[str] = (),
    tags: dict[str, str] | None = None,
    parents: Iterable[ParentSpec] = (),
    import_bin: bool = False,
    home: str | None = None,
    plugins: Plugins | None = None,
    progress: Progress | None = None,
    hash_progress: Progress | None = None,
) -> Published:
    """Register the adapter directory ``src`` (or the PEFT adapter repo ``hf://ORG/NAME[@REVISION]``, with an
    ``imported_from`` edge naming its commit) as a version of ``name``."""
    from .files.hub import HF_SCHEME

    if src.startswith(HF_SCHEME):
        from .files.hub import staged_adapter
        from .registry.registry import ParentSpec

        with staged_adapter(src, import_bin) as (staged, hub):
            # the commit, not the branch or tag asked for: the same upstream files give the same version
            edge = ParentSpec(
                "imported_from",
                ref=f"{HF_SCHEME}{hub.hub_id}@{hub.revision_sha}",
                details={"repo": hub.hub_id, "revision": hub.revision_sha},
            )
            try:
                return push(
                    reg,
                    staged,
                    name,
                    base=base,
                    aliases=aliases,
                    tags=tags,
                    parents=[edge, *parents],
                    import_bin=import_bin,
                    home=home,
                    plugins=plugins,
                    progress=progress,
                    hash_progress=hash_progress,
                )
            except AdapterhubError as exc:  # name the repo, not the scratch copy
                text = str(exc).replace(staged, src)
                raise type(exc)(text if src in text else f"{src}: {text}") from None
    from .files.checkpoint import check_base_fit, read_adapter_dir
    from .files.hub import from_path, resolve_base
    from .registry.refs import validate_name

    validate_name(name)
    plugins = plugins or get_plugins()
    source = read_adapter_dir(src, plugins, import_bin=import_bin, progress=hash_progress)
    try:
        manifest = source.manifest
        base_info: dict[str, Any] = {}
        m_base = dict(manifest.get("base") or {})
        if base:
            base = resolve_base(base).path  # a Hugging Face id: its snapshot in the cache
            fp = fingerprint(base, home)
            check_base(m_base.get("fingerprint"), fp.digest, base, m_base.get("name"))
            check_base_fit(source, base)  # every targeted module exists in the base and fits it
            m_base["fingerprint"] = fp.digest
            hub = from_path(base)  # a Hub snapshot's ORG/NAME@sha is more exact than any earlier hint
            m_base["name"] = hub.name if hub.hub_id else (m_base.get("name") or hub.name)
            base_info = {"fingerprint": fp.digest, "name": m_base["name"], "tensors": fp.tensors, "bytes": fp.bytes}
        if m_base:
            manifest["base"] = m_base
        if m_base.get("quantization"):  # a base property (base_models.properties): how it was quantized
            base_info = {**base_info, "properties": {"quantization": m_base["quantization"]}}
        if source.format != "adapterhub":
            manifest.setdefault("format", source.format)
        from .registry.gates import alias_guard

        return reg.publish(
            name,
            manifest,
            source.files,
            parents=parents,
            aliases=aliases,
            tags=tags,
            base=base_info or None,
            progress=progress,
            alias_guard=alias_guard() if aliases else None,
        )
    finally:
        source.cleanup()


def pull(
    reg: Registry | HttpRegistry, ref: str, out: str, force: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Write the files of version ``ref`` to ``out``, each verified by sha256 as it is read."""
    return reg.materialize(ref, out, force=force, progress=progress)


def copy(src: Registry, dst: Registry, ref: str, progress: Progress | None = None) -> Published:
    """Copy a version (blobs, lineage, tags, evaluations) from ``src`` to ``dst``; same digest."""
    from .registry.transfer import copy_version

    return copy_version(src, dst, ref, progress=progress)


@dataclass
class AttachedAdapter:
    """An adapter attached to a live model by :func:`attach`; ``detach()`` restores the base model."""

    model: Any
    method: Any
    config: Any  # the effective method config
    manifest: dict[str, Any]
    ref: str | None  # the registry version (``acme/chat:3``), or ``None`` for a directory
    base_fingerprint: str | None  # what the base was checked against; ``None`` when unchecked

    def detach(self) -> None:
        self.method.detach(self.model)


def attach(
    model: Any,
    source: str,
    *,
    base: str | None = None,
    allow_base_mismatch: bool = False,
    home: str | None = None,
    plugins: Plugins | None = None,
) -> AttachedAdapter:
    """Attach a stored adapter to ``model`` in place, for any method, as peft's ``PeftModel.from_pretrained``
    does for its own: ``source`` is an adapter directory (native or PEFT) or a registry ref
    (``acme/chat@production``, ``team:acme/chat:3``; pulled and verified first).

    The base is checked first: the fingerprint of ``base`` (the base weights' directory or Hub id; by default
    the directory the model was loaded from, ``model.config._name_or_path``) must equal the one the adapter
    was trained on, unless ``allow_base_mismatch``. A model whose weights cannot be found is refused rather
    than trusted: pass ``base=`` or ``allow_base_mismatch=True``."""
    import os
    import shutil
    import tempfile

    from .files.checkpoint import load_adapter_dir
    from .training.modeling import attach_loaded

    plugins = plugins or get_plugins()
    ref = None
    if os.path.isdir(source):
        loaded = load_adapter_dir(source, plugins)
    else:
        from .registry.refs import parse_ref

        reg = open_registry(home, plugins, remote=parse_ref(source).remote)
        info = reg.show(source)
        ref = info.ref
        tmp = tempfile.mkdtemp(prefix="adapterhub-attach-")
        try:
            pull(reg, ref, os.path.join(tmp, "a"))
            loaded = load_adapter_dir(os.path.join(tmp, "a"), plugins)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        loaded.manifest = info.manifest  # the registry's (a PEFT-format version has no adapterhub.json)
    expected = (loaded.manifest.get("base") or {}).get("fingerprint")
    checked = None
    if expected and not allow_base_mismatch:
        base = base or _loaded_from(model)
        if base is None:
            raise InvalidInput(
                f"cannot check the base of {ref or source}: the model was not loaded from a directory; "
                "pass base=DIR (its weights) or allow_base_mismatch=True"
            )
        from .files.hub import resolve_base

        resolved = resolve_base(base)
        checked = fingerprint(resolved.path, home).digest
        check_base(expected, checked, base, (loaded.manifest.get("base") or {}).get("name"))
    effective = attach_loaded(model, loaded)
    return AttachedAdapter(model, loaded.method, effective, loaded.manifest, ref, checked)


def _loaded_from(model: Any) -> str | None:
    """The directory (or Hub id) ``model`` was loaded from, as transformers records it."""
    path = getattr(getattr(model, "config", None), "_name_or_path", None)
    return path or None
