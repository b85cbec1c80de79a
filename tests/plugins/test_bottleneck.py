"""The ``bottleneck`` (Houlsby / Pfeiffer) and ``compacter`` (Compacter / Compacter++) methods.

No PEFT oracle exists for these, so the reference is the formula itself, written out in the tests:
``h + scaling * W_up f(W_down h + b_down) + b_up`` after the adapted projection, and for Compacter the PHM
weight ``sum_i kron(A_i, B_i)``. Table-driven over tiny BERT (seq-cls), tiny Llama (GQA), GPT-2 (Conv1D)
and the real MiniLM. Each case runs the conformance suite (``adapterhub.testing.conformance``: default init,
detach, state-dict and directory round trips, tensor checks); the tests here add what it does not check. Every
reference case randomises the adapter so that it cannot pass trivially.
"""

from __future__ import annotations

import os
import re
import sys

import pytest
import torch as torch

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import oracle  # noqa: E402
import tinymodels as tm  # noqa: E402
from adapterhub_bottleneck import BottleneckConfig, BottleneckMethod, CompacterConfig, CompacterMethod  # noqa: E402
from adapterhub_bottleneck import model as bm  # noqa: E402

from adapterhub.errors import AdapterhubError, InvalidInput  # noqa: E402
from adapterhub.plugins import Plugins  # noqa: E402
from adapterhub.testing.conformance import MethodConformance  # noqa: E402

BN, CP = BottleneckMethod(), CompacterMethod()
P = oracle.PREFIX

# id -> (model, method, options, slow?)
CASES = {
    "bert-houlsby-seqcls": ("bert", BN, dict(reduction_factor=4, task_type="SEQ_CLS"), False),
    "bert-pfeiffer-gelu": ("bert", BN, dict(style="pfeiffer", bottleneck_size=8, non_linearity="gelu"), False),
    "llama-houlsby": ("llama", BN, dict(reduction_factor=4, dropout=0.1), False),
    "gpt2-pfeiffer-tanh": ("gpt2", BN, dict(style="pfeiffer", reduction_factor=4, non_linearity="tanh"), False),
    "llama-pfeiffer-mam-init": ("llama", BN, dict(style="pfeiffer", bottleneck_size=8, init="mam"), False),
    "bert-compacter-seqcls": ("bert", CP, dict(bottleneck_size=8, task_type="SEQ_CLS"), False),
    "llama-compacter++-unshared-full": (
        "llama",
        CP,
        dict(style="pfeiffer", bottleneck_size=8, phm_dim=2, shared_phm_rule=False, factorized_phm_W=False),
        False,
    ),
    "gpt2-compacter-rank2": ("gpt2", CP, dict(bottleneck_size=8, phm_rank=2, non_linearity="swish"), False),
    "minilm-houlsby": ("minilm", BN, dict(), True),
    "minilm-compacter": ("minilm", CP, dict(), True),
}
PARAMS = oracle.case_params(CASES)


def _randomise(model, seed=0):
    """Every trainable parameter += N(0, 0.05): non-zero up projections, heads moved off the base."""
    oracle.perturb_trainable(model, lambda _, p, noise: p.add_(noise * 0.05), seed)


_out = oracle.out


def _hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


# -- the conformance suite per case (default init, detach, round trips, tensor checks) -----------------------
oracle.add_conformance_classes(
    globals(), MethodConformance, CASES, lambda row: dict(method=row[1], model=row[0], options=row[2])
)


# -- (d) one optimizer step -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", PARAMS)
def test_training_step_changes_only_adapter_parameters(case):
    name, method, opts, _ = CASES[case]
    model = tm.MODELS[name]()
    method.attach(model, method.make_config(opts))
    _randomise(model, seed=2)  # non-zero up projections, so that the down projections get a gradient too
    trainable = oracle.trainable(model)
    # Adam: a step of ~lr for every parameter with a non-zero gradient, however small (glorot-sized PHM factors
    # get gradients far below SGD's fp32 resolution on tiny BERT)
    changed = oracle.optimizer_step(model, lambda m: oracle.logits_loss(m, name), torch.optim.Adam, lr=1e-3)
    assert changed == trainable  # every adapter parameter moved, nothing else did
    assert all(".adapter." in n or n == "phm_rule" or n.startswith(("classifier.", "score.")) for n in trainable)
    assert {P + n for n in trainable} == set(method.state_dict(model))  # and each is saved, under its name
    if opts.get("task_type") == "SEQ_CLS":
        assert {"classifier.weight", "classifier.bias"} <= trainable


# -- reference formulas -----------------------------------------------------------------------------------
ACT = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "swish": lambda x: x * torch.sigmoid(x),
    "tanh": torch.tanh,
}


def _base_linear(module, x):
    """The base projection alone: Linear (weight (out, in)) or Conv1D (weight (in, out))."""
    if isinstance(module, torch.nn.Linear):
        return x @ module.weight.T + module.bias if module.bias is not None else x @ module.weight.T
    return x @ module.weight + module.bias


def _reference(module, x, act, residual=True, scaling=1.0):
    a = module.adapter
    h = _base_linear(module, x)
    branch = act(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
    return h + scaling * branch if residual else scaling * branch


@pytest.mark.parametrize(
    "name, opts, path",
    [
        ("bert", dict(), "bert.encoder.layer.1.attention.output.dense"),
        ("bert", dict(), "bert.encoder.layer.0.output.dense"),
        (
            "bert",
            dict(style="pfeiffer", non_linearity="gelu", original_ln_before=False),
            "bert.encoder.layer.1.output.dense",
        ),
        ("llama", dict(non_linearity="relu"), "model.layers.0.self_attn.o_proj"),
        ("llama", dict(style="pfeiffer", scaling=0.5, original_ln_before=False), "model.layers.1.mlp.down_proj"),
        ("gpt2", dict(non_linearity="tanh"), "transformer.h.0.attn.c_proj"),
        ("gpt2", dict(style="pfeiffer", residual=False, original_ln_before=False), "transformer.h.1.mlp.c_proj"),
    ],
)
def test_adapted_module_equals_formula(name, opts, path):
    model = tm.MODELS[name]()
    eff = BN.attach(model, BN.make_config(dict(bottleneck_size=8, **opts)))
    _randomise(model)
    module = model.get_submodule(path)
    x = torch.randn(2, 5, module.weight.shape[1 if isinstance(module, torch.nn.Linear) else 0])
    with torch.no_grad():
        expected = _reference(module, x, ACT[eff.non_linearity], eff.residual, eff.scaling)
        assert (expected - _base_linear(module, x)).abs().max() > 1e-3
        assert torch.allclose(module(x), expected, atol=1e-6, rtol=1e-5)


def test_bert_adapter_sits_before_the_residual_layernorm():
    """BertSelfOutput: LayerNorm(dropout(adapter(dense(h))) + input), where the adapters library puts it."""
    model = tm.tiny_bert_seq_cls()
    BN.attach(model, BN.make_config({"bottleneck_size": 8}))
    _randomise(model)
    block = model.bert.encoder.layer[0].attention.output
    h, inp = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = block.LayerNorm(_reference(block.dense, h, ACT["swish"]) + inp)
        assert torch.allclose(block(h, inp), expected, atol=1e-6, rtol=1e-5)


def _kron_sum(rule, w):
    return sum(torch.kron(rule[i], w[i]) for i in range(rule.shape[0]))


@pytest.mark.parametrize("factorized", [True, False], ids=["factorized", "full"])
def test_phm_weight_and_compacter_module_equal_formula(factorized):
    model = tm.tiny_llama()
    eff = CP.attach(model, CP.make_config(dict(bottleneck_size=8, factorized_phm_W=factorized, phm_rank=2)))
    _randomise(model)
    module = model.model.layers[1].mlp.down_proj
    a = module.adapter
    with torch.no_grad():
        weights = []
        for phm, (fan_in, fan_out) in ((a.down, (32, 8)), (a.up, (8, 32))):
            b = phm.W_left @ phm.W_right if factorized else phm.W  # B_i = s_i t_i^T (rank 2) or full
            assert b.shape == (4, fan_in // 4, fan_out // 4)
            expected = _kron_sum(model.phm_rule, b)  # (in, out)
            assert expected.shape == (fan_in, fan_out)
            assert torch.allclose(phm.phm_weight(), expected, atol=1e-6)
            weights.append(expected)
        x = torch.randn(2, 5, 64)
        h = _base_linear(module, x)
        ref = h + torch.nn.functional.gelu(h @ weights[0] + a.down.bias) @ weights[1] + a.up.bias
        assert eff.non_linearity == "gelu" and (ref - h).abs().max() > 1e-3
        assert torch.allclose(module(x), ref, atol=1e-5, rtol=1e-5)


def _count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_shared_phm_rule_is_one_tensor_and_parameter_count_matches_formula():
    n, k, d, b = 4, 1, 32, 8
    model = tm.tiny_llama()
    CP.attach(model, CP.make_config({"bottleneck_size": b}))
    rules = {id(phm.phm_rule) for a in bm.adapters(model, "compacter").values() for phm in (a.down, a.up)}
    assert rules == {id(model.phm_rule)}  # one tensor object, shared by 2 layers x 2 adapters x 2 projections
    keys = CP.state_dict(model)
    assert [key for key in keys if key.endswith("phm_rule")] == [P + "phm_rule"]  # saved once

    def phm(fan_in, fan_out):  # factorised B_i: n * (in/n * k + k * out/n) + bias
        return n * (fan_in // n * k + k * fan_out // n) + fan_out

    adapters = 4  # houlsby: 2 per layer, 2 layers
    assert _count(model) == n**3 + adapters * (phm(d, b) + phm(b, d))
    assert sum(v.numel() for v in keys.values()) == _count(model)

    unshared = tm.tiny_llama()
    CP.attach(unshared, CP.make_config({"bottleneck_size": b, "shared_phm_rule": False}))
    assert _count(unshared) == adapters * (2 * n**3 + phm(d, b) + phm(b, d))
    assert not hasattr(unshared, "phm_rule") and len(CP.state_dict(unshared)) == adapters * 8

    plain = tm.tiny_llama()
    BN.attach(plain, BN.make_config({"bottleneck_size": b}))
    assert _count(plain) == adapters * (2 * d * b + b + d)
    assert _count(model) * 4 < _count(plain)


@pytest.mark.slow
def test_compacter_is_far_smaller_than_bottleneck_on_minilm():
    model = tm.minilm()
    CP.attach(model, CP.make_config({"reduction_factor": 16}))
    compacter = _count(model)
    CP.detach(model)
    BN.attach(model, BN.make_config({"reduction_factor": 16}))
    assert compacter * 10 < _count(model)  # same bottleneck (24), 12 adapters: ~15k vs ~226k


# -- placement, leave_out, target_layers ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bert", "llama", "gpt2"])
def test_houlsby_inserts_two_adapters_per_layer_and_pfeiffer_one(name):
    expected = {
        "bert": ("attention.output.dense", "output.dense"),
        "llama": ("self_attn.o_proj", "mlp.down_proj"),
        "gpt2": ("attn.c_proj", "mlp.c_proj"),
    }[name]
    for method in (BN, CP):
        for style, per_layer in (("houlsby", 2), ("pfeiffer", 1)):
            model = tm.MODELS[name]()
            method.attach(model, method.make_config({"style": style, "bottleneck_size": 8}))
            paths = list(bm.adapters(model, method.name))
            assert len(paths) == 2 * per_layer
            for i in (0, 1):  # the names after "<layer index>." in each layer
                in_layer = sorted(re.sub(r"^.*?\.\d+\.", "", p) for p in paths if bm.layer_index(p) == i)
                assert in_layer == sorted(expected[-per_layer:])


@pytest.mark.slow
def test_minilm_placement_is_the_adapters_library_one():
    """BertSelfOutput.dense and BertOutput.dense of every layer; the pooler is untouched."""
    model = tm.minilm()
    BN.attach(model, BN.make_config({}))
    paths = sorted(bm.adapters(model, "bottleneck"))
    assert len(paths) == 12 and not any("pooler" in p for p in paths)
    assert sum(p.endswith("attention.output.dense") for p in paths) == 6
    assert bm.adapters(model, "bottleneck")[paths[0]].down.weight.shape == (384 // 16, 384)


def test_leave_out():
    model = tm.tiny_llama()
    eff = BN.attach(model, BN.make_config({"bottleneck_size": 4, "leave_out": [0]}))
    assert eff.leave_out == [0]
    assert sorted(bm.adapters(model, "bottleneck")) == [
        "model.layers.1.mlp.down_proj",
        "model.layers.1.self_attn.o_proj",
    ]
    assert not any(".layers.0." in k for k in BN.state_dict(model))
    with pytest.raises(InvalidInput, match=r"leave_out \[5\] names no adapted layer \(layers: 0..1\)"):
        BN.attach(tm.tiny_llama(), BN.make_config({"leave_out": [1, 5]}))
    with pytest.raises(InvalidInput, match="leaves out every adapted layer"):
        BN.attach(tm.tiny_llama(), BN.make_config({"leave_out": [0, 1]}))


def test_target_layers_override_and_gqa_widths():
    model = tm.tiny_llama()
    eff = BN.attach(model, BN.make_config({"target_layers": ["k_proj", "q_proj"], "reduction_factor": 4}))
    adapters = bm.adapters(model, "bottleneck")
    assert sorted(p.rsplit(".", 1)[-1] for p in adapters) == ["k_proj", "k_proj", "q_proj", "q_proj"]
    assert adapters["model.layers.0.self_attn.k_proj"].down.weight.shape == (4, 16)  # GQA: k_proj is 16 wide
    assert adapters["model.layers.0.self_attn.q_proj"].up.weight.shape == (32, 8)
    assert eff.target_layers == ["k_proj", "q_proj"]
    _randomise(model)
    assert (_out(model, "llama") - _out(tm.tiny_llama(), "llama")).abs().max() > 1e-4

    regex = tm.tiny_gpt2()
    BN.attach(regex, BN.make_config({"target_layers": r"transformer\.h\.1\.mlp\.c_fc", "bottleneck_size": 4}))
    assert list(bm.adapters(regex, "bottleneck")) == ["transformer.h.1.mlp.c_fc"]
    assert bm.adapters(regex, "bottleneck")["transformer.h.1.mlp.c_fc"].down.weight.shape == (4, 128)  # Conv1D out


class _Unknown(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()) for _ in range(2))
        self.proj_out = torch.nn.Linear(8, 8)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.proj_out(x)


def test_unknown_architecture_needs_target_layers():
    model, x = _Unknown(), torch.randn(3, 8)
    base = model(x).detach()
    with pytest.raises(
        InvalidInput, match=r"no built-in adapter placement.*set target_layers.*candidates: 0, proj_out"
    ):
        BN.attach(model, BN.make_config({}))
    assert _hooks(model) == 0 and not any(n.endswith("adapter") for n, _ in model.named_modules())
    with pytest.raises(InvalidInput, match="matched 'blocks.0', a Sequential"):  # the suffix '0' matches both
        BN.attach(model, BN.make_config({"target_layers": ["0"], "bottleneck_size": 4}))
    BN.attach(model, BN.make_config({"target_layers": r"blocks\.\d+\.0", "bottleneck_size": 4}))
    assert sorted(bm.adapters(model, "bottleneck")) == ["blocks.0.0", "blocks.1.0"]
    assert torch.equal(model(x), base)  # identity at init
    _randomise(model)
    assert not torch.equal(model(x), base)  # the hooks run
    assert BN.effective_config(model).non_linearity == "swish"


def test_effective_config_and_user_config_untouched():
    cfg = BN.make_config({"style": "pfeiffer", "task_type": "SEQ_CLS"})
    model = tm.tiny_bert_seq_cls()
    eff = BN.attach(model, cfg)
    assert cfg.target_layers is None and cfg.non_linearity is None and cfg.modules_to_save == []
    assert eff.non_linearity == "relu" and eff.modules_to_save == [
        "classifier",
        "score",
        "pre_classifier",
    ]  # SeqBnConfig's relu
    assert eff.target_layers == r"(?:.*\.)?\d+\.(?:output\.dense)"
    assert BN.effective_config(model) == eff
    assert BN.make_config({}).non_linearity is None and BN.attach(tm.tiny_llama(), {}).non_linearity == "swish"
    assert CP.make_config({}).non_linearity == "gelu" and CP.make_config({}).reduction_factor == 32


def test_deepcopy_of_an_attached_model_keeps_and_detaches_its_own_adapters():
    import copy

    model = tm.tiny_gpt2()
    base = _out(model, "gpt2")
    CP.attach(model, CP.make_config({"bottleneck_size": 8}))
    _randomise(model)
    twin = copy.deepcopy(model)
    assert twin.phm_rule is not model.phm_rule
    assert bm.adapters(twin, "compacter")["transformer.h.0.mlp.c_proj"].up.phm_rule is twin.phm_rule
    assert torch.equal(_out(twin, "gpt2"), _out(model, "gpt2"))
    CP.detach(twin)
    assert torch.equal(_out(twin, "gpt2"), base) and not torch.equal(_out(model, "gpt2"), base)


def test_dropout_in_train_mode_only_and_bf16_base():
    model = tm.tiny_llama()
    BN.attach(model, BN.make_config({"bottleneck_size": 8, "dropout": 0.5}))
    _randomise(model)
    assert torch.equal(_out(model, "llama"), _out(model, "llama"))
    model.train()
    assert not torch.equal(_out(model, "llama"), _out(model, "llama"))

    bf16 = tm.tiny_gpt2(dtype=torch.bfloat16)
    base = _out(bf16, "gpt2")
    CP.attach(bf16, CP.make_config({"bottleneck_size": 8}))
    assert all(p.dtype == torch.float32 for p in bf16.parameters() if p.requires_grad)
    out = _out(bf16, "gpt2")
    assert out.dtype == torch.bfloat16 and torch.equal(out, base)


# -- plugin, capabilities, merge --------------------------------------------------------------------------
def test_plugin_registers_bottleneck_and_compacter(monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "bottleneck")
    plugins = Plugins()
    assert set(plugins.names("methods")) == {"bottleneck", "compacter"}
    for name in ("bottleneck", "compacter"):
        method = plugins.get("methods", name)
        assert method.peft_type is None and method.to_peft_config(method.make_config({})) is None
        assert not method.matches_peft_config({"peft_type": "LORA"}) and "merge" not in method.capabilities()
        assert all(f["help"] for f in method.config_fields())


def test_merge_is_refused_with_a_clear_message():
    model = tm.tiny_llama()
    eff = BN.attach(model, BN.make_config({"bottleneck_size": 8}))
    base = model.model.layers[0].mlp.down_proj.weight
    for method in (BN, CP):
        with pytest.raises(AdapterhubError, match=f"method '{method.name}' cannot merge into base weights"):
            method.merge_tensor("model.layers.0.mlp.down_proj.weight", base, BN.state_dict(model), eff)


def test_importing_the_plugin_does_not_import_torch():
    oracle.assert_imports_without_torch("adapterhub_bottleneck")


# -- bad inputs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, values, match",
    [
        (BN, {"reduction": 4}, "unknown bottleneck option.*reduction.*valid keys.*reduction_factor"),
        (BN, {"style": "parallel"}, "style must be one of houlsby, pfeiffer"),
        (BN, {"reduction_factor": 0}, "reduction_factor must be a positive integer"),
        (BN, {"bottleneck_size": 2.5}, "bottleneck_size must be a positive integer"),
        (BN, {"non_linearity": "sigmoid"}, "non_linearity must be one of relu, gelu, gelu_new, swish, tanh, leakyrelu"),
        (BN, {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        (BN, {"leave_out": [-1]}, "leave_out must be a list of layer indices"),
        (BN, {"init": "xavier"}, "init must be one of zero_up, mam, bert, mam_adapter, houlsby"),
        (BN, {"target_layers": "("}, "not a valid regular expression"),
        (BN, {"task_type": "CLS"}, "task_type must be one of"),
        (CP, {"init": "mam"}, "init must be one of zero_up, bert"),
        (CP, {"phm_dim": 0}, "phm_dim must be a positive integer"),
        (CP, {"bottleneck_size": 6}, "bottleneck_size 6 is not divisible by phm_dim 4"),
        (CP, {"phm_c_init": "zeros"}, "phm_c_init must be one of normal, uniform"),
        (CP, {"shared_phm_rule": "yes"}, "shared_phm_rule must be true or false"),
    ],
)
def test_invalid_config_values_are_refused(method, values, match):
    with pytest.raises(InvalidInput, match=match):
        method.make_config(values)


@pytest.mark.parametrize(
    "method, values, match",
    [
        (CP, {"phm_dim": 3, "bottleneck_size": 9}, r"hidden size 32 at '.*' is not divisible by phm_dim 3"),
        (CP, {}, r"bottleneck size 1 at '.*' is not divisible by phm_dim 4"),  # 32 // 32 = 1
        (BN, {"reduction_factor": 64}, r"hidden size 32 // reduction_factor 64 is 0"),
        (BN, {"target_layers": ["embed_tokens"]}, "Embedding; bottleneck adapters go after Linear or Conv1D"),
        (BN, {"target_layers": ["qproj"]}, r"matched no module of the model; candidates: .*self_attn\.o_proj"),
        (BN, {"modules_to_save": ["nothing"]}, r"modules_to_save \['nothing'\] matched no module"),
    ],
)
def test_attach_refuses_what_does_not_fit_and_leaves_the_model_alone(method, values, match):
    model = tm.tiny_llama()
    before = oracle.grad_flags(model)
    with pytest.raises(InvalidInput, match=match):
        method.attach(model, method.make_config(values))
    assert oracle.grad_flags(model) == before
    assert _hooks(model) == 0 and not hasattr(model, "phm_rule") and "_adapterhub_bottleneck" not in model.__dict__


def test_load_state_dict_refuses_wrong_shape_and_keys():
    model = tm.tiny_llama()
    CP.attach(model, CP.make_config({"bottleneck_size": 8}))
    sd = dict(CP.state_dict(model))
    key = P + "phm_rule"
    with pytest.raises(InvalidInput, match=rf"{key}.*\(2, 2, 2\).*\(4, 4, 4\)"):
        CP.load_state_dict(model, dict(sd, **{key: torch.zeros(2, 2, 2)}))
    oracle.assert_load_refuses_missing_and_extra(CP, model, sd, key)


def test_attach_twice_wrong_method_and_wrong_config_type_are_refused():
    model = tm.tiny_llama()
    BN.attach(model, BN.make_config({"bottleneck_size": 8}))
    with pytest.raises(InvalidInput, match="a bottleneck adapter is already attached"):
        CP.attach(model, CP.make_config({"bottleneck_size": 8}))
    with pytest.raises(InvalidInput, match=r"no compacter adapter is attached.*\(a bottleneck adapter is\)"):
        CP.detach(model)
    with pytest.raises(InvalidInput, match="compacter expects a CompacterConfig or a dict, got BottleneckConfig"):
        CP.attach(tm.tiny_llama(), BottleneckConfig())
    with pytest.raises(InvalidInput, match="no bottleneck adapter is attached"):
        BN.state_dict(tm.tiny_llama())
    assert isinstance(CP.make_config({}), CompacterConfig)
