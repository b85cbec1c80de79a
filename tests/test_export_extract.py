"""``export --format peft|merged`` and ``extract`` (a full fine-tune -> LoRA by truncated SVD)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

import peft as peft
import pytest
import torch as torch
import transformers as transformers

sys.path.insert(0, os.path.dirname(__file__))
import tinymodels as tm  # noqa: E402
from conftest import assert_clean_error  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from test_merge import CASES, TOL, _plugins, _quiet, load_merged, out_of, peft_adapter, save_base  # noqa: E402,F401


@pytest.fixture
def llama(tmp_path):
    base = save_base(tm.tiny_llama(), tmp_path / "base")
    ad, pm = peft_adapter(tm.tiny_llama(), CASES["llama-lora"][1], tmp_path / "ad")
    return base, ad, out_of(pm, "llama")


# -- export -----------------------------------------------------------------------------------------------
def test_export_peft_loads_in_peft_model(cli, llama, tmp_path):
    base, ad, ref_logits = llama
    assert cli("push", ad, "acme/bot", "--base", base).exit_code == 0
    r = cli("export", "acme/bot", "--format", "peft", "--out", tmp_path / "x", "--json")
    assert r.exit_code == 0, r.output
    d = r.json()
    assert d["format"] == "peft" and {f["path"] for f in d["files"]} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    pm = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path / "x")).eval()
    assert torch.allclose(out_of(pm, "llama"), ref_logits, atol=TOL, rtol=0)
    assert_clean_error(cli("export", "acme/bot", "--format", "peft", "--out", tmp_path / "x"), "not empty")
    assert_clean_error(cli("export", "acme/bot", "--format", "onnx", "--out", tmp_path / "y"), "unknown format")
    assert not (tmp_path / "y").exists()


def test_export_merged_is_the_merge(cli, llama, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_MERGE_CACHE", "link")  # (as root, where the tests run, auto is off)
    base, ad, ref_logits = llama
    assert cli("push", ad, "acme/bot", "--base", base).exit_code == 0
    assert_clean_error(cli("export", "acme/bot", "--format", "merged", "--out", tmp_path / "m"), "--base")
    r = cli("export", "acme/bot", "--format", "merged", "--base", base, "--out", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["tensors_merged"] > 0 and r.json()["cached"] is False
    assert torch.allclose(out_of(load_merged(tmp_path / "m"), "llama"), ref_logits, atol=TOL, rtol=0)
    again = cli("pull", "acme/bot", "--merged", "--base", base, "--out", tmp_path / "m2", "--json")
    assert again.json()["cached"] is True  # export --format merged fills the same cache


def test_method_without_peft_equivalent_cannot_export_peft_nor_merge(cli, tmp_path):
    from adapterhub_bottleneck import BottleneckMethod

    from adapterhub.files.checkpoint import save_adapter

    base = save_base(tm.tiny_llama(), tmp_path / "base")
    method = BottleneckMethod()
    model = tm.tiny_llama()
    config = method.attach(model, method.make_config({}))
    save_adapter(str(tmp_path / "bn"), {"method": "bottleneck", "config": asdict(config)}, method.state_dict(model))
    assert cli("push", tmp_path / "bn", "acme/bn", "--base", base).exit_code == 0
    r = cli("export", "acme/bn", "--format", "peft", "--out", tmp_path / "x")
    assert_clean_error(r, "no PEFT equivalent")
    r = cli("merge", "acme/bn", "--base", base, "--out", tmp_path / "m")
    assert_clean_error(r, "cannot be merged", "adapterhub pull acme/bn:1 --out")
    assert not (tmp_path / "x").exists() and not (tmp_path / "m").exists()


# -- extract ----------------------------------------------------------------------------------------------
def _low_rank_fine_tune(make, path, targets, rank, seed=0, conv1d=False):
    """``make()`` with W += B·A (exact rank ``rank``) on every weight whose module ends with a target."""
    model = make()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            module = name.rsplit(".", 1)[0]
            if name.endswith(".weight") and p.dim() == 2 and any(module.endswith("." + t) for t in targets):
                out_f, in_f = (p.shape[1], p.shape[0]) if conv1d else p.shape
                delta = (torch.randn(out_f, rank, generator=g) * 0.1) @ torch.randn(rank, in_f, generator=g)
                p.add_(delta.T if conv1d else delta)
    model.save_pretrained(str(path))
    return str(path), model.eval()


def test_extract_recovers_an_exact_low_rank_fine_tune(cli, tmp_path):
    base = save_base(tm.tiny_llama(), tmp_path / "base")
    ft, ft_model = _low_rank_fine_tune(tm.tiny_llama, tmp_path / "ft", ["q_proj", "v_proj", "down_proj"], rank=2)
    r = cli(
        "extract",
        "--model",
        ft,
        "--base",
        base,
        "--rank",
        "2",
        "--name",
        "acme/extracted",
        "--out",
        tmp_path / "lora",
        "--json",
    )
    assert r.exit_code == 0, r.output
    d = r.json()
    assert d["modules"] == 6 and d["energy_min"] > 1 - 1e-6 and d["not_extracted_changed"] == []
    assert all(k.endswith(("q_proj", "v_proj", "down_proj")) for k in d["energy"])
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 2 and cfg["peft_type"] == "LORA"
    tensors = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (2, 32)
    # the extracted LoRA on the base reproduces the fine-tune
    pm = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path / "lora")).eval()
    assert torch.allclose(out_of(pm, "llama"), out_of(ft_model, "llama"), atol=1e-4, rtol=0)
    m = cli("pull", "acme/extracted", "--merged", "--base", base, "--out", tmp_path / "m")
    assert m.exit_code == 0, m.output
    assert torch.allclose(out_of(load_merged(tmp_path / "m"), "llama"), out_of(ft_model, "llama"), atol=1e-4, rtol=0)
    # lineage: extracted_from the fine-tune, an external parent known by its fingerprint
    show = cli("show", "acme/extracted", "--json").json()
    fp_ft = cli("fingerprint", ft).stdout.strip()
    (parent,) = show["parents"]
    assert parent["relation"] == "extracted_from" and parent["external"] and parent["details"]["fingerprint"] == fp_ft
    assert show["base_fingerprint"] == cli("fingerprint", base).stdout.strip()
    # a lower rank keeps less energy, and says so
    low = cli("extract", "--model", ft, "--base", base, "--rank", "1", "--name", "acme/extracted", "--json").json()
    assert 0.3 < low["energy_min"] < 1 - 1e-3 and low["version"] == 2
    assert "energy kept" in cli("extract", "--model", ft, "--base", base, "-r", "1", "--name", "acme/x").output


def test_extract_gpt2_conv1d_and_targets(cli, tmp_path):
    base = save_base(tm.tiny_gpt2(), tmp_path / "base")
    ft, ft_model = _low_rank_fine_tune(tm.tiny_gpt2, tmp_path / "ft", ["c_attn"], rank=3, conv1d=True)
    r = cli(
        "extract",
        "--model",
        ft,
        "--base",
        base,
        "--rank",
        "4",
        "--name",
        "acme/g",
        "--targets",
        "c_attn",
        "--out",
        tmp_path / "lora",
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert r.json()["modules"] == 2 and r.json()["energy_min"] > 1 - 1e-6
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    pm = peft.PeftModel.from_pretrained(tm.tiny_gpt2(), str(tmp_path / "lora")).eval()
    assert torch.allclose(out_of(pm, "gpt2"), out_of(ft_model, "gpt2"), atol=1e-4, rtol=0)


def test_extract_bad_input(cli, tmp_path):
    base = save_base(tm.tiny_llama(), tmp_path / "base")
    same = save_base(tm.tiny_llama(), tmp_path / "same")
    assert_clean_error(
        cli("extract", "--model", tmp_path / "nope", "--base", base, "-r", "2", "--name", "acme/x"), "no such directory"
    )
    assert_clean_error(
        cli("extract", "--model", same, "--base", base, "-r", "2", "--name", "acme/x"), "nothing to extract"
    )
    assert_clean_error(
        cli("extract", "--model", same, "--base", base, "-r", "2", "--name", "acme/x", "--targets", "nonexistent_proj"),
        "matched no Linear",
    )
    assert_clean_error(cli("extract", "--model", same, "--base", base, "-r", "0", "--name", "acme/x"))
    assert cli("list", "--json").json() == []
