"""The ``ia3`` method against the real ``peft`` library (the oracle).

Table-driven over tiny Llama (GQA), GPT-2 (Conv1D), BERT (sequence classification) and the real MiniLM. Each
case runs the conformance suite (``adapterhub.testing.conformance``: default init, detach, state-dict and
directory round trips, tensor checks, peft's adapter loading into ours, merge = ``merge_and_unload``) on the
models with non-zero biases; the tests here add what it does not check: our directory loading in peft and the
effective config peft resolves, gradients, the optimizer step, our merge against our attached model, combine,
(IA)³'s options and bad input. Every parity case moves the (IA)³ vectors away from ones (and perturbs
modules_to_save copies) so that it cannot pass trivially; each parity test also checks the adapter actually
changes the output.
"""

from __future__ import annotations

import json
import os
import sys

import peft as peft
import pytest
import torch as torch

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import oracle  # noqa: E402
import tinymodels as tm  # noqa: E402
from adapterhub_ia3 import IA3Config, IA3Method  # noqa: E402
from oracle import quiet  # noqa: E402,F401  (autouse)

from adapterhub.errors import InvalidInput  # noqa: E402
from adapterhub.plugins import Plugins  # noqa: E402
from adapterhub.testing.conformance import PeftMergeParity  # noqa: E402

IA3 = IA3Method()
TOL = 1e-5

# id -> (model, options shared by peft.IA3Config and our make_config, slow?)
CASES = {
    "llama-default": ("llama", dict(), False),
    "llama-regex": (
        "llama",
        dict(target_modules=r".*\.(q_proj|o_proj|up_proj|down_proj)", feedforward_modules=r".*\.(up_proj|down_proj)"),
        False,
    ),
    "gpt2-default": ("gpt2", dict(), False),
    "gpt2-list": ("gpt2", dict(target_modules=["c_attn", "c_fc", "c_proj"], feedforward_modules=["c_fc"]), False),
    "bert-seqcls-mts": (
        "bert",
        dict(task_type="SEQ_CLS", modules_to_save=["pooler.dense"]),
        False,
    ),
    "minilm-default": ("minilm", dict(), True),
}


def _params():
    return oracle.case_params(CASES)


def _randomise(model, seed=0):
    """(IA)³ vectors ~ 1 + N(0, 0.2); modules_to_save copies perturbed by N(0, 0.05)."""

    def update(name, p, noise):
        p.copy_(1 + 0.2 * noise) if "ia3_l" in name else p.add_(noise * 0.05)

    oracle.perturb_trainable(model, update, seed)


def _model(name, dtype=torch.float32):
    """The tiny model, with non-zero biases (GPT-2 and BERT start them at zero) so that the attention-layer
    bias scaling is exercised; deterministic."""
    model = tm.MODELS[name](dtype=dtype)
    if name in ("gpt2", "bert"):
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith(".bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


_out, _read_peft_dir = oracle.out, oracle.read_peft_dir


def _build_peft(case):
    name, opts, _ = CASES[case]
    return peft.get_peft_model(_model(name), peft.IA3Config(**opts)), name


#: PEFT adapter directories made by peft itself, with non-identity vectors; cached per case
_peft_dir = oracle.PeftDirs(_build_peft, _randomise)


# -- the conformance suite per case (default init, detach, round trips, tensor checks, peft -> ours, merge) ----
oracle.add_conformance_classes(
    globals(),
    PeftMergeParity,
    CASES,
    lambda row: dict(
        method=IA3,
        model=row[0],
        options=row[1],
        peft_config=staticmethod(lambda o: peft.IA3Config(**o)),
        build=lambda self, dtype=torch.float32: _model(self.model, dtype),
    ),
)


def _names(value):
    """PEFT keeps name lists as sets; a regex stays a string."""
    return set(value) if isinstance(value, (list, set)) else value


# -- (b) ours -> PEFT -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_our_adapter_loads_into_peft_with_same_logits(case, tmp_path):
    name, opts, _ = CASES[case]
    effective, base_logits, ours, tensors = oracle.attach_and_write_peft_dir(
        IA3, _model(name), opts, _randomise, tmp_path, name
    )
    pm = peft.PeftModel.from_pretrained(_model(name), str(tmp_path))
    assert set(peft.get_peft_model_state_dict(pm)) == set(tensors)
    assert (ours - base_logits).abs().max() > 1e-3
    assert (_out(pm, name) - ours).abs().max() <= TOL
    # the same effective config as PEFT resolves from the user's options
    fresh = peft.get_peft_model(_model(name), peft.IA3Config(**opts)).peft_config["default"]
    assert _names(fresh.target_modules) == _names(effective.target_modules)
    assert _names(fresh.feedforward_modules) == _names(effective.feedforward_modules)
    assert fresh.fan_in_fan_out == effective.fan_in_fan_out


def test_gradients_match_peft(tmp_path_factory):
    case = "bert-seqcls-mts"
    name, _, _ = CASES[case]
    path, _ = _peft_dir(case, tmp_path_factory)
    peft_cfg, tensors = _read_peft_dir(path)
    ours = _model(name)
    IA3.attach(ours, IA3.from_peft_config(peft_cfg))
    IA3.load_state_dict(ours, tensors)
    theirs = peft.PeftModel.from_pretrained(_model(name), path, is_trainable=True)
    grads = oracle.grads_of((ours, theirs), lambda model: oracle.logits_loss(model, name))
    ours_g = {"base_model.model." + n: g for n, g in grads[0].items()}
    theirs_g = {n.replace(".default", "").replace(".modules_to_save", ""): g for n, g in grads[1].items()}
    assert set(ours_g) == set(theirs_g) == set(tensors)
    oracle.assert_grads_match(ours_g, theirs_g)


# -- (d) one optimizer step -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_training_step_changes_only_adapter_parameters(case):
    name, opts, _ = CASES[case]
    model = _model(name)
    IA3.attach(model, IA3.make_config(opts))
    _randomise(model, seed=2)
    trainable = oracle.trainable(model)
    adapter_keys = set(IA3.state_dict(model))
    # Adam: a step of ~lr whatever the gradient's size (BERT's key vectors get gradients of ~1e-7)
    changed = oracle.optimizer_step(model, lambda m: oracle.logits_loss(m, name), torch.optim.Adam, lr=1e-2)
    assert changed and changed <= trainable
    assert {"base_model.model." + n for n in trainable} == adapter_keys
    assert all(n in changed for n in trainable if "ia3_l" in n)
    if name == "bert":
        assert {"classifier.weight", "classifier.bias"} <= changed


# -- merge (against peft: the conformance suite) ----------------------------------------------------------
def test_merged_model_matches_attached_model():
    """Our own merge reproduces our attached model (a feed-forward and an attention layer with biases)."""
    opts = dict(target_modules=["c_attn", "c_fc", "c_proj"], feedforward_modules=["c_fc"])
    model = _model("gpt2")
    config = IA3.attach(model, IA3.make_config(opts))
    _randomise(model, seed=4)
    tensors = IA3.state_dict(model)
    merged = _model("gpt2")
    sd = merged.state_dict()
    with torch.no_grad():
        for key, tensor in sd.items():
            out = IA3.merge_tensor(key, tensor, tensors, config)
            if out is not None:
                tensor.copy_(out)
    assert (_out(merged, "gpt2") - _out(model, "gpt2")).abs().max() <= TOL


# -- combine ----------------------------------------------------------------------------------------------
def _two_llama_adapters():
    """Two Llama adapters with overlapping targets (k_proj, down_proj in both; q_proj / v_proj in one)."""
    opts = [
        dict(target_modules=["q_proj", "k_proj", "down_proj"], feedforward_modules=["down_proj"]),
        dict(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    ]
    out = []
    for seed, o in enumerate(opts):
        model = tm.tiny_llama()
        cfg = IA3.attach(model, IA3.make_config(o))
        _randomise(model, seed=10 + seed)
        out.append((o, cfg, {k: v.clone() for k, v in IA3.state_dict(model).items()}))
    return out


def test_combine_linear_is_the_weighted_sum():
    (_, cfg_a, ta), (_, cfg_b, tb) = _two_llama_adapters()
    weights = [0.7, -0.3]
    config, tensors = IA3.combine([(cfg_a, ta), (cfg_b, tb)], weights, "linear")
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "down_proj"}
    assert config.feedforward_modules == ["down_proj"]
    assert set(tensors) == set(ta) | set(tb)
    for key, value in tensors.items():
        expected = sum(w * t[key] for w, t in zip(weights, (ta, tb)) if key in t)
        assert torch.allclose(value, expected, rtol=0, atol=1e-6), key
    assert any(k not in tb for k in ta) and any(k not in ta for k in tb)
    # the combined adapter attaches and loads like any other
    model = tm.tiny_llama()
    IA3.attach(model, config)
    IA3.load_state_dict(model, tensors)


def test_combine_linear_equals_peft_add_weighted_adapter(tmp_path):
    adapters = _two_llama_adapters()
    pm = None
    for i, (_opts, cfg, tensors) in enumerate(adapters):
        d = tmp_path / f"a{i}"
        d.mkdir()
        oracle.write_peft_dir(d, IA3, cfg, tensors)
        if pm is None:
            pm = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(d), adapter_name="a0")
        else:
            pm.load_adapter(str(d), adapter_name=f"a{i}")
    weights = [0.7, -0.3]
    pm.add_weighted_adapter(["a0", "a1"], weights, "mix")
    expected = peft.get_peft_model_state_dict(pm, adapter_name="mix")
    config, tensors = IA3.combine([(c, t) for _, c, t in adapters], weights, "linear")
    assert set(tensors) == set(expected)
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key
    assert set(config.target_modules) == set(pm.peft_config["mix"].target_modules)


def test_combine_refuses_other_strategies_and_bad_weights():
    (_, cfg_a, ta), (_, cfg_b, tb) = _two_llama_adapters()
    with pytest.raises(InvalidInput, match="how='ties'.*weighted sum: how=linear"):
        IA3.combine([(cfg_a, ta), (cfg_b, tb)], [0.5, 0.5], "ties")
    with pytest.raises(InvalidInput, match="2 adapter.*1 weight"):
        IA3.combine([(cfg_a, ta), (cfg_b, tb)], [1.0], "linear")
    with pytest.raises(InvalidInput, match="takes no density"):
        IA3.combine([(cfg_a, ta), (cfg_b, tb)], [0.5, 0.5], "linear", density=0.5, rank=None, seed=None)
    with pytest.raises(InvalidInput, match="unknown ia3 combine option.*alpha"):
        IA3.combine([(cfg_a, ta), (cfg_b, tb)], [0.5, 0.5], "linear", alpha=1)
    # what the core's combine passes for how=linear
    IA3.combine([(cfg_a, ta), (cfg_b, tb)], [0.5, 0.5], "linear", density=None, rank=None, seed=None)


def test_combine_refuses_conflicting_layer_kinds_and_saved_heads():
    model = tm.tiny_llama()
    cfg_a = IA3.attach(model, IA3.make_config({"target_modules": ["down_proj"], "feedforward_modules": []}))
    ta = dict(IA3.state_dict(model))
    model = tm.tiny_llama()
    cfg_b = IA3.attach(model, IA3.make_config({"target_modules": ["down_proj"], "feedforward_modules": ["down_proj"]}))
    tb = dict(IA3.state_dict(model))
    with pytest.raises(InvalidInput, match="shapes.*feed-forward"):
        IA3.combine([(cfg_a, ta), (cfg_b, tb)], [0.5, 0.5], "linear")
    heads = []
    for _ in range(2):
        model = _model("bert")
        heads.append((IA3.attach(model, IA3.make_config({"task_type": "SEQ_CLS"})), dict(IA3.state_dict(model))))
    with pytest.raises(InvalidInput, match="both train and save 'classifier.weight'"):
        IA3.combine(heads, [0.5, 0.5], "linear")


# -- plugin, config, effective config ---------------------------------------------------------------------
def test_plugin_registers_ia3(monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "ia3")
    plugins = Plugins()
    assert plugins.names("methods") == ["ia3"]
    method = plugins.get("methods", "ia3")
    assert method.peft_type == "IA3" and set(method.capabilities()) == {"merge", "combine"}
    assert method.matches_peft_config({"peft_type": "IA3"}) and not method.matches_peft_config({"peft_type": "LORA"})
    fields = {f["name"]: f for f in method.config_fields()}
    assert fields["init_ia3_weights"]["default"] is True and all(f["help"] for f in fields.values())


def test_peft_config_round_trip():
    cfg = IA3.make_config(
        dict(target_modules=["k", "v", "wo"], feedforward_modules=["wo"], modules_to_save=["head"], task_type="SEQ_CLS")
    )
    back = IA3.from_peft_config(json.loads(json.dumps(IA3.to_peft_config(cfg, "some/base"))))
    assert isinstance(back, IA3Config) and back == cfg
    assert IA3.to_peft_config(cfg, "some/base")["base_model_name_or_path"] == "some/base"


def test_gpt2_effective_config_reports_fan_in_fan_out():
    model = _model("gpt2")
    cfg = IA3.make_config({"target_modules": ["c_attn"], "feedforward_modules": []})
    with pytest.warns(UserWarning, match="fan_in_fan_out = True"):
        effective = IA3.attach(model, cfg)
    assert cfg.fan_in_fan_out is False  # the user's config object is not rewritten
    assert effective.fan_in_fan_out is True and IA3.effective_config(model) == effective
    assert IA3.to_peft_config(effective)["fan_in_fan_out"] is True


def test_default_targets_and_feedforward_follow_peft():
    model = tm.tiny_llama()
    cfg = IA3.make_config({})
    with pytest.warns(UserWarning, match="PEFT's default for llama"):
        effective = IA3.attach(model, cfg)
    assert cfg.target_modules is None and cfg.feedforward_modules is None
    assert effective.target_modules == ["k_proj", "v_proj", "down_proj"]
    assert effective.feedforward_modules == ["down_proj"]
    sd = IA3.state_dict(model)
    assert sd["base_model.model.model.layers.0.mlp.down_proj.ia3_l"].shape == (1, 64)  # scales the input
    assert sd["base_model.model.model.layers.0.self_attn.k_proj.ia3_l"].shape == (16, 1)  # scales the output (GQA)


def test_init_false_is_random_and_bf16_vectors_are_fp32():
    base = _out(tm.tiny_llama(), "llama")
    model = tm.tiny_llama()
    IA3.attach(model, IA3.make_config({"init_ia3_weights": False}))
    assert not torch.equal(_out(model, "llama"), base)
    model = tm.tiny_llama(dtype=torch.bfloat16)
    IA3.attach(model, IA3.make_config({}))
    assert {v.dtype for v in IA3.state_dict(model).values()} == {torch.float32}


def test_bf16_forward_matches_peft_bit_for_bit():
    opts = dict(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
    pm = peft.get_peft_model(tm.tiny_llama(dtype=torch.bfloat16), peft.IA3Config(**opts))
    _randomise(pm)
    ours = tm.tiny_llama(dtype=torch.bfloat16)
    IA3.attach(ours, IA3.make_config(opts))
    IA3.load_state_dict(ours, peft.get_peft_model_state_dict(pm))
    assert torch.equal(_out(pm, "llama"), _out(ours, "llama"))


def test_importing_the_plugin_does_not_import_torch():
    oracle.assert_imports_without_torch("adapterhub_ia3")


# -- bad inputs -------------------------------------------------------------------------------------------
def test_unknown_config_key_is_refused():
    with pytest.raises(InvalidInput, match="unknown ia3 option.*ff_modules.*valid keys.*feedforward_modules"):
        IA3.make_config({"ff_modules": ["down_proj"]})


@pytest.mark.parametrize(
    "values, match",
    [
        ({"target_modules": "("}, "not a valid regular expression"),
        ({"target_modules": ["q"], "feedforward_modules": ["wo"]}, r"subset of target_modules; not targeted: \['wo'\]"),
        ({"init_ia3_weights": "yes"}, "init_ia3_weights must be true or false"),
        ({"task_type": "CLS"}, "task_type must be one of"),
        ({"modules_to_save": "classifier"}, "modules_to_save must be a list"),
    ],
)
def test_invalid_config_values_are_refused(values, match):
    with pytest.raises(InvalidInput, match=match):
        IA3.make_config(values)


def test_target_matching_nothing_lists_candidates():
    model = tm.tiny_llama()
    with pytest.raises(InvalidInput, match=r"matched no module.*candidates: .*down_proj.*k_proj"):
        IA3.attach(model, IA3.make_config({"target_modules": ["kproj"], "feedforward_modules": []}))
    assert not any("ia3" in n for n, _ in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen either


def test_unknown_model_type_needs_explicit_modules():
    model = tm.tiny_llama()
    model.config.model_type = "mystery"
    with pytest.raises(InvalidInput, match="no default ia3 target_modules for model type 'mystery'.*q_proj"):
        IA3.attach(model, IA3.make_config({}))
    with pytest.raises(InvalidInput, match="no default ia3 feedforward_modules.*or \\[\\] for none"):
        IA3.attach(model, IA3.make_config({"target_modules": ["q_proj"]}))


def test_target_of_unsupported_type_is_refused():
    with pytest.raises(InvalidInput, match="Embedding; ia3 wraps only Linear and Conv1D"):
        IA3.attach(tm.tiny_llama(), IA3.make_config({"target_modules": ["embed_tokens"], "feedforward_modules": []}))


def test_load_state_dict_refuses_wrong_shape_and_keys():
    model = tm.tiny_llama()
    IA3.attach(model, IA3.make_config({"target_modules": ["q_proj"], "feedforward_modules": []}))
    sd = dict(IA3.state_dict(model))
    key = "base_model.model.model.layers.0.self_attn.q_proj.ia3_l"
    with pytest.raises(InvalidInput, match=rf"{key}.*\(1, 32\).*\(32, 1\).*check feedforward_modules"):
        IA3.load_state_dict(model, dict(sd, **{key: torch.ones(1, 32)}))
    with pytest.raises(InvalidInput, match=rf"{key}.*\(16, 1\).*\(32, 1\)"):
        IA3.load_state_dict(model, dict(sd, **{key: torch.ones(16, 1)}))
    oracle.assert_load_refuses_missing_and_extra(IA3, model, sd, key)


def test_attach_twice_and_detach_without_attach_are_refused():
    model = tm.tiny_llama()
    with pytest.raises(InvalidInput, match="no ia3 adapter is attached"):
        IA3.detach(model)
    IA3.attach(model, IA3.make_config({}))
    with pytest.raises(InvalidInput, match="already attached"):
        IA3.attach(model, IA3.make_config({}))


def test_unsupported_peft_options_are_refused():
    cfg = IA3.to_peft_config(IA3.make_config({"target_modules": ["q_proj"], "feedforward_modules": []}))
    with pytest.raises(InvalidInput, match="exclude_modules"):
        IA3.from_peft_config(dict(cfg, exclude_modules=["o_proj"]))
    with pytest.raises(InvalidInput, match="not a PEFT IA3 config"):
        IA3.from_peft_config(dict(cfg, peft_type="LORA"))


def test_merge_with_wrong_config_is_refused():
    model = _model("gpt2")
    opts = {"target_modules": ["c_fc"], "feedforward_modules": []}
    effective = IA3.attach(model, IA3.make_config(opts))
    tensors = IA3.state_dict(model)
    base = model.transformer.h[0].mlp.c_fc.base_layer.weight  # (32, 128): Conv1D (in, out)
    with pytest.raises(InvalidInput, match="fan_in_fan_out=True"):
        IA3.merge_tensor("transformer.h.0.mlp.c_fc.weight", base, tensors, IA3.make_config(opts))
    as_feedforward = IA3.make_config(dict(opts, feedforward_modules=["c_fc"], fan_in_fan_out=True))
    with pytest.raises(InvalidInput, match="opposite kind.*feedforward_modules"):
        IA3.merge_tensor("transformer.h.0.mlp.c_fc.weight", base, tensors, as_feedforward)
    assert IA3.merge_tensor("transformer.h.0.mlp.c_fc.weight", base, tensors, effective).shape == base.shape
    assert IA3.merge_tensor("transformer.h.0.mlp.c_fc.bias", torch.ones(128), tensors, effective).shape == (128,)
    assert IA3.merge_tensor("transformer.h.0.mlp.c_proj.weight", base, tensors, effective) is None
