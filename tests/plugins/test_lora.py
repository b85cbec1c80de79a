"""The ``lora`` / ``dora`` methods against the real ``peft`` library (the oracle).

Table-driven over tiny Llama (GQA), GPT-2 (Conv1D), BERT (sequence classification) and the real MiniLM. Each
case runs the conformance suite (``adapterhub.testing.conformance``: default init, detach, state-dict and
directory round trips, tensor checks, peft's adapter loading into ours, merge = ``merge_and_unload``); the tests
here add what it does not check: our directory loading in peft, gradients, the optimizer step, LoRA's options
and bad input. Every parity case randomises lora_B (and DoRA magnitudes, modules_to_save copies) so that it
cannot pass trivially; each parity test also checks the adapter actually changes the output.
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
from adapterhub_lora import DoraMethod, LoraMethod  # noqa: E402
from oracle import quiet  # noqa: E402,F401  (autouse)

from adapterhub.errors import InvalidInput  # noqa: E402
from adapterhub.plugins import Plugins  # noqa: E402
from adapterhub.testing.conformance import PeftMergeParity  # noqa: E402

LORA, DORA = LoraMethod(), DoraMethod()
TOL = 1e-5

# id -> (model, options shared by peft.LoraConfig and our make_config, slow?)
CASES = {
    "llama-lora-patterns": (
        "llama",
        dict(
            r=4,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
            rank_pattern={"v_proj": 2},
            alpha_pattern={r"layers\.1\.self_attn\.o_proj": 3},
        ),
        False,
    ),
    "llama-dora-rslora-regex": (
        "llama",
        dict(r=4, lora_alpha=8, target_modules=r".*\.(q_proj|k_proj|up_proj)", use_dora=True, use_rslora=True),
        False,
    ),
    "gpt2-all-linear": ("gpt2", dict(r=4, lora_alpha=8, target_modules="all-linear"), False),
    "gpt2-dora": ("gpt2", dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"], use_dora=True), False),
    "bert-seqcls-mts": (
        "bert",
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["query", "value"],
            task_type="SEQ_CLS",
            modules_to_save=["pooler.dense"],
        ),
        False,
    ),
    "bert-dora-all-linear": (
        "bert",
        dict(r=4, lora_alpha=8, target_modules="all-linear", task_type="SEQ_CLS", use_dora=True),
        False,
    ),
    "minilm-rslora": ("minilm", dict(r=8, lora_alpha=16, target_modules="all-linear", use_rslora=True), True),
    "minilm-dora": ("minilm", dict(r=4, lora_alpha=8, target_modules=["query", "value", "dense"], use_dora=True), True),
}


def _params():
    return oracle.case_params(CASES)


def _method(opts):
    return DORA if opts.get("use_dora") else LORA


_randomise, _out, _read_peft_dir = oracle.randomise_lora, oracle.out, oracle.read_peft_dir


def _build_peft(case):
    name, opts, _ = CASES[case]
    return peft.get_peft_model(tm.MODELS[name](), peft.LoraConfig(**opts)), name


#: PEFT adapter directories made by peft itself, with non-zero B; cached per case
_peft_dir = oracle.PeftDirs(_build_peft, _randomise)

# -- the conformance suite per case (default init, detach, round trips, tensor checks, peft -> ours, merge) ----
oracle.add_conformance_classes(
    globals(),
    PeftMergeParity,
    CASES,
    lambda row: dict(
        method=_method(row[1]), model=row[0], options=row[1], peft_config=staticmethod(lambda o: peft.LoraConfig(**o))
    ),
)


# -- (b) ours -> PEFT -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_our_adapter_loads_into_peft_with_same_logits(case, tmp_path):
    name, opts, _ = CASES[case]
    method = _method(opts)
    _, base_logits, ours, tensors = oracle.attach_and_write_peft_dir(
        method, tm.MODELS[name](), opts, _randomise, tmp_path, name
    )
    assert peft.LoraConfig.from_pretrained(str(tmp_path)).use_dora == bool(opts.get("use_dora"))
    pm = peft.PeftModel.from_pretrained(tm.MODELS[name](), str(tmp_path))
    assert set(peft.get_peft_model_state_dict(pm)) == set(tensors)
    assert (ours - base_logits).abs().max() > 1e-3
    assert (_out(pm, name) - ours).abs().max() <= TOL


# -- training parity: same gradients as PEFT (DoRA's weight norm is detached) -----------------------------
def _peft_key(param_name):
    key = param_name.replace(".default", "").replace(".modules_to_save", "")
    return key[: -len(".weight")] if key.endswith("lora_magnitude_vector.weight") else key


@pytest.mark.parametrize("case", _params())
def test_gradients_match_peft(case, tmp_path_factory):
    name, opts, _ = CASES[case]
    path, _ = _peft_dir(case, tmp_path_factory)
    peft_cfg, tensors = _read_peft_dir(path)
    method = LORA if LORA.matches_peft_config(peft_cfg) else DORA  # peft's directory says which, as loading does
    assert method is _method(opts) and not (LORA.matches_peft_config(peft_cfg) and DORA.matches_peft_config(peft_cfg))
    ours = tm.MODELS[name]()
    method.attach(ours, method.from_peft_config(peft_cfg))
    method.load_state_dict(ours, tensors)
    theirs = peft.PeftModel.from_pretrained(tm.MODELS[name](), path, is_trainable=True)
    grads = oracle.grads_of((ours, theirs), lambda model: oracle.logits_loss(model, name))
    ours_g = {"base_model.model." + n: g for n, g in grads[0].items()}
    theirs_g = {_peft_key(n): g for n, g in grads[1].items()}
    assert set(ours_g) == set(theirs_g) == set(tensors)
    oracle.assert_grads_match(ours_g, theirs_g, allow_none=True)  # MiniLM's pooler: no gradient


# -- (d) one optimizer step -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_training_step_changes_only_adapter_parameters(case):
    name, opts, _ = CASES[case]
    method = _method(opts)
    model = tm.MODELS[name]()
    method.attach(model, method.make_config(opts))
    _randomise(model, seed=2)  # non-zero B so that A gets a gradient too
    trainable = oracle.trainable(model)
    adapter_keys = set(method.state_dict(model))
    # MiniLM: all-linear also adapts the pooler, so the loss reaches it
    changed = oracle.optimizer_step(model, lambda m: oracle.pooled_loss(m, name), torch.optim.SGD, lr=0.1)
    assert changed and changed <= trainable
    # every trainable parameter is saved in the adapter's state dict, and every LoRA factor moved
    assert {"base_model.model." + n for n in trainable} <= adapter_keys
    assert all(n in changed for n in trainable if "lora_" in n)


# -- plugin, config, effective config ---------------------------------------------------------------------
def test_plugin_registers_lora_dora_and_qlora(monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "lora")  # the entry point alone, whatever else is installed
    plugins = Plugins()
    assert set(plugins.names("methods")) == {"lora", "dora", "qlora"}  # QLoRA lives with LoRA, as in peft
    lora, dora = plugins.get("methods", "lora"), plugins.get("methods", "dora")
    assert lora.peft_type == dora.peft_type == "LORA" and "merge" in lora.capabilities()
    assert lora.matches_peft_config({"peft_type": "LORA"}) and not dora.matches_peft_config({"peft_type": "LORA"})
    assert dora.matches_peft_config({"peft_type": "LORA", "use_dora": True})
    assert not lora.matches_peft_config({"peft_type": "LORA", "use_dora": True})
    assert not lora.matches_peft_config({"peft_type": "IA3"})
    assert dora.make_config({}).use_dora is True
    fields = {f["name"]: f for f in lora.config_fields()}
    assert fields["r"]["default"] == 8 and all(f["help"] for f in fields.values())


def test_peft_config_round_trip():
    cfg = LORA.make_config(
        dict(
            r=4, lora_alpha=32, target_modules=["q_proj"], use_rslora=True, rank_pattern={"q": 2}, modules_to_save=["o"]
        )
    )
    back = LORA.from_peft_config(json.loads(json.dumps(LORA.to_peft_config(cfg, "some/base"))))
    assert back == cfg
    assert LORA.to_peft_config(cfg, "some/base")["base_model_name_or_path"] == "some/base"


def test_gpt2_effective_config_reports_fan_in_fan_out():
    model = tm.tiny_gpt2()
    cfg = LORA.make_config({"target_modules": ["c_attn"]})
    with pytest.warns(UserWarning, match="fan_in_fan_out = True"):
        effective = LORA.attach(model, cfg)
    assert cfg.fan_in_fan_out is False  # the user's config object is not rewritten
    assert effective.fan_in_fan_out is True and LORA.effective_config(model) == effective
    assert LORA.to_peft_config(effective)["fan_in_fan_out"] is True


def test_default_targets_follow_peft():
    model = tm.tiny_llama()
    effective = LORA.attach(model, LORA.make_config({}))
    assert effective.target_modules == ["q_proj", "v_proj"]
    assert {k.rsplit(".", 3)[-3] for k in LORA.state_dict(model)} == {"q_proj", "v_proj"}


def test_init_options_and_dropout():
    base = _out(tm.tiny_llama(), "llama")
    for init, same in (("gaussian", True), (False, False)):
        model = tm.tiny_llama()
        LORA.attach(model, LORA.make_config({"target_modules": ["q_proj", "v_proj"], "init_lora_weights": init}))
        assert torch.equal(_out(model, "llama"), base) is same
    model = tm.tiny_llama()
    LORA.attach(model, LORA.make_config({"target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.5}))
    _randomise(model)
    assert torch.equal(_out(model, "llama"), _out(model, "llama"))  # eval: no dropout
    model.train()
    assert not torch.equal(_out(model, "llama"), _out(model, "llama"))


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_train_mode_dropout_matches_peft(use_dora):
    """With lora_dropout in train mode (DoRA then recomputes the base output from the dropped input)."""
    opts = dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        lora_dropout=0.3,
        use_dora=use_dora,
        init_lora_weights=False,
    )
    pm = peft.get_peft_model(tm.tiny_llama(), peft.LoraConfig(**opts))
    ours = tm.tiny_llama()
    LORA.attach(ours, LORA.make_config(opts))
    LORA.load_state_dict(ours, peft.get_peft_model_state_dict(pm))
    pm.train()
    ours.train()
    outs = []
    for model in (pm, ours):
        torch.manual_seed(9)  # both consume the RNG in the same order: one dropout mask per adapted layer
        outs.append(tm.logits(model, tm.inputs_for("llama")))
    assert (outs[0] - outs[1]).abs().max() <= TOL


@pytest.mark.parametrize(
    "name, opts",
    [
        ("llama", dict(r=4, target_modules=["q_proj", "v_proj"], use_dora=True)),
        ("gpt2", dict(r=4, target_modules=["c_attn", "c_fc"], use_dora=True)),
        ("bert", dict(r=4, target_modules=["query"], task_type="SEQ_CLS")),
    ],
    ids=["llama-dora", "gpt2-dora", "bert-seqcls"],
)
def test_bf16_base_matches_peft_bit_for_bit(name, opts):
    """Adapters are fp32 on a bf16 base (PEFT's autocast_adapter_dtype); DoRA's initial magnitude is the
    bf16 row norm; the forward is bit-identical."""
    fresh = peft.get_peft_model(tm.MODELS[name](dtype=torch.bfloat16), peft.LoraConfig(**opts))
    ours = tm.MODELS[name](dtype=torch.bfloat16)
    LORA.attach(ours, LORA.make_config(opts))
    peft_init, our_init = peft.get_peft_model_state_dict(fresh), LORA.state_dict(ours)
    for key, value in peft_init.items():
        assert our_init[key].dtype == value.dtype, key
        if "lora_A" not in key:  # A is random; B, magnitudes and saved copies are determined by the base
            assert torch.equal(our_init[key], value), key
    pm = peft.get_peft_model(tm.MODELS[name](dtype=torch.bfloat16), peft.LoraConfig(init_lora_weights=False, **opts))
    _randomise(pm)
    LORA.load_state_dict(ours, peft.get_peft_model_state_dict(pm))
    assert torch.equal(_out(pm, name), _out(ours, name))


def test_importing_the_plugin_does_not_import_torch():
    oracle.assert_imports_without_torch("adapterhub_lora")


# -- bad inputs -------------------------------------------------------------------------------------------
def test_unknown_config_key_is_refused():
    with pytest.raises(InvalidInput, match="unknown lora option.*rank.*valid keys.*lora_alpha"):
        LORA.make_config({"rank": 4})


@pytest.mark.parametrize(
    "values, match",
    [
        ({"r": 0}, "r must be a positive integer"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"target_modules": "("}, "not a valid regular expression"),
        ({"bias": "all"}, "bias='all' is not supported"),
        ({"rank_pattern": {"q": -1}}, r"^invalid lora config: rank_pattern\['q'\] must be a positive integer, got -1$"),
        ({"rank_pattern": {"q": 2.0}}, r"rank_pattern\['q'\] must be a positive integer, got 2.0$"),
        ({"alpha_pattern": {"q": "8"}}, r"alpha_pattern\['q'\] must be a positive number, got '8'$"),
        ({"alpha_pattern": ["q"]}, r"alpha_pattern must be a mapping \{regex: value\}, got list$"),
        ({"alpha_pattern": {"q(": 8}}, r"alpha_pattern: 'q\(' is not a valid regular expression"),
    ],
)
def test_invalid_config_values_are_refused(values, match):
    with pytest.raises(InvalidInput, match=match):
        LORA.make_config(values)


def test_dora_refuses_use_dora_false():
    with pytest.raises(InvalidInput, match="always uses DoRA"):
        DORA.make_config({"use_dora": False})


def test_target_matching_nothing_lists_candidates():
    model = tm.tiny_llama()
    with pytest.raises(InvalidInput, match=r"matched no module.*candidates: .*q_proj"):
        LORA.attach(model, LORA.make_config({"target_modules": ["qproj"]}))
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_target_of_unsupported_type_is_refused():
    with pytest.raises(InvalidInput, match="Embedding; lora wraps only Linear and Conv1D"):
        LORA.attach(tm.tiny_llama(), LORA.make_config({"target_modules": ["embed_tokens"]}))


def test_load_state_dict_refuses_wrong_shape_and_keys():
    model = tm.tiny_llama()
    LORA.attach(model, LORA.make_config({"target_modules": ["q_proj"], "r": 4}))
    sd = dict(LORA.state_dict(model))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    bad = dict(sd, **{key: torch.zeros(2, 32)})
    with pytest.raises(InvalidInput, match=rf"{key}.*\(2, 32\).*\(4, 32\)"):
        LORA.load_state_dict(model, bad)
    oracle.assert_load_refuses_missing_and_extra(LORA, model, sd, key)


def test_attach_twice_is_refused():
    model = tm.tiny_llama()
    LORA.attach(model, LORA.make_config({"target_modules": ["q_proj"]}))
    with pytest.raises(InvalidInput, match="already attached"):
        LORA.attach(model, LORA.make_config({"target_modules": ["q_proj"]}))


def test_unsupported_peft_options_are_refused():
    cfg = LORA.to_peft_config(LORA.make_config({"target_modules": ["q_proj"]}))
    with pytest.raises(InvalidInput, match="layers_to_transform"):
        LORA.from_peft_config(dict(cfg, layers_to_transform=[0]))


def test_merge_with_wrong_fan_in_fan_out_is_refused():
    model = tm.tiny_gpt2()
    effective = LORA.attach(model, LORA.make_config({"target_modules": ["c_fc"]}))
    tensors = LORA.state_dict(model)
    wrong = LORA.make_config({"target_modules": ["c_fc"]})  # fan_in_fan_out=False: not the effective config
    base = model.transformer.h[0].mlp.c_fc.base_layer.weight
    with pytest.raises(InvalidInput, match="fan_in_fan_out=True"):
        LORA.merge_tensor("transformer.h.0.mlp.c_fc.weight", base, tensors, wrong)
    assert LORA.merge_tensor("transformer.h.0.mlp.c_fc.weight", base, tensors, effective).shape == base.shape
    assert LORA.merge_tensor("transformer.h.0.mlp.c_fc.bias", base, tensors, effective) is None


def test_rank_and_alpha_patterns_pick_peft_s_values_per_module():
    """The toolkit's pattern rule as the LoRA module uses it: the first matching key wins, the rest take r /
    lora_alpha; the ranks and scalings attached are peft's for the same config."""
    opts = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "rank_pattern": {r"layers\.1\.self_attn\.q_proj": 2, "q_proj": 6},
        "alpha_pattern": {"v_proj": 3},
    }
    ours, theirs = tm.tiny_llama(), peft.get_peft_model(tm.tiny_llama(), peft.LoraConfig(**opts))
    LORA.attach(ours, LORA.make_config(opts))
    for i in range(2):
        for name in ("q_proj", "v_proj"):
            path = f"model.layers.{i}.self_attn.{name}"
            mine, peft_layer = ours.get_submodule(path), theirs.base_model.model.get_submodule(path)
            assert mine.lora_A.weight.shape == peft_layer.lora_A["default"].weight.shape
            assert mine.scaling == peft_layer.scaling["default"]
    assert ours.get_submodule("model.layers.1.self_attn.q_proj").lora_A.weight.shape[0] == 2
    assert ours.get_submodule("model.layers.0.self_attn.q_proj").lora_A.weight.shape[0] == 6
