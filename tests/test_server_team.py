"""`adapterhub serve` for a team: two server processes over one PostgreSQL + S3 (moto's server) behave
as one registry; blobs come straight from S3 through presigned URLs; 16 processes x 5 pushes through both
servers give 80 consecutive versions; a server killed mid-push or mid-pull leaves nothing half-visible and
the retried command completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import assert_clean_error, make_lora_dir, run_subprocess
from serverproc import RegistryServer
from tcpproxy import TcpProxy

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def team_servers(pg_url, s3_server, tmp_path):
    from s3server import aws_test_env

    from adapterhub.registry.remotes import with_endpoint

    bucket = s3_server.new_bucket()
    env = {
        "ADAPTERHUB_REGISTRY_DB": pg_url,
        "ADAPTERHUB_REGISTRY_STORE": with_endpoint(f"s3://{bucket}/adapters", s3_server.endpoint_url),
        "ADAPTERHUB_HOME": str(tmp_path / "server-home"),
        **aws_test_env(),
    }
    token = run_subprocess("token", "create", "--name", "ci", "--scope", "promote", "--json", env=env).json()["token"]
    a, b = RegistryServer(env=env, workers=2), RegistryServer(env=env)
    a.start()
    b.start()
    try:
        yield {"a": a, "b": b, "token": token, "env": env}
    finally:
        a.stop()
        b.stop()


def client_env(tmp_path, servers, name="client"):
    env = {"ADAPTERHUB_HOME": str(tmp_path / name), "HUB_TOKEN": servers["token"]}
    for remote, srv in (("hub-a", servers["a"]), ("hub-b", servers["b"])):
        r = run_subprocess("remote", "add", remote, srv.url, "--token-env", "HUB_TOKEN", env=env)
        assert r.exit_code == 0, r.output
    return env


def test_two_servers_are_one_registry_and_blobs_come_from_s3(team_servers, tmp_path, s3_server):
    env = client_env(tmp_path, team_servers)
    src = make_lora_dir(tmp_path / "a", seed=1)
    r = run_subprocess("push", src, "acme/chat", "--to", "hub-a", "--json", env=env)
    assert r.exit_code == 0, r.output
    r = run_subprocess("show", "hub-b:acme/chat:1", "--json", env=env)
    assert r.exit_code == 0 and r.json()["created_by"] == "ci"
    from adapterhub.registry.client import HttpRegistry

    hub = HttpRegistry(team_servers["b"].url, team_servers["token"], "hub-b")
    digests = [f["digest"][7:] for f in r.json()["files"]]
    located = hub._json("POST", "/api/v1/blobs/locate", body={"digests": digests})["blobs"]
    assert all(v["url"].startswith(s3_server.endpoint_url) for v in located.values())  # straight from S3
    r = run_subprocess("pull", "hub-b:acme/chat:1", "--out", tmp_path / "out", env=env)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "a" / "adapter_model.safetensors"
    ).read_bytes()
    r = run_subprocess("verify", "--json", env=team_servers["env"])
    assert r.exit_code == 0 and r.json()["ok"]


PUSHER = textwrap.dedent("""
    import sys
    from adapterhub.cli import cli
    remote, *dirs = sys.argv[1:]
    for d in dirs:
        try:
            cli.main(["push", d, "acme/load", "--to", remote], standalone_mode=False)
        except SystemExit as e:
            if e.code:
                raise
""")


def test_16_processes_x_5_pushes_through_two_servers_give_80_consecutive_versions(team_servers, tmp_path):
    env = client_env(tmp_path, team_servers)
    dirs = [make_lora_dir(tmp_path / f"d{i}", seed=100 + i, r=2, hidden=8, layers=1) for i in range(80)]
    procs = []
    for p in range(16):
        remote = "hub-a" if p % 2 else "hub-b"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", PUSHER, remote, *dirs[p * 5 : (p + 1) * 5]],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    r = run_subprocess("list", "acme/load", "--from", "hub-a", "--json", env=env)
    rows = r.json()
    assert [row["version"] for row in rows] == list(range(1, 81))
    assert len({row["digest"] for row in rows}) == 80
    assert {row["ref"] for row in rows} == {f"acme/load:{i}" for i in range(1, 81)}


def test_server_killed_mid_push_leaves_nothing_and_the_retry_completes(tmp_path):
    """A 40 MB blob pushed through a slow link to the server; the server is SIGKILLed half way."""
    import numpy as np
    from safetensors.numpy import save_file

    home = tmp_path / "server-home"
    token = run_subprocess("--home", home, "token", "create", "--name", "ci", "--scope", "write", "--json").json()[
        "token"
    ]
    srv = RegistryServer(env={"ADAPTERHUB_HOME": str(home)}).start()
    proxy = TcpProxy("127.0.0.1", srv.port).start()
    try:
        src = make_lora_dir(tmp_path / "big", seed=3)
        rng = np.random.default_rng(0)
        save_file(
            {
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.standard_normal(
                    (4, 16), dtype=np.float32
                ),
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": rng.standard_normal(
                    (16, 4), dtype=np.float32
                ),
                "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight": rng.standard_normal(
                    (4, 2_500_000), dtype=np.float32
                ),
                "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight": rng.standard_normal(
                    (16, 4), dtype=np.float32
                ),
            },
            os.path.join(src, "adapter_model.safetensors"),
        )
        cfg = json.loads((tmp_path / "big" / "adapter_config.json").read_text())
        cfg["target_modules"] = ["q_proj"]
        (tmp_path / "big" / "adapter_config.json").write_text(json.dumps(cfg))
        env = {"ADAPTERHUB_HOME": str(tmp_path / "client"), "HUB_TOKEN": token}
        assert (
            run_subprocess(
                "remote", "add", "hub", f"http://{proxy.address}", "--token-env", "HUB_TOKEN", env=env
            ).exit_code
            == 0
        )
        proxy.rate = 8 * 1024**2  # 40 MB take ~5 s
        p = subprocess.Popen(
            [sys.executable, "-m", "adapterhub", "push", src, "acme/big", "--to", "hub"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while proxy.bytes_forwarded < 8 * 1024**2 and time.monotonic() < deadline:
            time.sleep(0.05)
        srv.kill()
        proxy.cut()
        out, err = p.communicate(timeout=120)
        assert p.returncode == 1, (out, err)
        assert err.count("Error:") == 1 and "Traceback" not in err, err
        srv.start()
        proxy.rate = None
        r = run_subprocess("list", "--from", "hub", "--json", env=env)
        assert r.exit_code == 0 and r.json() == []  # nothing half-visible
        r = run_subprocess("push", src, "acme/big", "--to", "hub", "--json", env=env)
        assert r.exit_code == 0, r.output
        assert r.json()["ref"] == "acme/big:1"
        r = run_subprocess("--home", home, "verify", "--json")
        assert r.exit_code == 0 and r.json()["ok"], r.output
        # and killed mid-pull: nothing at --out, nothing in the local registry, then the retry completes
        puller = {**env, "ADAPTERHUB_HOME": str(tmp_path / "puller")}
        assert (
            run_subprocess(
                "remote", "add", "hub", f"http://{proxy.address}", "--token-env", "HUB_TOKEN", env=puller
            ).exit_code
            == 0
        )
        proxy.rate = 8 * 1024**2
        out_dir = tmp_path / "pulled"
        p = subprocess.Popen(
            [sys.executable, "-m", "adapterhub", "pull", "hub:acme/big:1", "--out", str(out_dir)],
            env={**os.environ, **puller},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        start = proxy.bytes_forwarded
        deadline = time.monotonic() + 60
        while proxy.bytes_forwarded - start < 8 * 1024**2 and time.monotonic() < deadline:
            time.sleep(0.05)
        srv.kill()
        proxy.cut()
        out, err = p.communicate(timeout=120)
        assert p.returncode == 1 and err.count("Error:") == 1 and "Traceback" not in err, err
        assert "broke off" in err or "cannot reach" in err, err
        assert not out_dir.exists()
        assert run_subprocess("list", "--json", env=puller).json() == []
        srv.start()
        proxy.rate = None
        r = run_subprocess("pull", "hub:acme/big:1", "--out", out_dir, env=puller)
        assert r.exit_code == 0, r.output
        assert (out_dir / "adapter_model.safetensors").read_bytes() == (
            tmp_path / "big" / "adapter_model.safetensors"
        ).read_bytes()
    finally:
        proxy.stop()
        srv.stop()


def test_http_remote_bad_input(cli, home, tmp_path):
    assert_clean_error(cli("remote", "add", "hub", "ftp://x"), "invalid server URL")
    assert_clean_error(cli("remote", "add", "hub", "http://user:pw@host:1"), "without credentials")
    assert "pw" not in cli("remote", "add", "hub", "http://user:pw@host:1").output
    assert_clean_error(
        cli("remote", "add", "hub", "http://127.0.0.1:9", "--token-env", "A B", "--no-check"), "invalid --token-env"
    )
    assert_clean_error(cli("remote", "add", "hub", "http://127.0.0.1:9"), "cannot reach the registry server")
    assert cli("remote", "add", "hub", "http://127.0.0.1:9", "--no-check").exit_code == 0
    assert_clean_error(cli("pull", "hub:acme/x:1", "--out", tmp_path / "o"), "cannot reach the registry server")
    assert not (tmp_path / "o").exists()
