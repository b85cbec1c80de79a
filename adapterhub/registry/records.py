"""The registry's small shared parts: what a version is made of and how its rows are written.

``LocalFile`` / ``ParentSpec`` / ``Published`` travel in and out of the registry; the helpers (time,
actor, canonical JSON, path and tag checks, NaN handling) are used by the registry and its mixins alike.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..errors import InvalidInput


@dataclass(frozen=True)
class LocalFile:
    """A file to publish: its path inside the version, where it is now, and its content address."""

    path: str
    source: str
    sha256: str
    size: int


#: ref prefixes of parents that live outside any adapterhub registry (``hf://ORG/NAME@<commit>``): recorded
#: as external edges by their ref, never resolved
EXTERNAL_REF_SCHEMES = ("hf://",)


def is_external_ref(ref: str | None) -> bool:
    return bool(ref) and ref.startswith(EXTERNAL_REF_SCHEMES)


@dataclass
class ParentSpec:
    """A lineage edge to add: ``ref`` names a version in this registry, or an upstream outside any registry
    (:func:`is_external_ref`); ``digest`` alone names a version outside it (both recorded as external)."""

    relation: str
    ref: str | None = None
    digest: str | None = None
    details: dict[str, Any] | None = None


@dataclass
class Published:
    name: str
    version: int
    digest: str
    created: bool
    base_fingerprint: str | None = None
    uploaded_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "digest": "sha256:" + self.digest,
            "base_fingerprint": self.base_fingerprint,
            "created": self.created,
            "uploaded_bytes": self.uploaded_bytes,
            **self.extra,
        }


#: what a commit says when a blob it needs is gone (a concurrent ``gc``): the HTTP client uploads again once
BLOBS_GONE = "(gc) while this version was being committed"
NEVER_UPLOADED = "of this version were never uploaded"


def canonical_json(obj: Any) -> bytes:
    """The one byte encoding a manifest is hashed in: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def actor() -> str:
    user = os.environ.get("ADAPTERHUB_USER")
    if user:
        return user
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return "unknown"


#: characters refused in file names besides the C0/C1 controls: line and paragraph separators and the
#: bidirectional overrides, which let a name print as another one (``show``, ``pull`` listings)
_SPOOF_CHARS = frozenset("\u2028\u2029\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_relpath(path: str) -> str:
    """Refuse paths that could escape the output directory when materialized, and names with control
    characters (a newline in a name spoofs lines of ``show``)."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InvalidInput(f"unsafe file path in version: {path!r}")
    bad = next((c for c in path if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in _SPOOF_CHARS), None)
    if bad is not None:
        raise InvalidInput(f"unsafe file path in version: {path!r} (control character {bad!r} in a file name)")
    return path


def kind_conflict(name: str, kind: str, held: str, example: str) -> InvalidInput:
    """One kind per name (``merge NAME``, ``pull`` and the promotion gate assume it): ``name`` holds versions
    of kind ``held`` (e.g. ``example``), so a version of ``kind`` is refused."""
    return InvalidInput(
        f"{name} holds versions of kind {held} (e.g. {example}); a {kind} cannot become a version "
        "of it (one kind per name): choose another name"
    )


def validate_tag_key(key: str) -> str:
    if not key or len(key) > 128 or not all(c.isalnum() or c in "._-/" for c in key):
        raise InvalidInput(f"invalid tag key {key!r}: use letters, digits and ._-/ (at most 128)")
    return key


def _insert_ignore(conn: sa.Connection, table: sa.Table, values: dict[str, Any]) -> int:
    """Insert unless the key exists; returns how many rows were inserted (0 or 1)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return conn.execute(insert(table).values(**values).on_conflict_do_nothing()).rowcount


def _non_finite(obj: Any, path: str) -> list[str]:
    """Where ``obj`` (nested dicts/lists) holds NaN or inf: ``["metrics.loss=nan", ...]``."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [f"{path}={obj}"]
    if isinstance(obj, dict):
        return [b for k, v in obj.items() for b in _non_finite(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [b for i, v in enumerate(obj) for b in _non_finite(v, f"{path}[{i}]")]
    return []


def finite(obj: Any) -> Any:
    """``obj`` (nested dicts/lists/tuples) with NaN/inf as None, so it prints as valid JSON (evaluations
    stored before they were refused; ``--json`` output of a broken adapter's metrics)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def iso(value: Any) -> str | None:
    """A stored timestamp as ISO 8601 text in UTC (``2026-12-07T02:00:00+00:00``)."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite's storage format: "YYYY-MM-DD HH:MM:SS.ffffff[+00:00]"
        return value[:10] + "T" + value[11:19] + "+00:00"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.isoformat(timespec="seconds")
    return str(value)
