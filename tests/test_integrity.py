"""Integrity end to end: a version's digest is bound to the files served (pull, merge, copy and verify
check the manifest and the database rows before anything is written)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from conftest import assert_clean_error, make_base_dir, make_lora_dir


def _sql(home, statement, **params):
    engine = sa.create_engine(f"sqlite:///{home}/registry.db")
    with engine.begin() as conn:
        rows = conn.execute(sa.text(statement), params)
        out = rows.all() if rows.returns_rows else None
    engine.dispose()
    return out


def _two_versions(cli, tmp_path):
    for seed in (0, 1):
        assert cli("push", make_lora_dir(tmp_path / f"a{seed}", seed=seed), "acme/chat").exit_code == 0
    return cli("show", "acme/chat:1", "--json").json(), cli("show", "acme/chat:2", "--json").json()


def test_a_file_row_pointed_at_other_bytes_is_refused_everywhere(cli, home, tmp_path):
    v1, v2 = _two_versions(cli, tmp_path)
    w2 = next(f for f in v2["files"] if f["path"] == "adapter_model.safetensors")
    # the hole: one UPDATE made acme/chat:1's digest serve acme/chat:2's weights, and verify said ok
    _sql(
        home,
        "UPDATE files SET blob_digest = :d, size = :s WHERE path = 'adapter_model.safetensors' AND "
        "version_id = (SELECT id FROM versions WHERE number = 1)",
        d=w2["digest"][7:],
        s=w2["size"],
    )
    r = cli("pull", v1["digest"], "--out", tmp_path / "x")
    assert_clean_error(r, "acme/chat:1", "adapter_model.safetensors", "edited behind its back")
    assert not (tmp_path / "x").exists()
    r = cli("merge", "acme/chat:1", "--base", make_base_dir(tmp_path / "base"), "--out", tmp_path / "m")
    assert_clean_error(r, "acme/chat:1")
    assert not (tmp_path / "m").exists()
    other = tmp_path / "other"
    assert (
        cli("remote", "add", "other", "--db", f"sqlite:///{other}/r.db", "--store", f"file://{other}/blobs").exit_code
        == 0
    )
    assert_clean_error(cli("push", "acme/chat:1", "--to", "other"), "acme/chat:1")
    r = cli("verify", "--json")
    assert r.exit_code == 1
    assert [p["version"] for p in r.json()["problems"]] == ["acme/chat:1"]
    r = cli("verify")
    assert r.exit_code == 1 and "acme/chat:1: the files the registry serves differ" in r.stdout
    assert cli("verify", "acme/chat:2").exit_code == 0
    assert cli("pull", "acme/chat:2", "--out", tmp_path / "ok").exit_code == 0


def test_an_edited_manifest_is_refused_and_copy_never_gives_it_a_new_digest(cli, home, tmp_path):
    _two_versions(cli, tmp_path)
    _sql(home, "UPDATE versions SET manifest = replace(manifest, :a, :b) WHERE number = 1", a='"r":4', b='"r":8')
    assert '"r":8' in _sql(home, "SELECT manifest FROM versions WHERE number = 1")[0][0]
    other = tmp_path / "other"
    assert (
        cli("remote", "add", "other", "--db", f"sqlite:///{other}/r.db", "--store", f"file://{other}/blobs").exit_code
        == 0
    )
    assert_clean_error(cli("push", "acme/chat:1", "--to", "other"), "acme/chat:1", "hashes to")
    assert cli("--home", other, "list", "--json").exit_code == 0
    assert_clean_error(cli("pull", "acme/chat:1", "--out", tmp_path / "x"), "acme/chat:1", "hashes to")
    assert_clean_error(cli("show", "acme/chat:1"), "acme/chat:1")
    r = cli("verify", "--json")
    assert r.exit_code == 1 and [p["version"] for p in r.json()["problems"]] == ["acme/chat:1"]
    # a manifest that is not a JSON object (a list, or not JSON at all): one line, not an internal error
    for text in ("[1, 2]", "not json {"):
        _sql(home, "UPDATE versions SET manifest = :m WHERE number = 2", m=text)
        assert_clean_error(cli("pull", "acme/chat:2", "--out", tmp_path / "y"), "acme/chat:2")
        assert_clean_error(cli("show", "acme/chat:2"), "acme/chat:2")
        assert "internal error" not in cli("verify").output


# -- gc and push: no race ------------------------------------------------------------------------------
def _registry(request, tmp_path):
    """(Registry, label) on SQLite + files, or on PostgreSQL + moto's S3 over HTTP."""
    from adapterhub_file import FileStore

    from adapterhub.registry.registry import Registry

    if request.param == "sqlite":
        return Registry(f"sqlite:///{tmp_path}/r.db", FileStore(str(tmp_path / "store"))).ready()
    from adapterhub_s3 import S3Store

    request.getfixturevalue("aws_env")
    s3 = request.getfixturevalue("s3_server")
    store = S3Store.from_url(f"s3://{s3.new_bucket()}/a", endpoint_url=s3.endpoint_url)
    return Registry(request.getfixturevalue("pg_url"), store).ready()


@pytest.fixture(params=["sqlite", "postgres"])
def reg(request, tmp_path):
    r = _registry(request, tmp_path)
    yield r
    r.close()


def _leftover(reg, tmp_path, content: bytes):
    """A blob stored but referenced by no version (what a killed push leaves), as a LocalFile."""
    from adapterhub.registry.blobs import hash_file
    from adapterhub.registry.records import LocalFile

    path = tmp_path / f"f{len(content)}-{content[:4].hex()}"
    path.write_bytes(content)
    digest, size = hash_file(str(path))
    assert reg.store.put(digest, str(path), size)
    return LocalFile("weights.bin", str(path), digest, size)


def test_gc_between_a_pushs_existence_check_and_its_commit_loses_nothing(reg, tmp_path):
    f = _leftover(reg, tmp_path, b"weights of a push that was killed, then retried" * 100)
    ran = []

    def gc_now(_n):  # called by phase 1 right after it found the blob stored, before the commit
        if not ran:
            ran.append(reg.gc(grace=0))

    pub = reg.publish("acme/chat", {"method": "lora"}, [f], progress=gc_now)
    assert ran[0]["removed_blobs"] == 1 and ran[0]["freed_bytes"] == f.size  # gc did delete it (S3: real bytes)
    assert pub.uploaded_bytes == f.size  # ... and the commit's re-check put it back
    assert reg.verify()["ok"]
    reg.materialize("acme/chat:1", str(tmp_path / "out"))
    assert (tmp_path / "out" / "weights.bin").read_bytes() == open(f.source, "rb").read()


def test_a_push_committed_after_gcs_scan_keeps_its_blob(tmp_path):
    from adapterhub_file import FileStore

    from adapterhub.registry.registry import Registry

    class ScanThenPush(FileStore):  # a push commits right after gc listed the store
        def iter_blobs(self):
            yield from super().iter_blobs()
            if self.after_scan:
                self.after_scan()

    store = ScanThenPush(str(tmp_path / "store"))
    store.after_scan = None
    reg = Registry(f"sqlite:///{tmp_path}/r.db", store).ready()
    f = _leftover(reg, tmp_path, b"reused by the next push" * 10)
    store.after_scan = lambda: reg.publish("acme/chat", {"method": "lora"}, [f])
    r = reg.gc(grace=0)
    assert r["removed_blobs"] == 0 and reg.verify()["ok"]
    store.after_scan = None
    assert reg.gc(grace=0)["removed_blobs"] == 0 and reg.verify()["ok"]
    reg.close()


def test_a_server_commit_whose_blob_gc_removed_is_one_clear_error(tmp_path):
    from adapterhub_file import FileStore

    from adapterhub.errors import IntegrityError
    from adapterhub.registry.records import LocalFile
    from adapterhub.registry.registry import Registry

    reg = Registry(f"sqlite:///{tmp_path}/r.db", FileStore(str(tmp_path / "store"))).ready()
    f = _leftover(reg, tmp_path, b"uploaded by a client" * 10)
    remote = LocalFile(f.path, "", f.sha256, f.size)  # the server has no source to upload again from
    with pytest.raises(IntegrityError, match="removed from .* while this version was being committed"):
        reg.publish("acme/chat", {}, [remote], progress=lambda n: reg.gc(grace=0))
    assert reg.list() == []
    reg.close()


# -- transient database errors: the commit is retried ---------------------------------------------------
def _registry_through(proxy, pg_url, tmp_path):
    from adapterhub_file import FileStore

    from adapterhub.registry.registry import Registry

    db = pg_url.replace("127.0.0.1:5432", proxy.address)
    return Registry(db, FileStore(str(tmp_path / "store"))).ready()


def _cut_on(reg, proxy, statement: str, times: int):
    """Reset every connection through ``proxy`` when the commit transaction reaches ``statement``."""
    from sqlalchemy import event

    cuts = []

    @event.listens_for(reg.engine, "before_cursor_execute")
    def cut(conn, cursor, sql, *args):
        if sql.lstrip().upper().startswith(statement) and len(cuts) < times:
            cuts.append(sql)
            proxy.cut()

    return cuts


def test_a_connection_dropped_inside_the_commit_is_retried(pg_url, tmp_path):
    from tcpproxy import TcpProxy

    with TcpProxy("127.0.0.1", 5432) as proxy:
        reg = _registry_through(proxy, pg_url, tmp_path)
        f = _leftover(reg, tmp_path, b"uploaded before the connection dropped" * 50)
        cuts = _cut_on(reg, proxy, "INSERT INTO VERSIONS", times=2)
        pub = reg.publish("acme/chat", {"method": "lora"}, [f])
        assert len(cuts) == 2 and pub.created and pub.version == 1
        assert [v.ref for v in reg.list()] == ["acme/chat:1"] and reg.verify()["ok"]
        # alias moves, tags and evaluations are retried the same way (and the history stays one chain)
        cuts = [
            _cut_on(reg, proxy, s, times=1)
            for s in ("INSERT INTO ALIAS_EVENTS", "INSERT INTO TAGS", "INSERT INTO EVALUATIONS")
        ]
        assert reg.set_alias("acme/chat", "staging", "1")["ref"] == "acme/chat:1"
        assert reg.set_tags("acme/chat:1", {"team": "nlp"}) == {"team": "nlp"}
        reg.add_evaluation("acme/chat:1", "sha256:" + "e" * 64, {"accuracy": 0.9})
        assert [len(c) for c in cuts] == [1, 1, 1]
        assert len(reg.alias_history("acme/chat", "staging")) == 1 and reg.verify()["ok"]
        reg.close()


def test_a_database_gone_for_good_is_one_line_after_bounded_tries(pg_url, tmp_path):
    from tcpproxy import TcpProxy

    from adapterhub.errors import AdapterhubError

    with TcpProxy("127.0.0.1", 5432) as proxy:
        reg = _registry_through(proxy, pg_url, tmp_path)
        f = _leftover(reg, tmp_path, b"blobs stay uploaded" * 50)
        cuts = _cut_on(reg, proxy, "INSERT INTO VERSIONS", times=100)
        start = time.monotonic()
        with pytest.raises(AdapterhubError) as info:
            reg.publish("acme/chat", {"method": "lora"}, [f])
        assert time.monotonic() - start < 15 and len(cuts) == 5
        msg = str(info.value)
        assert "\n" not in msg and "after 5 tries" in msg and "run the command again" in msg, msg
        assert "Can't reconnect" not in msg
        reg.close()


def test_a_push_through_the_server_uploads_again_what_gc_removed_meanwhile(tmp_path):
    from conftest import run_subprocess
    from serverproc import RegistryServer

    from adapterhub.api import local_registry
    from adapterhub.registry.client import HttpRegistry

    server_home = str(tmp_path / "server")
    r = run_subprocess("--home", server_home, "token", "create", "--name", "ci", "--scope", "write", "--json")
    on_server = local_registry(server_home)
    f = _leftover(on_server, tmp_path, b"a killed push left this on the server" * 20)
    with RegistryServer(env={"ADAPTERHUB_HOME": server_home}) as srv:
        client = HttpRegistry(srv.url, r.json()["token"], label="hub")
        ran = []

        def gc_now(_n):  # the blob was found on the server, so not uploaded; gc removes it before the commit
            if not ran:
                ran.append(on_server.gc(grace=0))

        pub = client.publish("acme/chat", {"method": "lora"}, [f], progress=gc_now)
        assert ran[0]["removed_blobs"] == 1 and pub.created and pub.uploaded_bytes == f.size
    assert on_server.verify()["ok"]
    on_server.close()


def test_an_edited_lineage_row_is_named_by_verify_and_never_copied(cli, home, tmp_path):
    assert cli("push", make_lora_dir(tmp_path / "p"), "acme/base").exit_code == 0
    assert cli("push", make_lora_dir(tmp_path / "c", seed=1), "acme/chat", "--parent", "acme/base").exit_code == 0
    assert cli("verify").exit_code == 0
    _sql(home, "UPDATE lineage SET relation = 'combined_from'")
    r = cli("verify", "--json")
    assert r.exit_code == 1 and [p["version"] for p in r.json()["problems"]] == ["acme/chat:1"], r.output
    other = tmp_path / "other"
    assert (
        cli("remote", "add", "other", "--db", f"sqlite:///{other}/r.db", "--store", f"file://{other}/blobs").exit_code
        == 0
    )
    assert_clean_error(cli("push", "acme/chat:1", "--to", "other"), "acme/chat:1", "lineage rows")


def test_a_manifest_edited_into_non_json_is_one_line_in_every_command(cli, home, tmp_path):
    assert cli("push", make_lora_dir(tmp_path / "a"), "acme/chat").exit_code == 0
    from adapterhub.api import local_registry

    reg = local_registry(str(home))
    reg.add_evaluation("acme/chat:1", "sha256:" + "e" * 64, {"accuracy": 0.9})
    reg.close()
    for text in ("[1, 2]", "not json {"):
        _sql(home, "UPDATE versions SET manifest = :m", m=text)
        for args in (
            ("alias", "set", "acme/chat", "production", "1"),
            ("show", "acme/chat:1"),
            ("pull", "acme/chat:1", "--out", tmp_path / "o"),
        ):
            assert_clean_error(cli(*args), "acme/chat:1", "edited behind its back")
        assert cli("lineage", "acme/chat:1").exit_code == 0
        r = cli("verify")
        assert r.exit_code == 1 and "internal error" not in r.output


def test_a_version_rows_kind_method_or_base_edited_apart_from_its_manifest_is_refused(cli, home, tmp_path):
    from conftest import make_base_dir

    base = make_base_dir(tmp_path / "base")
    assert cli("push", make_lora_dir(tmp_path / "a"), "acme/chat", "--base", base).exit_code == 0
    _sql(home, "UPDATE versions SET base_fingerprint = :f", f="sha256:" + "0" * 64)  # another base would be accepted
    assert_clean_error(
        cli("merge", "acme/chat:1", "--base", base, "--out", tmp_path / "m"), "acme/chat:1", "base_fingerprint"
    )
    r = cli("verify", "--json")
    assert r.exit_code == 1 and "base_fingerprint" in r.json()["problems"][0]["status"]
