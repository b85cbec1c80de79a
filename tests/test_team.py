"""The team registry: PostgreSQL (127.0.0.1:5432) + S3 (moto's server over HTTP), named remotes,
copying versions between registries, concurrency and faults."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import assert_clean_error, make_lora_dir, run_subprocess
from s3server import TEST_SECRET_KEY

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def team(home, pg_url, s3_server, cli):
    """A remote named 'team' (PostgreSQL + an S3 bucket on the moto server)."""
    bucket = s3_server.new_bucket()
    store = f"s3://{bucket}/adapters"
    r = cli("remote", "add", "team", "--db", pg_url, "--store", store, "--endpoint-url", s3_server.endpoint_url)
    assert r.exit_code == 0, r.output
    return {"db": pg_url, "store": store, "bucket": bucket, "endpoint": s3_server.endpoint_url}


def team_env(team):
    from adapterhub.registry.remotes import with_endpoint

    return {
        "ADAPTERHUB_REGISTRY_DB": team["db"],
        "ADAPTERHUB_REGISTRY_STORE": with_endpoint(team["store"], team["endpoint"]),
    }


def test_remote_add_list_rm_and_credentials_never_printed(cli, home, pg_url, s3_server):
    bucket = s3_server.new_bucket()
    secret_db = pg_url.replace("postgres@", "postgres:hunter2-secret@")
    r = cli(
        "remote",
        "add",
        "team",
        "--db",
        secret_db,
        "--store",
        f"s3://{bucket}/x",
        "--endpoint-url",
        s3_server.endpoint_url,
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert "hunter2" not in r.output and "***" in r.json()["db"]
    listing = cli("remote", "list")
    assert "team" in listing.stdout and "hunter2" not in listing.output
    assert "hunter2" not in cli("remote", "list", "--json").stdout
    assert oct(os.stat(home / "config.json").st_mode & 0o777) == "0o600"
    assert_clean_error(cli("remote", "add", "team", "--db", pg_url, "--store", "s3://b/x"), "exists")
    assert_clean_error(cli("remote", "add", "Bad Name", "--db", pg_url, "--store", "s3://b/x"), "invalid remote name")
    assert_clean_error(cli("pull", "nope:acme/bot"), "no remote named 'nope'")
    # an unreachable database is refused at add time and not saved
    r = cli("remote", "add", "broken", "--db", "postgresql://postgres:pw-secret@127.0.0.1:1/x", "--store", "s3://b/x")
    assert_clean_error(r)
    assert "pw-secret" not in r.output
    assert "broken" not in cli("remote", "list").stdout
    assert cli("remote", "rm", "team").exit_code == 0
    assert "no remotes" in cli("remote", "list").stdout


def test_push_to_team_and_pull_on_a_clean_machine(cli, home, team, tmp_path):
    cli("push", make_lora_dir(tmp_path / "p"), "acme/base-bot")
    cli("push", make_lora_dir(tmp_path / "a", seed=3), "acme/bot", "--parent", "acme/base-bot", "--tag", "team=nlp")
    from adapterhub.api import local_registry

    local_registry(str(home)).add_evaluation("acme/bot", "sha256:" + "e" * 64, {"accuracy": 0.91})
    local = cli("show", "acme/bot", "--json").json()
    r = cli("push", "acme/bot:1", "--to", "team", "--alias", "production", "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["digest"] == local["digest"] and r.json()["created"]
    again = cli("push", "acme/bot:1", "--to", "team", "--json").json()
    assert not again["created"] and again["uploaded_bytes"] == 0  # identical content moves 0 bytes

    # a deployment machine: a fresh home with only the remote configured
    clean = tmp_path / "clean-home"
    env = {"ADAPTERHUB_HOME": str(clean)}
    assert (
        run_subprocess(
            "remote",
            "add",
            "team",
            "--db",
            team["db"],
            "--store",
            team["store"],
            "--endpoint-url",
            team["endpoint"],
            env=env,
        ).exit_code
        == 0
    )
    r = run_subprocess("pull", "team:acme/bot@production", "--out", tmp_path / "deploy", "--json", env=env)
    assert r.exit_code == 0, r.output
    out = r.json()
    assert out["digest"] == local["digest"] and out["copied"]["digest"] == local["digest"]
    for f in local["files"]:
        assert open(tmp_path / "deploy" / f["path"], "rb").read() == open(tmp_path / "a" / f["path"], "rb").read()
    pulled = json.loads(run_subprocess("show", "acme/bot", "--json", env=env).stdout)
    assert pulled["digest"] == local["digest"]
    assert [p["ref"] for p in pulled["parents"]] == ["acme/base-bot:1"]  # the parent came along
    assert pulled["tags"] == {"team": "nlp"}
    assert pulled["evaluations"][0]["metrics"] == {"accuracy": 0.91}
    # --from form, and the environment-variable form (no config at all)
    r = run_subprocess("pull", "acme/bot@production", "--from", "team", "--out", tmp_path / "d2", env=env)
    assert r.exit_code == 0, r.output
    env2 = {"ADAPTERHUB_HOME": str(tmp_path / "h3"), **team_env(team)}
    rows = json.loads(run_subprocess("list", "--json", env=env2).stdout)
    assert {r["ref"] for r in rows} == {"acme/bot:1", "acme/base-bot:1"}
    r = run_subprocess("pull", "acme/bot@production", "--out", tmp_path / "d3", env=env2)
    assert r.exit_code == 0, r.output
    assert run_subprocess("verify", env=env2).exit_code == 0


def test_pull_of_a_blob_corrupted_in_s3_names_it(cli, home, team, tmp_path, s3_server):
    cli("push", make_lora_dir(tmp_path / "a"), "acme/bot")
    cli("push", "acme/bot", "--to", "team")
    d = cli("show", "acme/bot", "--json").json()
    target = next(f for f in d["files"] if f["path"] == "adapter_model.safetensors")
    hexd = target["digest"][7:]
    s3_server.client().put_object(
        Bucket=team["bucket"], Key=f"adapters/blobs/sha256/{hexd[:2]}/{hexd[2:]}", Body=b"not the bytes you pushed"
    )
    clean = {"ADAPTERHUB_HOME": str(tmp_path / "clean"), **team_env(team)}
    r = run_subprocess("pull", "acme/bot", "--out", tmp_path / "out", env=clean)
    assert_clean_error(r, target["digest"], "corrupt")
    assert not (tmp_path / "out").exists()
    r = run_subprocess("verify", "--json", env=clean)
    assert r.exit_code == 1 and json.loads(r.stdout)["problems"][0]["blob"] == target["digest"]
    # copying into a fresh local registry verifies every blob on the way: nothing is imported
    fresh = tmp_path / "fresh"
    assert (
        cli(
            "--home",
            fresh,
            "remote",
            "add",
            "team",
            "--db",
            team["db"],
            "--store",
            team["store"],
            "--endpoint-url",
            team["endpoint"],
        ).exit_code
        == 0
    )
    r = cli("--home", fresh, "pull", "team:acme/bot", "--out", tmp_path / "out2")
    assert_clean_error(r, target["digest"], "corrupt")
    assert not (tmp_path / "out2").exists()
    assert cli("--home", fresh, "list", "--json").json() == []


PUSHER = r"""
import sys
from adapterhub import api
reg = api.open_registry()
src, count, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.stdin.readline()
for i in range(count):
    open(src + '/round.txt', 'w').write(f'{tag}-{i}')
    print(api.push(reg, src, 'acme/bot').version, flush=True)
"""


@pytest.mark.slow
def test_16_processes_x_5_pushes_postgres_s3(home, team, tmp_path):
    env = {**os.environ, **team_env(team)}
    procs = []
    for p in range(16):
        src = make_lora_dir(tmp_path / f"s{p}", seed=p)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", PUSHER, src, "5", str(p)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    numbers, errors = [], []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode:
            errors.append(err[-1500:])
        numbers += [int(x) for x in out.split()]
    assert errors == []
    assert sorted(numbers) == list(range(1, 81))
    r = run_subprocess("list", "acme/bot", "--json", env=team_env(team))
    rows = json.loads(r.stdout)
    assert [x["version"] for x in rows] == list(range(1, 81)) and len({x["digest"] for x in rows}) == 80


@pytest.mark.slow
def test_sigkill_during_push_leaves_nothing_half_visible(home, team, tmp_path):
    """20 pushes killed at random points: every visible version has all its blobs; gc cleans up."""
    from safetensors.numpy import save_file

    env = {**os.environ, **team_env(team)}
    rng = random.Random(1234)
    killed = 0
    for i in range(20):
        src = make_lora_dir(tmp_path / f"k{i}", seed=100 + i)
        save_file(
            {"w": np.random.default_rng(i).standard_normal(3_000_000).astype(np.float32)},
            os.path.join(src, "big.safetensors"),
        )  # 12 MB: a multipart upload
        p = subprocess.Popen(
            [sys.executable, "-m", "adapterhub", "push", src, "acme/killed"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, 2.5))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.wait()
    assert killed >= 5  # the kills really landed mid-push
    r = run_subprocess("verify", "--json", env=team_env(team))
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["problems"] == []
    gc = json.loads(run_subprocess("gc", "--grace", "0", "--json", env=team_env(team)).stdout)
    listed = json.loads(run_subprocess("list", "--json", env=team_env(team)).stdout) if report["versions"] else []
    # after gc the store holds exactly the blobs the visible versions reference
    from adapterhub.api import open_registry

    os.environ.update(team_env(team))
    try:
        reg = open_registry(str(home))
        stored = {d for d, _ in reg.store.iter_blobs()}
        referenced = {f.digest[7:] for v in listed for f in reg.show(v["ref"]).files}
    finally:
        for k in team_env(team):
            os.environ.pop(k, None)
    assert stored == referenced
    assert gc["removed_blobs"] + gc["removed_temp"] >= 0 and run_subprocess("verify", env=team_env(team)).exit_code == 0


def test_s3_server_stopped_mid_upload_then_retry_completes(home, team, tmp_path, s3_server):
    from safetensors.numpy import save_file

    from adapterhub import api
    from adapterhub.errors import AdapterhubError

    src = make_lora_dir(tmp_path / "a")
    save_file(
        {"w": np.random.default_rng(0).standard_normal(4_000_000).astype(np.float32)},
        os.path.join(src, "big.safetensors"),
    )
    reg = api.open_registry(str(home), remote="team")
    stopped = []

    def stop_after_first_bytes(n):
        if not stopped:
            stopped.append(n)
            s3_server.stop()

    try:
        with pytest.raises(AdapterhubError) as exc:
            api.push(reg, src, "acme/bot", progress=stop_after_first_bytes)
        msg = str(exc.value)
        assert "\n" not in msg and TEST_SECRET_KEY not in msg
    finally:
        s3_server.start()
    assert stopped
    with reg.read():
        assert reg.list() == []  # nothing visible
    pub = api.push(api.open_registry(str(home), remote="team"), src, "acme/bot")
    assert pub.version == 1 and pub.created
    assert run_subprocess("verify", env=team_env(team)).exit_code == 0


def test_db_upgrade_on_postgres(cli, home, team):
    r = cli("--home", home, "db", "upgrade", "--json")
    assert r.exit_code == 0
    import sqlalchemy as sa

    from adapterhub.registry.db import make_engine

    with make_engine(team["db"]).connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert {"versions", "blobs", "files", "aliases", "alias_events", "lineage", "evaluations", "tags"} <= tables


def test_deployment_pull_merged_from_team_on_a_clean_machine(cli, home, team, tmp_path):
    """`pull acme/bot@production --from team --merged --base BASE --out DIR` with only the remote configured
    gives a plain transformers model equal to peft's merge_and_unload."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file
    from tinymodels import save_tiny_llama_base
    from transformers import AutoModelForCausalLM

    base = save_tiny_llama_base(tmp_path / "base")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(tmp_path / "adapter")
    assert cli("push", tmp_path / "adapter", "acme/bot", "--base", base).exit_code == 0
    from adapterhub.api import local_registry

    local_registry(str(home)).add_evaluation("acme/bot", "sha256:" + "e" * 64, {"loss": 1.0})
    assert cli("push", "acme/bot:1", "--to", "team", "--alias", "production").exit_code == 0
    env = {"ADAPTERHUB_HOME": str(tmp_path / "deploy-home")}
    assert (
        run_subprocess(
            "remote",
            "add",
            "team",
            "--db",
            team["db"],
            "--store",
            team["store"],
            "--endpoint-url",
            team["endpoint"],
            env=env,
        ).exit_code
        == 0
    )
    r = run_subprocess(
        "pull",
        "acme/bot@production",
        "--from",
        "team",
        "--merged",
        "--base",
        base,
        "--out",
        tmp_path / "model",
        "--json",
        env=env,
    )
    assert r.exit_code == 0, r.output
    expected = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter"
    ).merge_and_unload()
    got = load_file(str(tmp_path / "model" / "model.safetensors"))
    for name, tensor in expected.state_dict().items():
        assert torch.equal(got[name], tensor), name
    AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # a plain transformers model directory
