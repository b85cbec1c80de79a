"""Tamper-evident history: versions, alias moves, tags and evaluations, chained by hash.

Every change to those tables appends one row to ``history`` in the same transaction: its kind, its
content as canonical JSON, and ``hash = sha256(prev_hash, kind, content)`` where ``prev_hash`` is the
hash of the row before (a transparency log's chain). :func:`check` (run by ``verify``) recomputes the
chain, which finds an edited, deleted or reordered history row, and replays it against the tables, which
finds a version, alias event, alias, tag or evaluation edited, deleted or inserted behind the registry's
back, naming each. Appends are serialized (:func:`lock`) so the chain never forks.

The chain starts at migration 0004, whose first row (kind ``genesis``) says so; that migration recorded
the rows it found as they were then (0005 the adapter names, kind ``adapter``). What it cannot do without an outside anchor: detect a rewrite of the
whole chain by someone with write access to the database. ``verify`` prints the head hash to record elsewhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import sqlalchemy as sa

from . import schema as t

GENESIS = "0" * 64
_CHAIN_LOCK = 0x6869737479  # "histy"


def lock(conn: sa.Connection) -> None:
    """Serialize appends until the end of the transaction: taken first in every transaction that appends,
    so lock order is the same everywhere (PostgreSQL; on SQLite the write transaction already is)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_CHAIN_LOCK})")


def link(prev: str, kind: str, content: str) -> str:
    return hashlib.sha256(f"{prev}\n{kind}\n{content}".encode("utf-8")).hexdigest()


def _text(content: dict[str, Any]) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def ts(value: Any) -> str | None:
    """A stored timestamp as UTC text with microseconds, the same from SQLite and PostgreSQL."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace(" ", "T"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- what each kind records (from a row of its table) --------------------------------------------------
def adapter(r: Any) -> dict[str, Any]:
    return {"id": r.id, "name": r.name}


def version(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "adapter_id": r.adapter_id,
        "number": r.number,
        "digest": r.digest,
        "kind": r.kind,
        "created_by": r.created_by,
    }


def alias_event(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "adapter_id": r.adapter_id,
        "alias": r.alias,
        "old": r.old_version_id,
        "new": r.new_version_id,
        "actor": r.actor,
        "reason": r.reason,
        "at": ts(r.at),
    }


def evaluation(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "version_id": r.version_id,
        "data_digest": r.data_digest,
        "metrics": r.metrics,
        "details": r.details,
    }


def append(conn: sa.Connection, kind: str, content: dict[str, Any]) -> str:
    """Append one entry (the caller holds :func:`lock`); returns its hash."""
    lock(conn)  # cheap if held already
    prev = conn.execute(sa.select(t.history.c.hash).order_by(t.history.c.id.desc()).limit(1)).scalar() or GENESIS
    text = _text(content)
    h = link(prev, kind, text)
    conn.execute(t.history.insert().values(kind=kind, content=text, prev=prev, hash=h))
    return h


_KINDS = {
    "adapter": (t.adapters, adapter),
    "version": (t.versions, version),
    "alias": (t.alias_events, alias_event),
    "evaluation": (t.evaluations, evaluation),
}


def append_row(conn: sa.Connection, kind: str, row_id: int) -> None:
    """Append the entry of row ``row_id`` of the table of ``kind``, read back as stored (so it compares
    equal to what :func:`check` reads later, on either database)."""
    table, content = _KINDS[kind]
    append(conn, kind, content(conn.execute(sa.select(table).where(table.c.id == row_id)).first()))


def snapshot(conn: sa.Connection, note: str) -> None:
    """The chain's first entries (migration 0004): a ``genesis`` saying where it starts, then every row
    as found, so later edits of older rows are detected too."""
    append(conn, "genesis", {"note": note})
    for r in conn.execute(sa.select(t.versions).order_by(t.versions.c.id)):
        append(conn, "version", version(r))
    for r in conn.execute(sa.select(t.alias_events).order_by(t.alias_events.c.id)):
        append(conn, "alias", alias_event(r))
    for r in conn.execute(sa.select(t.aliases).order_by(t.aliases.c.adapter_id, t.aliases.c.alias)):
        append(conn, "alias.state", {"adapter_id": r.adapter_id, "alias": r.alias, "version_id": r.version_id})
    for r in conn.execute(sa.select(t.tags).order_by(t.tags.c.version_id, t.tags.c.key)):
        append(conn, "tag", {"version_id": r.version_id, "key": r.key, "value": r.value})
    for r in conn.execute(sa.select(t.evaluations).order_by(t.evaluations.c.id)):
        append(conn, "evaluation", evaluation(r))


# -- checking -----------------------------------------------------------------------------------------
def check(conn: sa.Connection) -> tuple[list[dict[str, Any]], str | None]:
    """``(problems, head hash)``: the chain recomputed, then replayed against the tables. Each problem is
    ``{"history": what, "status": why}`` naming the row."""
    problems: list[dict[str, Any]] = []
    names = dict(conn.execute(sa.select(t.adapters.c.id, t.adapters.c.name)).all())
    refs = {
        r.id: f"{names.get(r.adapter_id, '?')}:{r.number}"
        for r in conn.execute(sa.select(t.versions.c.id, t.versions.c.adapter_id, t.versions.c.number))
    }

    def bad(what: str, status: str) -> None:
        problems.append({"history": what, "status": status})

    want: dict[str, dict[Any, Any]] = {"adapter": {}, "version": {}, "alias": {}, "evaluation": {}}
    aliases: dict[tuple[int, str], int | None] = {}
    tags: dict[tuple[int, str], str | None] = {}
    prev = GENESIS
    head = None
    for e in conn.execute(sa.select(t.history).order_by(t.history.c.id)):
        if e.prev != prev:
            bad(
                f"history entry #{e.id}",
                "does not follow the entry before it: an entry was deleted or entries were reordered",
            )
        if link(e.prev, e.kind, e.content) != e.hash:
            bad(f"history entry #{e.id}", "was edited (its hash does not match its content)")
        prev = head = e.hash
        try:
            c = json.loads(e.content)
        except ValueError:
            continue  # reported as edited above
        if e.kind in want:
            want[e.kind][c.get("id")] = c
        if e.kind == "alias":
            aliases[(c["adapter_id"], c["alias"])] = c["new"]
        elif e.kind == "alias.state":
            aliases[(c["adapter_id"], c["alias"])] = c["version_id"]
        elif e.kind == "tag":
            tags[(c["version_id"], c["key"])] = c["value"]
    if head is None:
        return problems, None

    def compare(kind: str, rows: dict[Any, dict[str, Any]], what) -> None:
        for key in sorted(set(rows) | set(want[kind]), key=str):
            have, should = rows.get(key), want[kind].get(key)
            if have != should:
                status = (
                    "was deleted"
                    if have is None
                    else "is not in the history (written behind the registry's back)"
                    if should is None
                    else "was edited: "
                    + ", ".join(k for k in sorted(set(have) | set(should)) if have.get(k) != should.get(k))
                )
                bad(what(have or should), status)

    compare(
        "adapter",
        {r.id: adapter(r) for r in conn.execute(sa.select(t.adapters))},
        lambda c: f"name {c['name']} (adapter #{c['id']})",
    )
    compare(
        "version",
        {r.id: version(r) for r in conn.execute(sa.select(t.versions))},
        lambda c: f"version {refs.get(c['id']) or names.get(c['adapter_id'], '?') + ':' + str(c['number'])}",
    )
    compare(
        "alias",
        {r.id: alias_event(r) for r in conn.execute(sa.select(t.alias_events))},
        lambda c: f"alias event #{c['id']} ({names.get(c['adapter_id'], '?')}@{c['alias']})",
    )
    compare(
        "evaluation",
        {r.id: evaluation(r) for r in conn.execute(sa.select(t.evaluations))},
        lambda c: f"evaluation #{c['id']} of {refs.get(c['version_id'], '?')}",
    )
    now_aliases = {(r.adapter_id, r.alias): r.version_id for r in conn.execute(sa.select(t.aliases))}
    for key in sorted(set(now_aliases) | {k for k, v in aliases.items() if v is not None}, key=str):
        if now_aliases.get(key) != aliases.get(key):
            shown = refs.get(now_aliases.get(key)) or "nothing"
            bad(
                f"alias {names.get(key[0], '?')}@{key[1]}",
                f"points to {shown} but its history says {refs.get(aliases.get(key)) or 'nothing'}",
            )
    now_tags = {(r.version_id, r.key): r.value for r in conn.execute(sa.select(t.tags))}
    for key in sorted(set(now_tags) | {k for k, v in tags.items() if v is not None}, key=str):
        if now_tags.get(key) != tags.get(key):
            bad(
                f"tag {key[1]} of {refs.get(key[0], '?')}",
                f"is {now_tags.get(key)!r} but its history says {tags.get(key)!r}",
            )
    return problems, head
