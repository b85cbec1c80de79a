"""Integrity end to end: a version's digest is bound to the files served (pull, merge, copy and verify
check the manifest and the database rows before anything is written)."""

from __future__ import annotations

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
    _sql(home, "UPDATE files SET blob_digest = :d, size = :s WHERE path = 'adapter_model.safetensors' AND "
               "version_id = (SELECT id FROM versions WHERE number = 1)", d=w2["digest"][7:], s=w2["size"])
    r = cli("pull", v1["digest"], "--out", tmp_path / "x")
    assert_clean_error(r, "acme/chat:1", "adapter_model.safetensors", "edited behind its back")
    assert not (tmp_path / "x").exists()
    r = cli("merge", "acme/chat:1", "--base", make_base_dir(tmp_path / "base"), "--out", tmp_path / "m")
    assert_clean_error(r, "acme/chat:1")
    assert not (tmp_path / "m").exists()
    other = tmp_path / "other"
    assert cli("remote", "add", "other", "--db", f"sqlite:///{other}/r.db", "--store", f"file://{other}/blobs").exit_code == 0
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
    assert cli("remote", "add", "other", "--db", f"sqlite:///{other}/r.db", "--store", f"file://{other}/blobs").exit_code == 0
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
