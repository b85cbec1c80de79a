"""One generic `train` over every method: each trains a few steps, saves a delta checkpoint that
reloads to exactly the model the trainer evaluated, and PEFT-implemented ones load in peft."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_train import causal_rows, write_jsonl
from tinymodels import minilm_path, save_tiny_llama_base

DEMO = os.path.join(os.path.dirname(__file__), "..", "adapterhub", "demo")

CAUSAL = [
    ("lora", ["r=4", "target_modules=q_proj,v_proj"]),
    ("dora", ["r=4", "target_modules=q_proj,v_proj"]),
    ("ia3", []),
    ("loha", ["r=4", "target_modules=q_proj,v_proj"]),
    ("lokr", ["r=4", "target_modules=q_proj,v_proj"]),
    ("vera", ["r=4", "target_modules=q_proj,v_proj,down_proj"]),
    ("prompt_tuning", ["num_virtual_tokens=4"]),
    ("prefix_tuning", ["num_virtual_tokens=4"]),
    ("bottleneck", ["bottleneck_size=8"]),
    ("compacter", ["bottleneck_size=8"]),
]
SEQ_CLS = [("bitfit", []), ("lora", ["target_modules=query,value"]), ("bottleneck", ["style=pfeiffer"])]


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory):
    return save_tiny_llama_base(tmp_path_factory.mktemp("base") / "tiny-llama")


def _reloaded_eval_loss(base, task, out, eval_path, labels=None):
    from adapterhub.files.checkpoint import load_adapter_dir
    from adapterhub.plugins import get_plugins
    from adapterhub.training.data import causal_lm_examples, collate, read_jsonl, seq_cls_examples
    from adapterhub.training.modeling import attach_loaded, load_base_model, load_tokenizer

    tok = load_tokenizer(base)
    rows = read_jsonl(eval_path)
    ex = seq_cls_examples(rows, tok, 32, labels) if task == "seq-cls" else causal_lm_examples(rows, tok, 256)
    model = load_base_model(base, task, labels)
    attach_loaded(model, load_adapter_dir(out, get_plugins()))
    with torch.no_grad():
        losses = [
            model(**collate(tok.pad_token_id)(ex[i : i + 8])).loss.item() * len(ex[i : i + 8])
            for i in range(0, len(ex), 8)
        ]
    return sum(losses) / len(ex)


@pytest.mark.parametrize("method,sets", CAUSAL, ids=[m for m, _ in CAUSAL])
def test_every_method_trains_causal_lm(cli, tmp_path, llama_base, method, sets):
    data = write_jsonl(tmp_path / "t.jsonl", causal_rows(8))
    ev = write_jsonl(tmp_path / "e.jsonl", [{"text": "the dog ran to the mat"}, {"text": "hello the sky is red"}])
    args = [
        "train",
        "--base",
        llama_base,
        "--method",
        method,
        "--task",
        "causal-lm",
        "--data",
        data,
        "--eval",
        ev,
        "--out",
        tmp_path / "a",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        "--json",
    ]
    for s in sets:
        args += ["--set", s]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    d = r.json()
    assert 0 < d["trainable_params"] < d["total_params"]
    assert abs(_reloaded_eval_loss(llama_base, "causal-lm", d["out"], ev) - d["metrics"]["eval_loss"]) < 1e-4
    files = set(os.listdir(d["out"]))
    manifest = json.load(open(os.path.join(d["out"], "adapterhub.json")))
    assert manifest["method"] == method
    from adapterhub.plugins import get_plugins

    if get_plugins().get("methods", method).peft_type:
        assert "adapter_config.json" in files
        from peft import PeftModel

        from adapterhub.training.modeling import load_base_model

        PeftModel.from_pretrained(load_base_model(llama_base, "causal-lm"), d["out"])  # loads without error


@pytest.mark.slow
@pytest.mark.parametrize("method,sets", SEQ_CLS, ids=[m for m, _ in SEQ_CLS])
def test_methods_train_seq_cls_on_minilm(cli, tmp_path, method, sets):
    train, ev = os.path.join(DEMO, "sentiment_train.jsonl"), os.path.join(DEMO, "sentiment_eval.jsonl")
    args = [
        "train",
        "--base",
        minilm_path(),
        "--method",
        method,
        "--task",
        "seq-cls",
        "--data",
        train,
        "--eval",
        ev,
        "--out",
        tmp_path / "a",
        "--max-steps",
        "4",
        "--batch-size",
        "16",
        "--max-length",
        "32",
        "--json",
    ]
    for s in sets:
        args += ["--set", s]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    d = r.json()
    labels = json.load(open(os.path.join(d["out"], "adapterhub.json")))["labels"]
    got = _reloaded_eval_loss(minilm_path(), "seq-cls", d["out"], ev, labels)
    assert abs(got - d["metrics"]["eval_loss"]) < 1e-4


@pytest.mark.parametrize("method,peft_config", [("vera", "VeraConfig"), ("loha", "LoHaConfig"), ("lokr", "LoKrConfig")])
def test_unset_target_modules_take_peft_s_default_for_the_model_type(cli, tmp_path, llama_base, method, peft_config):
    """`--method vera|loha|lokr` without target_modules on a Llama adapts what peft adapts without one (its
    TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING: q_proj, v_proj), and records it in the saved config."""
    import peft
    from safetensors.torch import load_file

    from adapterhub.training.modeling import load_base_model

    data = write_jsonl(tmp_path / "t.jsonl", causal_rows(4))
    r = cli(
        "train",
        "--base",
        llama_base,
        "--method",
        method,
        "--task",
        "causal-lm",
        "--data",
        data,
        "--out",
        tmp_path / "a",
        "--max-steps",
        "1",
        "--set",
        "r=4",
        "--json",
    )
    assert r.exit_code == 0, r.output
    out = r.json()["out"]
    assert json.load(open(os.path.join(out, "adapter_config.json")))["target_modules"] == ["q_proj", "v_proj"]
    theirs = peft.get_peft_model(load_base_model(llama_base, "causal-lm"), getattr(peft, peft_config)(r=4))
    wrapped = {n for n, m in theirs.base_model.model.named_modules() if hasattr(m, "base_layer")}
    assert wrapped == {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")}
    keys = [k for k in load_file(os.path.join(out, "adapter_model.safetensors")) if k.startswith("base_model.model.")]
    owners = [{p for p in wrapped if k.startswith(f"base_model.model.{p}.")} for k in keys]
    assert all(len(o) == 1 for o in owners) and set().union(*owners) == wrapped, keys
