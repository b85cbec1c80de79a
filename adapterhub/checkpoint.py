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

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import InvalidInput
from .registry.blobs import Progress, hash_file

if TYPE_CHECKING:  # pragma: no cover - the registry module imports SQLAlchemy: loaded where it is used
    from .registry.registry import LocalFile
from .stheader import read_header

MANIFEST = "adapterhub.json"
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

    def cleanup(self) -> None:
        for d in self._tmp:
            shutil.rmtree(d, ignore_errors=True)


def _check_relpath(rel: str) -> str:
    from .registry.registry import check_relpath

    return check_relpath(rel)


def list_files(src: str) -> list[tuple[str, str]]:
    """``(relative posix path, absolute path)`` of every regular file under ``src``."""
    out = []
    for root, dirs, names in os.walk(src, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_NAMES and not d.startswith("."))
        for n in sorted(names):
            if n in SKIP_NAMES or n.startswith("."):
                continue
            full = os.path.join(root, n)
            rel = os.path.relpath(full, src).replace(os.sep, "/")
            if not os.path.isfile(full):  # dangling symlink, socket, fifo ...
                raise InvalidInput(f"{rel} in {src} is not a regular file")
            out.append((_check_relpath(rel), full))
    return out


def read_adapter_dir(src: str, plugins: Any, import_bin: bool = False,
                     progress: Progress | None = None) -> AdapterSource:
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
        for rel, full in entries:
            if rel.endswith(".safetensors"):
                read_header(full)  # raises InvalidInput naming the file
        source.manifest, source.format = _read_manifest(src, plugins)
        from .registry.registry import LocalFile

        for rel, full in entries:
            digest, size = hash_file(full, progress)
            source.files.append(LocalFile(rel, full, digest, size))
    except BaseException:
        source.cleanup()
        raise
    return source


def _handle_pickles(entries: list[tuple[str, str]], import_bin: bool,
                    source: AdapterSource) -> list[tuple[str, str]]:
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
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            raise InvalidInput(f"{rel}: not a flat dict of tensors, cannot convert to safetensors")
        dest = os.path.join(tmp, *target.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        save_file({k: v.contiguous() for k, v in obj.items()}, dest)
        out.append((target, dest))
    return sorted(out)


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
        if hasattr(fmt, "detect") and fmt.detect(src):
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


def save_adapter(out: str, manifest: dict[str, Any], tensors: dict[str, Any],
                 peft_config: dict[str, Any] | None = None, extra_files: dict[str, str] | None = None,
                 force: bool = False) -> str:
    """Write an adapter directory atomically (temp dir, then rename): ``adapterhub.json``, the tensors
    as ``adapter_model.safetensors`` and, when given, PEFT's ``adapter_config.json``. ``extra_files``
    maps names to text contents (e.g. a README)."""
    from safetensors.torch import save_file

    from .outdir import atomic_out

    manifest = dict(manifest)
    manifest.setdefault("adapterhub_version", __version__)
    with atomic_out(out, force) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
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
    if manifest.get("format") == "peft" or ("peft_type" in cfg and "peft_type" not in
                                             {f for f in getattr(method.config_class, "__dataclass_fields__", {})}):
        return method, method.from_peft_config(cfg)
    return method, method.make_config(cfg)


def adapter_parts(path: str, plugins: Any) -> tuple[dict[str, Any], str, Any, Any]:
    """``(manifest, weights path, method, config)`` of an adapter directory (native or PEFT), validated."""
    if os.path.isfile(os.path.join(path, MANIFEST)):
        manifest = load_json(os.path.join(path, MANIFEST))
    else:
        manifest, _ = _read_manifest(path, plugins)
    weights = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        raise InvalidInput(f"{path} has no adapter_model.safetensors")
    read_header(weights)
    method, config = method_and_config(manifest, plugins)
    return manifest, weights, method, config


def load_adapter_dir(path: str, plugins: Any) -> LoadedAdapter:
    """Read an adapter directory (native or PEFT) into memory for attaching or merging."""
    from safetensors.torch import load_file

    manifest, weights, method, config = adapter_parts(path, plugins)
    return LoadedAdapter(method, config, load_file(weights), manifest)
