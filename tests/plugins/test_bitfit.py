"""The ``bitfit`` method: train only bias terms (plus the SEQ_CLS head).

PEFT has no BitFit, so the oracle is the model itself: merging the adapter's tensors into a fresh base must
give exactly the attached model's logits. Table-driven over tiny GPT-2 (Conv1D), BERT (sequence
classification) and the real MiniLM; Llama (no biases) is refused. Each case runs the conformance suite
(``adapterhub.testing.conformance``: default init, detach, state-dict and directory round trips, tensor checks)
on a model whose input embedding starts frozen (a flag detach must restore); the tests here add what it does
not check. Every parity case moves the trained tensors away from their initial values so that it cannot pass
trivially.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch as torch

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import oracle  # noqa: E402
import tinymodels as tm  # noqa: E402
from adapterhub_bitfit import BitFitConfig, BitFitMethod  # noqa: E402
from oracle import (
    PREFIX,  # noqa: E402
    quiet,  # noqa: E402,F401  (autouse)
)

from adapterhub.errors import InvalidInput  # noqa: E402
from adapterhub.plugins import Plugins  # noqa: E402
from adapterhub.testing.conformance import MethodConformance  # noqa: E402

BITFIT = BitFitMethod()

# id -> (model, config options, slow?)
CASES = {
    "gpt2-all": ("gpt2", dict(), False),
    "gpt2-pattern": ("gpt2", dict(bias_pattern=r"\.(c_attn|c_fc)\.bias$"), False),
    "bert-seqcls": ("bert", dict(task_type="SEQ_CLS"), False),
    "bert-seqcls-pattern-mts": (
        "bert",
        dict(task_type="SEQ_CLS", bias_pattern="attention", modules_to_save=["pooler.dense"]),
        False,
    ),
    "minilm-all": ("minilm", dict(), True),
}


def _params():
    return oracle.case_params(CASES)


def _randomise(model, seed=0):
    """Every trainable tensor (bias or head copy) moved by N(0, 0.1)."""
    oracle.perturb_trainable(model, lambda _, p, noise: p.add_(0.1 * noise), seed)


_out = oracle.out


def _biases(model):
    return {n for n, _ in model.named_parameters() if n.endswith(".bias")}


def _frozen_embedding(name, dtype=torch.float32):
    """The tiny model with its input embedding frozen: a pre-existing flag that detach must restore."""
    model = tm.MODELS[name](dtype)
    model.get_input_embeddings().weight.requires_grad_(False)
    return model


# -- the conformance suite per case (default init, detach, round trips, tensor checks) --------------------
oracle.add_conformance_classes(
    globals(),
    MethodConformance,
    CASES,
    lambda row: dict(
        method=BITFIT,
        model=row[0],
        options=row[1],
        build=lambda self, dtype=torch.float32: _frozen_embedding(self.model, dtype),
    ),
)


# -- (d) one optimizer step -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_training_step_changes_only_chosen_biases_and_head(case):
    name, opts, _ = CASES[case]
    model = tm.MODELS[name]()
    config = BITFIT.attach(model, BITFIT.make_config(opts))
    trainable = oracle.trainable(model)
    head = {n for n in trainable if any(n.rsplit(".", 1)[0].endswith(m) for m in config.modules_to_save)}
    expected_biases = {n for n in _biases(model) - head if config.trains_bias(n)}
    assert trainable - head == expected_biases and expected_biases
    if opts.get("bias_pattern"):
        assert expected_biases < _biases(model) - head  # a real subset
    assert {PREFIX + n for n in trainable} == set(BITFIT.state_dict(model))
    # MiniLM: the loss reaches the pooler's bias too
    changed = oracle.optimizer_step(model, lambda m: oracle.pooled_loss(m, name), torch.optim.Adam, lr=1e-2)
    assert changed <= trainable
    # every bias with a gradient moved (a key bias gets none: softmax ignores it)
    moved = {n for n in expected_biases if (g := model.get_parameter(n).grad) is not None and g.abs().max() > 0}
    assert moved and moved <= changed
    if name == "bert":
        assert {"classifier.weight", "classifier.bias"} <= changed


# -- merge ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", _params())
def test_merged_model_equals_attached_model(case, dtype):
    name, opts, _ = CASES[case]
    model = tm.MODELS[name](dtype=dtype)
    config = BITFIT.attach(model, BITFIT.make_config(opts))
    _randomise(model, seed=4)
    attached_logits = _out(model, name)
    tensors = {k: v.float() for k, v in BITFIT.state_dict(model).items()}  # as a float32 checkpoint
    merged = tm.MODELS[name](dtype=dtype)
    touched = 0
    with torch.no_grad():
        for key, tensor in merged.state_dict().items():
            out = BITFIT.merge_tensor(key, tensor, tensors, config)
            if out is None:
                assert PREFIX + key not in tensors, key
                continue
            touched += 1
            assert out.dtype == tensor.dtype and not torch.equal(out, tensor), key
            tensor.copy_(out)
    assert touched == len(tensors)
    assert torch.equal(_out(merged, name), attached_logits)


def test_merge_tensor_leaves_other_tensors_and_checks_shape():
    model = tm.tiny_gpt2()
    config = BITFIT.attach(model, BITFIT.make_config({"bias_pattern": r"c_attn"}))
    tensors = BITFIT.state_dict(model)
    weight = model.transformer.h[0].attn.c_attn.weight
    assert BITFIT.merge_tensor("transformer.h.0.attn.c_attn.weight", weight, tensors, config) is None
    assert BITFIT.merge_tensor("transformer.h.0.mlp.c_fc.bias", torch.zeros(128), tensors, config) is None
    with pytest.raises(InvalidInput, match=r"c_attn.bias' has shape \(96,\), base .* has \(32,\)"):
        BITFIT.merge_tensor("transformer.h.0.attn.c_attn.bias", torch.zeros(32), tensors, config)


# -- the sequence-classification head ---------------------------------------------------------------------
def test_seq_cls_head_is_trained_and_saved():
    model = tm.tiny_bert_seq_cls()
    cfg = BITFIT.make_config({"task_type": "SEQ_CLS"})
    with pytest.warns(UserWarning, match=r"modules_to_save \+= \['classifier', 'score', 'pre_classifier'\]"):
        effective = BITFIT.attach(model, cfg)
    assert cfg.modules_to_save == [] and effective.modules_to_save == ["classifier", "score", "pre_classifier"]
    assert BITFIT.effective_config(model) == effective
    original_head = model.classifier.weight.detach().clone()
    _randomise(model)
    sd = BITFIT.state_dict(model)
    assert torch.equal(sd[PREFIX + "classifier.weight"], model.classifier.weight)
    assert torch.equal(sd[PREFIX + "classifier.bias"], model.classifier.bias)
    assert not torch.equal(sd[PREFIX + "classifier.weight"], original_head)
    assert PREFIX + "bert.encoder.layer.0.attention.self.query.bias" in sd
    assert not any(k.endswith(".weight") for k in sd if "classifier" not in k)  # only biases besides the head
    BITFIT.detach(model)
    assert torch.equal(model.classifier.weight, original_head)


# -- plugin, config ---------------------------------------------------------------------------------------
def test_plugin_registers_bitfit(monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "bitfit")
    plugins = Plugins()
    assert plugins.names("methods") == ["bitfit"]
    method = plugins.get("methods", "bitfit")
    assert method.peft_type is None and method.capabilities() == ["merge"]
    assert method.to_peft_config(method.make_config({})) is None
    assert not method.matches_peft_config({"peft_type": "IA3"})
    fields = {f["name"]: f for f in method.config_fields()}
    assert set(fields) == {"bias_pattern", "modules_to_save", "task_type"} and all(f["help"] for f in fields.values())
    assert isinstance(method.make_config({"bias_pattern": "query"}), BitFitConfig)


def test_importing_the_plugin_does_not_import_torch():
    oracle.assert_imports_without_torch("adapterhub_bitfit")


# -- bad inputs -------------------------------------------------------------------------------------------
def test_model_without_biases_is_refused():
    model = tm.tiny_llama()
    with pytest.raises(InvalidInput, match="LlamaForCausalLM has no bias parameters.*BitFit needs biases"):
        BITFIT.attach(model, BITFIT.make_config({}))
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen


def test_unknown_config_key_is_refused():
    with pytest.raises(InvalidInput, match="unknown bitfit option.*biases.*valid keys.*bias_pattern"):
        BITFIT.make_config({"biases": "all"})


@pytest.mark.parametrize(
    "values, match",
    [
        ({"bias_pattern": "("}, "not a valid regular expression"),
        ({"bias_pattern": ["query"]}, "bias_pattern must be a regex string"),
        ({"task_type": "CLS"}, "task_type must be one of"),
        ({"modules_to_save": "classifier"}, "modules_to_save must be a list"),
    ],
)
def test_invalid_config_values_are_refused(values, match):
    with pytest.raises(InvalidInput, match=match):
        BITFIT.make_config(values)


def test_pattern_matching_nothing_lists_candidates():
    model = tm.tiny_gpt2()
    with pytest.raises(InvalidInput, match=r"bias_pattern 'q_proj' matched no bias.*candidates: transformer\.h\.0\."):
        BITFIT.attach(model, BITFIT.make_config({"bias_pattern": "q_proj"}))
    with pytest.raises(InvalidInput, match=r"modules_to_save \['pooler'\] matched no module"):
        BITFIT.attach(model, BITFIT.make_config({"modules_to_save": ["pooler"]}))
    assert all(p.requires_grad for p in model.parameters())


def test_load_state_dict_refuses_wrong_shape_and_keys():
    model = tm.tiny_gpt2()
    BITFIT.attach(model, BITFIT.make_config({"bias_pattern": "c_attn"}))
    sd = dict(BITFIT.state_dict(model))
    key = PREFIX + "transformer.h.0.attn.c_attn.bias"
    with pytest.raises(InvalidInput, match=rf"{key}.*\(32,\).*\(96,\)"):
        BITFIT.load_state_dict(model, dict(sd, **{key: torch.zeros(32)}))
    with pytest.raises(InvalidInput, match="1 missing key"):
        BITFIT.load_state_dict(model, {k: v for k, v in sd.items() if k != key})
    with pytest.raises(InvalidInput, match="unexpected key.*c_fc.bias"):
        BITFIT.load_state_dict(model, dict(sd, **{PREFIX + "transformer.h.0.mlp.c_fc.bias": torch.zeros(128)}))


def test_attach_twice_and_detach_without_attach_are_refused():
    model = tm.tiny_gpt2()
    with pytest.raises(InvalidInput, match="no bitfit adapter is attached"):
        BITFIT.detach(model)
    BITFIT.attach(model, BITFIT.make_config({}))
    with pytest.raises(InvalidInput, match="already attached"):
        BITFIT.attach(model, BITFIT.make_config({}))
