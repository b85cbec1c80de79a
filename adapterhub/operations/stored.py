"""Stored versions as the registry operations (combine, compose, extract) read them: loaded into memory with
every blob verified, the base several of them share, and the refusal to mix kinds under one name."""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..errors import InvalidInput, NotFound
from ..registry.entities import VersionInfo


def load_version(reg: Any, ref: str, plugins: Any, tmp: str):
    """``(version info, LoadedAdapter)`` for ``ref``: materialized (blobs verified) under ``tmp``."""
    from ..files.checkpoint import load_adapter_dir
    from ..registry.maintenance import materialize

    info = reg.show(ref)
    if info.kind != "adapter":
        raise InvalidInput(f"{info.ref} is a {info.kind}, not an adapter")
    out = os.path.join(tmp, f"{len(os.listdir(tmp)):03d}")
    materialize(reg, info.ref, out)
    loaded = load_adapter_dir(out, plugins)
    loaded.manifest = info.manifest  # the registry's (a PEFT-format version has no adapterhub.json)
    return info, loaded


def common_base(infos: Sequence[VersionInfo], what: str = "combine") -> dict[str, Any] | None:
    """The base the versions share, as a manifest ``base`` entry; refuses versions of different bases."""
    fps = {i.base_fingerprint for i in infos}
    if len(fps) > 1:
        desc = ", ".join(f"{i.ref} ({i.base_fingerprint or 'unknown base'})" for i in infos)
        raise InvalidInput(f"cannot {what} adapters of different base models: {desc}")
    fp = fps.pop()
    if fp is None:
        return None
    names = [(i.base.name if i.base else None) or (i.manifest.get("base") or {}).get("name") for i in infos]
    return {"fingerprint": fp, "name": next((n for n in names if n), None)}


def check_name_kind(reg: Any, name: str, kind: str) -> None:
    """Refuse, before any work, to add a version of ``kind`` (``adapter`` or ``composition``) to ``name`` when
    ``name`` already holds versions of another kind (the registry refuses it again when it stores the version)."""
    try:
        versions = reg.list(name)
    except NotFound:
        return  # a new name
    other = sorted({v.kind for v in versions} - {kind})
    if other:
        from ..registry.registry import kind_conflict

        held = next(v.ref for v in reversed(versions) if v.kind == other[0])
        raise kind_conflict(name, kind, other[0], held)
