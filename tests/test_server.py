"""`adapterhub serve` over SQLite + files, driven by the real CLI through an http:// remote: the team
workflow, identities that cannot be forged, the promotion gate on the server, the audit log, and the
least-privilege deployment path."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from conftest import assert_clean_error, make_lora_dir, run_subprocess
from hfcache import add_snapshot, use_offline_cache
from serverproc import RegistryServer


def make_token(server_home, name, scope, namespace=None, expires=None):
    args = ["--home", server_home, "token", "create", "--name", name, "--scope", scope, "--json"]
    if namespace:
        args += ["--namespace", namespace]
    if expires:
        args += ["--expires", expires]
    r = run_subprocess(*args)
    assert r.exit_code == 0, r.output
    return r.json()["token"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A server over a fresh SQLite registry, with one token per scope (+ a read token bound to acme)."""
    server_home = str(tmp_path_factory.mktemp("server-home"))
    tokens = {scope: make_token(server_home, f"{scope}-bot", scope) for scope in ("read", "write", "promote", "admin")}
    tokens["acme-read"] = make_token(server_home, "acme-reader", "read", namespace="acme")
    tokens["other-write"] = make_token(server_home, "other-writer", "write", namespace="other")
    with RegistryServer(env={"ADAPTERHUB_HOME": server_home}) as srv:
        yield {"url": srv.url, "home": server_home, "tokens": tokens, "server": srv}


@pytest.fixture
def as_(hub, cli, monkeypatch):
    """``as_("write")``: the CLI's remote 'hub' uses that token (through $HUB_TOKEN)."""
    assert cli("remote", "add", "hub", hub["url"], "--token-env", "HUB_TOKEN").exit_code == 0

    def use(who):
        monkeypatch.setenv("HUB_TOKEN", hub["tokens"][who])
        return cli

    return use


def audit(hub, *args):
    r = run_subprocess("--home", hub["home"], "audit", "--json", "--limit", "500", *args)
    assert r.exit_code == 0, r.output
    return r.json()


def test_serve_logs_one_ready_line_and_answers_probes_and_docs(hub):
    assert hub["server"].first_line.startswith(f"adapterhub serve: listening on {hub['url']}")
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(hub["url"] + path) as r:
            assert json.load(r)["ok"] is True
    with urllib.request.urlopen(hub["url"] + "/openapi.json") as r:
        paths = json.load(r)["paths"]
    assert {"/api/v1/versions", "/api/v1/aliases", "/api/v1/blobs/{digest}"} <= set(paths)
    with urllib.request.urlopen(hub["url"] + "/docs") as r:
        assert b"swagger" in r.read().lower()


def test_team_workflow_through_the_server(as_, hub, tmp_path, monkeypatch):
    # a forged identity changes nothing: the actor is the token's name
    monkeypatch.setenv("ADAPTERHUB_USER", "mallory")
    src = make_lora_dir(tmp_path / "a1", seed=1)
    cli = as_("write")
    r = cli("push", src, "acme/chat", "--to", "hub", "--json")
    assert r.exit_code == 0, r.output
    pushed = r.json()
    assert pushed["ref"] == "acme/chat:1" and pushed["created"] is True

    r = cli("show", "hub:acme/chat:1", "--json")
    assert r.exit_code == 0, r.output
    shown = r.json()
    assert shown["created_by"] == "write-bot" and shown["digest"] == pushed["digest"]

    # a local version copied up keeps its digest; pushing it again is idempotent
    assert cli("push", make_lora_dir(tmp_path / "a2", seed=2), "acme/chat").exit_code == 0
    r = cli("push", "acme/chat:1", "--to", "hub", "--json")  # local acme/chat:1 is the seed-2 adapter
    assert r.exit_code == 0, r.output
    assert r.json()["ref"] == "acme/chat:2"
    assert cli("push", "acme/chat:1", "--to", "hub", "--json").json()["created"] is False

    r = cli("list", "--from", "hub", "--json")
    assert [row["ref"] for row in r.json()] == ["acme/chat:1", "acme/chat:2"]

    # pull into a fresh local registry, verified file by file
    r = cli("pull", "hub:acme/chat:1", "--out", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.output
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "a1" / name).read_bytes()

    assert cli("tag", "hub:acme/chat:1", "stage=canary").exit_code == 0
    assert cli("show", "hub:acme/chat:1", "--json").json()["tags"] == {"stage": "canary"}
    assert cli("alias", "set", "hub:acme/chat", "staging", "2").exit_code == 0
    r = cli("alias", "history", "hub:acme/chat", "staging", "--json")
    assert [(e["actor"], e["to"]) for e in r.json()] == [("write-bot", 2)]
    r = cli("lineage", "hub:acme/chat:2", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["root"] == "acme/chat:2"
    r = cli("verify", "hub:acme/chat:1", "--json")
    assert r.exit_code == 0 and r.json()["ok"] is True

    events = audit(hub, "--actor", "write-bot")
    actions = [(e["action"], e["target"], e["status"]) for e in events]
    assert ("push", "acme/chat:1", 200) in actions and ("alias.set", "acme/chat@staging", 200) in actions
    assert ("tag", "acme/chat:1", 200) in actions
    assert not any(e["actor"] == "mallory" for e in audit(hub))


def test_push_hf_through_the_server_keeps_the_imported_from_edge(as_, tmp_path, monkeypatch):
    """``push hf://... --to REMOTE``: the external edge (repo id, commit) crosses the HTTP API, and a pull
    back into a local registry keeps it."""
    cache = str(tmp_path / "hf-cache")
    sha = add_snapshot(cache, "acme-org/chat-lora", make_lora_dir(tmp_path / "upstream", seed=7))
    use_offline_cache(monkeypatch, cache)
    cli = as_("write")
    r = cli("push", "hf://acme-org/chat-lora", "acme/imported", "--to", "hub", "--json")
    assert r.exit_code == 0, r.output
    want = {
        "relation": "imported_from",
        "ref": f"hf://acme-org/chat-lora@{sha}",
        "details": {"repo": "acme-org/chat-lora", "revision": sha},
    }
    for ref in ("hub:acme/imported:1", "acme/imported:1"):  # the second after the pull copied it here
        if ref == "acme/imported:1":
            assert cli("pull", "hub:acme/imported:1").exit_code == 0
        shown = cli("show", ref, "--json").json()
        assert shown["parents"], (ref, shown)
        edge = shown["parents"][0]
        assert {k: edge[k] for k in want} == want and edge["external"], edge
        assert f"imported_from hf://acme-org/chat-lora@{sha}" in cli("lineage", ref).stdout


def test_promotion_needs_the_promote_scope_and_passes_the_gate_on_the_server(as_, hub, tmp_path):
    cli = as_("write")
    assert cli("push", make_lora_dir(tmp_path / "p", seed=5), "acme/prod", "--to", "hub").exit_code == 0
    r = cli("alias", "set", "hub:acme/prod", "production", "1")
    assert_clean_error(r, "scope 'write'", "needs scope 'promote'")
    cli = as_("promote")
    r = cli("alias", "set", "hub:acme/prod", "production", "1")
    assert_clean_error(r, "refusing to move acme/prod@production", "has no evaluation")
    r = cli("alias", "set", "hub:acme/prod", "production", "1", "--force", "--reason", "hotfix INC-7")
    assert r.exit_code == 0, r.output
    hist = cli("alias", "history", "hub:acme/prod", "production", "--json").json()
    assert hist[-1]["actor"] == "promote-bot" and "hotfix INC-7" in hist[-1]["reason"]
    assert "forced past the promotion gate" in hist[-1]["reason"]
    # the write token may not remove it either
    assert_clean_error(as_("write")("alias", "rm", "hub:acme/prod", "production"), "needs scope 'promote'")
    refused = [e for e in audit(hub, "--action", "alias.set") if e["status"] == 403]
    assert any(e["actor"] == "write-bot" and e["target"] == "acme/prod@production" for e in refused)


def test_evaluation_over_the_server_opens_the_gate(as_, hub, tmp_path):
    from adapterhub.registry.client import HttpRegistry

    cli = as_("write")
    assert cli("push", make_lora_dir(tmp_path / "e", seed=6), "acme/gated", "--to", "hub").exit_code == 0
    HttpRegistry(hub["url"], hub["tokens"]["write"], "hub").add_evaluation(
        "acme/gated:1", "sha256:" + "a" * 64, {"loss": 1.5}, {"task": "causal-lm"}
    )
    assert as_("promote")("alias", "set", "hub:acme/gated", "production", "1").exit_code == 0
    events = audit(hub, "--action", "eval")
    assert events[0]["actor"] == "write-bot" and events[0]["target"] == "acme/gated:1"


def test_the_server_client_shows_the_same_typed_version_as_the_registry_it_serves(as_, hub, tmp_path):
    """``HttpRegistry.show`` reads the server's JSON back into the :class:`VersionInfo` that the server's own
    ``Registry.show`` built: the same value, typed."""
    from adapterhub.api import local_registry
    from adapterhub.registry.client import HttpRegistry

    cli = as_("write")
    assert cli("push", make_lora_dir(tmp_path / "t", seed=12), "acme/typed", "--to", "hub").exit_code == 0
    client = HttpRegistry(hub["url"], hub["tokens"]["admin"], "hub", remote="hub")
    client.set_tags("hub:acme/typed:1", {"k": "v"})
    server_side = local_registry(hub["home"])
    try:
        assert client.show("hub:acme/typed:1") == server_side.show("acme/typed:1")
    finally:
        server_side.close()
    shown = client.show("acme/typed:1")
    assert shown.tags == {"k": "v"} and shown.files[0].digest.startswith("sha256:") and shown.parents == ()


def test_read_token_bound_to_a_namespace_sees_only_it(as_, hub, tmp_path):
    writer = as_("write")
    assert writer("push", make_lora_dir(tmp_path / "x", seed=7), "acme/seen", "--to", "hub").exit_code == 0
    assert writer("push", make_lora_dir(tmp_path / "y", seed=8), "secret/hidden", "--to", "hub").exit_code == 0
    cli = as_("acme-read")
    names = {row["name"] for row in cli("list", "--from", "hub", "--json").json()}
    assert "acme/seen" in names and not any(n.startswith("secret/") for n in names)
    assert_clean_error(cli("show", "hub:secret/hidden:1"), "bound to namespace 'acme'")
    digest = as_("write")("show", "hub:secret/hidden:1", "--json").json()["digest"]
    assert_clean_error(as_("acme-read")("show", f"hub:{digest}"), "no version with digest")
    assert_clean_error(cli("pull", "hub:secret/hidden:1", "--out", tmp_path / "o"), "bound to namespace 'acme'")
    assert not (tmp_path / "o").exists()
    assert_clean_error(
        cli("push", make_lora_dir(tmp_path / "z", seed=9), "acme/new", "--to", "hub"), "needs scope 'write'"
    )
    # a write token of another namespace cannot push into acme
    assert_clean_error(
        as_("other-write")("push", make_lora_dir(tmp_path / "w", seed=10), "acme/chat", "--to", "hub"),
        "bound to namespace 'other'",
    )


def test_deployment_with_a_read_token_pulls_a_merged_model(as_, hub, tmp_path):
    """README's least-privilege path: admin creates a read token bound to acme; a pipeline with only that
    token and the base pulls acme/deploy@production merged, equal to peft's merge_and_unload."""
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
    cli = as_("promote")
    assert cli("push", tmp_path / "adapter", "acme/deploy", "--base", base, "--to", "hub").exit_code == 0
    r = cli("alias", "set", "hub:acme/deploy", "production", "1", "--force", "--reason", "first release")
    assert r.exit_code == 0, r.output
    r = run_subprocess(
        "--home",
        hub["home"],
        "token",
        "create",
        "--name",
        "deploy-pipeline",
        "--scope",
        "read",
        "--namespace",
        "acme",
        "--expires",
        "90d",
        "--json",
    )
    token = r.json()["token"]
    env = {"ADAPTERHUB_HOME": str(tmp_path / "pipeline-home"), "DEPLOY_TOKEN": token}
    assert run_subprocess("remote", "add", "hub", hub["url"], "--token-env", "DEPLOY_TOKEN", env=env).exit_code == 0
    r = run_subprocess(
        "pull",
        "acme/deploy@production",
        "--from",
        "hub",
        "--merged",
        "--base",
        base,
        "--out",
        tmp_path / "model",
        "--json",
        env=env,
    )
    assert r.exit_code == 0, r.output
    assert token not in r.output
    expected = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter"
    ).merge_and_unload()
    got = load_file(str(tmp_path / "model" / "model.safetensors"))
    for name, tensor in expected.state_dict().items():
        assert torch.equal(got[name], tensor), name


def test_login_stores_the_token_privately_and_never_echoes_it(hub, cli, home):
    assert cli("remote", "add", "hub2", hub["url"]).exit_code == 0
    token = hub["tokens"]["read"]
    r = cli("login", "hub2", input=token + "\n")
    assert r.exit_code == 0, r.output
    assert "read-bot" in r.output and token not in r.output
    creds = os.path.join(str(home), "credentials.json")
    assert oct(os.stat(creds).st_mode & 0o777) == "0o600"
    assert token not in (home / "config.json").read_text()
    assert cli("list", "--from", "hub2").exit_code == 0
    assert_clean_error(
        cli("login", "hub2", input="ahub_0000000000000000_" + "x" * 43 + "\n"), "token missing, expired or revoked"
    )
    assert cli("logout", "hub2").exit_code == 0
    assert_clean_error(cli("list", "--from", "hub2"), "token missing, expired or revoked")


def test_token_list_revoke_and_admin_over_the_api(as_, hub, tmp_path):
    cli = as_("admin")
    r = cli("token", "create", "--name", "temp", "--scope", "write", "--remote", "hub", "--json")
    assert r.exit_code == 0, r.output
    temp = r.json()
    assert set(temp) == {"name", "scope", "namespace", "expires_at", "token"}
    r = cli("token", "list", "--remote", "hub", "--json")
    rows = r.json()
    assert "temp" in {row["name"] for row in rows}
    assert temp["token"] not in r.output and all("token" not in row for row in rows)
    assert cli("token", "revoke", "temp", "--remote", "hub").exit_code == 0
    from adapterhub.registry.client import HttpRegistry
    from adapterhub.registry.tokens import AuthError

    with pytest.raises(AuthError, match="token missing, expired or revoked"):
        HttpRegistry(hub["url"], temp["token"], "hub").list()
    # a non-admin cannot manage tokens or read the audit log
    assert_clean_error(as_("promote")("token", "list", "--remote", "hub"), "needs scope 'admin'")
    assert_clean_error(as_("write")("audit", "--remote", "hub"), "needs scope 'admin'")
    r = as_("admin")("audit", "--remote", "hub", "--json")
    assert r.exit_code == 0 and any(e["action"] == "token.revoke" and e["target"] == "temp" for e in r.json())
    assert not any(temp["token"] in json.dumps(e) for e in r.json())


def test_blobs_stream_from_a_file_store_with_http_range(as_, hub, tmp_path):
    import http.client
    import urllib.parse

    src = make_lora_dir(tmp_path / "r", seed=11)
    assert as_("write")("push", src, "acme/ranged", "--to", "hub").exit_code == 0
    info = as_("read")("show", "hub:acme/ranged:1", "--json").json()
    f = next(f for f in info["files"] if f["path"] == "adapter_model.safetensors")
    data = (tmp_path / "r" / "adapter_model.safetensors").read_bytes()
    u = urllib.parse.urlparse(hub["url"])
    conn = http.client.HTTPConnection(u.hostname, u.port)
    conn.request(
        "GET",
        f"/api/v1/blobs/{f['digest'][7:]}",
        headers={"Authorization": f"Bearer {hub['tokens']['read']}", "Range": "bytes=8-99"},
    )
    r = conn.getresponse()
    assert r.status == 206 and r.read() == data[8:100]
    conn.request(
        "GET", f"/api/v1/blobs/{f['digest'][7:]}", headers={"Authorization": f"Bearer {hub['tokens']['acme-read']}"}
    )
    r = conn.getresponse()
    assert r.status == 200 and r.read() == data
    conn.request("GET", f"/api/v1/blobs/{f['digest'][7:]}")
    r = conn.getresponse()
    assert r.status == 401 and "token missing" in json.loads(r.read())["error"]


def test_compare_and_eval_work_on_server_refs(as_, hub, tmp_path):
    cli = as_("write")
    assert cli("push", make_lora_dir(tmp_path / "c1", seed=12, r=4), "acme/cmp", "--to", "hub").exit_code == 0
    assert cli("push", make_lora_dir(tmp_path / "c2", seed=13, r=8), "acme/cmp", "--to", "hub").exit_code == 0
    r = cli("compare", "hub:acme/cmp:1", "hub:acme/cmp:2", "--json")
    assert r.exit_code == 0, r.output
    rows = {c["key"]: c for c in r.json()["config"]}
    assert rows["r"]["a"] == 4 and rows["r"]["b"] == 8
    assert_clean_error(cli("compare", "hub:acme/cmp:1", "acme/cmp:2"), "different registries")


def test_serve_refuses_an_unreachable_registry_in_one_line(tmp_path):
    env = {
        "ADAPTERHUB_REGISTRY_DB": "postgresql://nobody:s3cr3t@127.0.0.1:1/none",
        "ADAPTERHUB_REGISTRY_STORE": f"file://{tmp_path}/store",
    }
    r = run_subprocess("serve", "--port", "0", env=env, timeout=60)
    assert_clean_error(r)
    assert "s3cr3t" not in r.output
