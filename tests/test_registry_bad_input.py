"""Registry commands given harmful input: ``pull --out`` pointing at the registry itself, NaN evaluations,
the promotion gate after ``alias rm``, ``eval --task`` that contradicts the version, ``gc`` with a bad
``--grace`` or stray files in the blob store. Real SQLite/PostgreSQL registries and tiny real models."""

import json
import math
import os
import time
import uuid

import pytest
from conftest import assert_clean_error, make_lora_dir
from test_evaluate import TEXTS, make_adapter, tiny_causal_base, write_jsonl
from test_evaluate import push as push_with_base
from test_gates import evaluate as add_eval
from test_gates import version

DIGEST_A = "sha256:" + "a" * 64
PG_ADMIN = os.environ.get("ADAPTERHUB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny causal base, a working adapter, one whose lora_B is NaN, and eval / classification data."""
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("lm")
    base = tiny_causal_base(d / "base")
    good = make_adapter(base, d / "good", "causal-lm", config={"r": 4, "init_lora_weights": False})
    nan = make_adapter(base, d / "nan", "causal-lm", config={"r": 4, "init_lora_weights": False})
    path = os.path.join(nan, "adapter_model.safetensors")
    tensors = load_file(path)
    assert any("lora_B" in k for k in tensors)
    for k in tensors:
        if "lora_B" in k:
            tensors[k].fill_(3e38)  # finite (push refuses NaN/inf tensors), but the forward pass overflows to NaN
    save_file(tensors, path)
    data = write_jsonl(
        d / "eval.jsonl", [{"prompt": t.rsplit(" ", 1)[0], "completion": " " + t.rsplit(" ", 1)[1]} for t in TEXTS]
    )
    cls = write_jsonl(d / "cls.jsonl", [{"text": t, "label": str(i % 2)} for i, t in enumerate(TEXTS)])
    return {"base": base, "good": good, "nan": nan, "eval": data, "cls": cls}


def _pushed(home, src, name):
    from adapterhub import api

    return api.push(api.open_registry(str(home)), src, name).ref


# -- 1. pull --out never replaces the registry -----------------------------------------------------


def test_pull_out_refuses_the_registry_home(cli, home, tmp_path):
    ref = _pushed(home, make_lora_dir(tmp_path / "a"), "acme/a")
    blobs_before = sorted(os.listdir(home / "blobs" / "sha256"))
    for out, where in (
        (home, "is the registry home"),
        (tmp_path, "contains the registry home"),
        (home / "blobs", "is inside the registry home"),
        (home / "new", "is inside"),
    ):
        for extra in ((), ("--force",)):
            assert_clean_error(cli("pull", ref, "--out", out, *extra), where, "choose another --out")
    # --merged goes through the same check before any work (its --base does not even exist)
    assert_clean_error(
        cli("pull", ref, "--out", home, "--force", "--merged", "--base", tmp_path / "nobase"), "is the registry home"
    )
    # a symlink to the home is the home
    os.symlink(home, tmp_path / "link")
    assert_clean_error(cli("pull", ref, "--out", tmp_path / "link", "--force"), "registry home")
    assert not (home / "new").exists()
    assert sorted(os.listdir(home / "blobs" / "sha256")) == blobs_before
    assert [r["ref"] for r in cli("list", "--json").json()] == [ref]
    assert cli("verify").exit_code == 0
    ok = cli("pull", ref, "--out", tmp_path / "out", "--json")
    assert ok.exit_code == 0 and os.path.isfile(tmp_path / "out" / "adapter_model.safetensors")


def test_materialize_refuses_the_store_and_database(home, tmp_path):
    """The API (``api.pull``) refuses it too, for a registry whose store lives elsewhere."""
    from adapterhub_file import FileStore

    from adapterhub import api
    from adapterhub.errors import AdapterhubError
    from adapterhub.registry.registry import Registry

    reg = Registry("sqlite:///" + str(tmp_path / "db" / "reg.db"), FileStore(str(tmp_path / "store"))).ready()
    ref = api.push(reg, make_lora_dir(tmp_path / "a"), "acme/a").ref
    for out, what in ((tmp_path / "store", "is the blob store"), (tmp_path / "db", "contains the registry database")):
        with pytest.raises(AdapterhubError, match=what):
            api.pull(reg, ref, str(out), force=True)
    assert os.path.isfile(tmp_path / "db" / "reg.db") and reg.list()[0].ref == ref


# -- 2. NaN evaluations ----------------------------------------------------------------------------


def test_nan_adapter_evaluation_is_refused_not_stored(cli, home, lm):
    ref = push_with_base(home, lm["nan"], "t/a", lm["base"])
    r = cli("eval", ref, "--base", lm["base"], "--data", lm["eval"])
    assert_clean_error(r, "non-finite", "loss=nan", "NaN/inf", "not stored")
    assert cli("show", ref, "--json").json()["evaluations"] == []
    assert_clean_error(cli("alias", "set", "t/a", "production", "1"), "has no evaluation")
    assert cli("show", ref, "--json").json()["aliases"] == []
    # --no-store still shows the result
    assert cli("eval", ref, "--base", lm["base"], "--data", lm["eval"], "--no-store").exit_code == 0
    # the API refuses too, whoever calls it
    from adapterhub import api
    from adapterhub.errors import InvalidInput

    with pytest.raises(InvalidInput, match="non-finite.*metrics.loss=inf"):
        api.open_registry(str(home)).add_evaluation(ref, DIGEST_A, {"loss": math.inf}, {"task": "causal-lm"})


def test_gate_never_promotes_a_stored_nan_and_listing_stays_json(cli, home, tmp_path):
    """Registries written before the fix may hold NaN evaluations (SQLite stored them)."""
    import sqlalchemy as sa

    v1 = version(home, tmp_path, "t/a", 1, task="causal-lm")
    v2 = version(home, tmp_path, "t/a", 2, task="causal-lm")
    v3 = version(home, tmp_path, "t/b", 3, task="causal-lm")
    add_eval(home, v1, DIGEST_A, loss=4.8)
    engine = sa.create_engine("sqlite:///" + str(home / "registry.db"))
    with engine.begin() as conn:
        for ref in (v2, v3):
            name, number = ref.split(":")
            vid = conn.execute(
                sa.text(
                    "select v.id from versions v join adapters a on a.id = v.adapter_id "
                    "where a.name = :n and v.number = :k"
                ),
                {"n": name, "k": int(number)},
            ).scalar()
            conn.execute(
                sa.text(
                    "insert into evaluations (version_id, data_digest, metrics, details, created_at) "
                    "values (:v, :d, :m, :x, '2024-01-01 00:00:00')"
                ),
                {
                    "v": vid,
                    "d": "a" * 64,
                    "m": json.dumps({"loss": float("nan")}),
                    "x": json.dumps({"task": "causal-lm"}),
                },
            )
    engine.dispose()
    assert cli("alias", "set", "t/a", "production", "1").exit_code == 0
    assert_clean_error(cli("alias", "set", "t/a", "production", "2"), "non-finite", "loss nan")
    assert_clean_error(cli("alias", "set", "t/b", "production", "1"), "non-finite")  # no holder to compare to
    assert cli("show", "t/a@production", "--json").json()["version"] == 1
    listing = cli("list", "--json")
    assert listing.exit_code == 0 and "NaN" not in listing.stdout
    rows = {r["ref"]: r for r in json.loads(listing.stdout)}
    assert rows[v2]["evaluation"]["loss"] is None and rows[v1]["evaluation"]["loss"] == 4.8
    assert "NaN" not in cli("show", v2, "--json").stdout


def test_nan_evaluation_refused_on_postgresql(tmp_path):
    import psycopg
    from adapterhub_file import FileStore

    from adapterhub import api
    from adapterhub.errors import InvalidInput
    from adapterhub.registry.registry import Registry

    name = "ah_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        reg = Registry(PG_ADMIN.rsplit("/", 1)[0] + "/" + name, FileStore(str(tmp_path / "store"))).ready()
        ref = api.push(reg, make_lora_dir(tmp_path / "a"), "t/a").ref
        with pytest.raises(InvalidInput, match="non-finite.*NaN/inf"):
            reg.add_evaluation(ref, DIGEST_A, {"loss": float("nan"), "perplexity": float("nan")}, {"task": "causal-lm"})
        assert reg.show(ref).evaluations == ()
        reg.add_evaluation(ref, DIGEST_A, {"loss": 1.5}, {"task": "causal-lm"})
        assert reg.show(ref).evaluations[0].metrics == {"loss": 1.5}
        # a SQLite registry written before the fix holds a NaN evaluation: copying it to PostgreSQL works
        # (the NaN evaluation is left behind, the finite one comes along)
        import sqlalchemy as sa

        local = Registry("sqlite:///" + str(tmp_path / "old.db"), FileStore(str(tmp_path / "old"))).ready()
        old = api.push(local, make_lora_dir(tmp_path / "b", seed=5), "t/b").ref
        local.add_evaluation(old, DIGEST_A, {"loss": 2.5}, {"task": "causal-lm"})
        with local.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "insert into evaluations (version_id, data_digest, metrics, details, created_at) "
                    "select version_id, :d, :m, '{}', created_at from evaluations"
                ),
                {"d": "b" * 64, "m": json.dumps({"loss": float("nan")})},
            )
        copied = api.copy(local, reg, old)
        evals = reg.show(copied.ref).evaluations
        assert [e.metrics for e in evals] == [{"loss": 2.5}]
        local.engine.dispose()
        reg.engine.dispose()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- 3. alias rm does not lower the gate -----------------------------------------------------------


def test_alias_rm_then_set_still_gated(cli, home, tmp_path):
    v1 = version(home, tmp_path, "t/a", 1, task="causal-lm")
    v2 = version(home, tmp_path, "t/a", 2, task="causal-lm")
    v3 = version(home, tmp_path, "t/a", 3, task="causal-lm")
    add_eval(home, v1, DIGEST_A, loss=4.775)
    add_eval(home, v2, DIGEST_A, loss=4.851)
    add_eval(home, v3, DIGEST_A, loss=4.7)
    assert cli("alias", "set", "t/a", "production", "1").exit_code == 0
    assert_clean_error(cli("alias", "set", "t/a", "production", "2"), "scores worse", "4.851 vs 4.775")
    assert cli("alias", "rm", "t/a", "production").exit_code == 0
    assert_clean_error(
        cli("alias", "set", "t/a", "production", "2"),
        "scores worse than the last production (removed) t/a:1",
        "4.851 vs 4.775",
    )
    assert_clean_error(cli("show", "t/a@production"), "production")
    # the same last holder may come back; a better one passes; --force --reason still overrides
    assert cli("alias", "set", "t/a", "production", "1").exit_code == 0
    assert cli("alias", "rm", "t/a", "production").exit_code == 0
    assert cli("alias", "set", "t/a", "production", "3").exit_code == 0
    assert cli("alias", "rm", "t/a", "production").exit_code == 0
    r = cli("alias", "set", "t/a", "production", "2", "--force", "--reason", "rollback", "--json")
    assert r.exit_code == 0 and "last production (removed) t/a:3" in r.json()["overridden"][0]


# -- 4. eval --task must not contradict the version ------------------------------------------------


def test_eval_task_that_contradicts_the_version_is_refused(cli, home, lm):
    ref = push_with_base(home, lm["good"], "t/lm", lm["base"])
    assert_clean_error(
        cli("eval", ref, "--base", lm["base"], "--data", lm["cls"], "--task", "seq-cls"),
        "--task seq-cls does not match",
        "causal-lm",
    )
    assert cli("show", ref, "--json").json()["evaluations"] == []
    assert_clean_error(
        cli("bench-latency", ref, "--base", lm["base"], "--task", "seq-cls", "--runs", "1"),
        "--task seq-cls does not match",
    )
    # the matching --task is harmless
    r = cli("eval", ref, "--base", lm["base"], "--data", lm["eval"], "--task", "causal-lm", "--json")
    assert r.exit_code == 0 and r.json()["stored"], r.output


# -- 5/6. gc ---------------------------------------------------------------------------------------


def _orphan_blob(home, tmp_path, seed):
    """Push a version, then drop its rows so its blobs are unreferenced; returns their blob paths."""
    import sqlalchemy as sa

    ref = _pushed(home, make_lora_dir(tmp_path / f"o{seed}", seed=seed), f"t/o{seed}")
    engine = sa.create_engine("sqlite:///" + str(home / "registry.db"))
    with engine.begin() as conn:
        digests = [r[0] for r in conn.execute(sa.text("select blob_digest from files"))]
        conn.execute(sa.text("delete from files"))
        conn.execute(sa.text("delete from versions"))
    engine.dispose()
    assert ref
    return [home / "blobs" / "sha256" / d[:2] / d[2:] for d in digests]


@pytest.mark.parametrize("grace", ["-5", "nan", "inf", "-inf"])
def test_gc_refuses_bad_grace(cli, home, tmp_path, grace):
    blobs = _orphan_blob(home, tmp_path, 1)
    assert_clean_error(cli("gc", "--grace", grace), "--grace")
    assert all(b.exists() for b in blobs)


def test_gc_skips_files_that_are_not_blobs(cli, home, tmp_path):
    blobs = _orphan_blob(home, tmp_path, 2)
    fan = blobs[0].parent
    (fan / ".DS_Store").write_text("x")
    (fan / "zz-backup~").write_text("x")
    old = time.time() - 3600
    for p in [*blobs, fan / ".DS_Store"]:
        os.utime(p, (old, old))
    r = cli("gc", "--grace", "0")
    assert r.exit_code == 0, r.output
    assert "skipped" in r.stdout and ".DS_Store" in r.stdout
    assert not any(b.exists() for b in blobs)
    assert (fan / ".DS_Store").read_text() == "x" and (fan / "zz-backup~").exists()
    j = cli("gc", "--grace", "0", "--json").json()
    assert sorted(j["skipped"]) == sorted([fan.name + ".DS_Store", fan.name + "zz-backup~"]) and not j["failed"]


def test_no_output_replaces_a_registry_home_even_with_force(cli, home, tmp_path):
    """merge, export and train write through outdir.check_out: a directory holding a registry (its
    registry.db or blob store) is never replaced, whatever the command."""
    from conftest import make_base_dir

    base = make_base_dir(tmp_path / "base")
    ad = make_lora_dir(tmp_path / "ad", seed=1)
    assert cli("push", ad, "acme/x", "--base", base).exit_code == 0

    def listing():  # SQLite's -wal/-shm files come and go with open connections
        return sorted(n for n in os.listdir(home) if not n.endswith(("-wal", "-shm")))

    before = listing()
    assert_clean_error(cli("merge", "acme/x", "--base", base, "--out", home, "--force"), "holds an adapterhub registry")
    assert_clean_error(
        cli("export", "acme/x", "--format", "peft", "--out", home, "--force"), "holds an adapterhub registry"
    )
    assert listing() == before and cli("show", "acme/x").exit_code == 0
