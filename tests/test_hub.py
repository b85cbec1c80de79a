"""Hugging Face Hub ids as bases (``--base ORG/NAME[@REVISION]``) and ``push hf://ORG/NAME[@REVISION]``, tested
as offline clusters run: a Hugging Face cache laid out by huggingface_hub's conventions (tests/hfcache.py),
filled with a tiny Llama and a real PEFT adapter, and HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import assert_clean_error, make_base_dir, run_subprocess
from hfcache import add_snapshot, use_offline_cache
from tinymodels import save_tiny_llama_base

BASE_ID, LORA_ID = "acme-org/tiny-llama", "acme-org/tiny-lora"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The cache: the base at ``main`` and (other weights) at ``v2``; a PEFT LoRA of the base at ``main``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("hf")
    cache = str(root / "cache")
    base = save_tiny_llama_base(root / "tiny-llama")
    v2 = str(root / "tiny-llama-v2")
    shutil.copytree(base, v2)
    weights = load_file(os.path.join(v2, "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"] * 2
    save_file(weights, os.path.join(v2, "model.safetensors"), metadata={"format": "pt"})
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    torch.manual_seed(0)
    model.save_pretrained(str(root / "lora"))
    return {
        "cache": cache,
        "base": base,
        "v2": v2,
        "main": add_snapshot(cache, BASE_ID, base),
        "v2_sha": add_snapshot(cache, BASE_ID, v2, ref="v2"),
        "lora_sha": add_snapshot(cache, LORA_ID, str(root / "lora")),
    }


@pytest.fixture
def hf(hub, monkeypatch):
    use_offline_cache(monkeypatch, hub["cache"])
    return hub


def fp(cli, spec):
    r = cli("fingerprint", spec, "--json")
    assert r.exit_code == 0, r.output
    return r.json()["fingerprint"]


def test_fingerprint_of_an_id_is_the_directory_s_and_revision_picks_the_snapshot(cli, hf, tmp_path, monkeypatch):
    main, v2 = fp(cli, hf["base"]), fp(cli, hf["v2"])
    assert main != v2
    assert fp(cli, BASE_ID) == main
    assert fp(cli, f"{BASE_ID}@main") == main
    assert fp(cli, f"{BASE_ID}@{hf['main']}") == main
    assert fp(cli, f"{BASE_ID}@v2") == v2
    assert fp(cli, f"{BASE_ID}@{hf['v2_sha']}") == v2
    # a local directory of the same spelling wins over the id
    monkeypatch.chdir(tmp_path)
    shutil.copytree(hf["v2"], tmp_path / BASE_ID)
    assert fp(cli, BASE_ID) == v2


def test_the_python_api_takes_ids_too(hf, home):
    from adapterhub import api

    assert api.fingerprint(f"{BASE_ID}@v2", str(home)).digest == api.fingerprint(hf["v2"], str(home)).digest
    pub = api.push(api.open_registry(str(home)), f"hf://{LORA_ID}", "acme/api", base=BASE_ID, home=str(home))
    assert api.open_registry(str(home)).show(pub.ref).base.name == f"{BASE_ID}@{hf['main']}"


def test_the_environment_is_honoured_by_the_real_command(hf):
    r = run_subprocess("fingerprint", f"{BASE_ID}@v2", "--json")
    assert r.exit_code == 0, r.output
    r2 = run_subprocess("fingerprint", hf["v2"], "--json")
    assert r.json()["fingerprint"] == r2.json()["fingerprint"]


def test_train_and_merge_with_an_id_record_the_id_and_commit(cli, hf, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"text": "the cat sat on the mat and it was very happy"}) + "\n" for _ in range(8))
    )
    r = cli(
        "train",
        "--base",
        BASE_ID,
        "--method",
        "lora",
        "--task",
        "causal-lm",
        "--data",
        data,
        "--out",
        tmp_path / "adapter",
        "--set",
        "r=2",
        "--set",
        "target_modules=q_proj,v_proj",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--push",
        "acme/hubbed",
        "--json",
    )
    assert r.exit_code == 0, r.output
    info = cli("show", "acme/hubbed:1", "--json").json()
    assert info["base"]["name"] == f"{BASE_ID}@{hf['main']}"
    assert info["base_fingerprint"] == fp(cli, hf["base"])
    peft_cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert peft_cfg["base_model_name_or_path"] == BASE_ID  # what peft itself loads
    r = cli("merge", "acme/hubbed:1", "--base", BASE_ID, "--out", tmp_path / "merged", "--json")
    assert r.exit_code == 0, r.output
    assert os.path.isfile(tmp_path / "merged" / "model.safetensors")
    # the other revision is another base: refused, naming the id and commit the adapter was trained on
    r = cli("merge", "acme/hubbed:1", "--base", f"{BASE_ID}@v2", "--out", tmp_path / "merged2")
    assert_clean_error(r, "base mismatch", f"{BASE_ID}@{hf['main']}")


def test_push_hf_imports_a_peft_repo_with_its_commit_in_lineage(cli, hf):
    r = cli("push", f"hf://{LORA_ID}", "acme/imported", "--base", BASE_ID, "--json")
    assert r.exit_code == 0, r.output
    info = cli("show", "acme/imported:1", "--json").json()
    edge = info["parents"][0]
    assert edge["relation"] == "imported_from" and edge["external"]
    assert edge["ref"] == f"hf://{LORA_ID}@{hf['lora_sha']}"
    assert edge["details"] == {"repo": LORA_ID, "revision": hf["lora_sha"]}
    assert info["base"]["name"] == f"{BASE_ID}@{hf['main']}"
    assert {f["path"] for f in info["files"]} >= {"adapter_config.json", "adapter_model.safetensors"}
    text = cli("lineage", "acme/imported:1").stdout
    assert f"imported_from hf://{LORA_ID}@{hf['lora_sha']}" in text, text
    # the same commit again: the same version
    r = cli("push", f"hf://{LORA_ID}@{hf['lora_sha']}", "acme/imported", "--base", BASE_ID, "--json")
    assert r.exit_code == 0 and r.json()["ref"] == "acme/imported:1", r.output


def test_push_hf_takes_pickle_weights_only_with_import_bin(cli, hf, tmp_path):
    import torch
    from safetensors.torch import load_file

    snap = os.path.join(hf["cache"], "models--acme-org--tiny-lora", "snapshots", hf["lora_sha"])
    src = tmp_path / "bin-lora"
    src.mkdir()
    shutil.copyfile(os.path.join(snap, "adapter_config.json"), src / "adapter_config.json")
    torch.save(load_file(os.path.join(snap, "adapter_model.safetensors")), src / "adapter_model.bin")
    (src / "training_args.bin").write_bytes(b"a pickle of arguments: never fetched")
    sha = add_snapshot(hf["cache"], "acme-org/bin-lora", str(src))
    r = cli("push", "hf://acme-org/bin-lora", "acme/bin")
    assert_clean_error(r, "hf://acme-org/bin-lora", "no safetensors weights", "--import-bin", code=1)
    r = cli("push", "hf://acme-org/bin-lora", "acme/bin", "--import-bin", "--base", BASE_ID, "--json")
    assert r.exit_code == 0, r.output
    info = cli("show", "acme/bin:1", "--json").json()
    assert "adapter_model.safetensors" in {f["path"] for f in info["files"]}
    assert not any(f["path"].endswith(".bin") for f in info["files"])
    assert info["parents"][0]["ref"] == f"hf://acme-org/bin-lora@{sha}"
    # a broken repo: the push's own check, naming the repo (not the scratch copy)
    (src / "adapter_model.safetensors").write_bytes(b"not safetensors")
    add_snapshot(hf["cache"], "acme-org/broken-lora", str(src))
    r = cli("push", "hf://acme-org/broken-lora", "acme/broken")
    assert_clean_error(r, "hf://acme-org/broken-lora", "adapter_model.safetensors", code=1)
    assert "adapterhub-hf-" not in r.output


def test_unknown_ids_and_revisions_give_one_clear_line(cli, hf):
    r = cli("fingerprint", "acme-org/not-cached")
    assert_clean_error(r, "acme-org/not-cached", "HF_HUB_OFFLINE", code=1)
    r = cli("train", "--base", "acme-org/not-cached", "--method", "lora", "--data", "x.jsonl", "--out", "o")
    assert_clean_error(r, "acme-org/not-cached", "HF_HUB_OFFLINE", code=1)
    assert_clean_error(
        cli("merge", "acme/x:1", "--base", f"{BASE_ID}@nope", "--out", "o"),
        f"{BASE_ID}@nope",
        "revision 'nope'",
        "HF_HUB_OFFLINE",
        code=1,
    )
    assert_clean_error(
        cli("fingerprint", "acme-org/bad--name"), "acme-org/bad--name", "not a valid Hugging Face model id", code=1
    )
    assert_clean_error(
        cli("push", "hf://acme-org/not-cached", "acme/x"), "acme-org/not-cached", "HF_HUB_OFFLINE", code=1
    )
    assert_clean_error(cli("push", "hf://just-a-name", "acme/x"), "expected hf://ORG/NAME", code=1)
    # not spelled as an id: the usual error of a missing directory
    assert_clean_error(cli("fingerprint", "./nowhere/base"), "nowhere", code=1)


def test_every_base_option_goes_through_the_resolver():
    """train, fingerprint, push, merge, pull --merged, eval, bench-latency, quantize, extract, export, data
    check: every --base / BASE_DIR has the one type that resolves Hub ids (a new command cannot forget it)."""
    import click

    from adapterhub.cli import add_plugin_commands
    from adapterhub.cli import cli as group
    from adapterhub.cli.app import BASE

    add_plugin_commands()

    def commands(g, prefix=""):
        for name, c in g.commands.items():
            yield from commands(c, f"{prefix}{name} ") if isinstance(c, click.Group) else [(prefix + name, c)]

    found = {name: p.type for name, c in commands(group) for p in c.params if p.name in ("base", "base_dir")}
    assert {
        "train",
        "fingerprint",
        "push",
        "merge",
        "pull",
        "eval",
        "bench-latency",
        "quantize",
        "extract",
        "export",
        "data check",
    } <= set(found), sorted(found)
    assert all(t is BASE for t in found.values()), {n: t for n, t in found.items() if t is not BASE}


@pytest.fixture
def online(tmp_path, monkeypatch):
    """A Hub on 127.0.0.1 (tests/fakehub.py) as HF_ENDPOINT, an empty HF_HUB_CACHE, HF_HUB_OFFLINE=0 and an
    HF_TOKEN: in the environment (subprocesses) and in huggingface_hub's constants (this process)."""
    from fakehub import FakeHub
    from huggingface_hub import constants

    cache = str(tmp_path / "online-cache")
    with FakeHub() as fake:
        env = {
            "HF_ENDPOINT": fake.url,
            "HF_HUB_CACHE": cache,
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_TOKEN": "hf_test_secret_token",
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        fake.cache = cache
        yield fake


def test_online_the_same_call_downloads_only_weights_config_and_tokenizer(cli, hub, online, tmp_path):
    """huggingface_hub's own client downloads into HF_HUB_CACHE from HF_ENDPOINT with HF_TOKEN, no pickle;
    Hub errors are one line each."""
    src, lora = tmp_path / "base", tmp_path / "lora"
    shutil.copytree(hub["base"], src)
    (src / "pytorch_model.bin").write_bytes(b"a pickle: never downloaded")
    shutil.copytree(os.path.join(hub["cache"], "models--acme-org--tiny-lora", "snapshots", hub["lora_sha"]), lora)
    (lora / "training_args.bin").write_bytes(b"a pickle: never downloaded")
    sha, lora_sha = online.add(BASE_ID, str(src)), online.add(LORA_ID, str(lora))
    r = run_subprocess("fingerprint", BASE_ID, "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["fingerprint"] == fp(cli, hub["base"]) and r.json()["revision"] == sha
    assert "hf_test_secret_token" not in r.output
    assert ("GET", f"/api/models/{BASE_ID}/revision/main", "Bearer hf_test_secret_token") in online.requests
    snap = os.path.join(online.cache, "models--acme-org--tiny-llama", "snapshots", sha)
    assert "pytorch_model.bin" not in os.listdir(snap) and "model.safetensors" in os.listdir(snap)
    # sharded: only the shards the index names (not a second copy beside them, nor subfolders)
    sharded = make_base_dir(tmp_path / "sharded", shards=2)
    shutil.copyfile(
        os.path.join(sharded, "model-00001-of-00002.safetensors"), os.path.join(sharded, "consolidated.safetensors")
    )
    os.makedirs(os.path.join(sharded, "original"))
    shutil.copyfile(
        os.path.join(sharded, "model-00002-of-00002.safetensors"),
        os.path.join(sharded, "original", "model.safetensors"),
    )
    sha = online.add("acme-org/sharded", sharded)
    r = cli("fingerprint", "acme-org/sharded", "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["fingerprint"] == fp(cli, sharded)
    assert sorted(os.listdir(r.json()["path"])) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]

    r = cli("push", f"hf://{LORA_ID}", "acme/online", "--base", BASE_ID, "--json")
    assert r.exit_code == 0, r.output
    info = cli("show", "acme/online:1", "--json").json()
    assert info["parents"][0]["ref"] == f"hf://{LORA_ID}@{lora_sha}"
    assert "training_args.bin" not in {f["path"] for f in info["files"]}
    assert_clean_error(
        cli("fingerprint", "acme-org/missing"), "no Hugging Face model acme-org/missing", "HF_TOKEN", code=1
    )
    assert_clean_error(cli("fingerprint", f"{BASE_ID}@nope"), f"{BASE_ID} has no revision 'nope'", code=1)
    assert_clean_error(
        cli("push", "hf://acme-org/missing", "acme/x"), "hf://acme-org/missing", "no Hugging Face adapter repo", code=1
    )
    online.add("acme-org/gated", hub["base"])
    online.gated.add("acme-org/gated")
    assert_clean_error(cli("fingerprint", "acme-org/gated"), "acme-org/gated is gated", "HF_TOKEN", code=1)


def test_the_hub_gone_and_nothing_cached_is_one_line(cli, online, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert_clean_error(
        cli("fingerprint", "acme-org/other"),
        "acme-org/other",
        "Hugging Face Hub (http://127.0.0.1:9) could not be reached",
        code=1,
    )


def test_export_to_the_hub_uploads_peft_with_a_model_card_and_imports_back(cli, hub, online, monkeypatch):
    # a version of a Hub base (imported from the Hub: quicker than training), exported to another repo
    base_sha = online.add(BASE_ID, hub["base"])
    lora_dir = os.path.join(hub["cache"], "models--acme-org--tiny-lora", "snapshots", hub["lora_sha"])
    lora_sha = online.add(LORA_ID, lora_dir)
    r = cli("push", f"hf://{LORA_ID}", "acme/chat", "--base", BASE_ID)
    assert r.exit_code == 0, r.output
    r = cli("export", "acme/chat:1", "--format", "peft", "--to", "hf://acme-org/chat-export", "--private", "--json")
    assert r.exit_code == 0, r.output
    d = r.json()
    files = online.repos["acme-org/chat-export"][d["commit"]]
    assert d["to"] == f"hf://acme-org/chat-export@{d['commit']}" and online.private["acme-org/chat-export"]
    assert set(files) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    cfg = json.loads(files["adapter_config.json"])
    assert (cfg["base_model_name_or_path"], cfg["revision"]) == (BASE_ID, base_sha)  # what AutoPeftModel loads
    card = files["README.md"].decode()
    fp_main = fp(cli, hub["base"])
    for needle in (
        "library_name: peft",
        f'base_model: "{BASE_ID}"',
        fp_main,
        d["digest"],
        f"imported_from hf://{LORA_ID}@{lora_sha}",
    ):
        assert needle in card, (needle, card)
    # and back: the export imports as the same adapter, with the export's commit in its lineage
    r = cli("push", "hf://acme-org/chat-export", "acme/roundtrip", "--base", BASE_ID, "--json")
    assert r.exit_code == 0, r.output
    back = cli("show", "acme/roundtrip:1", "--json").json()
    assert back["parents"][0]["ref"] == d["to"] and back["base_fingerprint"] == fp_main
    # without a token, or offline: one line each
    monkeypatch.delenv("HF_TOKEN")
    assert_clean_error(
        cli("export", "acme/chat:1", "--format", "peft", "--to", "hf://acme-org/other"),
        "hf://acme-org/other",
        "HF_TOKEN",
        code=1,
    )
    monkeypatch.setattr(__import__("huggingface_hub").constants, "HF_HUB_OFFLINE", True)
    assert_clean_error(
        cli("export", "acme/chat:1", "--format", "peft", "--to", "hf://acme-org/other"), "HF_HUB_OFFLINE", code=1
    )
    assert_clean_error(
        cli("export", "acme/chat:1", "--format", "peft", "--to", "hf://acme-org/x@dev"),
        "expected hf://ORG/NAME",
        code=1,
    )
