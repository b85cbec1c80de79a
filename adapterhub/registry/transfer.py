"""Copying versions between registries (``push REF --to team``, ``pull team:REF``).

A copied version keeps its manifest byte for byte, so its digest is the same in every registry. Its
blobs are streamed through a temp file and verified by sha256 on the way; missing parents are copied
first (recursively) so lineage stays connected, and evaluations and tags come along.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import sqlalchemy as sa

from . import schema as t
from .blobs import Progress, copy_verified
from .registry import LocalFile, Published, Registry


def copy_version(src: Registry, dst: Registry, ref: str, progress: Progress | None = None,
                 with_parents: bool = True, _depth: int = 0) -> Published:
    """Copy version ``ref`` of ``src`` (with its blobs, lineage, tags and evaluations) into ``dst``."""
    with src.read() as conn:
        v = src.resolve(ref, conn)
        files = src.files_of(conn, v["id"])
        parents = src._edges(conn, t.lineage.c.child_id == v["id"], parent_side=True)
        tags = {k: val for k, val in conn.execute(sa.select(t.tags.c.key, t.tags.c.value).where(
            t.tags.c.version_id == v["id"]))}
        evals = [{"data_digest": r.data_digest, "metrics": r.metrics, "details": r.details}
                 for r in conn.execute(sa.select(t.evaluations).where(t.evaluations.c.version_id == v["id"]))]
        base = None
        if v["base_fingerprint"]:
            b = conn.execute(sa.select(t.base_models).where(t.base_models.c.fingerprint == v["base_fingerprint"])).first()
            base = dict(b._mapping) if b else None
    if with_parents and _depth < 50:
        for p in parents:
            if p["external"] or not p["ref"]:
                continue
            with dst.read() as conn:
                present = conn.execute(sa.select(t.versions.c.id).where(
                    t.versions.c.digest == p["digest"][7:])).first()
            if not present:
                copy_version(src, dst, p["ref"], progress, with_parents, _depth + 1)
    edges = [{"digest": p["digest"][7:] if p["digest"] else None, "relation": p["relation"],
              "details": p["details"], "ref": p["ref"]} for p in parents]
    tmp = tempfile.mkdtemp(prefix="adapterhub-copy-")
    try:
        local: list[LocalFile] = []
        for f in files:
            digest = f["digest"][7:]
            path = os.path.join(tmp, digest)
            if not dst.store.has(digest) and not os.path.exists(path):
                copy_verified(src.store, digest, path, f["size"], what=f"blob {f['digest']} ({v['ref']} {f['path']})")
            local.append(LocalFile(f["path"], path, digest, f["size"]))
        return dst.import_version(v["name"], v["manifest"], local, edges=edges, tags=tags, evaluations=evals,
                                  base=base, created_by=v["created_by"], progress=progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary(pub: Published, src_label: str, dst_label: str) -> dict[str, Any]:
    d = pub.to_dict()
    d.update({"from": src_label, "to": dst_label})
    return d
