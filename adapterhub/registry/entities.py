"""Typed results: what the registry says about a version (``Registry.show``: :class:`VersionInfo`;
``Registry.list``: :class:`VersionSummary` rows; the server client's alike).

Callers read attributes (``info.ref``, ``info.files[0].digest``, ``info.parents[0].relation``) rather than
string keys. ``to_dict()`` is the JSON the CLI prints (``show --json``) and the server sends
(``GET /api/v1/show``); ``from_dict`` reads that JSON back (the server client). Free-form parts (config,
manifest, tags, metrics, data rows, evaluation details) stay plain dicts: their keys belong to methods,
trackers and users, not to the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

_R = TypeVar("_R", bound="_Record")


class _Record:
    """A flat frozen dataclass whose dict form is its fields, in order."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[_R], d: dict[str, Any]) -> _R:
        return cls(**{f.name: d[f.name] for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class FileInfo(_Record):
    """A file of a version: its path in the adapter directory, its blob's ``sha256:`` digest, its size in bytes."""

    path: str
    digest: str
    size: int


@dataclass(frozen=True)
class Edge(_Record):
    """A lineage edge seen from one of its versions, naming the other one: its ``ref`` (``name:N``; for an
    external parent the ref it was recorded with, such as ``hf://org/name@sha``; None when only its digest is
    known) and ``digest`` (``sha256:...``), the ``relation`` (:data:`~.refs.RELATIONS`), the edge's
    ``details`` (weights, options ...) and whether the other side is ``external`` (not a version here)."""

    ref: str | None
    digest: str | None
    relation: str
    details: dict[str, Any] | None
    external: bool


@dataclass(frozen=True)
class Evaluation(_Record):
    """A stored evaluation: the evaluation data's ``sha256:`` digest, the metrics, what else ``eval``
    recorded (rows, file, generation samples ...) and when."""

    data_digest: str
    metrics: dict[str, Any]
    details: dict[str, Any] | None
    created_at: str | None


@dataclass(frozen=True)
class BaseModel(_Record):
    """The base weights a version was trained on, as the registry knows them: fingerprint, a human name hint,
    tensor count, bytes, and properties (``{"quantization": ...}`` for a quantized base)."""

    fingerprint: str
    name: str | None
    tensors: int | None
    bytes: int | None
    properties: dict[str, Any] | None


@dataclass(frozen=True)
class VersionSummary(_Record):
    """A row of ``Registry.list``: what ``adapterhub list`` shows of a version. ``evaluation`` is the metrics of
    its newest evaluation (finite values only), or None; ``created_at`` an ISO timestamp."""

    name: str
    version: int
    ref: str
    digest: str
    kind: str
    method: str | None
    size: int
    base_fingerprint: str | None
    aliases: list[str]
    evaluation: dict[str, Any] | None
    created_at: str


@dataclass(frozen=True)
class VersionInfo:
    """Everything the registry holds about one version; its manifest and files were checked against its
    digest when it was read."""

    name: str  # namespace/name
    version: int
    ref: str  # name:version
    digest: str  # sha256:<hex> of the canonical manifest
    kind: str  # adapter, composition ...
    method: str | None
    config: dict[str, Any] | None  # the method config, as the manifest records it
    base_fingerprint: str | None
    base: BaseModel | None
    task: str | None
    files: tuple[FileInfo, ...]
    size: int  # bytes, all files
    aliases: tuple[str, ...]
    tags: dict[str, str]
    parents: tuple[Edge, ...]  # in position order (a composition's members in stack order)
    children: tuple[Edge, ...]
    metrics: dict[str, Any]  # the manifest's (training) metrics
    evaluations: tuple[Evaluation, ...]  # oldest first
    data: tuple[dict[str, Any], ...]  # the manifest's data digests (role, file, rows, digest ...)
    created_at: str | None
    created_by: str | None
    manifest: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``show --json`` (without ``manifest``) and the server's ``/api/v1/show``."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["base"] = self.base.to_dict() if self.base else None
        for key in ("files", "parents", "children", "evaluations"):
            d[key] = [x.to_dict() for x in d[key]]
        d["aliases"], d["data"] = list(self.aliases), list(self.data)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersionInfo:
        """Read :meth:`to_dict`'s form back (a ``KeyError`` or ``TypeError`` when it is not that)."""
        nested: dict[str, Any] = {
            "base": BaseModel.from_dict(d["base"]) if d["base"] else None,
            "files": tuple(FileInfo.from_dict(f) for f in d["files"]),
            "parents": tuple(Edge.from_dict(e) for e in d["parents"]),
            "children": tuple(Edge.from_dict(e) for e in d["children"]),
            "evaluations": tuple(Evaluation.from_dict(e) for e in d["evaluations"]),
            "aliases": tuple(d["aliases"]),
            "data": tuple(d["data"]),
        }
        return cls(**{f.name: nested[f.name] if f.name in nested else d[f.name] for f in fields(cls)})
