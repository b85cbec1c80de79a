"""Remotes and registries given bad input: refs naming a remote, a failed ``--replace``, a config.json of
the wrong shape, a registry written by a newer adapterhub, odd remote names and URLs shown faithfully.
Real SQLite registries, a real file store and the real PostgreSQL server (an unreachable port of it)."""

from __future__ import annotations

import json
import sqlite3

import pytest
import sqlalchemy.exc
from conftest import assert_clean_error, make_lora_dir


@pytest.fixture
def team(cli, home, tmp_path):
    """Local t/a:1..3; a remote 'team' (SQLite + file store) holding only t/a:1."""
    for seed in (0, 1, 2):
        assert cli("push", make_lora_dir(tmp_path / f"a{seed}", seed=seed), "t/a").exit_code == 0
    r = cli(
        "remote",
        "add",
        "team",
        "--db",
        f"sqlite:///{tmp_path / 'team.db'}",
        "--store",
        f"file://{tmp_path / 'teamstore'}",
    )
    assert r.exit_code == 0, r.output
    assert cli("push", "t/a:1", "--to", "team").exit_code == 0
    return tmp_path


def test_refs_naming_a_remote_never_resolve_in_the_local_registry(cli, home, team):
    local3 = cli("show", "t/a:3", "--json").json()
    assert_clean_error(cli("show", "nosuch:t/a:3"), "no remote named 'nosuch'")
    assert_clean_error(cli("show", "team:t/a:3"), "no version 3 in the team registry")
    assert cli("show", "team:t/a:1", "--json").json()["digest"] == cli("show", "t/a:1", "--json").json()["digest"]
    # tag: refused for a version the remote lacks; a version it has is tagged there, not locally
    assert_clean_error(cli("tag", "team:t/a:3", "where=team"), "no version 3")
    assert cli("show", "t/a:3", "--json").json().get("tags", {}) == local3.get("tags", {})
    assert cli("tag", "team:t/a:1", "where=team").exit_code == 0
    assert cli("show", "team:t/a:1", "--json").json()["tags"].get("where") == "team"
    assert "where" not in (cli("show", "t/a:1", "--json").json().get("tags") or {})
    assert_clean_error(cli("lineage", "team:t/a:3"), "no version 3")
    assert_clean_error(cli("verify", "nosuch:t/a:1"), "no remote named 'nosuch'")
    assert_clean_error(cli("verify", "team:t/a:3"), "no version 3")
    assert_clean_error(cli("compare", "team:t/a:1", "t/a:3"), "different registries")
    assert_clean_error(cli("compare", "nosuch:t/a:1", "nosuch:t/a:3"), "no remote named 'nosuch'")


def test_the_api_refuses_a_ref_of_another_registry(home, team):
    from adapterhub.api import local_registry, open_registry
    from adapterhub.errors import InvalidInput, NotFound

    with pytest.raises(InvalidInput, match="names remote 'team'"):
        local_registry(str(home)).resolve("team:t/a:3")
    with pytest.raises(NotFound, match="no remote named 'nosuch'"):
        local_registry(str(home)).show("nosuch:t/a:1")
    assert open_registry(str(home), remote="team").resolve("team:t/a:1")["number"] == 1


def test_a_registry_built_directly_enforces_its_refs_like_an_opened_one(home, team):
    """Which refs a registry accepts is a constructor argument that ``Registry.resolve`` enforces itself (no
    method replaced on the instance): one built by hand behaves as the one ``open_registry`` returns."""
    from functools import partial

    from adapterhub.api import open_registry, open_store
    from adapterhub.errors import InvalidInput, NotFound
    from adapterhub.registry import remotes
    from adapterhub.registry.registry import Registry

    spec = remotes.get_remote(str(home), "team")
    names = partial(remotes.remote_names, str(home))
    by_hand = Registry(spec["db"], open_store(spec["store"]), label="team", remote="team", remotes=names)
    opened = open_registry(str(home), remote="team")
    for reg in (by_hand, opened):
        assert "resolve" not in vars(reg)
        assert reg.resolve("team:t/a:1")["ref"] == reg.resolve("t/a:1")["ref"] == "t/a:1"
        assert reg.show("team:t/a:1").ref == "t/a:1"
        with pytest.raises(InvalidInput, match=r"names remote 'local2'.*uses the team registry"):
            Registry(
                spec["db"], open_store(spec["store"]), label="team", remote="team", remotes=lambda: ["team", "local2"]
            ).resolve("local2:t/a:1")
        with pytest.raises(NotFound, match="there is no remote named 'nosuch'"):
            reg.resolve("nosuch:t/a:1")
    # a plain registry (no remote) refuses every remote ref; without the remote names it cannot say which exist
    plain = Registry(spec["db"], open_store(spec["store"]), label="team")
    with pytest.raises(
        InvalidInput,
        match=r"ref 'team:t/a:1' names remote 'team', but this command uses the team "
        r"registry \(copy it first: adapterhub pull team:t/a:1\)",
    ):
        plain.resolve("team:t/a:1")
    assert plain.resolve("t/a:1")["number"] == 1


def test_only_commands_declared_for_remote_refs_follow_them(cli, home, team):
    """A command reads a remote's version only where it is declared with ``pass_app_for_refs`` (show, tag,
    lineage, verify, compare, eval); the others (export ...) work on the default registry and refuse the ref."""
    assert (
        cli("lineage", "team:t/a:1", "--format", "json").json()["root"]
        == cli("lineage", "t/a:1", "--format", "json").json()["root"]
    )
    assert cli("verify", "team:t/a:1", "--json").json()["versions"] == 1
    assert_clean_error(
        cli("export", "team:t/a:1", "--format", "peft", "--out", str(team / "x")),
        "names remote 'team', but this command uses the local registry",
    )
    assert not (team / "x").exists()


def test_failed_replace_keeps_the_working_remote(cli, home, tmp_path):
    from adapterhub import api
    from adapterhub.registry import remotes

    good = {"db": f"sqlite:///{tmp_path / 'team.db'}", "store": f"file://{tmp_path / 'store'}"}
    remotes.add_remote(str(home), "team", good["db"], good["store"], check=api.check_remote)
    before = (home / "config.json").read_bytes()
    with pytest.raises(sqlalchemy.exc.OperationalError):  # nothing listens on port 1
        remotes.add_remote(
            str(home),
            "team",
            "postgresql://postgres@127.0.0.1:1/test",
            "file:///x",
            replace=True,
            check=api.check_remote,
        )
    assert (home / "config.json").read_bytes() == before
    assert remotes.get_remote(str(home), "team") == good
    assert [p.name for p in home.iterdir() if p.name.startswith(".config.")] == []
    # a good replacement is checked and saved
    other = f"sqlite:///{tmp_path / 'other.db'}"
    remotes.add_remote(str(home), "team", other, good["store"], replace=True, check=api.check_remote)
    assert remotes.get_remote(str(home), "team")["db"] == other
    # the command: a failed --replace keeps it too
    before = (home / "config.json").read_bytes()
    r = cli(
        "remote", "add", "team", "--replace", "--db", "postgresql://postgres@127.0.0.1:1/test", "--store", "file:///x"
    )
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert (home / "config.json").read_bytes() == before
    assert "team" in cli("remote", "list").output


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"remotes": []}', "'remotes' must be an object"),
        ('{"remotes": {"team": "oops"}}', "remote 'team' must be an object"),
        ('{"remotes": {"team": {"db": 3}}}', "remote 'team' has no 'db'"),
        ("[]", "expected a JSON object"),
    ],
)
def test_config_json_of_the_wrong_shape_is_one_clear_line(cli, home, content, needle):
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(content)
    for args in (
        ("remote", "list"),
        ("remote", "add", "x", "--db", "sqlite:///x.db", "--store", "file:///x", "--no-check"),
        ("pull", "team:t/a:1"),
    ):
        assert_clean_error(cli(*args), "config.json", needle)
    assert (home / "config.json").read_text() == content


def test_registry_of_a_newer_schema_says_upgrade_adapterhub(cli, home):
    assert cli("list").exit_code == 0
    with sqlite3.connect(home / "registry.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    for args in (("list",), ("db", "upgrade")):
        assert_clean_error(cli(*args), "newer adapterhub (schema 0099", "upgrade adapterhub")
    with sqlite3.connect(home / "registry.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0099"


def test_remote_name_with_a_newline_is_refused(cli, home):
    r = cli("remote", "add", "tn\n", "--db", "sqlite:///x.db", "--store", "file:///x", "--no-check")
    assert_clean_error(r, "invalid remote name")
    assert not (home / "config.json").exists()


def test_urls_are_shown_faithfully_with_passwords_masked(cli, home, tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"  # sqlite:////abs/path: four slashes
    assert db.startswith("sqlite:////")
    r = cli("remote", "add", "tn", "--db", db, "--store", f"file://{tmp_path / 's'}", "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["db"] == db
    assert cli("remote", "list", "--json").json()[0]["db"] == db
    assert db in cli("remote", "list").stdout
    from adapterhub.registry.remotes import mask

    assert mask("postgresql://u:hunter2@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert json.dumps(mask("s3://b/p?endpoint_url=http%3A%2F%2Fh%3A1&secret_key=zz")).count("zz") == 0
