"""bitsandbytes quantizers (nf4 / fp4 / int8), QLoRA training on a 4-bit base, merging onto the dequantized
base, and bad input. bitsandbytes runs on the CPU here (slowly), on the tiny Llama of tests/tinymodels.py."""

from __future__ import annotations

import json
import os

import bitsandbytes  # noqa: E402,F401  (a test dependency: the [bnb] extra; never skipped)
import pytest
import torch
from conftest import assert_clean_error
from tinymodels import save_tiny_llama_base


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


ROWS = [
    {"text": "the cat sat on the mat and it was very happy"},
    {"prompt": "question what color is the sky answer", "completion": "blue"},
    {"text": "the dog ran to the park"},
] * 8


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_llama_base(tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """One QLoRA adapter (nf4, double quant), trained once for the module: (result, adapter dir, data)."""
    from adapterhub.plugins import Plugins
    from adapterhub.training.train import TrainOptions, train

    tmp = tmp_path_factory.mktemp("qlora")
    data = write_jsonl(tmp / "train.jsonl", ROWS)
    opts = TrainOptions(
        base=base,
        method="qlora",
        task="causal-lm",
        data=data,
        out=str(tmp / "adapter"),
        settings={"r": "4", "target_modules": "q_proj,v_proj,down_proj"},
        max_steps=30,
        lr=2e-2,
        batch_size=4,
        progress=False,
        home=str(tmp / "home"),
    )
    return train(opts, Plugins()), str(tmp / "adapter"), data


def _batch(base, data):
    from adapterhub.training.data import causal_lm_examples, collate, read_jsonl
    from adapterhub.training.modeling import load_tokenizer

    tok = load_tokenizer(base)
    return collate(tok.pad_token_id)(causal_lm_examples(read_jsonl(data), tok, 64))


def _adapted_4bit(base, adapter_dir):
    """The unmerged adapter on the base quantized exactly as in training."""
    from adapterhub.files.checkpoint import load_adapter_dir
    from adapterhub.plugins import Plugins
    from adapterhub.training.modeling import attach_loaded

    plugins = Plugins()
    loaded = load_adapter_dir(adapter_dir, plugins)
    record = loaded.manifest["base"]["quantization"]
    q = plugins.get("quantizers", record["quantizer"])
    model, _ = q.load_model(base, "causal-lm", None, q.options_from_record(record))
    attach_loaded(model, loaded)
    return model


# -- quantize -------------------------------------------------------------------------------------------
def test_quantize_writes_dirs_that_from_pretrained_loads_as_bnb(cli, base, tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from adapterhub.files.fingerprint import fingerprint

    r = cli("quantize", base, "--to", "nf4", "--out", tmp_path / "nf4", "--json")
    assert r.exit_code == 0, r.output
    rec = r.json()["quantization"]
    assert {k: rec[k] for k in ("quantizer", "quant_type", "double_quant", "blocksize", "compute_dtype")} == {
        "quantizer": "nf4",
        "quant_type": "nf4",
        "double_quant": True,
        "blocksize": 64,
        "compute_dtype": "float32",
    }
    assert rec["source_fingerprint"] == fingerprint(base).digest and rec["quantized_layers"] == 14
    assert rec["skipped"] == ["lm_head"]
    r = cli("quantize", base, "--to", "fp4", "--out", tmp_path / "fp4", "--blocksize", "128", "--no-double-quant")
    assert r.exit_code == 0, r.output and "fp4" in r.output
    r = cli("quantize", base, "--to", "int8", "--out", tmp_path / "int8")
    assert r.exit_code == 0, r.output

    nf4 = AutoModelForCausalLM.from_pretrained(tmp_path / "nf4")
    layer = nf4.model.layers[0].mlp.down_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.quant_state.nested and isinstance(nf4.lm_head, torch.nn.Linear)
    assert nf4.config.adapterhub_quantization == rec  # the record travels with the model
    fp4 = AutoModelForCausalLM.from_pretrained(tmp_path / "fp4")
    qs = fp4.model.layers[1].self_attn.q_proj.weight.quant_state
    assert (qs.quant_type, qs.blocksize, qs.nested) == ("fp4", 128, False)
    int8 = AutoModelForCausalLM.from_pretrained(tmp_path / "int8")
    assert isinstance(int8.model.layers[0].self_attn.q_proj, bnb.nn.Linear8bitLt)
    assert int8.model.layers[0].self_attn.q_proj.weight.dtype == torch.int8
    # the tokenizer came along: the directory is a usable base
    assert os.path.isfile(tmp_path / "nf4" / "tokenizer.json")


def test_nf4_round_trip_error_is_within_the_rounding_bound(base):
    """NF4 maps each weight divided by its block's absmax to the nearest of 16 codes in [-1, 1]
    (bitsandbytes' ``quantize_4bit``), so |w - dequant(quant(w))| <= absmax_block * (largest gap between
    adjacent NF4 codes) / 2, about 0.152 * absmax (the gap -1 -> -0.696). With double quantization the absmax
    itself is stored in 8 bits: the bound becomes absmax_dq * gap / 2 + |absmax - absmax_dq| (|code| <= 1).

    Rows at least one block long (every real model): bitsandbytes 0.50's CPU ``dequantize_4bit`` mis-reads
    2-D weights whose rows are shorter than the blocksize (the tiny model's in_features=32 layers), which
    the round trip reproduces on purpose (it must match what the quantized layer computes)."""
    import bitsandbytes.functional as F
    from adapterhub_bnb.quantizers import Bnb4bitQuantizer
    from safetensors.torch import load_file

    code = F.get_4bit_type("nf4", device="cpu").float().sort().values
    half_gap = float((code[1:] - code[:-1]).max()) / 2
    assert 0.15 < half_gap < 0.16
    weights = load_file(os.path.join(base, "model.safetensors"))
    torch.manual_seed(0)
    tensors = {
        "model.layers.0.mlp.down_proj.weight": weights["model.layers.0.mlp.down_proj.weight"],  # (32, 64)
        "model.layers.0.self_attn.q_proj.weight": torch.randn(256, 512) * 0.02,
    }
    for double_quant in (False, True):
        for blocksize in (64, 256):
            record = {
                "quantizer": "nf4",
                "quant_type": "nf4",
                "bits": 4,
                "double_quant": double_quant,
                "blocksize": blocksize,
                "weight_dtype": "float32",
                "modules": ["model.layers.*.mlp.down_proj", "model.layers.*.self_attn.q_proj"],
            }
            rt = Bnb4bitQuantizer("nf4").base_transform(record)
            for name, w in tensors.items():
                if w.shape[1] < blocksize:
                    continue
                assert rt.applies(name)
                err = (rt(name, w) - w).abs().reshape(-1, blocksize)  # one row per absmax block
                absmax = w.abs().reshape(-1, blocksize).max(dim=1).values
                if double_quant:
                    _, state = F.quantize_4bit(
                        w.contiguous(), blocksize=blocksize, compress_statistics=True, quant_type="nf4"
                    )
                    stored = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
                    bound = stored * half_gap + (absmax - stored).abs()
                else:
                    bound = absmax * half_gap
                assert bool((err.max(dim=1).values <= bound * (1 + 1e-5) + 1e-7).all()), (name, double_quant, blocksize)
                assert float(err.mean()) < 0.1 * float(absmax.mean())  # and far below the bound on average
    assert not rt.applies("model.embed_tokens.weight") and not rt.applies("lm_head.weight")


# -- train ----------------------------------------------------------------------------------------------
def test_qlora_training_lowers_loss_and_records_the_quantization(trained, base):
    import bitsandbytes as bnb

    from adapterhub.files.fingerprint import fingerprint
    from adapterhub.plugins import Plugins

    result, adapter_dir, data = trained
    manifest = json.load(open(os.path.join(adapter_dir, "adapterhub.json")))
    q = manifest["base"]["quantization"]
    assert manifest["method"] == "qlora" and q["quant_type"] == "nf4" and q["double_quant"] is True
    assert q["blocksize"] == 64 and q["compute_dtype"] == "float32" and q["backend"] == "bitsandbytes"
    # the fingerprint is the one of the ORIGINAL weights, recorded in the quantization too
    assert manifest["base"]["fingerprint"] == fingerprint(base).digest == q["source_fingerprint"]
    peft_cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    assert peft_cfg["peft_type"] == "LORA" and peft_cfg["r"] == 4  # still a PEFT LoRA directory
    assert result["trainable_params"] == 2 * (4 * 32 + 32 * 4) + 2 * (4 * 32 + 16 * 4) + 2 * (4 * 64 + 32 * 4)

    batch = _batch(base, data)
    plugins = Plugins()
    q4 = plugins.get("quantizers", "nf4")
    bare, _ = q4.load_model(base, "causal-lm", None, q4.options_from_record(q))
    adapted = _adapted_4bit(base, adapter_dir)
    assert isinstance(adapted.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    with torch.no_grad():
        before, after = bare(**batch).loss.item(), adapted(**batch).loss.item()
    assert after < 0.7 * before, (before, after)


def test_qlora_push_shows_quantization_as_a_base_property(cli, trained, base):
    _, adapter_dir, _ = trained
    r = cli("push", adapter_dir, "acme/qlora", "--base", base)
    assert r.exit_code == 0, r.output
    info = cli("show", "acme/qlora", "--json").json()
    assert info["method"] == "qlora"
    props = info["base"]["properties"]["quantization"]
    assert props["quant_type"] == "nf4" and props["source_fingerprint"] == info["base_fingerprint"]
    assert "quantized base: nf4" in cli("show", "acme/qlora").stdout
    assert "(qlora, on a nf4 base)" in cli("lineage", "acme/qlora").stdout
    nodes = json.loads(cli("lineage", "acme/qlora", "--format", "json").stdout)["nodes"]
    assert nodes[0]["base_quantization"]["quant_type"] == "nf4"


# -- merge ----------------------------------------------------------------------------------------------
def test_merge_onto_dequantized_base_is_closer_to_the_4bit_model(cli, trained, base, tmp_path):
    from transformers import AutoModelForCausalLM

    _, adapter_dir, data = trained
    dq = cli("merge", adapter_dir, "--base", base, "--out", tmp_path / "dq", "--json")
    assert dq.exit_code == 0, dq.output
    orig = cli(
        "merge",
        adapter_dir,
        "--base",
        base,
        "--out",
        tmp_path / "orig",
        "--onto",
        "original",
        "--probe",
        data,
        "--json",
    )
    assert orig.exit_code == 0, orig.output
    dq, orig = dq.json(), orig.json()
    assert dq["onto"] == "dequantized" and dq["tensors_dequantized"] == 14 and orig["onto"] == "original"
    for d in (dq, orig):
        assert set(d["probe"]) >= {"mean_abs_diff", "max_abs_diff", "probe", "reference"}
    assert dq["probe"]["max_abs_diff"] < 1e-3 < orig["probe"]["mean_abs_diff"]

    # the same thing measured here: plain transformers loads both merged models (no bnb layers)
    batch = _batch(base, data)
    adapted = _adapted_4bit(base, adapter_dir)
    with torch.no_grad():
        ref = adapted(**batch).logits
        diffs = {}
        for name in ("dq", "orig"):
            merged = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
            assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
            diffs[name] = float((merged(**batch).logits - ref).abs().mean())
    assert diffs["dq"] < 0.01 * diffs["orig"], diffs


def test_merge_requantized_loads_as_bnb(cli, trained, base, tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    _, adapter_dir, _ = trained
    r = cli("merge", adapter_dir, "--base", base, "--out", tmp_path / "m4", "--quantize", "nf4", "--json")
    assert r.exit_code == 0, r.output
    d = r.json()
    assert d["quantization"]["quant_type"] == "nf4" and d["probe"]["mean_abs_diff"] > 0
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp dir left behind
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m4")
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)


# -- bad input ------------------------------------------------------------------------------------------
def test_bad_input(cli, base, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "out"
    train = ("train", "--base", base, "--task", "causal-lm", "--data", data, "--out", out, "--max-steps", "1")
    assert_clean_error(
        cli("quantize", base, "--to", "nf5", "--out", out), "unknown quantizer 'nf5'", "available: fp4, int8, nf4"
    )
    assert_clean_error(cli(*train, "--method", "lora", "--quantize", "nf5"), "available: fp4, int8, nf4")
    assert_clean_error(
        cli(*train, "--method", "bitfit", "--quantize", "nf4"),
        "method 'bitfit' cannot train on a quantized base",
        "qlora",
    )
    assert_clean_error(cli(*train, "--method", "ia3", "--quantize", "int8"), "cannot train on a quantized base")
    assert_clean_error(
        cli(*train, "--method", "qlora", "--optim", "paged_adamw_8bit"), "--optim paged_adamw_8bit needs a CUDA GPU"
    )
    assert_clean_error(cli(*train, "--method", "qlora", "--quant-opt", "blocksize=100"), "invalid blocksize 100")
    assert_clean_error(cli(*train, "--method", "qlora", "--quant-opt", "bits=3"), "unknown nf4 option(s) bits")
    assert_clean_error(cli(*train, "--method", "qlora", "--set", "use_dora=true"), "DoRA")
    assert_clean_error(
        cli("quantize", base, "--to", "int8", "--blocksize", "128", "--out", out),
        "--blocksize does not apply to quantizer 'int8'",
    )
    assert not out.exists()
    r = cli("quantize", base, "--to", "nf4", "--out", tmp_path / "q")
    assert r.exit_code == 0, r.output
    assert_clean_error(cli("quantize", tmp_path / "q", "--to", "nf4", "--out", out), "already quantized")
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".")]
