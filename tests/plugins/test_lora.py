"""The ``lora`` / ``dora`` methods against the real ``peft`` library (the oracle).

Table-driven over tiny Llama (GQA), GPT-2 (Conv1D), BERT (sequence classification) and the real MiniLM.
Every parity case randomises lora_B (and DoRA magnitudes, modules_to_save copies) so that it cannot pass
trivially; each parity test also checks the adapter actually changes the output.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import pytest

import torch as torch
import peft as peft
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import tinymodels as tm  # noqa: E402

from adapterhub.errors import InvalidInput  # noqa: E402
from adapterhub.plugins import Plugins  # noqa: E402
from adapterhub_lora import DoraMethod, LoraConfig, LoraMethod  # noqa: E402

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


def _params(slow_only: bool = False):
    return [
        pytest.param(cid, id=cid, marks=[pytest.mark.slow] if slow else [])
        for cid, (_, _, slow) in CASES.items()
        if slow or not slow_only
    ]


def _method(opts):
    return DORA if opts.get("use_dora") else LORA


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@torch.no_grad()
def _randomise(model, seed=0):
    """lora_B ~ N(0, 0.05); DoRA magnitudes scaled by 1 ± 10 %; modules_to_save copies perturbed."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
        if "lora_B" in name:
            p.copy_(noise * 0.05)
        elif "lora_magnitude_vector" in name:
            p.mul_(1 + 0.1 * noise)
        elif "lora_A" not in name:
            p.add_(noise * 0.05)


def _out(model, name):
    with torch.no_grad():
        return tm.logits(model, tm.inputs_for(name))


def _peft_dir(case, tmp_path_factory):
    """A PEFT adapter directory made by peft itself, with non-zero B; cached per case."""
    cache = _peft_dir.cache
    if case not in cache:
        name, opts, _ = CASES[case]
        pm = peft.get_peft_model(tm.MODELS[name](), peft.LoraConfig(**opts))
        _randomise(pm)
        path = tmp_path_factory.mktemp(case)
        pm.save_pretrained(str(path))
        cache[case] = (str(path), _out(pm, name))
    return cache[case]


_peft_dir.cache = {}


def _read_peft_dir(path):
    with open(os.path.join(path, "adapter_config.json")) as f:
        cfg = json.load(f)
    return cfg, load_file(os.path.join(path, "adapter_model.safetensors"))


# -- (a) PEFT -> ours -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_peft_adapter_loads_into_ours_with_same_logits(case, tmp_path_factory):
    name, opts, _ = CASES[case]
    path, peft_logits = _peft_dir(case, tmp_path_factory)
    peft_cfg, tensors = _read_peft_dir(path)
    method = LORA if LORA.matches_peft_config(peft_cfg) else DORA
    assert method is _method(opts) and not (LORA.matches_peft_config(peft_cfg) and DORA.matches_peft_config(peft_cfg))
    model = tm.MODELS[name]()
    base_logits = _out(model, name)
    method.attach(model, method.from_peft_config(peft_cfg))
    assert set(method.state_dict(model)) == set(tensors)
    method.load_state_dict(model, tensors)
    ours = _out(model, name)
    assert (peft_logits - base_logits).abs().max() > 1e-3, "adapter must change the output"
    assert (ours - peft_logits).abs().max() <= TOL


# -- (b) ours -> PEFT -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_our_adapter_loads_into_peft_with_same_logits(case, tmp_path):
    name, opts, _ = CASES[case]
    method = _method(opts)
    model = tm.MODELS[name]()
    base_logits = _out(model, name)
    effective = method.attach(model, method.make_config(opts))
    _randomise(model, seed=1)
    ours = _out(model, name)
    tensors = {k: v.contiguous() for k, v in method.state_dict(model).items()}
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps(method.to_peft_config(effective, None)))
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
    method = _method(opts)
    ours = tm.MODELS[name]()
    method.attach(ours, method.from_peft_config(peft_cfg))
    method.load_state_dict(ours, tensors)
    theirs = peft.PeftModel.from_pretrained(tm.MODELS[name](), path, is_trainable=True)
    grads = []
    for model in (ours, theirs):
        tm.logits(model, tm.inputs_for(name)).pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    ours_g = {"base_model.model." + n: g for n, g in grads[0].items()}
    theirs_g = {_peft_key(n): g for n, g in grads[1].items()}
    assert set(ours_g) == set(theirs_g) == set(tensors)
    for key, g in theirs_g.items():
        if g is None:  # e.g. MiniLM's pooler: not on the path to last_hidden_state
            assert ours_g[key] is None, key
            continue
        assert (ours_g[key] - g).abs().max() <= 1e-5 * max(1.0, g.abs().max().item()), key


# -- (c) default init, detach -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_default_init_keeps_outputs_and_detach_restores(case):
    name, opts, _ = CASES[case]
    method = _method(opts)
    model = tm.MODELS[name]()
    before_types = {n: type(m) for n, m in model.named_modules()}
    before_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    base_logits = _out(model, name)
    method.attach(model, method.make_config({k: v for k, v in opts.items() if k != "modules_to_save"}))
    assert torch.equal(_out(model, name), base_logits)
    method.detach(model)
    assert {n: type(m) for n, m in model.named_modules()} == before_types
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before_grad
    assert torch.equal(_out(model, name), base_logits)


# -- (d) one optimizer step -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_training_step_changes_only_adapter_parameters(case):
    name, opts, _ = CASES[case]
    method = _method(opts)
    model = tm.MODELS[name]()
    method.attach(model, method.make_config(opts))
    _randomise(model, seed=2)  # non-zero B so that A gets a gradient too
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter_keys = set(method.state_dict(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    out = model(**tm.inputs_for(name))
    loss = (out.logits if hasattr(out, "logits") else out.last_hidden_state).pow(2).mean()
    if getattr(out, "pooler_output", None) is not None:  # MiniLM: all-linear also adapts the pooler
        loss = loss + out.pooler_output.pow(2).mean()
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    # every trainable parameter is saved in the adapter's state dict, and every LoRA factor moved
    assert {"base_model.model." + n for n in trainable} <= adapter_keys
    assert all(n in changed for n in trainable if "lora_" in n)


# -- (e) state_dict round trip ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_state_dict_round_trip_is_exact(case):
    name, opts, _ = CASES[case]
    method = _method(opts)
    a, b = tm.MODELS[name](), tm.MODELS[name]()
    method.attach(a, method.make_config(opts))
    method.attach(b, method.make_config(opts))
    _randomise(a, seed=3)
    sd = {k: v.clone() for k, v in method.state_dict(a).items()}
    method.load_state_dict(b, sd)
    sd_b = method.state_dict(b)
    assert set(sd_b) == set(sd) and all(torch.equal(sd[k], sd_b[k]) for k in sd)
    assert torch.equal(_out(a, name), _out(b, name))


# -- merge ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", _params())
def test_merge_tensor_equals_peft_merge_and_unload(case, dtype, tmp_path_factory):
    name, opts, _ = CASES[case]
    path, _ = _peft_dir(case, tmp_path_factory)
    peft_cfg, tensors = _read_peft_dir(path)
    method = LORA if LORA.matches_peft_config(peft_cfg) else DORA
    config = method.from_peft_config(peft_cfg)
    merged = peft.PeftModel.from_pretrained(tm.MODELS[name](dtype=dtype), path).merge_and_unload()
    expected = merged.state_dict()
    base = tm.MODELS[name](dtype=dtype).state_dict()
    assert set(expected) == set(base)
    touched = changed = 0
    for key, tensor in base.items():
        out = method.merge_tensor(key, tensor, tensors, config)
        if out is None:
            assert torch.equal(tensor, expected[key]), key
            continue
        touched += 1
        changed += not torch.equal(out, tensor)
        assert out.dtype == tensor.dtype and torch.equal(out, expected[key]), key
    assert touched >= 4 and changed == touched


# -- plugin, config, effective config ---------------------------------------------------------------------
def test_plugin_registers_lora_and_dora(monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "lora")  # the entry point alone, whatever else is installed
    plugins = Plugins()
    assert set(plugins.names("methods")) == {"lora", "dora"}
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
        dict(r=4, lora_alpha=32, target_modules=["q_proj"], use_rslora=True, rank_pattern={"q": 2}, modules_to_save=["o"])
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
    opts = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.3,
                use_dora=use_dora, init_lora_weights=False)
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
    pm = peft.get_peft_model(
        tm.MODELS[name](dtype=torch.bfloat16), peft.LoraConfig(init_lora_weights=False, **opts)
    )
    _randomise(pm)
    LORA.load_state_dict(ours, peft.get_peft_model_state_dict(pm))
    assert torch.equal(_out(pm, name), _out(ours, name))


def test_importing_the_plugin_does_not_import_torch():
    import subprocess

    code = "import sys, adapterhub_lora; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


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
        ({"rank_pattern": {"q": -1}}, "rank_pattern"),
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
    with pytest.raises(InvalidInput, match="1 missing key"):
        LORA.load_state_dict(model, {k: v for k, v in sd.items() if k != key})
    with pytest.raises(InvalidInput, match="unexpected key.*extra"):
        LORA.load_state_dict(model, dict(sd, extra=torch.zeros(1)))


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
