"""Adapter directories (delta checkpoints): reading one to publish it, and writing one.

An adapter directory holds ``adapterhub.json`` (the manifest: method, method config, base fingerprint
and name hint, task, data digests, metrics, versions) and the tensors in safetensors. For methods PEFT
also implements it is at the same time a PEFT adapter directory (``adapter_config.json`` +
``adapter_model.safetensors`` under PEFT's key names). A directory without ``adapterhub.json`` is
recognised by the format plugins (``register_formats``), e.g. a plain PEFT directory.

Pickles are never stored: ``.bin``/``.pt`` files are refused unless explicitly converted, which loads
them with ``torch.load(weights_only=True)`` and stores safetensors instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import AdapterhubError, InvalidInput, NotFound
from ..registry.blobs import Progress, hash_file

if TYPE_CHECKING:  # pragma: no cover - the registry module imports SQLAlchemy: loaded where it is used
    from ..registry.registry import LocalFile
from .safetensors_header import read_header

MANIFEST = "adapterhub.json"
PEFT_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SKIP_NAMES = {".git", "__pycache__", ".DS_Store", ".ipynb_checkpoints"}


@dataclass
class AdapterSource:
    """A directory ready to publish: its manifest (without files/parents) and its files."""

    path: str
    manifest: dict[str, Any]
    files: list[LocalFile]
    format: str
    _tmp: list[str] = field(default_factory=list)
    method: Any = None  # the method object, when its plugin is installed
    config: Any = None  # its typed config
    tensors: Any = None  # the adapter tensors' header entries (name -> stheader.TensorInfo)

    def cleanup(self) -> None:
        for d in self._tmp:
            shutil.rmtree(d, ignore_errors=True)


def _check_relpath(rel: str) -> str:
    from ..registry.registry import check_relpath

    return check_relpath(rel)


def list_files(src: str) -> list[tuple[str, str]]:
    """``(relative posix path, absolute path)`` of every regular file under ``src``. Symbolic links are
    refused (a link could pull in a file from outside ``src``; skipping it would drop content silently)."""
    out = []
    for root, dirs, names in os.walk(src, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_NAMES and not d.startswith("."))
        for n in dirs + sorted(names):
            if n in SKIP_NAMES or n.startswith("."):
                continue
            full = os.path.join(root, n)
            rel = os.path.relpath(full, src).replace(os.sep, "/")
            _check_relpath(rel)
            if os.path.islink(full):
                raise InvalidInput(
                    f"{rel} in {src} is a symbolic link; adapterhub does not follow links out of "
                    "the adapter directory: copy the file in instead"
                )
            if n in dirs:
                continue
            if not os.path.isfile(full):  # socket, fifo ...
                raise InvalidInput(f"{rel} in {src} is not a regular file")
            out.append((rel, full))
    return out


def read_adapter_dir(
    src: str, plugins: Any, import_bin: bool = False, progress: Progress | None = None
) -> AdapterSource:
    """Validate the adapter directory ``src`` and describe it for publishing.

    Raises :class:`InvalidInput` (one line, naming the file) for a missing or empty directory,
    corrupt or truncated safetensors, pickles, or a directory no format recognises.
    """
    if not os.path.exists(src):
        raise InvalidInput(f"{src} does not exist")
    if not os.path.isdir(src):
        raise InvalidInput(f"{src} is not a directory")
    entries = list_files(src)
    if not entries:
        raise InvalidInput(f"{src} is empty")
    source = AdapterSource(os.path.abspath(src), {}, [], "adapterhub")
    try:
        entries = _handle_pickles(entries, import_bin, source)
        # read_header raises InvalidInput naming the file
        headers = {rel: read_header(full) for rel, full in entries if rel.endswith(".safetensors")}
        converter = _converter(src, plugins)
        if converter is not None:  # a foreign layout: the format writes the adapter directory we store
            name, fmt = converter
            tmp = tempfile.mkdtemp(prefix="adapterhub-convert-")
            source._tmp.append(tmp)
            fmt.convert(src, dict(entries), tmp, plugins)
            entries = list_files(tmp)
            headers = {rel: read_header(full) for rel, full in entries if rel.endswith(".safetensors")}
            manifest, _ = _read_manifest(tmp, plugins)
            source.manifest, source.format = manifest, name
        else:
            source.manifest, source.format = _read_manifest(src, plugins)
        if WEIGHTS in headers:
            source.tensors = headers[WEIGHTS].tensors
            source.method, source.config = check_adapter(src, source.manifest, source.tensors, plugins)
        check_finite(headers)
        from ..registry.registry import LocalFile

        for rel, full in entries:
            digest, size = hash_file(full, progress)
            source.files.append(LocalFile(rel, full, digest, size))
    except BaseException:
        source.cleanup()
        raise
    return source


def check_finite(headers: dict[str, Any]) -> None:
    """Refuse safetensors files (``{relative path: Header}``) whose floating-point tensors hold NaN or inf,
    naming the first such tensor (merged, they would make the base's weights inf/nan)."""
    from .finite import non_finite

    for rel, header in sorted(headers.items()):
        bad = non_finite(header)
        if bad:
            name, count = bad[0]
            more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
            raise InvalidInput(
                f"{rel}: tensor {name!r} holds {count} NaN/inf values{more}: an adapter must be "
                "finite (merged, it would make the base's weights NaN/inf)"
            )


def check_adapter(
    src: str, manifest: dict[str, Any], tensors: dict[str, Any], plugins: Any, installed_only: bool = True
) -> tuple[Any, Any]:
    """Check an adapter directory: its PEFT ``adapter_config.json`` against ``adapterhub.json``
    (:func:`reconcile_peft_config`, which may complete ``manifest["config"]`` in place), then its tensors
    (header entries) against the method and config; returns ``(method, config)``. With ``installed_only``, a
    method no installed plugin provides gets only the generic checks and ``(None, None)`` is returned (the
    registry may store adapters of methods this machine lacks)."""
    from ..method import check_floating

    try:
        method = plugins.get("methods", manifest["method"])
    except NotFound:
        if not installed_only:
            raise
        check_floating(tensors)
        return None, None
    reconcile_peft_config(src, manifest, plugins)
    method, config = method_and_config(manifest, plugins)
    method.check_tensors(tensors, config)
    return method, config


def reconcile_peft_config(src: str, manifest: dict[str, Any], plugins: Any) -> None:
    """A directory with both ``adapterhub.json`` and PEFT's ``adapter_config.json``: every config field
    ``adapterhub.json`` states must have the same value in ``adapter_config.json`` (what peft, vLLM and TGI
    read), else :class:`InvalidInput` names the fields. ``adapter_config.json`` is PEFT's complete config,
    so a field the manifest leaves out is taken from it (added to ``manifest["config"]``), never from our
    defaults: both then describe the same adapter."""
    path = os.path.join(src, PEFT_CONFIG)
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(src, MANIFEST))):
        return  # a plain PEFT directory: adapter_config.json is the only config
    peft = load_json(path)
    if not isinstance(peft, dict):
        raise InvalidInput(f"{PEFT_CONFIG} in {src} is not a JSON object")
    method, config = method_and_config(manifest, plugins)
    if method.peft_type is None:
        raise InvalidInput(
            f"{src} has {PEFT_CONFIG}, but its method '{method.name}' ({MANIFEST}) is not one PEFT "
            f"implements: remove {PEFT_CONFIG}"
        )
    try:
        theirs = method.from_peft_config(peft)
    except AdapterhubError as exc:
        raise InvalidInput(
            f"{PEFT_CONFIG} in {src} does not describe the {method.name} adapter of {MANIFEST}: {exc}"
        ) from None
    raw = manifest.get("config") or {}
    if not (isinstance(raw, dict) and dataclasses.is_dataclass(config) and dataclasses.is_dataclass(theirs)):
        return
    ours, theirs = dataclasses.asdict(config), dataclasses.asdict(theirs)
    stated = set(ours) if manifest.get("format") == "peft" else set(raw)
    diff = [k for k in ours if k in stated and ours[k] != theirs.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {theirs.get(k)!r} in {PEFT_CONFIG}, {ours[k]!r} in {MANIFEST}" for k in diff)
        raise InvalidInput(
            f"{PEFT_CONFIG} and {MANIFEST} in {src} disagree ({shown}); peft, vLLM and TGI read the "
            f"first, adapterhub the second: make them agree"
        )
    missing = {k: v for k, v in theirs.items() if k not in stated}
    if missing:
        manifest["config"] = {**raw, **missing}


def check_base_fit(source: AdapterSource, base_dir: str) -> None:
    """Check that every module ``source`` targets exists in the base model in ``base_dir`` and fits it
    (shapes from the base's safetensors headers; nothing is loaded)."""
    if source.method is None or source.tensors is None:
        return
    from .fingerprint import find_weight_files
    from .peft_keys import PEFT_PREFIX, base_prefix

    base: dict[str, Any] = {}
    for path in find_weight_files(base_dir):
        base.update(read_header(path).tensors)
    paths = [k[len(PEFT_PREFIX) :] for k in source.tensors if k.startswith(PEFT_PREFIX)]
    prefix = base_prefix(sorted(base), paths)
    source.method.check_tensors(source.tensors, source.config, {prefix + n: t for n, t in base.items()})


def _handle_pickles(entries: list[tuple[str, str]], import_bin: bool, source: AdapterSource) -> list[tuple[str, str]]:
    pickles = [(rel, full) for rel, full in entries if rel.lower().endswith(PICKLE_SUFFIXES)]
    if not pickles:
        return entries
    if not import_bin:
        rel = pickles[0][0]
        raise InvalidInput(
            f"{rel} is a pickle file, which adapterhub never stores; save the adapter with safetensors, or "
            "re-run with --import-bin to convert it (loaded with torch.load(weights_only=True))"
        )
    import torch
    from safetensors.torch import save_file

    tmp = tempfile.mkdtemp(prefix="adapterhub-import-")
    source._tmp.append(tmp)
    names = {rel for rel, _ in entries}
    out = [(rel, full) for rel, full in entries if (rel, full) not in pickles]
    for rel, full in pickles:
        target = rel.rsplit(".", 1)[0] + ".safetensors"
        if target in names:
            raise InvalidInput(f"{rel}: both it and {target} exist; remove one")
        try:
            obj = torch.load(full, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInput(f"{rel}: refused by torch.load(weights_only=True): {first[:200]}") from None
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise InvalidInput(f"{rel}: not a flat dict of tensors, cannot convert to safetensors")
        dest = os.path.join(tmp, *target.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        save_file(_unshared(obj), dest)
        out.append((target, dest))
    return sorted(out)


def _converter(src: str, plugins: Any) -> tuple[str, Any] | None:
    """``(name, format)`` of the format that claims ``src`` and converts it (has ``convert``), when ``src`` has
    no ``adapterhub.json``; else ``None``."""
    if os.path.isfile(os.path.join(src, MANIFEST)):
        return None
    for name, _plugin, fmt in plugins.items("formats"):
        if fmt.detect(src):
            return (name, fmt) if "convert" in fmt.capabilities() else None
    return None


def _unshared(tensors: dict[str, Any]) -> dict[str, Any]:
    """Contiguous tensors, a copy for each that shares storage with an earlier one (pickles may hold one tensor
    under two names, e.g. the adapters library's ``ln_before``; safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for k in sorted(tensors):
        v = tensors[k].contiguous()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _read_manifest(src: str, plugins: Any) -> tuple[dict[str, Any], str]:
    path = os.path.join(src, MANIFEST)
    if os.path.isfile(path):
        manifest = load_json(path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("method"), str):
            raise InvalidInput(f"{MANIFEST} in {src} has no 'method'")
        for key in ("files", "parents", "kind"):
            manifest.pop(key, None)  # the registry computes these
        return manifest, "adapterhub"
    for name, _plugin, fmt in plugins.items("formats"):
        if fmt.detect(src):
            return fmt.read(src, plugins), name
    raise InvalidInput(f"{src} is not an adapter directory: no {MANIFEST} or adapter_config.json")


def load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{os.path.basename(path)} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None


def write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def save_adapter(
    out: str,
    manifest: dict[str, Any],
    tensors: dict[str, Any],
    peft_config: dict[str, Any] | None = None,
    extra_files: dict[str, str] | None = None,
    force: bool = False,
) -> str:
    """Write an adapter directory atomically (temp dir, then rename): ``adapterhub.json``, the tensors
    as ``adapter_model.safetensors`` and, when given, PEFT's ``adapter_config.json``. ``extra_files``
    maps names to text contents (e.g. a README)."""
    from safetensors.torch import save_file

    from .output_dir import atomic_out

    manifest = dict(manifest)
    manifest.setdefault("adapterhub_version", __version__)
    with atomic_out(out, force) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            os.path.join(tmp, "adapter_model.safetensors"),
            metadata={"format": "pt"},
        )
        if peft_config is not None:
            write_json(os.path.join(tmp, "adapter_config.json"), peft_config)
        write_json(os.path.join(tmp, MANIFEST), manifest)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
    return os.path.abspath(out)


@dataclass
class LoadedAdapter:
    """An adapter read back for use: its method object, typed config, tensors and manifest."""

    method: Any
    config: Any
    tensors: dict[str, Any]
    manifest: dict[str, Any]


def method_and_config(manifest: dict[str, Any], plugins: Any) -> tuple[Any, Any]:
    """The method object and typed config a manifest describes (native or PEFT config)."""
    method = plugins.get("methods", manifest["method"])
    cfg = manifest.get("config") or {}
    if manifest.get("format") == "peft" or (
        "peft_type" in cfg and "peft_type" not in {f.name for f in dataclasses.fields(method.config_class)}
    ):
        return method, method.from_peft_config(cfg)
    return method, method.config_from_manifest(cfg)


def adapter_parts(path: str, plugins: Any) -> tuple[dict[str, Any], str, Any, Any]:
    """``(manifest, weights path, method, config)`` of an adapter directory (native or PEFT), validated."""
    if os.path.isfile(os.path.join(path, MANIFEST)):
        manifest = load_json(os.path.join(path, MANIFEST))
    else:
        manifest, _ = _read_manifest(path, plugins)
    weights = os.path.join(path, WEIGHTS)
    if not os.path.isfile(weights):
        raise InvalidInput(f"{path} has no {WEIGHTS}")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("method"), str):
        raise InvalidInput(f"{MANIFEST} in {path} has no 'method'")
    method, config = check_adapter(path, manifest, read_header(weights).tensors, plugins, installed_only=False)
    return manifest, weights, method, config


def load_adapter_dir(path: str, plugins: Any) -> LoadedAdapter:
    """Read an adapter directory (native or PEFT) into memory for attaching or merging."""
    from safetensors.torch import load_file

    manifest, weights, method, config = adapter_parts(path, plugins)
    return LoadedAdapter(method, config, load_file(weights), manifest)
