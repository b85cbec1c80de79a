"""The registry through the CLI: push, pull, list, show, aliases, tags, lineage, verify, gc."""

import json
import os

import pytest
from conftest import assert_clean_error, make_base_dir, make_lora_dir


def files_of(d):
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            out[os.path.relpath(p, d)] = open(p, "rb").read()
    return out


def test_push_pull_roundtrip_byte_for_byte(cli, tmp_path):
    src = make_lora_dir(tmp_path / "a")
    (tmp_path / "a" / "README.md").write_text("# my adapter\n")
    os.makedirs(tmp_path / "a" / "sub")
    (tmp_path / "a" / "sub" / "notes.txt").write_bytes(os.urandom(3000))
    r = cli("push", src, "acme/bot", "--json")
    assert r.exit_code == 0, r.output
    d = r.json()
    assert d["name"] == "acme/bot" and d["version"] == 1 and d["ref"] == "acme/bot:1"
    assert d["digest"].startswith("sha256:") and len(d["digest"]) == 71 and d["base_fingerprint"] is None
    assert cli("push", src, "acme/bot").stdout.startswith("acme/bot:1")  # idempotent
    out = tmp_path / "out"
    r = cli("pull", "acme/bot:1", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert files_of(out) == files_of(src)
    # identical content under another name is a separate version; a changed file is a new version
    (tmp_path / "a" / "README.md").write_text("# changed\n")
    assert cli("push", src, "acme/bot", "--json").json()["version"] == 2
    assert cli("push", src, "acme/other", "--json").json()["version"] == 1
    # pull by digest
    out2 = tmp_path / "out2"
    assert cli("pull", d["digest"], "--out", out2).exit_code == 0
    assert files_of(out2) == files_of(out)
    # pull by digest prefix
    assert cli("pull", d["digest"][:19], "--out", tmp_path / "out3").exit_code == 0


def test_push_accepts_directory_written_by_peft(cli, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    base = LlamaForCausalLM(cfg)
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    r = cli("push", tmp_path / "adapter", "acme/peft", "--base", tmp_path / "base", "--json")
    assert r.exit_code == 0, r.output
    fp = cli("fingerprint", tmp_path / "base").stdout.strip()
    assert r.json()["base_fingerprint"] == fp
    show = cli("show", "acme/peft", "--json").json()
    assert show["method"] == "lora" and show["config"]["r"] == 4 and show["base_fingerprint"] == fp
    assert {f["path"] for f in show["files"]} >= {"adapter_config.json", "adapter_model.safetensors"}
    cli("pull", "acme/peft", "--out", tmp_path / "pulled")
    from peft import PeftModel

    again = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "pulled")
    x = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(again(x).logits, peft_model(x).logits)


def test_show_json_keys_and_text(cli, tmp_path):
    src = make_lora_dir(tmp_path / "a")
    base = make_base_dir(tmp_path / "base")
    # a protected alias (production) needs an evaluation first: push refuses it, nothing is created
    assert_clean_error(cli("push", src, "acme/bot", "--base", base, "--alias", "production"), "no evaluation")
    assert cli("list", "--json").json() == []
    r = cli("push", src, "acme/bot", "--base", base, "--alias", "staging", "--tag", "team=nlp", "--tag", "ticket=42")
    assert r.exit_code == 0, r.output
    d = cli("show", "acme/bot@staging", "--json").json()
    for key in (
        "name",
        "version",
        "method",
        "config",
        "base_fingerprint",
        "digest",
        "files",
        "aliases",
        "tags",
        "parents",
        "metrics",
    ):
        assert key in d, key
    assert d["aliases"] == ["staging"] and d["tags"] == {"team": "nlp", "ticket": "42"}
    assert all(f["digest"].startswith("sha256:") and f["size"] > 0 for f in d["files"])
    assert d["base"]["name"] == "tiny-llama" and d["base"]["tensors"] == 9
    text = cli("show", "acme/bot").stdout
    assert "acme/bot:1" in text and "staging" in text and "team=nlp" in text and "adapter_model.safetensors" in text


def test_list(cli, tmp_path):
    assert "no versions" in cli("list").stdout
    for i in range(3):
        cli("push", make_lora_dir(tmp_path / f"a{i}", seed=i), "acme/bot")
    cli("push", make_lora_dir(tmp_path / "z"), "acme/zeta")
    rows = cli("list", "--json").json()
    assert [r["ref"] for r in rows] == ["acme/bot:1", "acme/bot:2", "acme/bot:3", "acme/zeta:1"]
    assert [r["ref"] for r in cli("list", "acme/zeta", "--json").json()] == ["acme/zeta:1"]
    # the newest evaluation's primary metric shows in the listing
    from adapterhub.api import open_registry

    open_registry().add_evaluation("acme/bot:2", "sha256:" + "d" * 64, {"accuracy": 0.5})
    open_registry().add_evaluation("acme/bot:2", "sha256:" + "d" * 64, {"accuracy": 0.875})
    rows = {r["ref"]: r for r in cli("list", "--json").json()}
    assert rows["acme/bot:2"]["evaluation"] == {"accuracy": 0.875} and rows["acme/bot:1"]["evaluation"] is None
    assert "acc=0.875" in cli("list").stdout
    assert "acme/bot:3" in cli("list").stdout
    assert_clean_error(cli("list", "acme/nothing"), "no adapter named 'acme/nothing'")


def test_aliases_and_history(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_PROTECTED_ALIASES", "")  # the promotion gate has its own tests
    for i in range(3):
        cli("push", make_lora_dir(tmp_path / f"a{i}", seed=i), "acme/bot")
    assert cli("alias", "set", "acme/bot", "production", "1").exit_code == 0
    r = cli("alias", "set", "acme/bot", "production", "acme/bot:3", "--reason", "better eval", "--json")
    assert r.json()["version"] == 3 and r.json()["previous"] == 1
    assert cli("show", "acme/bot@production", "--json").json()["version"] == 3
    hist = cli("alias", "history", "acme/bot", "production", "--json").json()
    assert [(h["from"], h["to"]) for h in hist] == [(None, 1), (1, 3)]
    assert hist[1]["reason"] == "better eval" and hist[1]["actor"]
    assert cli("alias", "rm", "acme/bot", "production").exit_code == 0
    assert_clean_error(cli("show", "acme/bot@production"), "no alias 'production'")
    hist = cli("alias", "history", "acme/bot", "production", "--json").json()
    assert (hist[-1]["from"], hist[-1]["to"]) == (3, None)
    assert "(removed)" in cli("alias", "history", "acme/bot", "production").stdout
    cli("push", make_lora_dir(tmp_path / "o"), "acme/other")
    assert_clean_error(cli("alias", "set", "acme/bot", "x", "acme/other:1"), "not of acme/bot")
    assert_clean_error(cli("alias", "set", "acme/bot", "production", "9"), "no version 9")
    assert_clean_error(cli("alias", "rm", "acme/bot", "staging"), "no alias 'staging'")


def test_tags(cli, tmp_path):
    cli("push", make_lora_dir(tmp_path / "a"), "acme/bot")
    assert cli("tag", "acme/bot", "a=1", "b=2", "--json").json() == {"a": "1", "b": "2"}
    assert cli("tag", "acme/bot:1", "a=3", "--rm", "b", "--json").json() == {"a": "3"}
    assert_clean_error(cli("tag", "acme/bot", "novalue"), "key=value")


@pytest.mark.parametrize(
    "args",
    [
        ("tag", "acme/bot", "=1"),
        ("push", "SRC", "acme/bot", "--tag", "novalue"),
        ("train", "--base", "B", "--method", "lora", "--task", "causal-lm", "--data", "D", "--out", "O", "--set", "r"),
        ("merge", "acme/bot", "--base", "B", "--out", "O", "--quantize", "nf4", "--quant-opt", " =4"),
    ],
)
def test_every_key_value_option_refuses_a_pair_without_a_key_or_an_equals_sign(cli, tmp_path, args):
    """--set, --quant-opt, --tag and tag's pairs are parsed by one type, before the command does anything."""
    (tmp_path / "B").mkdir()
    args = [str(tmp_path / a) if a in ("SRC", "B", "D", "O") else a for a in args]
    r = cli(*args)
    assert_clean_error(r, "expected key=value, got")
    assert not (tmp_path / "O").exists() and cli("list", "--json").json() == []


def test_lineage_formats(cli, tmp_path):
    cli("push", make_lora_dir(tmp_path / "a", seed=1), "acme/base-adapter")
    cli("push", make_lora_dir(tmp_path / "b", seed=2), "acme/other")
    r = cli(
        "push",
        make_lora_dir(tmp_path / "c", seed=3),
        "acme/combo",
        "--parent",
        "acme/base-adapter:1",
        "--parent",
        "acme/other",
        "--relation",
        "combined_from",
        "--json",
    )
    assert r.exit_code == 0, r.output
    cli("push", make_lora_dir(tmp_path / "d", seed=4), "acme/child", "--parent", "acme/combo")
    g = json.loads(cli("lineage", "acme/combo", "--format", "json").stdout)
    rel = {(e["child"], e["parent"], e["relation"]) for e in g["edges"]}
    assert rel == {
        ("acme/combo:1", "acme/base-adapter:1", "combined_from"),
        ("acme/combo:1", "acme/other:1", "combined_from"),
        ("acme/child:1", "acme/combo:1", "trained_from"),
    }
    text = cli("lineage", "acme/child").stdout
    assert "trained_from acme/combo:1" in text and "combined_from acme/other:1" in text
    dot = cli("lineage", "acme/combo", "--format", "dot").stdout
    assert dot.startswith("digraph") and '"acme/combo:1" -> "acme/other:1"' in dot
    mer = cli("lineage", "acme/combo", "--format", "mermaid").stdout
    assert mer.startswith("graph BT") and "|combined_from|" in mer
    show = cli("show", "acme/combo", "--json").json()
    assert [p["ref"] for p in show["parents"]] == ["acme/base-adapter:1", "acme/other:1"]
    # parents are part of the content: the same files with another parent are another version
    r2 = cli("push", tmp_path / "c", "acme/combo", "--json")
    assert r2.json()["version"] == 2
    assert_clean_error(cli("push", tmp_path / "c", "acme/combo", "--parent", "acme/missing"), "no adapter named")


def test_verify_and_pull_name_a_corrupt_blob(cli, home, tmp_path):
    cli("push", make_lora_dir(tmp_path / "a"), "acme/bot")
    assert cli("verify").exit_code == 0
    d = cli("show", "acme/bot", "--json").json()
    target = next(f for f in d["files"] if f["path"] == "adapter_model.safetensors")
    hexd = target["digest"][7:]
    blob = home / "blobs" / "sha256" / hexd[:2] / hexd[2:]
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    r = cli("verify", "--json")
    assert r.exit_code == 1
    problems = r.json()["problems"]
    assert problems[0]["blob"] == target["digest"] and "corrupt" in problems[0]["status"]
    assert "acme/bot:1 adapter_model.safetensors" in problems[0]["used_by"]
    r = cli("pull", "acme/bot", "--out", tmp_path / "out")
    assert_clean_error(r, target["digest"], "corrupt")
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]  # no temp dir left
    blob.unlink()
    r = cli("verify", "acme/bot")
    assert r.exit_code == 1 and "missing" in r.stdout
    assert_clean_error(cli("pull", "acme/bot", "--out", tmp_path / "out"), "missing")


def test_gc_removes_unreferenced_blobs_and_temp_files(cli, home, tmp_path):
    cli("push", make_lora_dir(tmp_path / "a"), "acme/bot")
    orphan = "ab" * 32
    (home / "blobs" / "sha256" / "ab").mkdir(parents=True, exist_ok=True)
    (home / "blobs" / "sha256" / "ab" / orphan[2:]).write_bytes(b"x" * 100)
    (home / "tmp").mkdir(exist_ok=True)
    (home / "tmp" / "leftover.part").write_bytes(b"y" * 10)
    r = cli("gc", "--json")  # default grace keeps recent leftovers (a push may be in flight)
    assert r.json()["removed_blobs"] == 0 and r.json()["kept_recent"] == 1
    assert cli("gc", "--grace", "0", "--dry-run", "--json").json()["removed_blobs"] == 1
    r = cli("gc", "--grace", "0", "--json").json()
    assert r["removed_blobs"] == 1 and r["removed_temp"] == 1 and r["freed_bytes"] == 100
    assert cli("verify").exit_code == 0
    assert cli("pull", "acme/bot", "--out", tmp_path / "o").exit_code == 0


def test_pull_refuses_nonempty_out_unless_force(cli, tmp_path):
    cli("push", make_lora_dir(tmp_path / "a"), "acme/bot")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_error(cli("pull", "acme/bot", "--out", out), "not empty", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    assert cli("pull", "acme/bot", "--out", out, "--force").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("pull", "acme/bot", "--out", empty).exit_code == 0


def test_home_option_and_migrations_ship(cli, tmp_path):
    other = tmp_path / "elsewhere"
    r = cli("--home", other, "push", make_lora_dir(tmp_path / "a"), "acme/bot", "--json")
    assert r.exit_code == 0
    assert (other / "registry.db").exists()
    assert cli("list", "--json").json() == []  # the default home is another registry
    from adapterhub.registry.db import HEAD_REVISION

    assert cli("--home", other, "db", "upgrade", "--json").json() == {"from": HEAD_REVISION, "to": HEAD_REVISION}


def test_alembic_head_matches_code():
    import os

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import adapterhub.migrations as m
    from adapterhub.registry.db import HEAD_REVISION

    cfg = Config()
    cfg.set_main_option("script_location", os.path.dirname(m.__file__))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION


@pytest.mark.slow
def test_wheel_ships_migrations_demo_data_and_plugins(tmp_path):
    import glob
    import subprocess
    import sys
    import zipfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", root, "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    names = zipfile.ZipFile(glob.glob(str(tmp_path / "adapterhub-*.whl"))[0]).namelist()
    assert "adapterhub/migrations/env.py" in names and "adapterhub/migrations/script.py.mako" in names
    assert any(n.startswith("adapterhub/migrations/versions/0001_") for n in names)
    assert "adapterhub/demo/sentiment_train.jsonl" in names
    eps = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(glob.glob(str(tmp_path / "adapterhub-*.whl"))[0]).read(eps).decode()
    for plugin in ("file", "s3", "lora", "ia3", "bitfit", "prompt", "bottleneck", "peft", "mlflow"):
        assert f"{plugin} = adapterhub_" in text, plugin
