"""API tokens: scoped, expiring, optionally bound to one namespace. Only a salted hash is stored.

A token reads ``ahub_<key_id>_<secret>``. ``key_id`` is public and finds the row in one indexed lookup;
the secret is checked by comparing ``sha256(salt + secret)`` with the stored hash in constant time. The
secret is shown once, by :func:`create_token`, and never again.

Scopes are ordered; each includes the ones before it:

- ``read``: resolve, list, show, lineage, pull blobs;
- ``write``: + push, tags, evaluations, unprotected aliases;
- ``promote``: + protected aliases (still through the promotion gate; forcing past it needs this scope);
- ``admin``: + tokens, gc, audit log, verify of the whole registry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import InvalidInput, NotFound
from . import schema as t
from .audit import record as audit
from .registry import Registry, actor, iso, now

SCOPES = ("read", "write", "promote", "admin")
TOKEN_PREFIX = "ahub_"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # fullmatch
_NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TOKEN_RE = re.compile(r"ahub_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_DURATION_RE = re.compile(r"(\d{1,6})([mhdw])")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: how stale ``last_used_at`` may be (``token list`` shows it; a write per request would cost too much)
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


class AuthError(InvalidInput):
    """A token is missing, malformed, unknown, expired or revoked (HTTP 401)."""


class Forbidden(InvalidInput):
    """A valid token lacks the scope or namespace a request needs (HTTP 403)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the token's name, scope and namespace (None: all namespaces)."""

    name: str
    scope: str
    namespace: str | None = None

    def has(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def require(self, scope: str, what: str) -> None:
        """Raise :class:`Forbidden` naming the missing scope unless this token has ``scope``."""
        if not self.has(scope):
            raise Forbidden(f"token '{self.name}' has scope '{self.scope}'; {what} needs scope '{scope}'")

    def sees(self, name: str | None) -> bool:
        """Whether ``name`` (``namespace/name``) is inside this token's namespace."""
        return self.namespace is None or (name is not None and name.split("/", 1)[0] == self.namespace)

    def require_name(self, name: str, what: str) -> None:
        if not self.sees(name):
            raise Forbidden(
                f"token '{self.name}' is bound to namespace '{self.namespace}'; {what} {name} is "
                f"in namespace '{name.split('/', 1)[0]}'"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope, "namespace": self.namespace}


def parse_duration(text: str | None) -> dt.timedelta | None:
    """``90d``, ``12h``, ``30m``, ``2w`` -> a timedelta; ``None`` / ``never`` -> no expiry."""
    if text is None or text.strip().lower() in ("", "never", "none"):
        return None
    m = _DURATION_RE.fullmatch(text.strip().lower())
    if not m or int(m.group(1)) == 0:
        raise InvalidInput(f"invalid --expires {text!r}: use a positive number with m, h, d or w (90d, 12h) or 'never'")
    return dt.timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256((salt + secret).encode("ascii")).hexdigest()


def _describe(row: Any) -> dict[str, Any]:
    expires = row.expires_at
    state = "revoked" if row.revoked_at else ("expired" if expires and _aware(expires) <= now() else "active")
    return {
        "name": row.name,
        "scope": row.scope,
        "namespace": row.namespace,
        "created_at": iso(row.created_at),
        "created_by": row.created_by,
        "expires_at": iso(expires),
        "revoked_at": iso(row.revoked_at),
        "last_used_at": iso(row.last_used_at),
        "state": state,
    }


def _aware(value: Any) -> dt.datetime:
    if isinstance(value, str):  # SQLite hands back text in some paths
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def create_token(
    reg: Registry,
    name: str,
    scope: str,
    namespace: str | None = None,
    expires: str | None = None,
    created_by: str | None = None,
) -> dict[str, Any]:
    """Create a token; the returned dict holds the secret (``token``) — the only time it is shown."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(f"invalid token name {name!r}: lowercase letters, digits and ._- (at most 64)")
    if scope not in SCOPES:
        raise InvalidInput(f"invalid scope {scope!r}: one of {', '.join(SCOPES)}")
    if namespace is not None and not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidInput(f"invalid namespace {namespace!r}: lowercase [a-z0-9._-], as in the first part of a name")
    lifetime = parse_duration(expires)
    key_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_hex(16)
    who = created_by or actor()
    created = now()
    with reg.write() as conn:
        exists = conn.execute(
            sa.select(t.tokens.c.id).where(t.tokens.c.name == name, t.tokens.c.revoked_at.is_(None))
        ).first()
        if exists:
            raise InvalidInput(f"a token named '{name}' exists (revoke it first: adapterhub token revoke {name})")
        conn.execute(
            t.tokens.insert().values(
                name=name,
                key_id=key_id,
                salt=salt,
                secret_hash=_hash(salt, secret),
                scope=scope,
                namespace=namespace,
                created_at=created,
                created_by=who,
                expires_at=created + lifetime if lifetime else None,
            )
        )
        audit(
            conn,
            who,
            "token.create",
            name,
            200,
            f"scope={scope} namespace={namespace or '*'} expires={'never' if lifetime is None else expires}",
        )
        row = conn.execute(sa.select(t.tokens).where(t.tokens.c.key_id == key_id)).one()
    return {**_describe(row), "token": f"{TOKEN_PREFIX}{key_id}_{secret}"}


def list_tokens(reg: Registry, include_revoked: bool = False) -> list[dict[str, Any]]:
    q = sa.select(t.tokens).order_by(t.tokens.c.name, t.tokens.c.id)
    if not include_revoked:
        q = q.where(t.tokens.c.revoked_at.is_(None))
    with reg.read() as conn:
        return [_describe(r) for r in conn.execute(q)]


def revoke_token(reg: Registry, name: str, revoked_by: str | None = None) -> dict[str, Any]:
    who = revoked_by or actor()
    with reg.write() as conn:
        row = conn.execute(sa.select(t.tokens).where(t.tokens.c.name == name, t.tokens.c.revoked_at.is_(None))).first()
        if row is None:
            raise NotFound(f"no active token named {name!r}")
        conn.execute(t.tokens.update().where(t.tokens.c.id == row.id).values(revoked_at=now()))
        audit(conn, who, "token.revoke", name, 200, None)
        row = conn.execute(sa.select(t.tokens).where(t.tokens.c.id == row.id)).one()
    return _describe(row)


def authenticate(reg: Registry, token: str | None) -> Principal:
    """The principal a presented token stands for, or :class:`AuthError` (missing, malformed, unknown,
    expired or revoked: one message, so a caller learns nothing about which)."""
    if not token:
        raise AuthError("token missing, expired or revoked (send 'Authorization: Bearer ahub_...')")
    m = _TOKEN_RE.fullmatch(token.strip())
    if not m:
        raise AuthError("token missing, expired or revoked (malformed token)")
    key_id, secret = m.groups()
    with reg.read() as conn:
        row = conn.execute(sa.select(t.tokens).where(t.tokens.c.key_id == key_id)).first()
    # compare even when no row matched, so timing does not tell unknown ids from wrong secrets
    expected = row.secret_hash if row is not None else "0" * 64
    salt = row.salt if row is not None else "0" * 32
    ok = hmac.compare_digest(_hash(salt, secret), expected)
    current = now()
    if row is None or not ok or row.revoked_at is not None or (row.expires_at and _aware(row.expires_at) <= current):
        raise AuthError("token missing, expired or revoked")
    if row.last_used_at is None or current - _aware(row.last_used_at) > LAST_USED_RESOLUTION:
        with reg.write() as conn:  # at most one write per token and minute, not one per request
            conn.execute(t.tokens.update().where(t.tokens.c.id == row.id).values(last_used_at=current))
    return Principal(row.name, row.scope, row.namespace)


def name_of_key(reg: Registry, token: str | None) -> str | None:
    """The name of the token row a presented token's public id points at (even if expired, revoked or its
    secret is wrong) — for the audit log of refused requests; None if there is none."""
    m = _TOKEN_RE.fullmatch((token or "").strip())
    if not m:
        return None
    with reg.read() as conn:
        return conn.execute(sa.select(t.tokens.c.name).where(t.tokens.c.key_id == m.group(1))).scalar()
