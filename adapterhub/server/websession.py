"""Web UI sessions: a signed cookie naming the token, checked against the tokens table on every request.

The cookie holds ``<key_id>.<expiry>.<hmac>``: the token's public id (never its secret) and when the session
ends, signed with the server's secret. Every request re-reads the token's row, so revoking or expiring the
token ends its sessions at once, and several workers (or machines sharing ``ADAPTERHUB_SERVER_SECRET``) accept
each other's cookies without shared memory. The cookie is HttpOnly and SameSite=Strict; the login and logout
forms also carry a CSRF token (double submit: a random cookie echoed in a hidden field).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time

import sqlalchemy as sa

from .. import config
from ..registry import schema as t
from ..registry.records import now
from ..registry.tokens import Principal, _aware

SESSION_COOKIE = "ahub_session"
CSRF_COOKIE = "ahub_csrf"
#: how long a sign-in lasts (the token's own expiry and revocation end it sooner)
SESSION_SECONDS = 12 * 3600
SECRET_FILE = "server-secret"
_COOKIE_RE = re.compile(r"([0-9a-f]{16})\.([0-9]{1,12})\.([0-9a-f]{64})")


def server_secret(home: str | None = None) -> bytes:
    """``$ADAPTERHUB_SERVER_SECRET``, else the random secret in ``HOME/server-secret`` (created once, 0600,
    atomically, so concurrent workers agree on it)."""
    env = os.environ.get("ADAPTERHUB_SERVER_SECRET")
    if env:
        return hashlib.sha256(env.encode()).digest()
    home = config.home_dir(home)
    path = os.path.join(home, SECRET_FILE)
    if not os.path.exists(path):
        os.makedirs(home, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".server-secret-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)  # fails if another worker made it first: theirs wins
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    with open(path, encoding="ascii") as f:
        return bytes.fromhex(f.read().strip())


def _mac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode("ascii"), hashlib.sha256).hexdigest()


def key_id_of(token: str) -> str:
    """The public id of a (valid) token ``ahub_<key_id>_<secret>``."""
    return token.strip().split("_")[1]


def make_session(secret: bytes, key_id: str, seconds: int = SESSION_SECONDS) -> str:
    expiry = int(time.time()) + seconds
    return f"{key_id}.{expiry}.{_mac(secret, f'session.{key_id}.{expiry}')}"


def session_principal(reg, secret: bytes, cookie: str | None) -> Principal | None:
    """Who the session cookie stands for, or None (absent, forged, expired, or its token revoked/expired)."""
    m = _COOKIE_RE.fullmatch(cookie or "")
    if m is None:
        return None
    key_id, expiry, mac = m.groups()
    if not hmac.compare_digest(_mac(secret, f"session.{key_id}.{expiry}"), mac) or int(expiry) <= time.time():
        return None
    with reg.read() as conn:
        row = conn.execute(sa.select(t.tokens).where(t.tokens.c.key_id == key_id)).first()
    if row is None or row.revoked_at is not None or (row.expires_at and _aware(row.expires_at) <= now()):
        return None
    return Principal(row.name, row.scope, row.namespace)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(cookie: str | None, field: str | None) -> bool:
    return bool(cookie) and bool(field) and hmac.compare_digest(cookie or "", field or "")
