"""VeRA beyond the conformance suite (tests/plugins/test_conformance.py runs it on Llama, GPT-2 and BERT): the init
is peft's bit for bit, its adapter directories load in peft and peft's in adapterhub (``push``, ``merge``), the
save_projection rules, and bad input (configs, tensors, PEFT configs) as one-line errors."""

from __future__ import annotations

import dataclasses
import os
import sys

import peft as peft
import pytest
import torch as torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import oracle  # noqa: E402
import tinymodels as tm  # noqa: E402
from adapterhub_vera import VERA_A, VERA_B, VeraMethod  # noqa: E402
from conftest import assert_clean_error  # noqa: E402
from oracle import quiet  # noqa: E402,F401  (autouse)
from test_train import causal_rows, llama_base, write_jsonl  # noqa: E402,F401  (helpers and a fixture)

from adapterhub.errors import InvalidInput  # noqa: E402
from adapterhub.files.checkpoint import save_adapter  # noqa: E402
from adapterhub.testing.conformance import header_entries, randomise  # noqa: E402

VERA = VeraMethod()
TOL = 1e-5
#: three layer shapes: q_proj 32x32, v_proj 16x32 (GQA), down_proj 32x64
LLAMA = {"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]}


def ours(opts, dtype=torch.float32):
    model = tm.tiny_llama(dtype)
    return model, VERA.attach(model, VERA.make_config(dict(opts)))


@pytest.mark.parametrize("init_weights", [True, False], ids=["identity", "random"])
def test_init_is_peft_s_bit_for_bit(init_weights):
    """Same config, same global seed: every tensor, the shared projections included, equals peft's (peft draws
    A and B from its own generator seeded with projection_prng_key; lambda_d from the global one)."""
    opts = dict(LLAMA, init_weights=init_weights, projection_prng_key=3)
    base_theirs, base_ours = tm.tiny_llama(), tm.tiny_llama()
    torch.manual_seed(5)
    expected = peft.get_peft_model_state_dict(peft.get_peft_model(base_theirs, peft.VeraConfig(**opts)))
    torch.manual_seed(5)
    VERA.attach(base_ours, VERA.make_config(opts))
    got = VERA.state_dict(base_ours)
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    # sized by the largest layer: in = down_proj's 64, out = 32; A and B drawn once for all layers
    assert tuple(got[VERA_A].shape) == (4, 64) and tuple(got[VERA_B].shape) == (32, 4)
    lambda_b = got["base_model.model.model.layers.0.self_attn.v_proj.vera_lambda_b"]
    assert tuple(lambda_b.shape) == (16,) and bool((lambda_b == 0).all()) == init_weights
    assert oracle.trainable(base_ours) == {k[len(oracle.PREFIX) :] for k in got if k.startswith(oracle.PREFIX)}


def test_another_projection_key_draws_other_projections():
    a, _ = ours(LLAMA)
    b, _ = ours(dict(LLAMA, projection_prng_key=1))
    assert not torch.equal(VERA.state_dict(a)[VERA_A], VERA.state_dict(b)[VERA_A])


@pytest.mark.parametrize("save_projection", [True, False], ids=["projections", "no-projections"])
def test_our_adapter_directory_is_a_peft_adapter(tmp_path, save_projection):
    """What adapterhub writes loads with ``PeftModel.from_pretrained`` and gives our outputs; without the
    projections, peft draws them again from the key, as we do."""
    model, config = ours(dict(LLAMA, save_projection=save_projection))
    randomise(model, seed=4)
    out = save_adapter(
        str(tmp_path / "a"),
        {"method": "vera", "config": dataclasses.asdict(config)},
        VERA.state_dict(model),
        VERA.to_peft_config(config, None),
    )
    cfg, tensors = oracle.read_peft_dir(out)
    assert cfg["peft_type"] == "VERA" and cfg["save_projection"] is save_projection
    assert (VERA_A in tensors and VERA_B in tensors) is save_projection
    theirs = peft.PeftModel.from_pretrained(tm.tiny_llama(), out)
    expected = oracle.out(model, "llama")
    assert not torch.equal(expected, oracle.out(tm.tiny_llama(), "llama"))
    assert (oracle.out(theirs, "llama") - expected).abs().max() <= TOL


@pytest.fixture(scope="module")
def peft_dirs(tmp_path_factory):
    """A base directory and two adapters made by peft (randomised): with and without the projections."""
    root = tmp_path_factory.mktemp("vera")
    base = str(root / "base")
    tm.tiny_llama().save_pretrained(base)
    dirs = {}
    for save in (True, False):
        pm = peft.get_peft_model(tm.tiny_llama(), peft.VeraConfig(**LLAMA, save_projection=save))
        randomise(pm, seed=2)
        pm.save_pretrained(str(root / f"ad-{save}"))
        dirs[save] = (str(root / f"ad-{save}"), oracle.out(pm.eval(), "llama"))
    return base, dirs


@pytest.mark.parametrize("dtype", [None, "bf16"], ids=["fp32", "bf16"])
def test_cli_merge_of_a_peft_adapter_is_merge_and_unload(cli, tmp_path, peft_dirs, dtype):
    """``push`` a peft-made directory, ``merge`` it: every tensor is peft's ``merge_and_unload``, and the merged
    model gives the peft-attached model's logits."""
    base, dirs = peft_dirs
    ad, ref_logits = dirs[True]
    assert cli("push", ad, "acme/vera", "--base", base).exit_code == 0
    args = ["merge", "acme/vera", "--base", base, "--out", tmp_path / "m", "--json"] + (
        ["--dtype", dtype] if dtype else []
    )
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert r.json()["tensors_merged"] == 6
    tdtype = torch.bfloat16 if dtype else torch.float32
    expected = peft.PeftModel.from_pretrained(tm.tiny_llama(tdtype), ad).merge_and_unload().state_dict()
    got = load_file(os.path.join(tmp_path / "m", "model.safetensors"))
    assert set(got) == set(expected)
    bad = [k for k in got if got[k].dtype != tdtype or not torch.equal(got[k], expected[k])]
    assert not bad, bad[:5]
    if dtype is None:
        import transformers

        merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), local_files_only=True)
        assert (oracle.out(merged.eval(), "llama") - ref_logits).abs().max() <= TOL


def test_cli_merge_without_projections_is_one_line(cli, tmp_path, peft_dirs):
    base, dirs = peft_dirs
    ad, _ = dirs[False]
    assert cli("push", ad, "acme/vera", "--base", base).exit_code == 0  # storing it is fine
    r = cli("merge", "acme/vera", "--base", base, "--out", tmp_path / "m")
    assert_clean_error(r, "save_projection=false")
    assert not os.path.exists(tmp_path / "m")


def test_a_tuner_wide_tensor_the_merge_never_reads_is_refused(cli, tmp_path, peft_dirs):
    """The merge plan lets ``base_model.<name>`` tensors (VeRA's projections) through by name; one the method never
    reads is still refused after writing, and nothing is left behind."""
    import shutil

    from safetensors.torch import save_file

    base, dirs = peft_dirs
    ad = shutil.copytree(dirs[True][0], tmp_path / "ad")
    tensors = load_file(ad / "adapter_model.safetensors")
    save_file(dict(tensors, **{"base_model.junk": torch.ones(3)}), ad / "adapter_model.safetensors")
    assert cli("push", ad, "acme/vera").exit_code == 0
    r = cli("merge", "acme/vera", "--base", base, "--out", tmp_path / "m")
    assert_clean_error(r, "1 of 15 adapter tensors match nothing in the base", "base_model.junk")
    assert not os.path.exists(tmp_path / "m")


@pytest.mark.parametrize(
    "sets,needle",
    [
        (["r=0"], "r must be a positive integer, got 0"),
        (["vera_dropout=1"], "vera_dropout must be a number in [0, 1)"),
        (["projection_prng_key=x"], "projection_prng_key must be an integer seed"),
        (["target_modules=embed_tokens,q_proj"], "matched 'model.embed_tokens', a Embedding; vera wraps only Linear"),
        (["target_modules=zz_proj"], "matched no module"),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(cli, tmp_path, llama_base, sets, needle):
    data = write_jsonl(tmp_path / "t.jsonl", causal_rows(4))
    args = [
        "train",
        "--base",
        llama_base,
        "--method",
        "vera",
        "--task",
        "causal-lm",
        "--data",
        data,
        "--out",
        tmp_path / "a",
        "--max-steps",
        "1",
    ]
    for s in sets:
        args += ["--set", s]
    assert_clean_error(cli(*args), needle)
    assert not os.path.exists(tmp_path / "a")


def test_linear_and_conv1d_targets_together_are_refused():
    """GPT-2's lm_head is a Linear, its blocks Conv1D: one fan_in_fan_out cannot serve both (peft would flip it
    per layer and merge one kind wrongly)."""
    model = tm.tiny_gpt2()
    with pytest.raises(InvalidInput, match="cannot target Linear and Conv1D layers in the same adapter"):
        VERA.attach(model, VERA.make_config({"r": 2, "target_modules": ["c_attn", "lm_head"]}))
    assert "_adapterhub_vera" not in model.__dict__ and all(p.requires_grad for p in model.parameters())


def test_gpt2_effective_config_records_fan_in_fan_out():
    with pytest.warns(UserWarning, match="fan_in_fan_out = True"):
        config = VERA.attach(tm.tiny_gpt2(), VERA.make_config({"r": 2, "target_modules": ["c_attn"]}))
    assert config.fan_in_fan_out is True


@pytest.mark.parametrize("option,value", [("bias", "all"), ("layers_to_transform", [0]), ("r", 0)])
def test_peft_configs_we_cannot_honour_are_refused(option, value):
    cfg = dict(VERA.to_peft_config(VERA.make_config(LLAMA)), **{option: value})
    with pytest.raises(InvalidInput, match=option) as exc:
        VERA.from_peft_config(cfg)
    assert "\n" not in str(exc.value)


def test_projections_are_present_exactly_when_save_projection_says():
    model, config = ours(LLAMA)
    sd = header_entries(VERA.state_dict(model))
    base = header_entries(tm.tiny_llama().state_dict())
    VERA.check_tensors(sd, config, base)
    with pytest.raises(InvalidInput, match="lacks base_model.vera_B"):
        VERA.check_tensors({k: v for k, v in sd.items() if k != VERA_B}, config)
    without = dataclasses.replace(config, save_projection=False)
    with pytest.raises(InvalidInput, match="holds base_model.vera_A but its config says save_projection=false"):
        VERA.check_tensors(sd, without)
    VERA.check_tensors({k: v for k, v in sd.items() if k not in (VERA_A, VERA_B)}, without, base)


def test_projection_shapes_are_checked_against_the_largest_layer():
    model, config = ours(LLAMA)
    sd = VERA.state_dict(model)
    base = header_entries(tm.tiny_llama().state_dict())
    narrow = header_entries(dict(sd, **{VERA_A: torch.zeros(4, 32)}))  # as if down_proj (in 64) were not targeted
    VERA.check_tensors(narrow, config)  # without the base, A's width is not known
    with pytest.raises(InvalidInput, match=r"'base_model.vera_A' has shape \(4, 32\), expected \(4, 64\)"):
        VERA.check_tensors(narrow, config, base)
    with pytest.raises(InvalidInput, match=r"'base_model.vera_B' has shape \(16, 4\), expected \(32, 4\)"):
        VERA.check_tensors(header_entries(dict(sd, **{VERA_B: torch.zeros(16, 4)})), config)


def test_merge_refuses_tensors_that_do_not_fit_the_base():
    model, config = ours(LLAMA)
    randomise(model)
    sd = VERA.state_dict(model)
    name = "model.layers.0.mlp.down_proj.weight"
    weight = tm.tiny_llama().state_dict()[name]
    assert not torch.equal(VERA.merge_tensor(name, weight, sd, config), weight)
    with pytest.raises(InvalidInput, match="do not fit base 'model.layers.0.mlp.down_proj.weight'"):
        VERA.merge_tensor(name, weight, dict(sd, **{VERA_A: torch.zeros(4, 32)}), config)


def test_unset_target_modules_on_an_unknown_model_type_is_one_line_with_candidates():
    model = tm.tiny_llama()
    model.config.model_type = "mystery"
    with pytest.raises(
        InvalidInput,
        match=r"no default vera target_modules for model type 'mystery'; set "
        r"target_modules \(candidates: .*q_proj",
    ):
        VERA.attach(model, VERA.make_config({"r": 2}))
    assert "_adapterhub_vera" not in model.__dict__
