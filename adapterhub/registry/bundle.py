"""A version as it travels between registries: the manifest text, byte for byte, and its rows.

``export_version`` of one registry (SQL or HTTP) returns a :class:`VersionBundle`; ``import_version`` of
another stores it with the same digest. :meth:`VersionBundle.check` ties the parts together before
anything is written: the digest is the sha256 of the manifest text, and the files the source serves are
exactly the files the manifest lists — so a row edited behind the registry's back cannot make a digest
serve other bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import IntegrityError


def parse_manifest(text: str, ref: str) -> dict[str, Any]:
    """A stored manifest as a dict; :class:`IntegrityError` naming ``ref`` if it is not a JSON object
    (only a database edited behind the registry's back holds one)."""
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise IntegrityError(
            f"{ref}: its stored manifest is not a JSON object: the registry was edited behind its back"
        )
    return manifest


@dataclass
class BundleFile:
    """One file of a version: its path inside the version, blob digest (hex) and size."""

    path: str
    digest: str
    size: int


@dataclass
class BundleEdge:
    """A lineage edge to a parent: its manifest digest (hex), relation, details and its ref in the
    source registry (None: outside it, or hidden from the caller)."""

    digest: str | None
    relation: str
    details: dict[str, Any] | None = None
    ref: str | None = None


@dataclass
class VersionBundle:
    name: str
    number: int
    digest: str  # hex sha256 of ``manifest_text``
    manifest_text: str  # the canonical manifest, verbatim
    files: list[BundleFile]
    edges: list[BundleEdge] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # {data_digest (hex), metrics, details}
    base: dict[str, Any] | None = None  # the base_models row: fingerprint, name, tensors, bytes, properties
    created_by: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.number}"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def check(self) -> "VersionBundle":
        """Raise :class:`IntegrityError` unless the manifest hashes to the digest and lists exactly
        the files served (same paths, blobs and sizes)."""
        got = hashlib.sha256(self.manifest_text.encode("utf-8")).hexdigest()
        if got != self.digest:
            raise IntegrityError(
                f"{self.ref}: its stored manifest hashes to sha256:{got[:12]}, not to the "
                f"version's digest sha256:{self.digest[:12]}: the registry was edited behind its back"
            )
        listed = parse_manifest(self.manifest_text, self.ref).get("files")
        want = sorted(
            (str(f.get("path")), str(f.get("sha256")), f.get("size"))
            for f in (listed if isinstance(listed, list) else [])
            if isinstance(f, dict)
        )
        have = sorted((f.path, f.digest, f.size) for f in self.files)
        if want != have:
            extra = sorted({h[0] for h in have} ^ {w[0] for w in want}) or [h[0] for h, w in zip(have, want) if h != w]
            raise IntegrityError(
                f"{self.ref}: the files the registry serves differ from those its manifest "
                f"lists ({', '.join(extra[:3])}): the registry was edited behind its back"
            )
        return self

    def check_row(self, kind: str | None, method: str | None, base_fingerprint: str | None) -> "VersionBundle":
        """Raise :class:`IntegrityError` unless the version row's kind, method and base fingerprint (what
        ``list``, ``merge`` and the base check read) are the (checked) manifest's."""
        m = parse_manifest(self.manifest_text, self.ref)
        want = {"kind": m.get("kind", "adapter"), "method": m.get("method")}
        base = m.get("base")
        if isinstance(base, dict) and base.get("fingerprint"):
            want["base_fingerprint"] = base["fingerprint"]
        have = {"kind": kind, "method": method, "base_fingerprint": base_fingerprint}
        bad = [k for k in want if want[k] != have[k]]
        if bad:
            raise IntegrityError(
                f"{self.ref}: its {', '.join(bad)} in the database differ from its manifest: "
                "the registry was edited behind its back"
            )
        return self

    def check_lineage(self) -> "VersionBundle":
        """Raise :class:`IntegrityError` unless the lineage edges with a digest are, in order, the parents
        with a digest that the (checked) manifest lists: a lineage row edited behind the registry's back
        would otherwise travel with every copy."""
        parents = json.loads(self.manifest_text).get("parents")
        want = [
            (p.get("digest"), p.get("relation"))
            for p in (parents if isinstance(parents, list) else [])
            if isinstance(p, dict) and p.get("digest")
        ]
        have = [(e.digest, e.relation) for e in self.edges if e.digest]
        if want != have:
            raise IntegrityError(
                f"{self.ref}: its lineage rows ({', '.join(f'{r} {d[:12]}' for d, r in have) or 'none'}) "
                f"differ from the parents its manifest lists: the registry was edited behind its back"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VersionBundle":
        return cls(
            name=d["name"],
            number=int(d["number"]),
            digest=d["digest"],
            manifest_text=d["manifest_text"],
            files=[BundleFile(**f) for f in d["files"]],
            edges=[BundleEdge(**e) for e in d.get("edges") or []],
            tags=dict(d.get("tags") or {}),
            evaluations=list(d.get("evaluations") or []),
            base=d.get("base"),
            created_by=d.get("created_by"),
        )
