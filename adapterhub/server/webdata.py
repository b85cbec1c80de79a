"""What the web UI's pages show, read with bounded queries: one page of rows at a time (``LIMIT``/``OFFSET``),
the token's namespace applied inside SQL, so a namespace-bound session never loads another namespace's rows
and a name with 10,000 versions costs the same as one with ten."""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa

from ..errors import IntegrityError, NotFound
from ..registry import schema as t
from ..registry.bundle import parse_manifest
from ..registry.entities import VersionInfo
from ..registry.records import finite, iso
from ..registry.tokens import Principal

#: rows per page of the home and name pages
PAGE = 50


def in_namespace(q: Any, column: Any, who: Principal) -> Any:
    """``q`` limited to names inside ``who``'s namespace (unchanged for an unbound token)."""
    if who.namespace is None:
        return q
    return q.where(column.startswith(who.namespace + "/", autoescape=True))


def pages(total: int, page: int) -> dict[str, int]:
    last = max(1, math.ceil(total / PAGE))
    return {"page": min(max(1, page), last), "pages": last, "total": total}


def key_metric(metrics: dict[str, Any] | None, details: dict[str, Any] | None) -> dict[str, Any] | None:
    """The evaluation's primary metric (``accuracy`` or ``loss``, as ``eval`` recorded it) with its gain
    over the base model, or None when it has none."""
    metrics, details = finite(metrics or {}), details or {}
    primary = details.get("primary_metric") or next((k for k in ("accuracy", "loss") if k in metrics), None)
    value = metrics.get(primary) if primary else None
    if not isinstance(value, (int, float)):
        return None
    higher = details.get("higher_is_better", primary != "loss")
    return {"metric": primary, "value": value, "gain": metrics.get(f"gain_{primary}"), "higher": bool(higher)}


def best(evals: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best of several :func:`key_metric` results (by each one's own direction)."""
    scored = [e for e in evals if e]
    if not scored:
        return None
    return max(scored, key=lambda e: e["value"] if e["higher"] else -e["value"])


def _evaluations(conn: sa.Connection, where: Any) -> list[Any]:
    v, e = t.versions, t.evaluations
    return conn.execute(
        sa.select(v.c.adapter_id, v.c.id, v.c.number, e.c.metrics, e.c.details)
        .join(v, v.c.id == e.c.version_id)
        .where(where)
        .order_by(e.c.id)
    ).all()


def _aliases(conn: sa.Connection, where: Any) -> list[Any]:
    al, v = t.aliases, t.versions
    return conn.execute(
        sa.select(al.c.adapter_id, al.c.alias, al.c.version_id, v.c.number)
        .join(v, v.c.id == al.c.version_id)
        .where(where)
        .order_by(al.c.alias)
    ).all()


def search(reg: Any, who: Principal, q: str = "", method: str = "", base: str = "", page: int = 1) -> dict[str, Any]:
    """The home page: each visible name with its latest version, method, aliases and best evaluation;
    ``q`` matches names and tag keys/values (of any version), ``method``/``base`` the latest version."""
    a, v, tg = t.adapters, t.versions, t.tags
    latest = sa.select(v.c.adapter_id, sa.func.max(v.c.number).label("n")).group_by(v.c.adapter_id).subquery()
    query = (
        sa.select(a.c.id, a.c.name, v.c.number, v.c.method, v.c.kind, v.c.base_fingerprint, v.c.created_at)
        .join(latest, latest.c.adapter_id == a.c.id)
        .join(v, sa.and_(v.c.adapter_id == a.c.id, v.c.number == latest.c.n))
    )
    query = in_namespace(query, a.c.name, who)
    if q.strip():
        pattern = "%" + q.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        v2 = v.alias("v2")
        tagged = sa.exists(
            sa.select(1)
            .select_from(tg.join(v2, v2.c.id == tg.c.version_id))
            .where(
                v2.c.adapter_id == a.c.id,
                sa.or_(
                    sa.func.lower(tg.c.key).like(pattern, escape="\\"),
                    sa.func.lower(tg.c.value).like(pattern, escape="\\"),
                ),
            )
        )
        query = query.where(sa.or_(sa.func.lower(a.c.name).like(pattern, escape="\\"), tagged))
    if method:
        query = query.where(v.c.method == method)
    if base.strip():
        fp = base.strip().lower()
        query = query.where(
            v.c.base_fingerprint.startswith(fp if fp.startswith("sha256:") else "sha256:" + fp, autoescape=True)
        )
    with reg.read() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar() or 0
        nav = pages(total, page)
        rows = conn.execute(query.order_by(a.c.name).limit(PAGE).offset((nav["page"] - 1) * PAGE)).all()
        ids = [r.id for r in rows]
        aliases: dict[int, list[tuple[str, int]]] = {}
        evals: dict[int, list[dict[str, Any]]] = {}
        if ids:
            for r in _aliases(conn, t.aliases.c.adapter_id.in_(ids)):
                aliases.setdefault(r.adapter_id, []).append((r.alias, r.number))
            for r in _evaluations(conn, v.c.adapter_id.in_(ids)):
                k = key_metric(r.metrics, r.details)
                if k:
                    evals.setdefault(r.adapter_id, []).append({**k, "version": r.number})
        methods = sorted(
            m
            for (m,) in conn.execute(
                in_namespace(
                    sa.select(v.c.method).join(a, a.c.id == v.c.adapter_id).where(v.c.method.is_not(None)).distinct(),
                    a.c.name,
                    who,
                )
            )
        )
        spaces: dict[str, int] = {}
        for (name,) in conn.execute(in_namespace(sa.select(a.c.name), a.c.name, who)):
            spaces[name.split("/", 1)[0]] = spaces.get(name.split("/", 1)[0], 0) + 1
    out = [
        {
            "name": r.name,
            "version": r.number,
            "method": r.method,
            "kind": r.kind,
            "base_fingerprint": r.base_fingerprint,
            "created_at": iso(r.created_at),
            "aliases": aliases.get(r.id, []),
            "best": best(evals.get(r.id, [])),
        }
        for r in rows
    ]
    return {"rows": out, "methods": methods, "namespaces": sorted(spaces.items()), **nav}


def name_versions(reg: Any, who: Principal, name: str, page: int = 1) -> dict[str, Any]:
    """One page of ``name``'s versions, newest first, with task, data check, key evaluation and aliases."""
    a, v, b = t.adapters, t.versions, t.base_models
    if not who.sees(name):
        raise NotFound(f"no adapter named '{name}'")
    with reg.read() as conn:
        adapter_id = conn.execute(sa.select(a.c.id).where(a.c.name == name)).scalar()
        if adapter_id is None:
            raise NotFound(f"no adapter named '{name}'")
        total = conn.execute(sa.select(sa.func.count()).where(v.c.adapter_id == adapter_id)).scalar() or 0
        nav = pages(total, page)
        rows = conn.execute(
            sa.select(
                v.c.id,
                v.c.number,
                v.c.kind,
                v.c.method,
                v.c.base_fingerprint,
                v.c.manifest,
                v.c.created_by,
                v.c.created_at,
                v.c.size,
            )
            .where(v.c.adapter_id == adapter_id)
            .order_by(v.c.number.desc())
            .limit(PAGE)
            .offset((nav["page"] - 1) * PAGE)
        ).all()
        ids = [r.id for r in rows]
        aliases: dict[int, list[str]] = {}
        for r in _aliases(conn, t.aliases.c.adapter_id == adapter_id):
            aliases.setdefault(r.version_id, []).append(r.alias)
        evals: dict[int, dict[str, Any]] = {}
        for r in _evaluations(conn, v.c.id.in_(ids)) if ids else []:
            evals[r.id] = key_metric(r.metrics, r.details) or evals.get(r.id)  # the newest one wins
        fps = {r.base_fingerprint for r in rows} - {None}
        bases = dict(conn.execute(sa.select(b.c.fingerprint, b.c.name).where(b.c.fingerprint.in_(fps)))) if fps else {}
    out = []
    for r in rows:
        try:
            manifest = parse_manifest(r.manifest, f"{name}:{r.number}")
        except IntegrityError:  # a database edited behind the registry's back: say so on this row, list the rest
            manifest = {"data_check": {"status": "manifest unreadable: verify this version"}}
        out.append(
            {
                "version": r.number,
                "kind": r.kind,
                "method": r.method,
                "task": manifest.get("task"),
                "base_fingerprint": r.base_fingerprint,
                "base_name": bases.get(r.base_fingerprint),
                "data_check": (manifest.get("data_check") or {}).get("status"),
                "evaluation": evals.get(r.id),
                "aliases": aliases.get(r.id, []),
                "created_by": r.created_by,
                "created_at": iso(r.created_at),
                "size": r.size,
            }
        )
    return {"name": name, "rows": out, "aliases": sorted({al for names in aliases.values() for al in names}), **nav}


def alias_events_of(reg: Any, version: VersionInfo) -> list[dict[str, Any]]:
    """Every move of an alias of this version's name to or from it, oldest first."""
    e, v = t.alias_events, t.versions
    old, new = v.alias("old"), v.alias("new")
    with reg.read() as conn:
        vid = _row(conn, version)
        rows = conn.execute(
            sa.select(e, old.c.number.label("old_number"), new.c.number.label("new_number"))
            .outerjoin(old, old.c.id == e.c.old_version_id)
            .outerjoin(new, new.c.id == e.c.new_version_id)
            .where(e.c.adapter_id == vid.adapter_id, sa.or_(e.c.old_version_id == vid.id, e.c.new_version_id == vid.id))
            .order_by(e.c.id)
        ).all()
    return [
        {
            "alias": r.alias,
            "at": iso(r.at),
            "actor": r.actor,
            "from": r.old_number,
            "to": r.new_number,
            "reason": r.reason,
            "forced": is_forced(r.reason),
        }
        for r in rows
    ]


def _row(conn: sa.Connection, version: VersionInfo) -> Any:
    """The versions row (id, adapter_id) of a shown version, by name and number: one digest may be a version
    of several names."""
    v, a = t.versions, t.adapters
    return conn.execute(
        sa.select(v.c.id, v.c.adapter_id)
        .join(a, a.c.id == v.c.adapter_id)
        .where(a.c.name == version.name, v.c.number == version.version)
    ).one()


def gate_status(reg: Any, version: VersionInfo) -> list[dict[str, Any]]:
    """For each protected alias: whether it points here, else why the promotion gate would refuse to move it
    here (empty: it would pass) — the gate's own check, read-only."""
    from ..registry.gates import check_promotion, protected_aliases

    with reg.read() as conn:
        vid = _row(conn, version).id
        return [
            {
                "alias": alias,
                "holds": alias in version.aliases,
                "reasons": [] if alias in version.aliases else check_promotion(conn, version.name, alias, vid),
            }
            for alias in sorted(protected_aliases())
        ]


def is_forced(reason: str | None) -> bool:
    """Whether an alias move went past the promotion gate (``set_alias`` records that in the reason)."""
    return bool(reason) and "[forced past the promotion gate" in reason


def visible_lineage(reg: Any, who: Principal, ref: str, depth: int = 50) -> dict[str, Any]:
    """The lineage graph of ``ref`` for the UI: a node outside ``who``'s namespace keeps neither its name nor
    its digest (one anonymous node per hidden version)."""
    from ..registry.maintenance import lineage

    graph = lineage(reg, ref, depth=depth)
    rename: dict[str, str] = {}
    nodes = []
    for n in graph["nodes"]:
        if n.get("ref") and not n["external"] and not who.sees(n["ref"].split(":", 1)[0]):
            rename[n["id"]] = f"hidden-{len(rename) + 1}"
            nodes.append(
                {"id": rename[n["id"]], "ref": None, "digest": None, "method": None, "external": True, "hidden": True}
            )
        else:
            nodes.append(n)
    edges = [
        {**e, "child": rename.get(e["child"], e["child"]), "parent": rename.get(e["parent"], e["parent"])}
        for e in graph["edges"]
    ]
    return {"root": graph["root"], "nodes": nodes, "edges": edges}


def edge_label(e: dict[str, Any]) -> str:
    """``combined_from w=0.5``, ``composed_of #2`` ...: the relation and what makes the edge specific."""
    details = e.get("details") or {}
    label = e["relation"]
    if details.get("weight") is not None:
        weight = details["weight"]
        label += f" w={weight:g}" if isinstance(weight, (int, float)) else f" w={weight}"
    if e["relation"] == "composed_of":
        label += f" #{int(details.get('position', e.get('position') or 0)) + 1}"
    return label
