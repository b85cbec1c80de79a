"""Engines, transactions and migrations for SQLite and PostgreSQL.

Write transactions are serialised where it matters: on SQLite with ``BEGIN IMMEDIATE`` (one writer at a
time, others wait on the busy timeout); on PostgreSQL with row locks taken by the registry. Migrations
run automatically on first use, under the same lock (SQLite) or an advisory lock (PostgreSQL), so many
processes opening a fresh registry at once migrate it exactly once.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import AdapterhubError

#: the newest migration; checked with one cheap query so that ordinary commands never import alembic
HEAD_REVISION = "0005"
BUSY_TIMEOUT_MS = 120_000
_ADVISORY_LOCK = 0x6164617074  # "adapt"
_BLOB_LOCK = 0x626C6F6273  # "blobs"


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            folder = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise AdapterhubError(f"cannot create registry directory {folder}: {exc.strerror}") from None
        if path and os.path.exists(path) and not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            # a read-only registry (read-only mount or permissions): reads still work. Without a
            # leftover -wal file the database file holds every commit, so it can be opened immutable.
            wal = path + "-wal"
            flags = "mode=ro" if os.path.exists(wal) and os.path.getsize(wal) else "immutable=1"
            url = f"sqlite:///file:{os.path.abspath(path)}?{flags}&uri=true"
        engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys = ON")
            try:
                cur.execute("PRAGMA journal_mode = WAL")
            except Exception:  # a read-only registry: keep whatever mode it has
                pass
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            write = conn.get_execution_options().get("adapterhub_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    except (ImportError, sa.exc.ArgumentError) as exc:
        raise AdapterhubError(f"cannot use database {mask_url(url)}: {exc}") from None


def mask_url(url: str) -> str:
    """The URL with its credentials replaced by ``***`` (for messages and listings)."""
    from .remotes import mask

    return mask(url)


@contextlib.contextmanager
def write_tx(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
    with engine.connect().execution_options(adapterhub_write=True) as conn:
        with conn.begin():
            yield conn


@contextlib.contextmanager
def read_tx(engine: sa.Engine) -> Iterator[sa.Connection]:
    with engine.connect() as conn:
        with conn.begin():
            yield conn


def blob_lock(conn: sa.Connection, exclusive: bool) -> None:
    """Inside a write transaction: the lock that keeps ``gc`` from deleting a blob a commit is about to
    reference. Commits take it shared (they do not wait for each other), gc exclusive, each until the
    end of its transaction. On SQLite the write transaction itself (``BEGIN IMMEDIATE``) excludes every
    other writer, so nothing more is needed."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock{'' if exclusive else '_shared'}({_BLOB_LOCK})")


#: tries of a commit transaction that meets a transient error (a dropped connection, a serialization
#: failure or deadlock, a server restarting); backoff 0.25, 0.5, 1, 2 s between them
DB_ATTEMPTS = 5
_TRANSIENT_STATES = ("40001", "40P01", "57P01", "57P02", "57P03")


def transient(exc: BaseException) -> bool:
    """Whether running the whole transaction again may succeed: the connection was lost (SQLAlchemy
    invalidated it, or SQLSTATE class 08), or PostgreSQL aborted it for serialization, a deadlock or a
    shutdown. Not a constraint violation or a syntax error: those fail the same way again."""
    if not isinstance(exc, sa.exc.DBAPIError) or isinstance(exc, sa.exc.IntegrityError):
        return False
    if exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or ""
    return state in _TRANSIENT_STATES or state.startswith("08")


def commit_failed(exc: BaseException, url: str, what: str, tries: int) -> AdapterhubError:
    """One line for a transaction that failed for good (``tries`` times, or once and not transiently)."""
    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    again = f" after {tries} tries" if tries > 1 else ""
    return AdapterhubError(
        f"the registry database {mask_url(url)} failed {what}{again}: {text}; nothing was "
        "committed (uploaded blobs are kept): run the command again"
    )


def retrying(begin: Callable[[], Any], fn: Callable[[sa.Connection], Any], url: str, what: str) -> Any:
    """``fn(conn)`` in a write transaction from ``begin()``, run again (a fresh transaction, after a backoff)
    on a transient error, up to :data:`DB_ATTEMPTS` times; other errors are raised as they are."""
    for failures in range(1, DB_ATTEMPTS + 1):
        try:
            with begin() as conn:
                return fn(conn)
        except sa.exc.DBAPIError as exc:
            if not transient(exc):
                raise
            if failures == DB_ATTEMPTS:
                raise commit_failed(exc, url, what, failures) from None
            time.sleep(min(4.0, 0.25 * 2 ** (failures - 1)))


def current_revision(conn: sa.Connection) -> str | None:
    try:
        with conn.begin_nested():
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except sa.exc.DBAPIError:
        return None


def ensure_schema(engine: sa.Engine) -> None:
    """Migrate the database to the newest revision if it is not there yet."""
    with read_tx(engine) as conn:
        if current_revision(conn) == HEAD_REVISION:
            return
    upgrade(engine)


def upgrade(engine: sa.Engine, revision: str = "head") -> str | None:
    """Run Alembic migrations up to ``revision`` under a lock; return the revision before."""
    from alembic import command
    from alembic.config import Config

    from .. import migrations

    with write_tx(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
        before = current_revision(conn)
        if before != HEAD_REVISION or revision != "head":
            cfg = Config()
            cfg.set_main_option("script_location", os.path.dirname(migrations.__file__))
            cfg.attributes["connection"] = conn
            check_known_revision(before, cfg)
            command.upgrade(cfg, revision)
    return before


def check_known_revision(revision: str | None, cfg) -> None:
    """Refuse a database whose schema revision this adapterhub has no migration for (one a newer
    adapterhub wrote), with one line saying so, before Alembic fails on it."""
    if revision is None:
        return
    from alembic.script import ScriptDirectory

    try:
        ScriptDirectory.from_config(cfg).get_revision(revision)
        return
    except Exception:  # alembic.util.CommandError and its relatives: an unknown revision
        pass
    if revision.isdigit() and HEAD_REVISION.isdigit() and int(revision) > int(HEAD_REVISION):
        raise AdapterhubError(
            f"this registry was written by a newer adapterhub (schema {revision}; this one "
            f"knows up to {HEAD_REVISION}); upgrade adapterhub"
        )
    raise AdapterhubError(
        f"this registry has an unknown schema revision {revision!r} (this adapterhub knows up "
        f"to {HEAD_REVISION}); it was written by another adapterhub: upgrade adapterhub"
    )
