"""Reliability figures for the README: load held, faults survived, tampering detected, bad inputs refused.

    python bench/reliability.py [--procs 16 --pushes 5]     # the README's figures: --procs 32 --pushes 10

Real parts only: PostgreSQL (``ADAPTERHUB_TEST_PG``, default ``postgresql://postgres@127.0.0.1:5432/test``;
a scratch database is created and dropped), moto's S3 server over HTTP, SQLite + the file store, and the
TCP proxy of the tests (``tests/tcpproxy.py``) in front of PostgreSQL and S3 to cut and stall them. Prints
one Markdown table; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import sqlalchemy as sa  # noqa: E402
from s3server import MotoS3Server, aws_test_env  # noqa: E402
from tcpproxy import TcpProxy  # noqa: E402

PG_ADMIN = os.environ.get("ADAPTERHUB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PUSHER = r"""
import os, sys
from adapterhub.registry.blobs import hash_file
from adapterhub.registry.records import LocalFile
from adapterhub.registry.registry import Registry
from adapterhub_s3 import S3Store
reg = Registry(sys.argv[1], S3Store.from_url(sys.argv[2]))
for k in range(int(sys.argv[4])):
    path = os.path.join(sys.argv[5], f"{sys.argv[3]}-{k}")
    open(path, "wb").write(os.urandom(4096))
    d, n = hash_file(path)
    reg.publish("acme/load", {"method": "lora"}, [LocalFile("w.bin", path, d, n)], tags={"proc": sys.argv[3]})
"""
ROWS: list[tuple[str, str, bool]] = []


def row(what: str, figure: str, ok: bool) -> None:
    ROWS.append((what, figure, ok))
    print(f"{'ok ' if ok else 'BAD'} {what}: {figure}", file=sys.stderr, flush=True)


def pg_database() -> str:
    import psycopg

    name = "ah_rel_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_url(name: str, address: str | None = None) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0]
    return (base.replace("127.0.0.1:5432", address) if address else base) + "/" + name


def stored(reg, work: str, content: bytes, path: str = "w.bin"):
    from adapterhub.registry.blobs import hash_file
    from adapterhub.registry.records import LocalFile

    p = os.path.join(work, uuid.uuid4().hex)
    with open(p, "wb") as f:
        f.write(content)
    d, n = hash_file(p)
    return LocalFile(path, p, d, n)


def load(s3: MotoS3Server, work: str, procs: int, pushes: int) -> None:
    from adapterhub_s3 import S3Store

    from adapterhub.registry.registry import Registry

    db = pg_database()
    try:
        store = f"s3://{s3.new_bucket()}/a?endpoint_url={s3.endpoint_url}"
        Registry(pg_url(db), S3Store.from_url(store)).ready().close()
        start = time.monotonic()
        ps = [
            subprocess.Popen(
                [sys.executable, "-c", PUSHER, pg_url(db), store, str(i), str(pushes), work],
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(procs)
        ]
        errors = sum(p.wait() != 0 for p in ps)
        took = time.monotonic() - start
        reg = Registry(pg_url(db), S3Store.from_url(store))
        numbers = [v.version for v in reg.list("acme/load")]
        report = reg.verify()
        reg.close()
        want = list(range(1, procs * pushes + 1))
        row(
            f"{procs} processes x {pushes} pushes to one name (PostgreSQL + S3)",
            f"{len(numbers)} versions, contiguous: {numbers == want}, {errors} errors, verify "
            f"{'ok' if report['ok'] else 'FAILED'} (history chain included), {took:.1f} s",
            numbers == want and not errors and report["ok"],
        )
    finally:
        drop(db)


def faults(s3: MotoS3Server, work: str) -> None:
    from adapterhub_file import FileStore
    from adapterhub_s3 import S3Store

    from adapterhub.errors import AdapterhubError, IntegrityError
    from adapterhub.registry.registry import Registry

    db = pg_database()
    try:
        # gc between a push's existence check and its commit, on both backends
        for label, reg in (
            ("SQLite + files", Registry(f"sqlite:///{work}/gc.db", FileStore(f"{work}/gcstore"))),
            (
                "PostgreSQL + S3",
                Registry(pg_url(db), S3Store.from_url(f"s3://{s3.new_bucket()}/a?endpoint_url={s3.endpoint_url}")),
            ),
        ):
            f = stored(reg.ready(), work, os.urandom(2048))
            reg.store.put(f.sha256, f.source, f.size)  # a killed push's leftover, reused by the next push
            ran = []
            reg.publish("acme/gc", {}, [f], progress=lambda n: ran or ran.append(reg.gc(grace=0)))
            ok = ran[0]["removed_blobs"] == 1 and reg.verify()["ok"]
            row(f"gc deletes a reused blob mid-push ({label})", "push re-uploaded it; verify ok" if ok else "LOST", ok)
            reg.close()
        # PostgreSQL connection reset inside the commit, twice
        with TcpProxy("127.0.0.1", 5432) as proxy:
            reg = Registry(pg_url(db, proxy.address), FileStore(f"{work}/cutstore")).ready()
            cuts = []

            @sa.event.listens_for(reg.engine, "before_cursor_execute")
            def cut(conn, cursor, sql, *args):
                if sql.lstrip().upper().startswith("INSERT INTO VERSIONS") and len(cuts) < 2:
                    cuts.append(1)
                    proxy.cut()

            pub = reg.publish("acme/cut", {}, [stored(reg, work, b"x" * 1000)])
            row(
                "PostgreSQL connection reset inside the commit, 2 times",
                f"committed {pub.ref} on try 3",
                pub.created and len(cuts) == 2,
            )
            reg.close()
        # S3: stalled endpoint, and a 10-byte row backed by an 8 MiB object
        os.environ["ADAPTERHUB_S3_STALL_TIMEOUT"] = "3"
        host, port = s3.endpoint_url.rsplit("/", 1)[-1].rsplit(":", 1)
        with TcpProxy(host, int(port)) as proxy:
            bucket = s3.new_bucket()
            reg = Registry(
                f"sqlite:///{work}/s3.db", S3Store.from_url(f"s3://{bucket}/a?endpoint_url=http://{proxy.address}")
            ).ready()
            f = stored(reg, work, b"0123456789")
            reg.publish("acme/s3", {}, [f])
            s3.client().put_object(
                Bucket=bucket, Key=f"a/blobs/sha256/{f.sha256[:2]}/{f.sha256[2:]}", Body=b"y" * (8 << 20)
            )
            before = proxy.bytes_forwarded
            try:
                reg.materialize("acme/s3:1", f"{work}/big")
                got = "not refused"
            except IntegrityError:
                got = f"refused after {proxy.bytes_forwarded - before} bytes on the wire"
            row(
                "10-byte row backed by an 8 MiB S3 object",
                got,
                got.startswith("refused") and proxy.bytes_forwarded - before < 65536,
            )
            proxy.stall()
            start = time.monotonic()
            try:
                reg.has_blob(f.sha256)
                msg = "no error"
            except AdapterhubError as exc:
                msg = str(exc)
            took = time.monotonic() - start
            row(
                "stalled S3 endpoint, ADAPTERHUB_S3_STALL_TIMEOUT=3",
                f'failed after {took:.1f} s: "{msg[:70]}..."',
                "made no progress" in msg and took < 4.5,
            )
            proxy.resume()
            reg.close()
    finally:
        os.environ.pop("ADAPTERHUB_S3_STALL_TIMEOUT", None)
        drop(db)


TAMPER = [
    (
        "point a file row at another version's blob",
        "UPDATE files SET blob_digest = (SELECT blob_digest FROM files f "
        "JOIN versions v ON v.id = f.version_id WHERE v.number = 2) WHERE version_id = (SELECT id FROM versions WHERE number = 1)",
    ),
    ("edit a stored manifest", "UPDATE versions SET manifest = replace(manifest, 'lora', 'LORA') WHERE number = 1"),
    (
        "move an alias and erase its history",
        "UPDATE aliases SET version_id = (SELECT id FROM versions WHERE number = 1); DELETE FROM alias_events",
    ),
    ("edit a tag", "UPDATE tags SET value = 'forged'"),
    ("edit a lineage row", "UPDATE lineage SET relation = 'combined_from'"),
    ("delete an evaluation", "DELETE FROM evaluations"),
    ("edit who created a version", "UPDATE versions SET created_by = 'mallory'"),
    ("rename an adapter (moves its versions)", "UPDATE adapters SET name = 'acme/other'"),
    ("edit a history entry", "UPDATE history SET content = replace(content, '\"number\":1', '\"number\":9')"),
    ("delete a history entry", "DELETE FROM history WHERE id = 3"),
    (
        "swap two history entries",
        "UPDATE history SET id = -id WHERE id IN (2, 3); UPDATE history SET id = 5 - (-id) WHERE id IN (-2, -3)",
    ),
]


def tampering(work: str) -> None:
    from adapterhub_file import FileStore

    from adapterhub.registry.registry import ParentSpec, Registry

    caught = 0
    for i, (what, sql) in enumerate(TAMPER):
        reg = Registry(f"sqlite:///{work}/t{i}.db", FileStore(f"{work}/t{i}")).ready()
        for k in (1, 2):
            reg.publish(
                "acme/t",
                {"method": "lora"},
                [stored(reg, work, os.urandom(512))],
                tags={"team": "nlp"},
                parents=[ParentSpec("trained_from", ref="acme/t:1")] if k == 2 else [],
            )
        reg.add_evaluation("acme/t:2", "sha256:" + "e" * 64, {"accuracy": 0.9})
        reg.set_alias("acme/t", "staging", "2")
        assert reg.verify()["ok"]
        with reg.engine.begin() as conn:
            for statement in sql.split("; "):
                conn.exec_driver_sql(statement)
        report = reg.verify()
        caught += not report["ok"]
        if report["ok"]:
            print(f"NOT DETECTED: {what}", file=sys.stderr)
        reg.close()
    row(
        "tampering with the database behind the registry's back",
        f"{caught} of {len(TAMPER)} kinds detected by verify, each naming the row",
        caught == len(TAMPER),
    )


def bad_inputs() -> None:
    from adapterhub.registry.remotes import mask, scrub
    from adapterhub.tuning import check_regex

    urls = [
        "postgresql://u:p@ssSECRET@db/x",
        "s3://b/p?endpoint_url=http%3A%2F%2FKEY%3AsSECRET%40h",
        "s3://b/p?secret_access_key=sSECRETs",
        "https://tSECRETtoken@h/x",
        "postgresql://u:pw/aSECRETz@[::1/x",
    ]
    # error text as drivers write it: the URL itself, and (a raw @ in a password) the host they misread
    texts = [
        f"failed to resolve host 'ssSECRET@db' ({u})" if i == 0 else f"cannot connect to {u}"
        for i, u in enumerate(urls)
    ]
    shown = sum("SECRET" not in mask(u) and "SECRET" not in scrub(text, [u]) for u, text in zip(urls, texts))
    row(
        "URLs with credentials (user info, query, endpoint in query, token user, unparsable)",
        f"{shown} of {len(urls)} masked in listings and error text",
        shown == len(urls),
    )
    start = time.monotonic()
    refused = 0
    for p in ("([a-z_.0-9]+)*z", "(a|ab)*c", ".*.*.*.*.*x", "x" * 300):
        try:
            check_regex(p, "rank_pattern")
        except ValueError:
            refused += 1
    row(
        "registry regexes of unbounded cost (nested, alternation under *, 5 repeats, 300 chars)",
        f"{refused} of 4 refused in {1000 * (time.monotonic() - start):.1f} ms",
        refused == 4,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--pushes", type=int, default=5)
    args = ap.parse_args()
    for k, v in aws_test_env().items():
        os.environ[k] = v
    with tempfile.TemporaryDirectory() as work, MotoS3Server() as s3:
        load(s3, work, args.procs, args.pushes)
        faults(s3, work)
        tampering(work)
        bad_inputs()
    print("| check | result |\n| --- | --- |")
    for what, figure, ok in ROWS:
        print(f"| {what} | {figure}{'' if ok else ' (FAILED)'} |")
    return 0 if all(ok for *_, ok in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
