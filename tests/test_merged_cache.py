"""The merged-model cache (``operations/merged_cache``): hits are read-only hard links checked before they are
served; forged, edited or changed entries are never served (recomputed instead, nothing deleted); cache
writes are best effort; a SELECT-only database role still pulls merged models. Real tiny models, real peft
adapters, real PostgreSQL and moto S3."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import assert_clean_error  # noqa: E402
from test_merge import plugins_fixture  # noqa: E402
from test_merge_bad_input import PLUGINS, llama  # noqa: E402,F401  (a fixture)

from adapterhub.operations import merged_cache  # noqa: E402

_plugins = plugins_fixture(PLUGINS + ",s3")


@pytest.fixture
def linked(monkeypatch):
    """The cache on, as for a user who is not root (the tests run as root, where ``auto`` means off)."""
    monkeypatch.setenv("ADAPTERHUB_MERGE_CACHE", "link")


def entries(home) -> list[str]:
    root = home / "cache" / "merged"
    return sorted(p for p in os.listdir(root) if not p.startswith(".")) if root.exists() else []


def reseal(home, entry: str, change, new_entry: str | None = None) -> None:
    """Rewrite entry.json of ``entry`` with ``change(body)`` and seal it with this home's key: what an attacker
    holding the key (or a bug in a writer) could produce. ``new_entry``: also move it there."""
    folder = home / "cache" / "merged" / entry
    body = json.loads((folder / "entry.json").read_text())
    body.pop("seal")
    change(body)
    body["seal"] = merged_cache._seal(merged_cache._key(str(home), create=False), body)
    (folder / "entry.json").write_text(json.dumps(body))
    if new_entry:
        os.rename(folder, home / "cache" / "merged" / new_entry)


def tree(path) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(r, n), path): open(os.path.join(r, n), "rb").read()
        for r, _, names in os.walk(path)
        for n in names
    }


def test_a_hit_is_read_only_links_checked_before_they_are_served(cli, home, llama, linked, tmp_path):
    base, ad = llama
    assert cli("push", ad, "acme/l1", "--base", base).exit_code == 0
    fresh = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m0", "--no-cache", "--json")
    assert fresh.exit_code == 0 and entries(home) == []
    want = tree(tmp_path / "m0")
    first = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m1", "--json")
    assert first.exit_code == 0, first.output
    assert first.json()["cached"] is False and len(entries(home)) == 1
    hit = cli("pull", "acme/l1", "--merged", "--base", base, "--out", tmp_path / "m2", "--json")
    assert hit.exit_code == 0, hit.output
    assert hit.json()["cached"] is True and hit.json()["tensors_merged"] == first.json()["tensors_merged"]
    assert tree(tmp_path / "m1") == tree(tmp_path / "m2") == want
    for name in want:  # the same read-only inode in --out, the cache and the next --out
        a, b = os.stat(tmp_path / "m1" / name), os.stat(tmp_path / "m2" / name)
        assert a.st_ino == b.st_ino and a.st_mode & 0o777 == 0o444
    assert cli("gc", "--grace", "0").exit_code == 0  # gc leaves the cache alone
    assert cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m3", "--json").json()["cached"] is True

    # a write through any link (root ignores 0444) changes the mtime: detected before it is served
    weights = tmp_path / "m2" / "model.safetensors"
    os.chmod(weights, 0o644)
    with open(weights, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x7f" * 8)
    r = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m4", "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["cached"] is False and "model.safetensors changed" in r.json()["cache_problem"]
    assert r.stderr.startswith("warning: cached merge not used: model.safetensors changed")
    assert tree(tmp_path / "m4") == want  # recomputed, and the entry rewritten from it
    again = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m6")
    assert again.exit_code == 0 and "from cache" in again.stdout and again.stderr.strip() == ""
    assert tree(tmp_path / "m6") == want
    # another dtype is another entry
    assert (
        cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m7", "--dtype", "bf16", "--json").json()["cached"]
        is False
    )
    assert len(entries(home)) == 2


def test_forged_or_edited_entries_are_never_served(cli, home, llama, linked, tmp_path):
    import sqlalchemy as sa

    from adapterhub.api import open_registry
    from adapterhub.registry import schema as t

    base, ad = llama
    assert cli("push", ad, "acme/l1", "--base", base).exit_code == 0
    assert cli("push", ad, "acme/l2", "--base", base, "--json").exit_code == 0
    assert cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m1").exit_code == 0
    want = tree(tmp_path / "m1")
    (entry,) = entries(home)
    victim = tmp_path / "victim.txt"
    runs = iter(range(100))

    def merged_again(problem):
        out = tmp_path / f"o{next(runs)}"
        r = cli("merge", "acme/l1", "--base", base, "--out", out, "--json")
        assert r.exit_code == 0, r.output
        assert r.json()["cached"] is False and problem in r.json()["cache_problem"], r.json()
        assert tree(out) == want and not victim.exists()
        assert sorted(os.listdir(tmp_path)) == sorted(p for p in os.listdir(tmp_path) if not p.startswith("."))

    # 1. edited without the key (a path that escapes --out): the seal fails
    path = home / "cache" / "merged" / entry / "entry.json"
    body = json.loads(path.read_text())
    body["files"][0]["path"] = "../../victim.txt"
    path.write_text(json.dumps(body))
    merged_again("not sealed by this machine's key")
    # (the failed entry was rewritten by that merge)
    # 2. sealed with the key but naming a path outside --out: the relative-path check of pull refuses it
    reseal(home, entry, lambda b: b["files"][0].__setitem__("path", "../../victim.txt"))
    merged_again("unsafe file path")
    # 3. a good entry of another merge moved under this key's name: its recorded key says so
    reseal(home, entry, lambda b: b["key"].__setitem__(2, "bfloat16"))
    merged_again("written for another merge")
    # 4. sealed, but not what this version writes
    reseal(home, entry, lambda b: b.__setitem__("files", {"path": "config.json"}))
    merged_again("malformed")
    reseal(home, entry, lambda b: b["files"][0].pop("mtime_ns"))
    merged_again("malformed")
    # 5. a cached file removed
    os.remove(home / "cache" / "merged" / entry / "files" / "config.json")
    merged_again("config.json: No such file or directory")
    # 6. a row of the old database cache naming other blobs and a path outside --out: never read
    with open_registry(str(home)).write() as conn:
        digest = cli("show", "acme/l1", "--json").json()["digest"].removeprefix("sha256:")
        conn.execute(
            t.merged_models.insert().values(
                adapter_digest=digest,
                base_fingerprint="x",
                dtype="auto",
                shard_size=1,
                summary={},
                files=[{"path": "../../victim.txt", "sha256": digest, "size": 1}],
                created_at=sa.func.now(),
            )
        )
    r = cli("pull", "acme/l1", "--merged", "--base", base, "--out", tmp_path / "p", "--json")
    assert r.exit_code == 0 and r.json()["cached"] is True and tree(tmp_path / "p") == want
    assert not victim.exists()
    assert cli("gc", "--json").exit_code == 0  # gc empties the old table
    with open_registry(str(home)).read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.merged_models)).scalar() == 0


def test_modes_and_best_effort_writes(cli, home, llama, monkeypatch, tmp_path):
    base, ad = llama
    assert cli("push", ad, "acme/l1", "--base", base).exit_code == 0
    # root: auto means no cache (0444 does not stop root, so --out would share writable inodes)
    assert os.geteuid() == 0 or pytest.skip("the tests run as root here")
    r = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "a", "--json")
    assert r.exit_code == 0 and r.json()["cached"] is False and entries(home) == []
    assert os.stat(tmp_path / "a" / "model.safetensors").st_mode & 0o777 == 0o644  # nothing linked
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # another user: auto means linked ...
    assert merged_cache.mode(str(home), str(tmp_path / "x")) == "link"
    r = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "u1", "--json")
    assert r.exit_code == 0 and r.json()["cached"] is False and len(entries(home)) == 1
    # ... except for a deployment: pull --merged from a remote keeps no cache (but uses one that is there)
    teamdir = tmp_path / "team"
    teamdir.mkdir()
    assert (
        cli("remote", "add", "team", "--db", f"sqlite:///{teamdir}/t.db", "--store", f"file://{teamdir}").exit_code == 0
    )
    assert cli("push", "acme/l1:1", "--to", "team").exit_code == 0
    shutil.rmtree(home / "cache" / "merged")
    r = cli("pull", "acme/l1", "--from", "team", "--merged", "--base", base, "--out", tmp_path / "u2", "--json")
    assert r.exit_code == 0 and r.json()["cached"] is False and entries(home) == [], r.output
    monkeypatch.setenv("ADAPTERHUB_MERGE_CACHE", "link")
    r = cli("pull", "acme/l1", "--from", "team", "--merged", "--base", base, "--out", tmp_path / "u3", "--json")
    assert r.exit_code == 0 and r.json()["cached"] is False and len(entries(home)) == 1, r.output
    monkeypatch.delenv("ADAPTERHUB_MERGE_CACHE")
    r = cli("pull", "acme/l1", "--from", "team", "--merged", "--base", base, "--out", tmp_path / "u4", "--json")
    assert r.exit_code == 0 and r.json()["cached"] is True
    if os.path.isdir("/dev/shm") and os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev:
        assert merged_cache.mode(str(home), "/dev/shm/x") == "off"  # another file system: a link cannot be made
    monkeypatch.setenv("ADAPTERHUB_MERGE_CACHE", "off")
    assert merged_cache.mode(str(home), str(tmp_path / "x")) == "off"
    monkeypatch.setenv("ADAPTERHUB_MERGE_CACHE", "always")
    assert_clean_error(cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "b"), "ADAPTERHUB_MERGE_CACHE")
    assert not (tmp_path / "b").exists()
    # a cache that cannot be written: the merge succeeds with one warning on stderr
    monkeypatch.setenv("ADAPTERHUB_MERGE_CACHE", "link")
    shutil.rmtree(home / "cache" / "merged")
    (home / "cache" / "merged").write_text("not a directory")
    r = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("warning: not cached: ") and len(r.stderr.strip().splitlines()) == 1
    assert tree(tmp_path / "c") == tree(tmp_path / "a")


# -- a deployment on a read-only database role ----------------------------------------------------------------
PG_ADMIN = os.environ.get("ADAPTERHUB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def readonly_team(home, cli, s3_server, aws_env):
    """A team registry (fresh PostgreSQL database + moto S3 bucket) and a role that may only SELECT from it."""
    import psycopg

    from adapterhub.registry.remotes import with_endpoint

    name, role = "ah_" + uuid.uuid4().hex[:12], "ro_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'ro-pw'")
    base_url = PG_ADMIN.rsplit("/", 1)[0]
    bucket = s3_server.new_bucket()
    store = with_endpoint(f"s3://{bucket}/adapters", s3_server.endpoint_url)
    try:
        yield {
            "admin": f"{base_url}/{name}",
            "db": name,
            "role": role,
            "store": store,
            "bucket": bucket,
            "ro": f"postgresql://{role}:ro-pw@127.0.0.1:{PG_ADMIN.rsplit(':', 1)[1].split('/')[0]}/{name}",
        }
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_select_only_role_pulls_merged_models(
    cli, home, llama, linked, readonly_team, s3_server, monkeypatch, tmp_path
):
    import boto3
    import psycopg

    base, ad = llama
    team = readonly_team
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_DB", team["admin"])
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_STORE", team["store"])
    pushed = cli("push", ad, "acme/bot", "--base", base)
    assert pushed.exit_code == 0, pushed.output
    with psycopg.connect(team["admin"], autocommit=True) as conn:
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{team["role"]}"')
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)

    def objects():
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=team["bucket"]).get("Contents", []))

    before = objects()
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_DB", team["ro"])
    want = None
    for i, hit in enumerate((False, True)):
        r = cli("pull", "acme/bot", "--merged", "--base", base, "--out", tmp_path / f"d{i}", "--json")
        assert r.exit_code == 0, r.output
        assert r.json()["cached"] is hit and "permission denied" not in r.output and r.stderr.strip() == ""
        want = want or tree(tmp_path / "d0")
        assert tree(tmp_path / f"d{i}") == want
    # a changed cached file: recomputed; the read path deletes nothing anywhere
    os.chmod(tmp_path / "d1" / "config.json", 0o644)
    with open(tmp_path / "d1" / "config.json", "a") as f:
        f.write(" ")
    r = cli("pull", "acme/bot", "--merged", "--base", base, "--out", tmp_path / "d2", "--json")
    assert r.exit_code == 0 and r.json()["cached"] is False and "config.json changed" in r.stderr
    assert objects() == before  # no blob uploaded, none deleted
    with psycopg.connect(team["ro"]) as conn:  # the role really is read-only
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM merged_models")


# -- runs killed mid-write --------------------------------------------------------------------------------------
def _kill_mid_write(cmd, out, env, tmpdir):
    """Start ``adapterhub CMD`` and SIGKILL it as soon as its temp dir beside ``out`` exists; returns the
    leftovers (beside ``out``, and in the temp dir)."""
    import signal
    import subprocess
    import time

    parent, prefix = os.path.dirname(out), f".{os.path.basename(out)}.tmp-"
    p = subprocess.Popen(
        [sys.executable, "-m", "adapterhub", *map(str, cmd)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not any(n.startswith(prefix) for n in os.listdir(parent)):
        assert p.poll() is None, p.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    return sorted(n for n in os.listdir(parent) if n.startswith(prefix)), sorted(os.listdir(tmpdir))


def test_runs_killed_with_sigkill_leave_nothing_behind(home, llama, pg_url, s3_server, aws_env, tmp_path):
    """A team registry (PostgreSQL + S3: the adapter is downloaded to the temp dir). A merge killed mid-write
    leaves its temp dirs; ``gc`` removes them; a killed ``pull --merged`` leaves them; the next run of the
    same command removes them. Live processes' temp dirs are never touched."""
    from conftest import run_subprocess

    from adapterhub.registry.remotes import with_endpoint

    base, ad = llama
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {
        **os.environ,
        "ADAPTERHUB_REGISTRY_DB": pg_url,
        "TMPDIR": str(tmpdir),
        "ADAPTERHUB_MERGE_CACHE": "link",
        "ADAPTERHUB_REGISTRY_STORE": with_endpoint(f"s3://{s3_server.new_bucket()}/a", s3_server.endpoint_url),
    }
    assert run_subprocess("push", ad, "acme/bot", "--base", base, env=env).exit_code == 0

    beside, temp = _kill_mid_write(
        ["merge", "acme/bot", "--base", base, "--out", tmp_path / "m1"], str(tmp_path / "m1"), env, tmpdir
    )
    assert beside and [n for n in temp if n.startswith("adapterhub-export-")], (beside, temp)
    import subprocess

    from adapterhub.files.output_dir import HOST

    dead = subprocess.Popen(["true"])
    dead.wait()
    (home / "cache" / "merged" / f".tmp-{HOST}-{dead.pid}-abc").mkdir(parents=True)  # a cache write killed
    r = run_subprocess("gc", "--json", env=env)
    assert r.exit_code == 0 and r.json()["removed_leftovers"] >= 3, r.output
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n] and os.listdir(tmpdir) == []
    assert [n for n in os.listdir(home / "cache" / "merged") if n.startswith(".tmp-")] == []

    cmd = ["pull", "acme/bot", "--merged", "--base", base, "--out", tmp_path / "m2"]
    beside, temp = _kill_mid_write(cmd, str(tmp_path / "m2"), env, tmpdir)
    assert beside and temp
    live = tmpdir / f"adapterhub-export-{beside[0].split('.tmp-')[1].split('-')[0]}-{os.getpid()}-x"
    live.mkdir()  # a live process's (this one's): left alone
    r = run_subprocess(*cmd, "--json", env=env)
    assert r.exit_code == 0 and r.json()["cached"] is False, r.output
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n] and os.listdir(tmpdir) == [live.name]
    assert sorted(os.listdir(tmp_path / "m2")) == ["config.json", "generation_config.json", "model.safetensors"]


def test_concurrent_merges_of_the_same_key_both_succeed(cli, home, llama, linked, tmp_path):
    """Two processes fill the same entry at once: both merges succeed without a warning, one entry stays, and
    it serves the next merge."""
    import subprocess

    base, ad = llama
    assert cli("push", ad, "acme/l1", "--base", base).exit_code == 0
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "adapterhub",
                "merge",
                "acme/l1",
                "--base",
                base,
                "--out",
                str(tmp_path / f"c{i}"),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "warning" not in err, err
        assert json.loads(out)["cached"] in (False, True)
    assert len(entries(home)) == 1 and tree(tmp_path / "c0") == tree(tmp_path / "c1")
    assert [n for n in os.listdir(home / "cache" / "merged") if n.startswith(".tmp-")] == []
    r = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "c2", "--json")
    assert r.json()["cached"] is True and tree(tmp_path / "c2") == tree(tmp_path / "c0"), r.output
