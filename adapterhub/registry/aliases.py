"""Aliases, tags and evaluations of versions: the mutable annotations of an immutable version.

A mixin of :class:`~adapterhub.registry.registry.Registry` (it uses ``self.read()``, ``self.write()``
and ``self.resolve()``). Every alias move is recorded in ``alias_events`` with its actor and reason, and
every change in the hash-chained ``history`` (:mod:`.history`).
"""

from __future__ import annotations

from typing import Any, Iterable

import sqlalchemy as sa

from ..errors import InvalidInput, NotFound
from . import history
from . import schema as t
from .records import _non_finite, actor, iso, now, validate_tag_key
from .refs import validate_alias, validate_name


class AliasOps:
    """Aliases (``production``), tags and evaluations."""

    label: str

    def move_alias(
        self,
        name: str,
        alias: str,
        version: str,
        reason: str | None = None,
        force: bool = False,
        gate: bool | None = None,
        by: str | None = None,
    ) -> dict[str, Any]:
        """Move ``name@alias`` to ``version`` through the promotion gate when the alias is protected (see
        :mod:`adapterhub.registry.gates`); what every command and the server call."""
        from .gates import set_alias

        return set_alias(self, name, alias, version, reason=reason, force=force, gate=gate, by=by)

    def set_alias(
        self, name: str, alias: str, version: str, reason: str | None = None, guard: Any = None, by: str | None = None
    ) -> dict[str, Any]:
        """Point ``name@alias`` at ``version`` (a number or any ref of the same name)."""
        validate_name(name)
        validate_alias(alias)
        ref = f"{name}:{version}" if str(version).isdigit() else str(version)

        def move(conn):
            v = self.resolve(ref, conn)
            if v["name"] != name:
                raise InvalidInput(f"{ref} is a version of {v['name']}, not of {name}")
            if guard:
                guard(conn, self, name, alias, v["id"])
            return v, self._move_alias(conn, v["adapter_id"], alias, v["id"], by or actor(), reason)

        v, old = self.write_retrying(f"moving {name}@{alias}", move)
        return {
            "name": name,
            "alias": alias,
            "version": v["number"],
            "ref": v["ref"],
            "digest": "sha256:" + v["digest"],
            "previous": old,
        }

    def _move_alias(
        self, conn, adapter_id: int, alias: str, version_id: int | None, who: str, reason: str | None
    ) -> int | None:
        al = t.aliases
        history.lock(conn)  # before any row lock (see history.lock)
        cur = conn.execute(
            sa.select(al.c.version_id).where(al.c.adapter_id == adapter_id, al.c.alias == alias)
        ).scalar()
        if cur == version_id:
            return self._number(conn, cur)
        if version_id is None:
            conn.execute(al.delete().where(al.c.adapter_id == adapter_id, al.c.alias == alias))
        elif cur is None:
            conn.execute(
                al.insert().values(adapter_id=adapter_id, alias=alias, version_id=version_id, updated_at=now())
            )
        else:
            conn.execute(
                al.update()
                .where(al.c.adapter_id == adapter_id, al.c.alias == alias)
                .values(version_id=version_id, updated_at=now())
            )
        history.append_row(
            conn,
            "alias",
            conn.execute(
                t.alias_events.insert().values(
                    adapter_id=adapter_id,
                    alias=alias,
                    old_version_id=cur,
                    new_version_id=version_id,
                    actor=who,
                    reason=reason,
                    at=now(),
                )
            ).inserted_primary_key[0],
        )
        return self._number(conn, cur)

    @staticmethod
    def _number(conn, version_id: int | None) -> int | None:
        if version_id is None:
            return None
        return conn.execute(sa.select(t.versions.c.number).where(t.versions.c.id == version_id)).scalar()

    def remove_alias(self, name: str, alias: str, reason: str | None = None, by: str | None = None) -> dict[str, Any]:
        validate_name(name)
        validate_alias(alias)

        def remove(conn):
            adapter_id = self._adapter_id(conn, name)
            cur = conn.execute(
                sa.select(t.aliases.c.version_id).where(
                    t.aliases.c.adapter_id == adapter_id, t.aliases.c.alias == alias
                )
            ).scalar()
            if cur is None:
                raise NotFound(f"{name} has no alias '{alias}'")
            return self._move_alias(conn, adapter_id, alias, None, by or actor(), reason)

        old = self.write_retrying(f"removing {name}@{alias}", remove)
        return {"name": name, "alias": alias, "removed": True, "previous": old}

    def alias_history(self, name: str, alias: str) -> list[dict[str, Any]]:
        validate_name(name)
        validate_alias(alias)
        e = t.alias_events
        with self.read() as conn:
            adapter_id = self._adapter_id(conn, name)
            rows = conn.execute(
                sa.select(e).where(e.c.adapter_id == adapter_id, e.c.alias == alias).order_by(e.c.id)
            ).all()
            if not rows:
                raise NotFound(f"{name} has no history for alias '{alias}'")
            return [
                {
                    "at": iso(r.at),
                    "actor": r.actor,
                    "from": self._number(conn, r.old_version_id),
                    "to": self._number(conn, r.new_version_id),
                    "reason": r.reason,
                }
                for r in rows
            ]

    def set_tags(self, ref: str, set_: dict[str, str], remove: Iterable[str] = ()) -> dict[str, str]:
        def tag(conn):
            history.lock(conn)
            v = self.resolve(ref, conn)
            for k, val in set_.items():
                self._set_tag(conn, v["id"], validate_tag_key(k), str(val))
            for k in remove:
                if conn.execute(t.tags.delete().where(t.tags.c.version_id == v["id"], t.tags.c.key == k)).rowcount:
                    history.append(conn, "tag", {"version_id": v["id"], "key": k, "value": None})
            return {
                k: val
                for k, val in conn.execute(
                    sa.select(t.tags.c.key, t.tags.c.value).where(t.tags.c.version_id == v["id"]).order_by(t.tags.c.key)
                )
            }

        return self.write_retrying(f"tagging {ref}", tag)

    @staticmethod
    def _set_tag(conn, version_id: int, key: str, value: str) -> None:
        conn.execute(t.tags.delete().where(t.tags.c.version_id == version_id, t.tags.c.key == key))
        conn.execute(t.tags.insert().values(version_id=version_id, key=key, value=value))
        history.append(conn, "tag", {"version_id": version_id, "key": key, "value": value})

    def add_evaluation(
        self, ref: str, data_digest: str, metrics: dict[str, Any], details: dict[str, Any] | None = None
    ) -> None:
        bad = _non_finite(metrics, "metrics") + _non_finite(details, "details")
        if bad:
            raise InvalidInput(
                f"refusing to store an evaluation of {ref} with non-finite values ({', '.join(bad[:5])}): "
                "the adapter produces NaN/inf"
            )

        def store(conn):
            history.lock(conn)
            v = self.resolve(ref, conn)
            history.append_row(
                conn,
                "evaluation",
                conn.execute(
                    t.evaluations.insert().values(
                        version_id=v["id"],
                        data_digest=data_digest.removeprefix("sha256:"),
                        metrics=metrics,
                        details=details,
                        created_at=now(),
                    )
                ).inserted_primary_key[0],
            )

        self.write_retrying(f"storing an evaluation of {ref}", store)
