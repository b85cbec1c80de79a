"""Bottleneck / Compacter: the adapters library's placement options and inits (config, attach refusals),
versions stored before them keeping their placement, and push refusing incomplete tensor sets (header shapes).
The numbers themselves are checked against ``adapters`` in tests/test_adapters_oracle.py."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import oracle  # noqa: E402
import tinymodels as tm  # noqa: E402
from adapterhub_bottleneck import BottleneckMethod, CompacterMethod  # noqa: E402
from conftest import assert_clean_error  # noqa: E402
from oracle import quiet  # noqa: E402,F401

from adapterhub.errors import InvalidInput  # noqa: E402
from adapterhub.files.checkpoint import load_adapter_dir, save_adapter  # noqa: E402
from adapterhub.training.modeling import attach_loaded  # noqa: E402

BN, CP = BottleneckMethod(), CompacterMethod()
P = oracle.PREFIX


def _logits(model, name):
    with torch.no_grad():
        return tm.logits(model, tm.inputs_for(name))


# -- defaults per style, as the adapters library's config classes ------------------------------------------------
def test_style_defaults_are_the_adapters_config_classes():
    seq, double = BN.make_config({"style": "pfeiffer"}), BN.make_config({})
    assert (seq.original_ln_before, seq.original_ln_after, seq.residual_before_ln) == (True, True, True)  # SeqBnConfig
    assert (double.original_ln_before, double.original_ln_after) == (False, True)  # DoubleSeqBnConfig
    cpp = CP.make_config({"style": "pfeiffer"})  # CompacterPlusPlusConfig
    assert (cpp.original_ln_before, cpp.reduction_factor, cpp.non_linearity, cpp.phm_dim) == (True, 32, "gelu", 4)
    assert BN.make_config({"is_parallel": True}).original_ln_before is False  # ParBnConfig reads the block input
    assert BN.make_config({}).init == "zero_up" and CP.make_config({}).init == "zero_up"  # starts as the identity


@pytest.mark.parametrize(
    "values, match",
    [
        ({"residual_before_ln": "later"}, "residual_before_ln must be true, false or 'post_add'"),
        ({"residual_before_ln": "post_add", "original_ln_before": False}, "needs original_ln_before=true"),
        ({"is_parallel": True, "original_ln_before": True}, "parallel adapter"),
        ({"is_parallel": True, "residual": False}, "parallel adapter"),
        ({"ln_after": "yes"}, "ln_after must be true or false"),
        ({"original_ln_after": 1}, "original_ln_after must be true or false"),
    ],
)
def test_invalid_placement_options_are_refused(values, match):
    with pytest.raises(InvalidInput, match=match):
        BN.make_config(values)


def test_residual_reading_options_are_refused_where_they_are_undefined():
    """post_add on a pre-LN model, a custom target outside the built-in sites, a Gemma-2-like layer."""
    llama = tm.tiny_llama()
    with pytest.raises(InvalidInput, match="pre-LN layer"):
        BN.attach(llama, BN.make_config({"style": "pfeiffer", "residual_before_ln": "post_add"}))
    with pytest.raises(InvalidInput, match="built-in placements only.*self_attn.q_proj"):
        BN.attach(llama, BN.make_config({"style": "pfeiffer", "target_layers": r".*\.self_attn\.q_proj"}))
    BN.attach(
        llama,
        BN.make_config({"style": "pfeiffer", "original_ln_before": False, "target_layers": r".*\.self_attn\.q_proj"}),
    )  # reads only the projection: fine
    BN.detach(llama)
    llama.model.layers[0].add_module("pre_feedforward_layernorm", torch.nn.Identity())
    with pytest.raises(InvalidInput, match="pre_feedforward_layernorm"):
        BN.attach(llama, BN.make_config({"style": "pfeiffer"}))
    assert not any(".adapter." in n for n, _ in llama.named_parameters())


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_wired_adapters_detach_completely_and_survive_deepcopy(name):
    import copy

    model = tm.MODELS[name]()
    base, hooks = _logits(model, name), oracle_hooks(model)
    BN.attach(model, BN.make_config({"style": "pfeiffer", "original_ln_after": False, "bottleneck_size": 8}))
    oracle.perturb_trainable(model, lambda _, p, noise: p.add_(noise * 0.05))
    adapted = _logits(model, name)
    assert (adapted - base).abs().max() > 1e-4
    twin = copy.deepcopy(model)
    assert torch.equal(_logits(twin, name), adapted)
    BN.detach(model)
    assert oracle_hooks(model) == hooks and torch.equal(_logits(model, name), base)
    assert torch.equal(_logits(twin, name), adapted)  # the copy has its own hooks and wiring
    BN.detach(twin)
    assert torch.equal(_logits(twin, name), base)


def oracle_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(
    "init, identity", [("zero_up", True), ("mam", True), ("mam_adapter", True), ("bert", False), ("houlsby", False)]
)
def test_bottleneck_inits(init, identity):
    torch.manual_seed(0)
    model = tm.tiny_llama()
    BN.attach(model, BN.make_config({"init": init, "bottleneck_size": 64}))
    a = model.model.layers[0].mlp.down_proj.adapter
    std = {"zero_up": 0.01, "bert": 0.02, "houlsby": 0.01}.get(init)
    if std is not None:  # N(0, std) (houlsby truncated to +-2e-2, so a little narrower)
        assert abs(a.down.weight.std().item() - std) < 0.25 * std
    assert bool(torch.count_nonzero(a.up.weight) == 0) is identity
    if init == "bert":
        assert abs(a.up.weight.std().item() - 0.02) < 0.005  # the adapters library's init_bert_weights
    if init == "houlsby":
        assert a.up.weight.abs().max() <= 0.02
    assert not a.down.bias.any() and not a.up.bias.any()


def test_compacter_bert_init_is_what_adapters_does():
    """xavier-normal (gain 1) factors for down and up (no zero), per-layer rules N(0, 0.01)."""
    torch.manual_seed(0)
    model = tm.tiny_llama()
    CP.attach(model, CP.make_config({"init": "bert", "bottleneck_size": 8, "shared_phm_rule": False}))
    up = model.model.layers[0].mlp.down_proj.adapter.up
    assert up.W_right.abs().sum() > 0 and up.phm_rule.std() < 0.03
    fan = up.W_left.shape[1] + up.W_left.shape[2]  # xavier on each (in/n, k) slice: std sqrt(2 / (fan_in + fan_out))
    assert up.W_left.std().item() == pytest.approx((2 / fan) ** 0.5, rel=0.6)


# -- versions stored before the placement options ----------------------------------------------------------------
def test_a_pfeiffer_adapter_stored_before_keeps_its_placement(tmp_path):
    """Its manifest config has no placement keys and init 'bert' (then: N(0, 0.01) down, zero up): it is read
    as original_ln_before=false and init zero_up, with the outputs it was trained with."""
    model = tm.tiny_bert_seq_cls()
    old = BN.make_config({"style": "pfeiffer", "reduction_factor": 4, "original_ln_before": False})
    effective = BN.attach(model, old)
    oracle.perturb_trainable(model, lambda _, p, noise: p.add_(noise * 0.05))
    trained = _logits(model, "bert")
    stored = json.loads(json.dumps(dataclasses.asdict(effective)))
    for key in (
        "original_ln_before",
        "original_ln_after",
        "residual_before_ln",
        "ln_before",
        "ln_after",
        "adapter_residual_before_ln",
        "is_parallel",
    ):
        del stored[key]  # what adapterhub 0.1.0 wrote
    stored["init"] = "bert"
    save_adapter(str(tmp_path / "old"), {"method": "bottleneck", "config": stored}, BN.state_dict(model))
    loaded = load_adapter_dir(str(tmp_path / "old"), _plugins())
    assert loaded.config.original_ln_before is False and loaded.config.init == "zero_up"
    again = tm.tiny_bert_seq_cls()
    attach_loaded(again, loaded)
    assert torch.equal(_logits(again, "bert"), trained)
    new = BN.make_config({k: v for k, v in stored.items() if k != "init"})  # the same keys typed today
    assert new.original_ln_before is True  # a new config means SeqBnConfig: only stored ones are read as before


def _plugins():
    from adapterhub.plugins import Plugins

    return Plugins()


# -- push: every tensor an attach needs, on header shapes -------------------------------------------------------
UP_BIAS = "model.layers.1.mlp.down_proj.adapter.up.bias"
PUSH_CASES = {  # id -> (method, config, edit(tensors), expected words)
    "houlsby-no-up-bias": (BN, {"bottleneck_size": 8}, lambda t: t.pop(P + UP_BIAS), [UP_BIAS, "(32,) is missing"]),
    "ln-after-no-norm-bias": (
        BN,
        {"style": "pfeiffer", "bottleneck_size": 8, "ln_after": True},
        lambda t: t.pop(P + "model.layers.0.mlp.down_proj.adapter.norm_after.bias"),
        ["norm_after.bias", "is missing"],
    ),
    "down-wrong-width": (
        BN,
        {"bottleneck_size": 8},
        lambda t: t.update({P + "model.layers.0.mlp.down_proj.adapter.down.weight": torch.zeros(4, 32)}),
        ["down.weight", "(4, 32)", "(8, 32)"],
    ),
    "shared-rule-missing": (
        CP,
        {"bottleneck_size": 8},
        lambda t: t.pop(P + "phm_rule"),
        ["shared_phm_rule is set", "phm_rule", "missing"],
    ),
    "unshared-rule-missing": (
        CP,
        {"bottleneck_size": 8, "shared_phm_rule": False},
        lambda t: t.pop(P + "model.layers.0.mlp.down_proj.adapter.up.phm_rule"),
        ["up.phm_rule", "(4, 4, 4) is missing"],
    ),
    "shared-rule-where-unshared": (
        CP,
        {"bottleneck_size": 8, "shared_phm_rule": False},
        lambda t: t.update({P + "phm_rule": torch.zeros(4, 4, 4)}),
        ["phm_rule", "shared_phm_rule is false"],
    ),
    "factorized-no-right": (
        CP,
        {"bottleneck_size": 8},
        lambda t: t.pop(P + "model.layers.0.self_attn.o_proj.adapter.down.W_right"),
        ["down.W_right", "(4, 1, 2) is missing"],
    ),
    "full-w-wrong-shape": (
        CP,
        {"bottleneck_size": 8, "factorized_phm_W": False},
        lambda t: t.update({P + "model.layers.0.mlp.down_proj.adapter.up.W": torch.zeros(4, 2, 4)}),
        ["up.W", "(4, 2, 4)", "(4, 2, 8)"],
    ),
    "bias-without-phm-bias": (
        CP,
        {"bottleneck_size": 8, "phm_bias": False},
        lambda t: t.update({P + "model.layers.0.mlp.down_proj.adapter.up.bias": torch.zeros(32)}),
        ["unexpected tensor", "up.bias", "phm_bias=False"],
    ),
    "adapter-outside-target-layers": (
        BN,
        {"style": "pfeiffer", "bottleneck_size": 8},
        lambda t: t.update({k.replace("mlp.down_proj", "self_attn.o_proj"): v.clone() for k, v in list(t.items())}),
        ["self_attn.o_proj", "target_layers"],
    ),
}


@pytest.mark.parametrize("case", list(PUSH_CASES))
def test_incomplete_or_misshapen_adapters_are_refused_at_push(case, cli, tmp_path):
    method, values, edit, needles = PUSH_CASES[case]
    model = tm.tiny_llama()
    effective = method.attach(model, method.make_config(values))
    tensors = {k: v.clone() for k, v in method.state_dict(model).items()}
    config = json.loads(json.dumps(dataclasses.asdict(effective)))
    save_adapter(str(tmp_path / "good"), {"method": method.name, "config": config}, tensors)
    edit(tensors)
    save_adapter(str(tmp_path / "bad"), {"method": method.name, "config": config}, tensors)
    assert_clean_error(cli("push", str(tmp_path / "bad"), "acme/bad"), *needles)
    assert cli("list", "--json").json() == []  # nothing stored
    assert cli("push", str(tmp_path / "good"), "acme/good").exit_code == 0


def test_push_with_base_checks_the_adapted_width(cli, tmp_path):
    base = tmp_path / "base"
    tm.tiny_gpt2().save_pretrained(str(base))  # Conv1D: weight (in, out)
    model = tm.tiny_gpt2()
    effective = BN.attach(model, BN.make_config({"bottleneck_size": 8}))
    config = json.loads(json.dumps(dataclasses.asdict(effective)))
    save_adapter(str(tmp_path / "ok"), {"method": "bottleneck", "config": config}, BN.state_dict(model))
    assert cli("push", str(tmp_path / "ok"), "acme/ok", "--base", str(base)).exit_code == 0
    llama = tm.tiny_llama()
    effective = BN.attach(llama, BN.make_config({"bottleneck_size": 8}))
    save_adapter(
        str(tmp_path / "other"),
        {"method": "bottleneck", "config": json.loads(json.dumps(dataclasses.asdict(effective)))},
        BN.state_dict(llama),
    )
    assert_clean_error(
        cli("push", str(tmp_path / "other"), "acme/other", "--base", str(base)),
        "model.layers.0.mlp.down_proj",
        "no 2-d weight",
    )
