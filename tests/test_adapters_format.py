"""The ``adapters`` format plugin without the oracle: what ``export --format adapters`` and ``push`` refuse (one
``Error:`` line, nothing written or stored). Outputs against the real library: tests/test_adapters_oracle.py."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import tinymodels as tm  # noqa: E402
from conftest import assert_clean_error  # noqa: E402
from oracle import quiet  # noqa: E402,F401

from adapterhub.files.checkpoint import save_adapter  # noqa: E402
from adapterhub.plugins import Plugins  # noqa: E402

EXPORT_REFUSED = {  # id -> (model, method, config, words of the error)
    "layers-limited-by-target-layers": (
        "llama",
        "bottleneck",
        {"bottleneck_size": 8, "target_layers": r"model\.layers\.0\.mlp\.down_proj"},
        ["target_layers", "leave_out"],
    ),
    "residual-false": ("llama", "bottleneck", {"bottleneck_size": 8, "residual": False}, ["residual=false"]),
    "lora-on-gpt2-merged-qkv": ("gpt2", "lora", {"r": 2, "target_modules": ["c_attn"]}, ["does not adapt", "c_attn"]),
    "lora-rslora": ("llama", "lora", {"r": 2, "target_modules": ["q_proj"], "use_rslora": True}, ["use_rslora=True"]),
    "lora-o-proj": ("llama", "lora", {"r": 2, "target_modules": ["o_proj"]}, ["o_proj", "does not adapt"]),
    "ia3-feedforward": (
        "llama",
        "ia3",
        {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
        ["feedforward_modules", "scales outputs only"],
    ),
    "prompt-tuning": ("llama", "prompt_tuning", {"num_virtual_tokens": 2}, ["prompt_tuning", "cannot be exported"]),
}


@pytest.mark.parametrize("case", list(EXPORT_REFUSED))
def test_export_refuses_what_adapters_cannot_load_the_same(case, cli, tmp_path):
    name, method_name, values, needles = EXPORT_REFUSED[case]
    method = Plugins().get("methods", method_name)
    model = tm.MODELS[name]()
    effective = method.attach(model, method.make_config(values))
    save_adapter(
        str(tmp_path / "a"),
        {"method": method_name, "config": json.loads(json.dumps(dataclasses.asdict(effective), default=str))},
        method.state_dict(model),
    )
    r = cli("export", str(tmp_path / "a"), "--format", "adapters", "--out", str(tmp_path / "out"))
    assert_clean_error(r, *needles)
    assert not (tmp_path / "out").exists()


def _adapters_dir(path, meta, tensors):
    os.makedirs(path)
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(meta, f)
    save_file(tensors, os.path.join(path, "adapter.safetensors"))
    return str(path)


SEQ_BN = {
    "mh_adapter": False,
    "output_adapter": True,
    "reduction_factor": 4,
    "non_linearity": "relu",
    "original_ln_before": True,
    "original_ln_after": True,
    "residual_before_ln": True,
}
KEY = "model.layers.0.output_adapters.adapters.a.adapter_down.0.weight"


@pytest.mark.parametrize(
    "meta, tensors, needles",
    [
        (
            {"config": SEQ_BN, "model_type": "t5", "hidden_size": 32, "name": "a"},
            {KEY: torch.zeros(8, 32)},
            ["model_type 't5'"],
        ),
        (
            {"config": SEQ_BN, "model_type": "llama", "hidden_size": 32},
            {KEY: torch.zeros(8, 32)},
            ["no adapter 'name'"],
        ),
        (
            {
                "config": {**SEQ_BN, "reduction_factor": {"default": 16}},
                "model_type": "llama",
                "hidden_size": 32,
                "name": "a",
            },
            {KEY: torch.zeros(8, 32)},
            ["per-layer reduction factor"],
        ),
        (
            {"config": {**SEQ_BN, "new_option": 3}, "model_type": "llama", "hidden_size": 32, "name": "a"},
            {KEY: torch.zeros(8, 32)},
            ["new_option=3", "does not know"],
        ),
        (
            {"config": SEQ_BN, "model_type": "llama", "hidden_size": 32, "name": "a"},
            {KEY.replace("adapter_down.0", "gate"): torch.zeros(1, 32)},
            ["does not map", "gate"],
        ),
        (
            {"config": SEQ_BN, "model_type": "llama", "hidden_size": 32, "name": "a"},
            {KEY: torch.zeros(8, 32)},
            ["bottleneck", "adapter.up", "missing"],
        ),
    ],
)
def test_push_refuses_adapters_directories_it_cannot_map(meta, tensors, needles, cli, tmp_path):
    src = _adapters_dir(tmp_path / "src", meta, tensors)
    assert_clean_error(cli("push", src, "acme/x"), *needles)
    assert cli("list", "--json").json() == []


def test_an_adapters_directory_used_directly_says_to_push_it(cli, tmp_path):
    src = _adapters_dir(
        tmp_path / "src",
        {"config": SEQ_BN, "model_type": "llama", "hidden_size": 32, "name": "a"},
        {KEY: torch.zeros(8, 32)},
    )
    base = tmp_path / "base"
    tm.tiny_llama().save_pretrained(str(base))
    r = cli("merge", src, "--base", str(base), "--out", str(tmp_path / "m"))
    assert_clean_error(r, "adapters library directory", "adapterhub push")
