"""The audit log: who did what to the registry, and when, including refused requests.

The server writes one row per write request (push, alias move, tag, evaluation, token change, gc) and per
refused request (401/403), with the token's name as the actor. Token changes made directly against the
database (``adapterhub token create``) are logged too, with the local user as the actor. A secret never
reaches this table: callers pass names and refs only.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from . import schema as t
from .records import iso, now

#: longest detail text kept per row (an error message, a summary of what changed)
MAX_DETAIL = 2000


def record(
    conn: sa.Connection,
    actor: str | None,
    action: str,
    target: str | None,
    status: int,
    detail: str | None,
    client: str | None = None,
) -> None:
    """Append one event inside the caller's transaction (so it commits, or not, with the change)."""
    conn.execute(
        t.audit_events.insert().values(
            at=now(),
            actor=(actor or None) and actor[:256],
            action=action[:64],
            target=(target or None) and target[:512],
            status=int(status),
            detail=(detail or None) and detail[:MAX_DETAIL],
            client=(client or None) and client[:128],
        )
    )


def list_events(
    conn: sa.Connection,
    limit: int = 100,
    actor: str | None = None,
    action: str | None = None,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """The newest ``limit`` events (optionally of one actor / action, older than ``before_id``), newest first."""
    e = t.audit_events
    q = sa.select(e).order_by(e.c.id.desc()).limit(max(1, min(int(limit), 10_000)))
    if actor:
        q = q.where(e.c.actor == actor)
    if action:
        q = q.where(e.c.action == action)
    if before_id:
        q = q.where(e.c.id < int(before_id))
    return [
        {
            "id": r.id,
            "at": iso(r.at),
            "actor": r.actor,
            "action": r.action,
            "target": r.target,
            "status": r.status,
            "detail": r.detail,
            "client": r.client,
        }
        for r in conn.execute(q)
    ]
