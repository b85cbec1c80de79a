"""The tamper-evident history: versions, alias events, aliases, tags and evaluations chained by hash;
verify names what was edited, deleted or reordered behind the registry's back."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from conftest import make_lora_dir


def _sql(home, statement, **params):
    engine = sa.create_engine(f"sqlite:///{home}/registry.db")
    with engine.begin() as conn:
        rows = conn.execute(sa.text(statement), params)
        out = rows.all() if rows.returns_rows else None
    engine.dispose()
    return out


@pytest.fixture
def promoted(cli, home, tmp_path):
    for seed in (0, 1):
        assert (
            cli("push", make_lora_dir(tmp_path / f"a{seed}", seed=seed), "acme/chat", "--tag", "team=nlp").exit_code
            == 0
        )
    from adapterhub.api import local_registry

    reg = local_registry(str(home))
    reg.add_evaluation("acme/chat:2", "sha256:" + "e" * 64, {"accuracy": 0.91})
    reg.set_alias("acme/chat", "production", "1", reason="first")
    reg.set_alias("acme/chat", "production", "2", reason="better")
    reg.set_tags("acme/chat:1", {"stage": "old"}, remove=["team"])
    reg.close()
    r = cli("verify", "--json")
    assert r.exit_code == 0 and r.json()["history_head"], r.output
    return r.json()["history_head"]


def _problems(cli):
    r = cli("verify", "--json")
    assert r.exit_code == 1, r.output
    return {p.get("history") or p.get("version"): p["status"] for p in r.json()["problems"]}


def test_moving_an_alias_and_erasing_its_history_is_named(cli, home, promoted):
    # the audit's attack: production moved back to 1 and its history erased; alias history said "no history"
    _sql(home, "UPDATE aliases SET version_id = (SELECT id FROM versions WHERE number = 1)")
    _sql(home, "DELETE FROM alias_events")
    found = _problems(cli)
    assert found["alias acme/chat@production"] == "points to acme/chat:1 but its history says acme/chat:2"
    assert found["alias event #1 (acme/chat@production)"] == "was deleted"
    assert found["alias event #2 (acme/chat@production)"] == "was deleted"
    text = cli("verify").stdout
    assert "alias acme/chat@production: points to acme/chat:1" in text and "history head: sha256:" in text


def test_edited_deleted_and_inserted_rows_are_named(cli, home, promoted):
    _sql(home, "UPDATE versions SET created_by = 'mallory' WHERE number = 1")
    _sql(home, "UPDATE adapters SET name = 'acme/other'")  # would move every version to another name
    _sql(home, "UPDATE tags SET value = 'prod' WHERE key = 'stage'")
    _sql(home, "DELETE FROM evaluations")
    _sql(home, "INSERT INTO tags (version_id, key, value) SELECT id, 'approved', 'yes' FROM versions WHERE number = 2")
    found = _problems(cli)
    assert found["name acme/other (adapter #1)"] == "was edited: name"
    assert found["version acme/other:1"] == "was edited: created_by"
    assert found["tag stage of acme/other:1"] == "is 'prod' but its history says 'old'"
    assert found["evaluation #1 of acme/other:2"] == "was deleted"
    assert found["tag approved of acme/other:2"] == "is 'yes' but its history says None"
    assert "tag team of acme/other:1" not in found  # removed through the registry: recorded, not a problem


def test_edited_deleted_and_reordered_history_entries_are_named(cli, home, promoted):
    n = _sql(home, "SELECT max(id) FROM history")[0][0]
    _sql(home, "UPDATE history SET content = replace(content, 'better', 'worse') WHERE kind = 'alias'")
    found = _problems(cli)
    edited = [k for k, v in found.items() if v.startswith("was edited (its hash")]
    assert len(edited) == 1 and edited[0].startswith("history entry #")
    _sql(home, "UPDATE history SET content = replace(content, 'worse', 'better') WHERE kind = 'alias'")
    assert cli("verify").exit_code == 0
    # swap two entries (content, prev and hash move together): the chain no longer links
    a, b = _sql(
        home, "SELECT id, kind, content, prev, hash FROM history WHERE id IN (:x, :y) ORDER BY id", x=n - 1, y=n
    )
    for row, other in ((a, b), (b, a)):
        _sql(
            home,
            "UPDATE history SET kind = :k, content = :c, prev = :p, hash = :h WHERE id = :i",
            k=other[1],
            c=other[2],
            p=other[3],
            h=other[4],
            i=row[0],
        )
    assert "does not follow" in " ".join(_problems(cli).values())
    _sql(home, f"DELETE FROM history WHERE id IN ({n - 1}, {n})")  # deleting the tail: the head moves back
    r = cli("verify", "--json")
    assert r.json()["history_head"] != promoted and r.exit_code == 1  # the last tag change is now unexplained


def test_an_existing_registry_is_migrated_and_the_chain_says_where_it_starts(cli, home, tmp_path):
    assert cli("push", make_lora_dir(tmp_path / "a"), "acme/chat", "--alias", "staging").exit_code == 0
    _sql(home, "DROP TABLE history")  # a registry written before schema 0004
    _sql(home, "UPDATE alembic_version SET version_num = '0003'")
    r = cli("verify", "--json")
    assert r.exit_code == 0 and r.json()["history_head"], r.output
    kind, content = _sql(home, "SELECT kind, content FROM history ORDER BY id LIMIT 1")[0]
    assert kind == "genesis" and "the history starts here (schema 0004" in content
    assert [k for (k,) in _sql(home, "SELECT kind FROM history ORDER BY id")] == [
        "genesis",
        "version",
        "alias",
        "alias.state",
        "adapter",
    ]  # 0004, then 0005 (names)
    _sql(home, "DELETE FROM alias_events")
    assert "alias event #1 (acme/chat@staging)" in _problems(cli)


def test_concurrent_writers_on_postgres_never_fork_the_chain(pg_url, tmp_path):
    from adapterhub_file import FileStore

    from adapterhub.registry.blobs import hash_file
    from adapterhub.registry.records import LocalFile
    from adapterhub.registry.registry import Registry

    Registry(pg_url, FileStore(str(tmp_path / "s"))).ready().close()
    errors = []

    def writer(i):
        reg = Registry(pg_url, FileStore(str(tmp_path / "s")))
        try:
            for k in range(4):
                path = tmp_path / f"w{i}-{k}"
                path.write_bytes(f"{i}-{k}".encode() * 100)
                digest, size = hash_file(str(path))
                reg.publish(
                    f"acme/m{i % 2}",
                    {"method": "lora"},
                    [LocalFile("w", str(path), digest, size)],
                    aliases=["staging"],
                    tags={"writer": str(i)},
                )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            reg.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    reg = Registry(pg_url, FileStore(str(tmp_path / "s")))
    report = reg.verify()
    assert report["ok"] and report["versions"] == 24, report["problems"]
    with reg.read() as conn:
        kinds = [k for (k,) in conn.execute(sa.text("SELECT kind FROM history ORDER BY id"))]
    assert kinds.count("version") == 24 and kinds.count("alias") == 24 and kinds.count("tag") == 24
    reg.close()
