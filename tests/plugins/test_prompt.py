"""The ``prompt_tuning`` / ``prefix_tuning`` methods against the real ``peft`` library (the oracle).

Table-driven over tiny Llama (GQA), GPT-2, BERT (sequence classification) and the real MiniLM with a
classification head. Every parity case overwrites the prompt weights (and the SEQ_CLS head) with fresh random
values, so that it cannot pass on a shared default init; each parity test also checks the adapter changes the
output. Prompt tuning outputs carry ``num_virtual_tokens`` leading positions in PEFT and in ours alike: logits
are compared whole (like with like), and the real tokens' part is checked to differ from the base model.
Each case runs the conformance suite (``adapterhub.testing.conformance``: detach, state-dict and directory
round trips, tensor checks, peft's adapter loading into ours); a prompt cannot start as a no-op, so the suite
does not expect the outputs unchanged at init. The tests here add what it does not check.
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
from adapterhub_prompt import PrefixTuningMethod, PromptTuningMethod  # noqa: E402
from oracle import quiet  # noqa: E402,F401  (autouse)

from adapterhub.errors import AdapterhubError, InvalidInput  # noqa: E402
from adapterhub.plugins import Plugins  # noqa: E402
from adapterhub.testing.conformance import PeftParity  # noqa: E402

PT, PX = PromptTuningMethod(), PrefixTuningMethod()
METHODS = {"prompt": PT, "prefix": PX}
PEFT_CONFIGS = {"prompt": peft.PromptTuningConfig, "prefix": peft.PrefixTuningConfig}
TOL = 1e-5
NVT = 3


def minilm_seq_cls(dtype=torch.float32):
    """The real MiniLM encoder with a new (seeded) 3-label classification head."""
    import logging

    from transformers import BertForSequenceClassification

    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    torch.manual_seed(3)
    return BertForSequenceClassification.from_pretrained(
        tm.minilm_path(), num_labels=3, local_files_only=True, dtype=dtype
    ).eval()


def tiny_llama_seq_cls(dtype=torch.float32):
    """The tiny GQA Llama with a 3-label ``score`` head (pad_token_id 0)."""
    from transformers import LlamaForSequenceClassification

    cfg = tm.tiny_llama().config
    cfg.num_labels = 3
    torch.manual_seed(4)
    return LlamaForSequenceClassification(cfg).to(dtype).eval()


MODELS = dict(tm.MODELS, minilm_cls=minilm_seq_cls, llama_cls=tiny_llama_seq_cls)
CAUSAL = dict(task_type="CAUSAL_LM", num_virtual_tokens=NVT)
SEQ_CLS = dict(task_type="SEQ_CLS", num_virtual_tokens=NVT)

# id -> (model, method, options shared by peft's config and our make_config, slow?)
CASES = {
    "llama-prompt": ("llama", "prompt", CAUSAL, False),
    "gpt2-prompt": ("gpt2", "prompt", CAUSAL, False),
    "bert-prompt-seqcls": ("bert", "prompt", SEQ_CLS, False),
    "llama-prefix-gqa": ("llama", "prefix", CAUSAL, False),
    "llama-prefix-projection": ("llama", "prefix", dict(CAUSAL, prefix_projection=True, encoder_hidden_size=10), False),
    "gpt2-prefix": ("gpt2", "prefix", CAUSAL, False),
    "bert-prefix-seqcls": ("bert", "prefix", dict(SEQ_CLS, num_virtual_tokens=4), False),
    "llama-prompt-seqcls-score": ("llama_cls", "prompt", SEQ_CLS, False),
    "llama-prefix-seqcls-score": ("llama_cls", "prefix", SEQ_CLS, False),
    "minilm-prompt-seqcls": ("minilm_cls", "prompt", SEQ_CLS, True),
    "minilm-prefix-seqcls": ("minilm_cls", "prefix", dict(SEQ_CLS, prefix_projection=True), True),
}


def _params(no_projection: bool = False):
    return oracle.case_params(CASES, keep=lambda row: not (no_projection and row[2].get("prefix_projection")))


def _randomise(model, seed=0):
    """Every trainable parameter (prompt encoder, SEQ_CLS head copy) gets fresh random values."""
    oracle.perturb_trainable(
        model, lambda _, p, noise: p.copy_(noise * 0.5) if p.dim() > 1 else p.add_(noise * 0.1), seed
    )


def _inputs(name):
    return tm.inputs_for({"minilm_cls": "bert", "llama_cls": "llama"}.get(name, name))


def _out(model, name, **extra):
    with torch.no_grad():
        return model(**_inputs(name), **extra).logits


def _real(logits, cid):
    """The real tokens' part of an output (prompt tuning on a causal LM adds leading positions)."""
    name, kind, opts, _ = CASES[cid]
    return logits[:, opts["num_virtual_tokens"] :] if kind == "prompt" and logits.dim() == 3 else logits


def _build_peft(case):
    name, kind, opts, _ = CASES[case]
    return peft.get_peft_model(MODELS[name](), PEFT_CONFIGS[kind](**opts)), name


def _reloaded_out(pm, path, name):
    """The oracle is what PEFT loads from the directory (with prefix_projection, the training-time MLP output
    differs from the saved prefix by float rounding, even within PEFT)."""
    return _out(peft.PeftModel.from_pretrained(MODELS[name](), path), name)


#: PEFT adapter directories made by peft itself, with random non-default weights; cached per case
_peft_dir = oracle.PeftDirs(_build_peft, _randomise, _reloaded_out)
_read_peft_dir = oracle.read_peft_dir


# -- the conformance suite per case (detach, round trips, tensor checks, peft -> ours) ---------------------
# (with prefix_projection, peft's in-memory prefix goes through its MLP at every forward while the saved prefix,
# which ours loads, is that output once: 3e-5 apart on MiniLM, as peft's own reload is; ours -> peft below compares
# with peft's reload at 1e-5)
oracle.add_conformance_classes(
    globals(),
    PeftParity,
    CASES,
    lambda row: dict(
        method=METHODS[row[1]],
        model=row[0],
        options=row[2],
        identity_at_init=False,
        tolerance=1e-4 if row[2].get("prefix_projection") else TOL,
        peft_config=staticmethod(lambda o, kind=row[1]: PEFT_CONFIGS[kind](**o)),
        build=lambda self, dtype=torch.float32: MODELS[self.model](dtype),
    ),
)


def _with_labels(name, opts):
    """The inputs for ``name`` with labels for the task (class ids, or the input ids for a causal LM)."""
    inputs = _inputs(name)
    inputs["labels"] = torch.tensor([0, 2]) if opts["task_type"] == "SEQ_CLS" else inputs["input_ids"]
    return inputs


# -- (b) ours -> PEFT -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_our_adapter_loads_into_peft_with_same_logits(case, tmp_path):
    name, kind, opts, _ = CASES[case]
    method = METHODS[kind]
    _, base_logits, ours, tensors = oracle.attach_and_write_peft_dir(
        method, MODELS[name](), opts, _randomise, tmp_path, name, output=_out
    )
    assert isinstance(peft.PeftConfig.from_pretrained(str(tmp_path)), PEFT_CONFIGS[kind])
    pm = peft.PeftModel.from_pretrained(MODELS[name](), str(tmp_path))
    assert set(peft.get_peft_model_state_dict(pm)) == set(tensors)
    assert (_real(ours, case) - base_logits).abs().max() > 1e-3
    assert (_out(pm, name) - ours).abs().max() <= TOL


# -- training parity: same loss and gradients as PEFT -----------------------------------------------------
@pytest.mark.parametrize("case", _params(no_projection=True))  # a loaded projected prefix has no MLP in PEFT
def test_loss_and_gradients_match_peft(case, tmp_path_factory):
    name, kind, opts, _ = CASES[case]
    method = METHODS[kind]
    path, _ = _peft_dir(case, tmp_path_factory)
    peft_cfg, tensors = _read_peft_dir(path)
    other = METHODS["prefix" if kind == "prompt" else "prompt"]
    assert method.matches_peft_config(peft_cfg) and not other.matches_peft_config(peft_cfg)
    ours = MODELS[name]()
    method.attach(ours, method.from_peft_config(peft_cfg))
    method.load_state_dict(ours, tensors)
    theirs = peft.get_peft_model(MODELS[name](), PEFT_CONFIGS[kind](**opts))  # PEFT loads prompts frozen only
    peft.set_peft_model_state_dict(theirs, tensors)
    inputs = _with_labels(name, opts)
    losses = []

    def loss_of(model):
        losses.append(model(**inputs).loss)
        return losses[-1]

    grads = oracle.grads_of((ours, theirs), loss_of)
    assert (losses[0].detach() - losses[1].detach()).abs() <= TOL
    ours_g = {n.replace("prompt_encoder.", "prompt_encoder.default."): g for n, g in grads[0].items()}
    theirs_g = {n.replace("base_model.", "").replace(".modules_to_save.default", ""): g for n, g in grads[1].items()}
    assert set(ours_g) == set(theirs_g)
    oracle.assert_grads_match(ours_g, theirs_g)


# -- (d) one optimizer step -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _params())
def test_training_step_changes_only_prompt_and_head(case):
    name, kind, opts, _ = CASES[case]
    method = METHODS[kind]
    model = MODELS[name]()
    method.attach(model, method.make_config(opts))
    trainable = oracle.trainable(model)
    expected = {n for n, _ in model.named_parameters() if n.startswith("prompt_encoder.")}
    if opts["task_type"] == "SEQ_CLS":
        expected |= {"score.weight"} if name == "llama_cls" else {"classifier.weight", "classifier.bias"}
    assert trainable == expected
    inputs = _with_labels(name, opts)
    changed = oracle.optimizer_step(model, lambda m: m(**inputs).loss, torch.optim.SGD, lr=0.1)
    assert changed == trainable


# -- init modes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, opts",
    [
        ("prompt", dict(CAUSAL)),
        ("prompt", dict(CAUSAL, prompt_tuning_init="SAMPLE_VOCAB")),
        ("prefix", dict(CAUSAL)),
        ("prefix", dict(CAUSAL, prefix_projection=True)),
        ("prefix", dict(CAUSAL, prefix_projection=True, init_weights="zero")),
        ("prefix", dict(CAUSAL, init_weights="zero")),
    ],
    ids=["random", "sample-vocab", "prefix", "prefix-projection", "prefix-projection-zero", "prefix-zero"],
)
def test_init_matches_peft_for_the_same_seed(kind, opts):
    method = METHODS[kind]
    base = tm.tiny_llama()
    torch.manual_seed(11)
    expected = peft.get_peft_model(base, PEFT_CONFIGS[kind](**opts)).prompt_encoder["default"].state_dict()
    model = tm.tiny_llama()
    torch.manual_seed(11)
    method.attach(model, method.make_config(opts))
    ours = model.prompt_encoder.state_dict()
    assert set(ours) == set(expected) and all(torch.equal(ours[k], expected[k]) for k in ours)
    if opts.get("prompt_tuning_init") == "SAMPLE_VOCAB":  # each row is a row of the vocabulary
        vocab = model.get_input_embeddings().weight
        assert all(any(torch.equal(row, v) for v in vocab) for row in ours["embedding.weight"])


class _Tokenizer:
    """A stand-in tokenizer for the tiny models: one id per character."""

    name_or_path = "tiny-char-tokenizer"

    def __call__(self, text):
        return {"input_ids": [ord(c) % 100 + 1 for c in text]}


@pytest.mark.parametrize("text", ["ab", "abcdefg"], ids=["repeated", "truncated"])
def test_text_init_with_init_tokenizer(text):
    model = tm.tiny_llama()
    effective = PT.attach(
        model,
        PT.make_config(dict(CAUSAL, prompt_tuning_init="TEXT", prompt_tuning_init_text=text)),
        init_tokenizer=_Tokenizer(),
    )
    ids = (_Tokenizer()(text)["input_ids"] * NVT)[:NVT]
    assert torch.equal(PT.state_dict(model)["prompt_embeddings"], model.get_input_embeddings().weight[ids])
    assert effective.tokenizer_name_or_path == "tiny-char-tokenizer"
    assert PT.to_peft_config(effective)["tokenizer_name_or_path"] == "tiny-char-tokenizer"


@pytest.mark.slow
def test_text_init_from_tokenizer_path_matches_peft():
    opts = dict(
        SEQ_CLS,
        num_virtual_tokens=8,
        prompt_tuning_init="TEXT",
        tokenizer_name_or_path=tm.minilm_path(),
        prompt_tuning_init_text="Classify the sentiment of this review:",
    )
    pm = peft.get_peft_model(minilm_seq_cls(), peft.PromptTuningConfig(**opts))
    model = minilm_seq_cls()
    PT.attach(model, PT.make_config(opts))
    expected = peft.get_peft_model_state_dict(pm)["prompt_embeddings"]
    assert torch.equal(PT.state_dict(model)["prompt_embeddings"], expected)
    with torch.no_grad():
        assert (_out(model, "minilm_cls") - _out(pm, "minilm_cls")).abs().max() <= TOL


def test_text_init_with_unloadable_tokenizer_fails_at_first_use_but_loads_weights(tmp_path):
    cfg = PT.make_config(
        dict(
            CAUSAL,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text="hi",
            tokenizer_name_or_path=str(tmp_path / "missing"),
        )
    )
    trained = tm.tiny_llama()
    PT.attach(trained, cfg, init_tokenizer=_Tokenizer())
    model = tm.tiny_llama()
    PT.attach(model, cfg)  # the load path: the adapter's weights come next
    with pytest.raises(InvalidInput, match="could not load tokenizer.*init_tokenizer="):
        _out(model, "llama")
    with pytest.raises(InvalidInput, match="could not load tokenizer"):
        PT.state_dict(model)
    PT.load_state_dict(model, PT.state_dict(trained))
    assert torch.equal(_out(model, "llama"), _out(trained, "llama"))


def test_text_init_needs_a_named_tokenizer():
    cfg = PT.make_config(dict(CAUSAL, prompt_tuning_init="TEXT", prompt_tuning_init_text="hi"))
    with pytest.raises(InvalidInput, match="needs a tokenizer"):
        PT.attach(tm.tiny_llama(), cfg)
    anonymous = lambda text: {"input_ids": [1, 2]}  # noqa: E731
    with pytest.raises(InvalidInput, match="needs a tokenizer"):
        PT.attach(tm.tiny_llama(), cfg, init_tokenizer=anonymous)
    model = tm.tiny_llama()
    with pytest.raises(InvalidInput, match="outside the model's vocabulary of 128"):
        PT.attach(
            model,
            dict(CAUSAL, prompt_tuning_init="TEXT", prompt_tuning_init_text="hi", tokenizer_name_or_path="x"),
            init_tokenizer=lambda t: {"input_ids": [500]},
        )
    assert not hasattr(model, "prompt_encoder") and all(p.requires_grad for p in model.parameters())


# -- prefix tuning specifics ------------------------------------------------------------------------------
def test_prefix_on_gqa_uses_key_value_heads():
    model = tm.tiny_llama()  # 4 query heads, 2 key/value heads, head_dim 8, 2 layers
    effective = PX.attach(model, PX.make_config(dict(CAUSAL, prefix_projection=True)))
    assert (effective.token_dim, effective.num_attention_heads, effective.num_layers) == (16, 2, 2)
    assert effective.encoder_hidden_size == 16
    assert PX.state_dict(model)["prompt_embeddings"].shape == (NVT, 2 * 2 * 16)
    out = model(**tm.inputs_for("llama"), use_cache=True)
    assert out.past_key_values.get_seq_length() == NVT + 7
    assert out.past_key_values.layers[0].keys.shape == (2, 2, NVT + 7, 8)


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_cached_decode_step_equals_full_forward(kind):
    """Prefill then one cached step gives the logits of the full sequence's last position."""
    method = METHODS[kind]
    model = tm.tiny_llama()
    method.attach(model, method.make_config(CAUSAL))
    _randomise(model)
    ids = tm.inputs_for("llama")["input_ids"]
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
        first = model(input_ids=ids[:, :-1], attention_mask=torch.ones_like(ids[:, :-1]), use_cache=True)
        step = model(
            input_ids=ids[:, -1:],
            attention_mask=torch.ones_like(ids),
            past_key_values=first.past_key_values,
            position_ids=torch.full((2, 1), ids.shape[1] - 1),
            use_cache=True,
        ).logits[:, -1]
    assert (full - step).abs().max() <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_headless_minilm_feature_extraction_matches_peft(kind):
    opts = dict(task_type="FEATURE_EXTRACTION", num_virtual_tokens=NVT)
    pm = peft.get_peft_model(tm.minilm(), PEFT_CONFIGS[kind](**opts))
    _randomise(pm)
    model = tm.minilm()
    METHODS[kind].attach(model, METHODS[kind].make_config(opts))
    METHODS[kind].load_state_dict(model, peft.get_peft_model_state_dict(pm))
    with torch.no_grad():
        theirs, ours = tm.logits(pm, tm.inputs_for("minilm")), tm.logits(model, tm.inputs_for("minilm"))
    assert ours.shape == theirs.shape == (2, 7 + (NVT if kind == "prompt" else 0), 384)
    assert (ours - theirs).abs().max() <= TOL


GEN = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)


@pytest.mark.parametrize("case", ["llama-prompt", "gpt2-prompt", "llama-prefix-gqa", "gpt2-prefix"])
def test_generate_matches_peft(case, tmp_path_factory):
    name, kind, _, _ = CASES[case]
    method = METHODS[kind]
    path, _ = _peft_dir(case, tmp_path_factory)
    peft_cfg, tensors = _read_peft_dir(path)
    pm = peft.PeftModel.from_pretrained(MODELS[name](), path)
    model = MODELS[name]()
    method.attach(model, method.from_peft_config(peft_cfg))
    method.load_state_dict(model, tensors)
    batches = [tm.inputs_for(name)]
    if kind == "prefix":  # PEFT shifts position_ids for prefix tuning only (see the next test)
        batches.append(tm.inputs_for(name))
        batches[-1]["attention_mask"][0, :2] = 0  # a left-padded row
    for inputs in batches:
        theirs, ours = pm.generate(**inputs, **GEN), model.generate(**inputs, **GEN)
        assert torch.equal(ours.sequences, theirs.sequences)
        assert all((a - b).abs().max() <= TOL for a, b in zip(ours.scores, theirs.scores))


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_left_padded_generation_equals_unpadded(kind):
    """generate()'s position_ids are shifted past the virtual tokens, so a left-padded row generates exactly what
    it generates alone (PEFT drops position_ids for prompt tuning, which shifts a padded row's positions)."""
    model = tm.tiny_llama()
    METHODS[kind].attach(model, METHODS[kind].make_config(CAUSAL))
    _randomise(model)
    padded = tm.inputs_for("llama")
    padded["input_ids"][0, :2] = 0
    padded["attention_mask"][0, :2] = 0
    alone = {"input_ids": padded["input_ids"][:1, 2:], "attention_mask": padded["attention_mask"][:1, 2:]}
    a, b = model.generate(**padded, **GEN), model.generate(**alone, **GEN)
    assert torch.equal(a.sequences[0, 2:], b.sequences[0])
    assert all((x[0] - y[0]).abs().max() <= TOL for x, y in zip(a.scores, b.scores))


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_bf16_base_matches_peft_bit_for_bit(kind):
    pm = peft.get_peft_model(tm.tiny_llama(dtype=torch.bfloat16), PEFT_CONFIGS[kind](**CAUSAL))
    _randomise(pm)
    model = tm.tiny_llama(dtype=torch.bfloat16)
    METHODS[kind].attach(model, METHODS[kind].make_config(CAUSAL))
    METHODS[kind].load_state_dict(model, peft.get_peft_model_state_dict(pm))
    assert model.prompt_encoder.embedding.weight.dtype == torch.float32  # like PEFT's
    assert torch.equal(_out(model, "llama"), _out(pm, "llama"))


def test_positional_inputs_embeds_and_labels():
    model = tm.tiny_llama()
    PT.attach(model, PT.make_config(CAUSAL))
    inputs = tm.inputs_for("llama")
    with torch.no_grad():
        by_name = model(**inputs).logits
        positional = model(inputs["input_ids"], inputs["attention_mask"]).logits
        embeds = model(inputs_embeds=model.get_input_embeddings()(inputs["input_ids"])).logits
        out = model(**inputs, labels=inputs["input_ids"])
    assert torch.equal(by_name, positional) and torch.equal(by_name, embeds)
    # labels padded with -100 for the virtual tokens: the loss is over the predictions of the real tokens, the
    # first of them predicted at the last virtual position
    predictions = out.logits[:, NVT - 1 : -1].reshape(-1, 128)
    expected = torch.nn.functional.cross_entropy(predictions, inputs["input_ids"].reshape(-1))
    assert (out.loss - expected).abs() <= TOL


# -- merge, plugin, config --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [PT, PX], ids=["prompt", "prefix"])
def test_merge_is_refused_with_the_alternative(method):
    assert method.capabilities() == []
    with pytest.raises(AdapterhubError, match=f"method '{method.name}' cannot merge.*load it at run time"):
        method.merge_tensor("model.embed_tokens.weight", torch.zeros(2, 2), {}, method.make_config({}))


def test_plugin_registers_both_methods(monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "prompt")
    plugins = Plugins()
    assert set(plugins.names("methods")) == {"prompt_tuning", "prefix_tuning"}
    pt, px = plugins.get("methods", "prompt_tuning"), plugins.get("methods", "prefix_tuning")
    assert (pt.peft_type, px.peft_type) == ("PROMPT_TUNING", "PREFIX_TUNING")
    assert pt.matches_peft_config({"peft_type": "PROMPT_TUNING"}) and not pt.matches_peft_config({"peft_type": "LORA"})
    for method in (pt, px):
        fields = {f["name"]: f for f in method.config_fields()}
        assert fields["num_virtual_tokens"]["default"] == 20 and all(f["help"] for f in fields.values())


@pytest.mark.parametrize(
    "kind, opts",
    [
        (
            "prompt",
            dict(
                SEQ_CLS,
                prompt_tuning_init="TEXT",
                prompt_tuning_init_text="x",
                tokenizer_name_or_path="t",
                tokenizer_kwargs={"use_fast": False},
                modules_to_save=["pooler"],
            ),
        ),
        ("prefix", dict(CAUSAL, prefix_projection=True, encoder_hidden_size=7, init_weights="zero")),
    ],
    ids=["prompt", "prefix"],
)
def test_peft_config_round_trip(kind, opts):
    method = METHODS[kind]
    cfg = method.make_config(dict(opts, token_dim=32, num_layers=2, num_attention_heads=4))
    peft_dict = json.loads(json.dumps(method.to_peft_config(cfg, "some/base")))
    assert peft_dict["base_model_name_or_path"] == "some/base" and peft_dict["peft_type"] == method.peft_type
    assert method.from_peft_config(peft_dict) == cfg
    theirs = PEFT_CONFIGS[kind](**{k: v for k, v in peft_dict.items() if k not in ("peft_type",)})
    assert method.from_peft_config(json.loads(json.dumps(theirs.to_dict(), default=str))) == cfg


def test_effective_config_is_reported_and_user_config_untouched():
    cfg = PT.make_config(SEQ_CLS)
    effective = PT.attach(tm.tiny_bert_seq_cls(), cfg)
    assert cfg.token_dim is None and cfg.modules_to_save == []
    assert effective.modules_to_save == ["classifier", "score", "pre_classifier"] and effective.token_dim == 32
    assert PT.to_peft_config(effective)["modules_to_save"] == ["classifier", "score", "pre_classifier"]


def test_importing_the_plugin_does_not_import_torch():
    oracle.assert_imports_without_torch("adapterhub_prompt")


# -- bad inputs -------------------------------------------------------------------------------------------
def test_unknown_config_key_is_refused():
    with pytest.raises(InvalidInput, match="unknown prompt_tuning option.*num_tokens.*valid keys.*num_virtual_tokens"):
        PT.make_config({"num_tokens": 4})
    with pytest.raises(InvalidInput, match="unknown prefix_tuning option.*prompt_tuning_init"):
        PX.make_config({"prompt_tuning_init": "TEXT"})


@pytest.mark.parametrize(
    "method, values, match",
    [
        (PT, {"num_virtual_tokens": 0}, "num_virtual_tokens must be a positive integer"),
        (PX, {"num_virtual_tokens": -2}, "num_virtual_tokens must be a positive integer"),
        (PT, {"num_virtual_tokens": True}, "num_virtual_tokens must be a positive integer"),
        (PT, {"prompt_tuning_init": "ZEROS"}, "prompt_tuning_init must be one of RANDOM, TEXT, SAMPLE_VOCAB"),
        (PT, {"prompt_tuning_init": "TEXT"}, "needs a non-empty prompt_tuning_init_text"),
        (PT, {"tokenizer_kwargs": {"a": 1}}, "only valid with prompt_tuning_init TEXT"),
        (PX, {"init_weights": "ones"}, "init_weights must be empty or 'zero'"),
        (PX, {"encoder_hidden_size": 0}, "encoder_hidden_size must be a positive integer"),
        (PX, {"task_type": "SEQ_2_SEQ_LM"}, "task_type must be one of"),
        (PX, {"token_dim": 30, "num_attention_heads": 4}, "multiple of num_attention_heads"),
    ],
)
def test_invalid_config_values_are_refused(method, values, match):
    with pytest.raises(InvalidInput, match=match):
        method.make_config(values)


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_load_state_dict_refuses_wrong_shape_and_keys(kind):
    method = METHODS[kind]
    model = tm.tiny_bert_seq_cls()
    method.attach(model, method.make_config(SEQ_CLS))
    sd = dict(method.state_dict(model))
    width = 32 if kind == "prompt" else 2 * 2 * 32
    with pytest.raises(InvalidInput, match=rf"prompt_embeddings.*\(2, {width}\).*\({NVT}, {width}\)"):
        method.load_state_dict(model, dict(sd, prompt_embeddings=torch.zeros(2, width)))
    with pytest.raises(InvalidInput, match="1 missing key.*base_model.classifier.bias"):
        method.load_state_dict(model, {k: v for k, v in sd.items() if k != "base_model.classifier.bias"})
    with pytest.raises(InvalidInput, match="unexpected key.*extra"):
        method.load_state_dict(model, dict(sd, extra=torch.zeros(1)))


def test_attach_refusals():
    model = tm.tiny_llama()
    PT.attach(model, PT.make_config(CAUSAL))
    with pytest.raises(InvalidInput, match="already attached"):
        PX.attach(model, PX.make_config(CAUSAL))
    with pytest.raises(InvalidInput, match="no prefix_tuning adapter is attached"):
        PX.state_dict(model)
    with pytest.raises(InvalidInput, match="token_dim=64 in the config but the model has token_dim=32"):
        PT.attach(tm.tiny_llama(), PT.make_config(dict(CAUSAL, token_dim=64)))
    with pytest.raises(InvalidInput, match="token_dim=32 in the config but the model has token_dim=16"):
        PX.attach(tm.tiny_llama(), PX.make_config(dict(CAUSAL, token_dim=32)))  # GQA: 2 kv heads x 8
    with pytest.raises(InvalidInput, match=r"modules_to_save \['nope'\] matched no module"):
        PT.attach(tm.tiny_llama(), PT.make_config(dict(CAUSAL, modules_to_save=["nope"])))
    checkpointed = tm.tiny_llama()
    checkpointed.gradient_checkpointing_enable()
    with pytest.raises(InvalidInput, match="gradient checkpointing"):
        PX.attach(checkpointed, PX.make_config(CAUSAL))
    assert not hasattr(checkpointed, "prompt_encoder")
    assert all(p.requires_grad for p in checkpointed.parameters())


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_bad_forward_inputs_are_refused(kind):
    model = tm.tiny_llama()
    METHODS[kind].attach(model, METHODS[kind].make_config(CAUSAL))
    ids = tm.inputs_for("llama")["input_ids"]
    with pytest.raises(InvalidInput, match="2-D attention mask"):
        model(input_ids=ids, attention_mask=torch.ones(2, 1, 7, 7))
    legacy = tuple((torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8)) for _ in range(2))
    with pytest.raises(InvalidInput, match="transformers Cache"):
        model(input_ids=ids, past_key_values=legacy)


def test_unsupported_peft_configs_are_refused():
    cfg = PX.to_peft_config(PX.make_config(dict(CAUSAL, token_dim=16, num_layers=2, num_attention_heads=2)))
    with pytest.raises(InvalidInput, match="encoder-decoder"):
        PX.from_peft_config(dict(cfg, num_transformer_submodules=2))
    with pytest.raises(InvalidInput, match="option cartridge=3 is not supported"):
        PX.from_peft_config(dict(cfg, cartridge=3))
    with pytest.raises(InvalidInput, match="not a PEFT PROMPT_TUNING config"):
        PT.from_peft_config(cfg)


def test_check_tensors_refuses_what_does_not_fit_the_config_or_the_base():
    """What ``push`` checks (the conformance suite tries one wrong shape): the prompt's rows and width, a missing
    prompt, a head copy unlike the base's; a config whose dimensions are not inferred yet leaves the width open."""
    from adapterhub.testing.conformance import header_entries

    model = tm.tiny_bert_seq_cls()
    config = PX.attach(model, PX.make_config(SEQ_CLS))
    sd = header_entries(PX.state_dict(model))
    base = header_entries(tm.tiny_bert_seq_cls().state_dict())
    PX.check_tensors(sd, config, base)
    wide = dict(sd, prompt_embeddings=header_entries({"p": torch.zeros(NVT, 32)})["p"])
    with pytest.raises(InvalidInput, match=rf"'prompt_embeddings' has shape \({NVT}, 32\), expected \({NVT}, 128\)"):
        PX.check_tensors(wide, config)
    PX.check_tensors(wide, PX.make_config(SEQ_CLS))  # no token_dim / num_layers: the width is not known
    with pytest.raises(InvalidInput, match="lacks 'prompt_embeddings'"):
        PX.check_tensors({k: v for k, v in sd.items() if k != "prompt_embeddings"}, config)
    head = dict(sd, **header_entries({"base_model.classifier.weight": torch.zeros(2, 32)}))
    PX.check_tensors(head, config)  # without the base, a head's size is the adapter's own
    with pytest.raises(
        InvalidInput,
        match=r"'base_model.classifier.weight' has shape \(2, 32\), but the base's "
        r"'classifier.weight' has \(3, 32\)",
    ):
        PX.check_tensors(head, config, base)
