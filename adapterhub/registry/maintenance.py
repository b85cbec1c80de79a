"""Materializing versions to directories, verifying stored blobs, and garbage collection."""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import AdapterhubError, IntegrityError, InvalidInput
from ..files.output_dir import atomic_out, check_out, finish_out, prepare_out  # noqa: F401  (re-exported)
from . import history
from . import schema as t
from .blobs import Progress, copy_verified, verify_blob
from .bundle import BundleEdge, BundleFile, VersionBundle, parse_manifest
from .db import blob_lock
from .records import check_relpath

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry

DEFAULT_GC_GRACE = 600.0  # seconds: blobs of a push still in flight are younger than this
GC_BATCH = 64  # blobs deleted per transaction holding the blob lock (pushes wait at most one batch)


def materialize(
    reg: Registry, ref: str, out: str, force: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Write the files of ``ref`` to ``out``, each verified by sha256 while it is read. On any error
    nothing is left at ``out`` (the work happens in a temp dir renamed into place at the end)."""
    check_out_registry(out, registry_paths(reg))
    with reg.read() as conn:
        v = reg.resolve(ref, conn)
        files = reg.files_of(conn, v)  # checked against the manifest and digest
    for f in files:
        check_relpath(f["path"])
    with atomic_out(out, force) as tmp:
        for f in files:
            dest = os.path.join(tmp, *f["path"].split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            copy_verified(
                reg.store,
                f["digest"][7:],
                dest,
                f["size"],
                progress,
                what=f"blob {f['digest']} ({v['ref']} {f['path']})",
            )
    return {
        "ref": v["ref"],
        "digest": "sha256:" + v["digest"],
        "out": os.path.abspath(out),
        "files": files,
        "bytes": sum(f["size"] for f in files),
    }


def verify(reg: Registry, ref: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Check ``ref`` (or every version): its manifest hashes to its digest and lists exactly the files the
    database serves, and every blob it references re-hashes to its address; without ``ref``, the hash-chained
    history too (:func:`.history.check`). Problems name the version (``{"version", "status"}``), the blob and
    the versions and paths using it (``{"blob", ...}``), or the history row (``{"history", "status"}``)."""
    f, v, a = t.files, t.versions, t.adapters
    problems: list[dict[str, Any]] = []
    used: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    with reg.read() as conn:
        vq = sa.select(v, a.c.name).join(a, a.c.id == v.c.adapter_id).order_by(a.c.name, v.c.number)
        fq = sa.select(f).order_by(f.c.version_id, f.c.path)
        if ref:
            vid = reg.resolve(ref, conn)["id"]
            vq, fq = vq.where(v.c.id == vid), fq.where(f.c.version_id == vid)
        served: dict[int, list[BundleFile]] = {}
        for r in conn.execute(fq):
            served.setdefault(r.version_id, []).append(BundleFile(r.path, r.blob_digest, r.size))
        edges: dict[int, list[BundleEdge]] = {}
        for r in conn.execute(
            sa.select(t.lineage, t.versions.c.digest.label("vdigest"))
            .outerjoin(t.versions, t.versions.c.id == t.lineage.c.parent_id)
            .order_by(t.lineage.c.child_id, t.lineage.c.position, t.lineage.c.id)
        ):
            edges.setdefault(r.child_id, []).append(BundleEdge(r.vdigest or r.parent_digest, r.relation))
        versions = conn.execute(vq).all()
        chain, head = history.check(conn) if not ref else ([], None)
    for row in versions:
        ref_ = f"{row.name}:{row.number}"
        try:
            VersionBundle(
                row.name, row.number, row.digest, row.manifest, served.get(row.id, []), edges.get(row.id, [])
            ).check().check_lineage().check_row(row.kind, row.method, row.base_fingerprint)
        except IntegrityError as exc:
            problems.append({"version": ref_, "status": str(exc).split(": ", 1)[-1]})
        for bf in served.get(row.id, []):
            used.setdefault(bf.digest, []).append(f"{ref_} {bf.path}")
            sizes[bf.digest] = bf.size
    for digest in sorted(used):
        status = verify_blob(reg.store, digest)
        if progress:
            progress(sizes[digest])
        if status:
            problems.append({"blob": "sha256:" + digest, "status": status, "used_by": used[digest]})
    problems += chain
    return {
        "versions": len(versions),
        "blobs": len(used),
        "history_head": head,
        "bytes": sum(sizes.values()),
        "problems": problems,
        "ok": not problems,
    }


def gc(reg: Registry, grace: float = DEFAULT_GC_GRACE, dry_run: bool = False) -> dict[str, Any]:
    """Remove blobs that no version references (older than ``grace``
    seconds, so a push in flight keeps its blobs) and the temp leftovers of interrupted writes. ``grace``
    must be a finite number >= 0. Files in the store that are not blobs (``.DS_Store``, editor backups)
    are left alone and listed in ``skipped``; a blob that cannot be removed is listed in ``failed`` and
    gc goes on with the rest (it never stops half way). Deletion runs in batches under the blob lock, each
    re-reading the references first, so it never races a push that reuses a stored blob (see
    ``Registry._blobs_gone``); the grace period only spares uploads in flight a second upload."""
    try:
        grace = float(grace)
    except (TypeError, ValueError):
        raise InvalidInput(f"--grace must be a number of seconds, got {grace!r}") from None
    if not math.isfinite(grace) or grace < 0:
        raise InvalidInput(f"--grace must be a finite number of seconds >= 0, got {grace}")
    with reg.read() as conn:
        referenced = _referenced(conn)
        legacy = conn.execute(sa.select(sa.func.count()).select_from(t.merged_models)).scalar()
    if legacy and not dry_run:  # merged models were once cached as blobs listed here (now: under the home)
        with reg.write() as conn:
            conn.execute(t.merged_models.delete())
    now = time.time()
    removed, skipped, failed, candidates, kept_recent, freed = [], [], [], [], 0, 0
    for digest, mtime in list(reg.store.iter_blobs()):
        if not _is_digest(digest):
            skipped.append(digest)  # not a blob: never touched
        elif digest not in referenced:
            if now - mtime < grace:
                kept_recent += 1
            else:
                candidates.append(digest)
    for start in range(0, len(candidates), GC_BATCH):
        batch = candidates[start : start + GC_BATCH]
        # under the blob lock, exclusive: a version committed since the scan keeps its blobs, and no commit
        # can pass its own check of these blobs while they are being deleted (Registry._blobs_gone)
        with reg.read() if dry_run else reg.write() as conn:
            if not dry_run:
                blob_lock(conn, exclusive=True)
            now_referenced = _referenced(conn, batch)
            for digest in batch:
                if digest in now_referenced:
                    continue
                size = reg.store.size(digest) or 0
                if not dry_run:
                    try:
                        reg.store.delete(digest)
                    except (AdapterhubError, OSError) as exc:
                        failed.append(
                            {"blob": "sha256:" + digest, "error": str(exc).splitlines()[0] if str(exc) else repr(exc)}
                        )
                        continue
                removed.append("sha256:" + digest)
                freed += size
    temp = 0 if dry_run else reg.store.cleanup_temp(grace)
    return {
        "removed_blobs": len(removed),
        "freed_bytes": freed,
        "removed_temp": temp,
        "kept_recent": kept_recent,
        "grace_seconds": grace,
        "dry_run": dry_run,
        "blobs": removed,
        "skipped": skipped,
        "failed": failed,
    }


def _referenced(conn: sa.Connection, among: list[str] | None = None) -> set[str]:
    """The blobs a version references (of ``among``)."""
    q = sa.select(t.files.c.blob_digest).distinct()
    if among is not None:
        q = q.where(t.files.c.blob_digest.in_(among))
    return {r[0] for r in conn.execute(q)}


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def registry_paths(reg: Registry) -> list[tuple[str, str]]:
    """``(what, path)`` of the local paths that hold ``reg``: its blob store's root and its SQLite file."""
    paths = []
    root = reg.store.local_root()
    if isinstance(root, str) and root and "://" not in root:
        paths.append(("blob store", root))
    url = getattr(getattr(reg, "engine", None), "url", None)
    if url is not None and url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        paths.append(("registry database", url.database))
    return paths


def check_out_registry(out: str, protected: list[tuple[str, str]]) -> None:
    """Refuse (even with --force) an ``out`` that is, contains or is inside one of ``protected`` (the
    registry home, its database, its blob store): replacing ``out`` would delete the registry. Compared
    by identity (``samestat``) too, so symlinks and bind mounts count."""

    def chain(path: str) -> list[str]:  # path and its ancestors, real paths
        here, out_ = os.path.realpath(path), []
        while True:
            out_.append(here)
            parent = os.path.dirname(here)
            if parent == here:
                return out_
            here = parent

    def same(a: str, b: str) -> bool:
        if a == b:
            return True
        try:
            return os.path.samestat(os.stat(a), os.stat(b))
        except OSError:
            return False

    out_abs = os.path.abspath(out)
    out_chain = chain(out_abs)
    for what, p in protected:
        if not p:
            continue
        p_chain = chain(os.path.abspath(p))
        if any(same(out_chain[0], q) for q in p_chain):
            where = "is" if same(out_chain[0], p_chain[0]) else "contains"
        elif any(same(p_chain[0], q) for q in out_chain):
            where = "is inside"
        else:
            continue
        raise InvalidInput(
            f"--out {out_abs} {where} the {what} {os.path.abspath(p)}: writing there would destroy "
            "the registry, even with --force; choose another --out"
        )


def lineage(reg: Registry, ref: str, depth: int = 50) -> dict[str, Any]:
    """The ancestors and descendants of ``ref`` as ``{"root", "nodes", "edges"}``."""
    ln, v, a = t.lineage, t.versions, t.adapters
    with reg.read() as conn:
        root = reg.resolve(ref, conn)
        nodes: dict[str, dict[str, Any]] = {}
        edges: list[dict[str, Any]] = []

        def node(vid: int | None, digest: str | None, ext_ref: str | None) -> str:
            if vid is None:
                key = ext_ref or ("sha256:" + (digest or "?"))
                nodes.setdefault(
                    key,
                    {
                        "id": key,
                        "ref": ext_ref,
                        "digest": "sha256:" + digest if digest else None,
                        "method": None,
                        "external": True,
                    },
                )
                return key
            r = conn.execute(
                sa.select(v.c.number, v.c.digest, v.c.method, v.c.kind, v.c.manifest, a.c.name)
                .join(a, a.c.id == v.c.adapter_id)
                .where(v.c.id == vid)
            ).first()
            key = f"{r.name}:{r.number}"
            if key not in nodes:
                try:  # a manifest edited into something else: verify names it; the graph still draws
                    base = parse_manifest(r.manifest, key).get("base") or {}
                except IntegrityError:
                    base = {}
                nodes[key] = {
                    "id": key,
                    "ref": key,
                    "digest": "sha256:" + r.digest,
                    "method": r.method,
                    "kind": r.kind,
                    "external": False,
                    "base_fingerprint": base.get("fingerprint"),
                    "base_quantization": base.get("quantization"),
                }
            return key

        root_key = node(root["id"], None, None)
        for direction in ("up", "down"):
            frontier, seen = [root["id"]], {root["id"]}
            for _ in range(depth):
                nxt = []
                for vid in frontier:
                    cond = ln.c.child_id == vid if direction == "up" else ln.c.parent_id == vid
                    for e in conn.execute(sa.select(ln).where(cond).order_by(ln.c.position, ln.c.id)):
                        child = node(e.child_id, None, None)
                        parent = node(e.parent_id, e.parent_digest, e.parent_ref)
                        edges.append(
                            {
                                "child": child,
                                "parent": parent,
                                "relation": e.relation,
                                "position": e.position,
                                "details": e.details,
                            }
                        )
                        other = e.parent_id if direction == "up" else e.child_id
                        if other is not None and other not in seen:
                            seen.add(other)
                            nxt.append(other)
                frontier = nxt
                if not frontier:
                    break
    return {"root": root_key, "nodes": list(nodes.values()), "edges": edges}


def render_lineage(graph: dict[str, Any], fmt: str) -> str:
    """Render a lineage graph as ``text``, ``dot`` or ``mermaid``."""
    edges = graph["edges"]
    if fmt == "dot":
        lines = ["digraph lineage {", "  rankdir=BT;"]
        for n in graph["nodes"]:
            label = n["id"] + (f"\\n{n['method']}" if n.get("method") else "")
            style = ', style="bold"' if n["id"] == graph["root"] else (", style=dashed" if n["external"] else "")
            lines.append(f'  "{n["id"]}" [label="{label}"{style}];')
        for e in edges:
            lines.append(f'  "{e["child"]}" -> "{e["parent"]}" [label="{e["relation"]}"];')
        return "\n".join(lines + ["}"])
    if fmt == "mermaid":
        ids = {n["id"]: f"n{i}" for i, n in enumerate(graph["nodes"])}
        lines = ["graph BT"]
        for n in graph["nodes"]:
            lines.append(f'  {ids[n["id"]]}["{n["id"]}"]')
        for e in edges:
            lines.append(f"  {ids[e['child']]} -->|{e['relation']}| {ids[e['parent']]}")
        return "\n".join(lines)
    # text: the root, its ancestors indented below it, then its descendants
    parents: dict[str, list[dict[str, Any]]] = {}
    children: dict[str, list[dict[str, Any]]] = {}
    for e in edges:
        parents.setdefault(e["child"], []).append(e)
        children.setdefault(e["parent"], []).append(e)
    methods = {
        n["id"]: n.get("method")
        + (f", on a {q.get('quant_type') or q.get('quantizer')} base" if (q := n.get("base_quantization")) else "")
        for n in graph["nodes"]
        if n.get("method")
    }
    out = [graph["root"] + (f" ({methods[graph['root']]})" if methods.get(graph["root"]) else "")]

    def walk(key: str, table: dict[str, list[dict[str, Any]]], side: str, indent: str, seen: set[str]) -> None:
        for e in table.get(key, []):
            other = e[side]
            details = {k: v for k, v in (e.get("details") or {}).items() if v is not None}
            extra = " (" + ", ".join(f"{k}={v}" for k, v in details.items()) + ")" if details else ""
            out.append(
                f"{indent}└─ {e['relation']} {other}" + (f" ({methods[other]})" if methods.get(other) else "") + extra
            )
            if other not in seen:
                walk(other, table, side, indent + "   ", seen | {other})

    walk(graph["root"], parents, "parent", "  ", {graph["root"]})
    if children.get(graph["root"]):
        out.append("descendants:")
        for e in children[graph["root"]]:
            out.append(f"  {e['child']} ({e['relation']})")
    return "\n".join(out)


class MaintenanceOps:
    """The maintenance operations as methods of :class:`~adapterhub.registry.registry.Registry` (so a
    database registry and the HTTP client of ``adapterhub serve`` answer the same calls)."""

    def materialize(self, ref: str, out: str, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
        return materialize(self, ref, out, force, progress)  # type: ignore[arg-type]

    def lineage(self, ref: str, depth: int = 50) -> dict[str, Any]:
        return lineage(self, ref, depth)  # type: ignore[arg-type]

    def verify(self, ref: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
        return verify(self, ref, progress)  # type: ignore[arg-type]

    def gc(self, grace: float = DEFAULT_GC_GRACE, dry_run: bool = False) -> dict[str, Any]:
        return gc(self, grace, dry_run)  # type: ignore[arg-type]
