"""Bad input to the merge/export path (``merge``, ``pull --merged``, ``export --format merged|peft``): one clear
``Error:`` line, exit 1, nothing written, nothing cached, and the base model never touched.

Real tiny transformers models and real peft adapters, built at run time."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import peft as peft
import pytest
import torch as torch

sys.path.insert(0, os.path.dirname(__file__))
import tinymodels as tm  # noqa: E402
from conftest import assert_clean_error  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from test_merge import _quiet, load_merged, merge_plugins, peft_adapter, plugins_fixture, save_base  # noqa: E402,F401

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
#: the plugins these tests use ("merged" is registered directly, as in test_merge)
PLUGINS = "file,peft,lora,ia3,bnb,merged"


_plugins = plugins_fixture(PLUGINS)


def _tree(path) -> dict[str, str]:
    """Every file under ``path`` -> sha256 of its bytes."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for n in files:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _rename(src, dst, old, new, config=False):
    """A copy of adapter directory ``src`` whose tensor keys (and, with ``config``, target modules) say ``new``
    where they said ``old``."""
    shutil.copytree(src, dst)
    weights = os.path.join(dst, "adapter_model.safetensors")
    sd = load_file(weights)
    save_file({k.replace(old, new): v for k, v in sd.items()}, weights, metadata={"format": "pt"})
    if config:
        path = os.path.join(dst, "adapter_config.json")
        cfg = json.loads(open(path).read())
        cfg["target_modules"] = [new if m == old else m for m in cfg["target_modules"]]
        open(path, "w").write(json.dumps(cfg))
    return str(dst)


@pytest.fixture
def llama(tmp_path):
    """(base dir, LoRA adapter dir) on a tiny Llama; the adapter changes the model (lora_B non-zero)."""
    base = save_base(tm.tiny_llama(), tmp_path / "base")
    ad, _ = peft_adapter(tm.tiny_llama(), LORA, tmp_path / "ad")
    return base, ad


def _merged_count(home) -> int:
    """Entries in the merged-model cache."""
    root = os.path.join(home, "cache", "merged")
    return len([p for p in os.listdir(root) if not p.startswith(".")]) if os.path.isdir(root) else 0


# -- 1. adapter tensors that match nothing in the base ----------------------------------------------------------
def _peft_dir(kind, tmp_path):
    """(model name, adapter dir, base dir) made with peft for ``kind``."""
    if kind == "gpt2-conv1d":
        base = save_base(tm.tiny_gpt2(), tmp_path / "base")
        return (
            "c_attn",
            peft_adapter(tm.tiny_gpt2(), dict(r=4, lora_alpha=8, target_modules=["c_attn"]), tmp_path / "ad")[0],
            base,
        )
    base = save_base(tm.tiny_llama(), tmp_path / "base")
    if kind == "ia3":
        pm = peft.get_peft_model(
            tm.tiny_llama(), peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
        )
        pm.save_pretrained(str(tmp_path / "ad"))
        return "k_proj", str(tmp_path / "ad"), base
    opts = dict(LORA, use_dora=kind == "dora")
    return "q_proj", peft_adapter(tm.tiny_llama(), opts, tmp_path / "ad")[0], base


@pytest.mark.parametrize("kind", ["lora", "dora", "ia3", "gpt2-conv1d"])
def test_adapter_tensors_for_modules_the_base_lacks_are_refused(kind, cli, tmp_path):
    module, ad, base = _peft_dir(kind, tmp_path)
    ok = cli("merge", ad, "--base", base, "--out", tmp_path / "ok", "--json")
    assert ok.exit_code == 0, ok.output  # the adapter as made merges
    bad = _rename(ad, tmp_path / "bad", module, "zz_proj", config=True)
    n = sum(1 for k in load_file(os.path.join(bad, "adapter_model.safetensors")) if "zz_proj" in k)
    total = len(load_file(os.path.join(bad, "adapter_model.safetensors")))
    r = cli("merge", bad, "--base", base, "--out", tmp_path / "m")
    assert_clean_error(r, f"{n} of {total} adapter tensors match nothing in the base", "zz_proj")
    assert not (tmp_path / "m").exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@pytest.mark.parametrize("how", ["merge", "pull --merged", "export --format merged"])
def test_renamed_keys_are_refused_through_the_registry(how, cli, home, llama, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_MERGE_CACHE", "link")
    base, ad = llama
    bad = _rename(ad, tmp_path / "bad", "q_proj", "zz_proj", config=True)
    assert cli("push", bad, "acme/renamed").exit_code == 0
    cmd = how.split()
    r = cli(cmd[0], "acme/renamed", *cmd[1:], "--base", base, "--out", tmp_path / "m")
    assert_clean_error(r, "4 of 8 adapter tensors match nothing", "self_attn.zz_proj.lora_A.weight")
    assert r.exit_code == 1 and not (tmp_path / "m").exists()
    assert _merged_count(home) == 0  # nothing cached


def test_a_tensor_the_method_never_reads_is_refused(cli, llama, tmp_path):
    """A LoRA on a module of the base that holds no ``weight`` (here a lone ``scale``): its name matches, but no
    merge reads the factors (caught by what the method really reads): refused, the partial output removed."""
    base, ad = llama
    weights = os.path.join(base, "model.safetensors")
    sd = load_file(weights)
    sd["model.extra.scale"] = torch.ones(4)
    save_file(sd, weights, metadata={"format": "pt"})
    bad = _rename(ad, tmp_path / "bad", "model.layers.0.self_attn.q_proj", "model.extra")
    cfg = json.loads((tmp_path / "bad" / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "v_proj", "extra"]
    (tmp_path / "bad" / "adapter_config.json").write_text(json.dumps(cfg))
    r = cli("merge", bad, "--base", base, "--out", tmp_path / "m")
    assert_clean_error(r, "2 of 8 adapter tensors match nothing", "model.extra.lora_A.weight")
    assert r.exit_code == 1 and not (tmp_path / "m").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


# -- 2. a base directory that is not a transformers model directory ---------------------------------------------
@pytest.mark.parametrize("config", [None, "{}", "[1, 2]"], ids=["missing", "empty", "not-an-object"])
def test_base_without_usable_config_is_refused_and_nothing_cached(config, cli, home, llama, tmp_path):
    base, ad = llama
    bad = tmp_path / "nocfg"
    shutil.copytree(base, bad)  # the same weights: the same fingerprint as the real base
    os.remove(bad / "config.json")
    if config is not None:
        (bad / "config.json").write_text(config)
    assert cli("push", ad, "acme/l1", "--base", base).exit_code == 0
    hashed = sorted(os.listdir(home / "cache" / "fingerprints"))
    for cmd in (
        ["merge", "acme/l1"],
        ["pull", "acme/l1", "--merged"],
        ["export", "acme/l1", "--format", "merged"],
        ["merge", ad],
    ):
        r = cli(*cmd, "--base", bad, "--out", tmp_path / "m")
        assert_clean_error(r, "not a transformers model directory", "config.json")
        assert r.exit_code == 1 and not (tmp_path / "m").exists()
    assert _merged_count(home) == 0
    assert sorted(os.listdir(home / "cache" / "fingerprints")) == hashed  # the bad base was not even hashed
    r = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "good", "--json")
    assert r.exit_code == 0 and r.json()["cached"] is False
    assert json.loads((tmp_path / "good" / "config.json").read_text())["model_type"] == "llama"
    load_merged(tmp_path / "good")


def test_merge_adapter_api_refuses_a_base_without_config(llama, tmp_path):
    from test_merge import merge_plugins

    from adapterhub.errors import InvalidInput
    from adapterhub.files.checkpoint import load_adapter_dir
    from adapterhub.merge.plan import merge_adapter

    base, ad = llama
    os.remove(os.path.join(base, "config.json"))
    with pytest.raises(InvalidInput, match="no config.json"):
        merge_adapter(load_adapter_dir(ad, merge_plugins()), base, str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_a_cached_merge_without_config_is_never_served(cli, home, llama, tmp_path, monkeypatch):
    """A cache entry whose config.json is missing (as a bug once stored) is not served: recomputed."""
    from test_merged_cache import reseal

    monkeypatch.setenv("ADAPTERHUB_MERGE_CACHE", "link")
    base, ad = llama
    assert cli("push", ad, "acme/l1", "--base", base).exit_code == 0
    assert cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m1").exit_code == 0
    (entry,) = [p for p in os.listdir(home / "cache" / "merged") if not p.startswith(".")]
    reseal(home, entry, lambda b: b.__setitem__("files", [f for f in b["files"] if f["path"] != "config.json"]))
    r = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m2", "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["cached"] is False and "config.json" in r.json()["cache_problem"]
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["model_type"] == "llama"
    again = cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m3", "--json")
    assert again.json()["cached"] is True and (tmp_path / "m3" / "config.json").exists()


# -- 3. an output directory that is, or contains, the base ------------------------------------------------------
@pytest.mark.parametrize("how", ["merge", "pull --merged", "export --format merged", "merge --quantize nf4"])
def test_out_that_is_or_contains_the_base_is_refused_even_with_force(how, cli, llama, tmp_path):
    base, ad = llama
    assert cli("push", ad, "acme/l1", "--base", base).exit_code == 0
    before, entries = _tree(base), sorted(os.listdir(tmp_path))
    os.symlink(base, tmp_path / "link")
    cmd = how.split()
    for out, what in (
        (base, "is the base directory"),
        (tmp_path / "link", "is the base directory"),
        (tmp_path, "contains the"),
    ):  # (pull names the registry home, also in tmp_path, first)
        r = cli(cmd[0], "acme/l1", *cmd[1:], "--base", base, "--out", out, "--force")
        assert_clean_error(r, what, "--force")
        assert r.exit_code == 1
        assert _tree(base) == before
    os.remove(tmp_path / "link")
    assert sorted(os.listdir(tmp_path)) == entries  # no temp dir left either
    # a directory inside the base leaves the base's own files alone: allowed
    r = cli(cmd[0], "acme/l1", *cmd[1:], "--base", base, "--out", os.path.join(base, "merged"))
    assert r.exit_code == 0, r.output
    assert {k: v for k, v in _tree(base).items() if not k.startswith("merged/")} == before


# -- 4. export --format peft with options that only a merge uses ------------------------------------------------
@pytest.mark.parametrize(
    "args,flags",
    [
        (["--base", "OTHER"], "--base"),
        (["--dtype", "bf16"], "--dtype"),
        (["--shard-size", "5GB", "--allow-base-mismatch"], "--shard-size, --allow-base-mismatch"),
    ],
)
def test_export_peft_refuses_merge_options(args, flags, cli, llama, tmp_path):
    base, ad = llama
    other = save_base(tm.tiny_gpt2(), tmp_path / "other")
    assert cli("push", ad, "acme/l1", "--base", base).exit_code == 0
    args = [other if a == "OTHER" else a for a in args]
    r = cli("export", "acme/l1", "--format", "peft", "--out", tmp_path / "x", *args)
    assert_clean_error(r, flags, "--format peft")
    assert r.exit_code == 1 and not (tmp_path / "x").exists()
    ok = cli("export", "acme/l1", "--format", "peft", "--out", tmp_path / "x")
    assert ok.exit_code == 0, ok.output
    pm = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path / "x"))
    assert next(p for n, p in pm.named_parameters() if "lora_B" in n).dtype == torch.float32


def test_a_cached_merge_of_an_adapter_that_matches_nothing_is_not_served(cli, home, llama, tmp_path, monkeypatch):
    """A merge cached before such adapters were refused (here: the entry of a good merge rewritten for the
    renamed adapter's key) is refused too: the plan is checked before the cache is read."""
    from test_merged_cache import reseal

    from adapterhub.operations import merged_cache

    monkeypatch.setenv("ADAPTERHUB_MERGE_CACHE", "link")
    base, ad = llama
    bad = _rename(ad, tmp_path / "bad", "q_proj", "zz_proj", config=True)
    digest = cli("push", bad, "acme/renamed", "--json").json()["digest"].removeprefix("sha256:")
    assert cli("push", ad, "acme/l1", "--base", base).exit_code == 0
    assert cli("merge", "acme/l1", "--base", base, "--out", tmp_path / "m1").exit_code == 0
    (entry,) = [p for p in os.listdir(home / "cache" / "merged") if not p.startswith(".")]
    key = json.loads((home / "cache" / "merged" / entry / "entry.json").read_text())["key"]
    key[0] = digest
    reseal(home, entry, lambda b: b.__setitem__("key", key), new_entry=merged_cache.entry_id(tuple(key)))
    for cmd in (["merge", "acme/renamed"], ["pull", "acme/renamed", "--merged"]):
        r = cli(*cmd, "--base", base, "--out", tmp_path / "m2")
        assert_clean_error(r, "4 of 8 adapter tensors match nothing", "zz_proj")
        assert r.exit_code == 1 and not (tmp_path / "m2").exists()
