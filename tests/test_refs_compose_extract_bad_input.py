"""Bad input to refs, compose and extract: huge version numbers, the promotion gate on ``compose --alias``,
one kind (adapter or composition) per name, ``extract`` on modules smaller than ``--rank`` (scaling must
stay 1: checked against peft's ``merge_and_unload``) and ``extract --out`` never left half-written."""

from __future__ import annotations

import json
import os
import sys

import peft
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import tinymodels as tm  # noqa: E402
from conftest import assert_clean_error, make_base_dir, make_lora_dir  # noqa: E402

from adapterhub.errors import InvalidInput  # noqa: E402
from adapterhub.registry.refs import parse_ref  # noqa: E402

HUGE = "99999999999999999999999"
MAX_VERSION = 2**31 - 1  # versions.number is a 32-bit INTEGER on PostgreSQL


def n_versions(cli):
    r = cli("list", "--json")
    assert r.exit_code == 0, r.output
    return len(r.json())


@pytest.fixture
def two(cli, tmp_path):
    base = make_base_dir(tmp_path / "base")
    for i, n in enumerate(("a", "b")):
        assert cli("push", make_lora_dir(tmp_path / n, seed=i, r=2 + i), f"acme/{n}", "--base", base).exit_code == 0
    return tmp_path, base


# -- 1. version numbers beyond what the schema holds ---------------------------------------------------------
def test_parse_ref_bounds_the_version():
    assert parse_ref(f"acme/a:{MAX_VERSION}").version == MAX_VERSION
    assert parse_ref("acme/a:007").version == 7
    for bad in (f"acme/a:{MAX_VERSION + 1}", f"acme/a:{HUGE}", "acme/a:" + "9" * 6000):
        with pytest.raises(InvalidInput, match="invalid ref .*version numbers go up to 2147483647"):
            parse_ref(bad)
    for bad in ("acme/a:0", "acme/a:²", "acme/a:٣", "acme/a:-1"):  # '²'.isdigit() and '٣'.isdigit() are True
        with pytest.raises(InvalidInput, match="must be a positive integer"):
            parse_ref(bad)
    from adapterhub.registry import refs

    assert refs.MAX_VERSION == MAX_VERSION


def test_huge_version_numbers_are_invalid_refs_not_overflows(cli, two):
    tmp_path, base = two
    n = n_versions(cli)
    cases = [
        ("merge", f"acme/a:{HUGE}", "--base", base, "--out", tmp_path / "m"),
        ("compose", "acme/a", f"acme/b:{HUGE}", "--name", "acme/s"),
        ("push", make_lora_dir(tmp_path / "p", seed=7), "acme/p", "--parent", f"acme/b:{HUGE}"),
        ("show", f"acme/a:{MAX_VERSION + 1}"),
        ("alias", "set", "acme/a", "staging", HUGE),
        ("combine", "acme/a", f"acme/b:{HUGE}", "--name", "acme/c"),
    ]
    for args in cases:
        r = cli(*args)
        assert_clean_error(r, "invalid ref", "version numbers go up to 2147483647")
        assert "OverflowError" not in r.output and "internal error" not in r.output, r.output
    assert not (tmp_path / "m").exists() and n_versions(cli) == n
    # the largest valid number is looked up normally
    assert_clean_error(cli("show", f"acme/a:{MAX_VERSION}"), f"acme/a has no version {MAX_VERSION}")


# -- 2. compose --alias production goes through the promotion gate ------------------------------------------
def test_compose_protected_alias_is_gated(cli, two, home):
    from adapterhub import api

    n = n_versions(cli)
    assert_clean_error(
        cli("compose", "acme/a", "acme/b", "--name", "acme/s", "--alias", "production"),
        "refusing to move acme/s@production",
        "has no evaluation",
        "--force --reason",
    )
    assert n_versions(cli) == n  # no half-made version
    assert_clean_error(cli("compose", "acme/a", "--name", "acme/s", "--alias", "Bad Alias"), "invalid alias")
    r = cli("compose", "acme/a", "acme/b", "--name", "acme/s", "--alias", "staging", "--json")
    assert r.exit_code == 0, r.output
    assert cli("show", "acme/s", "--json").json()["aliases"] == ["staging"]
    # once evaluated, the same composition passes the gate
    api.open_registry(str(home)).add_evaluation("acme/s:1", "sha256:" + "a" * 64, {"loss": 1.0}, {"task": "causal-lm"})
    r = cli("compose", "acme/a", "acme/b", "--name", "acme/s", "--alias", "production", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(cli("show", "acme/s", "--json").json()["aliases"]) == ["production", "staging"]


# -- 3. one kind per name ------------------------------------------------------------------------------------
def test_a_name_holds_adapters_or_compositions_not_both(cli, two, tmp_path):
    _, base = two
    n = n_versions(cli)
    assert_clean_error(
        cli("compose", "acme/a", "acme/b", "--name", "acme/a"),
        "acme/a holds versions of kind adapter",
        "choose another name",
    )
    assert n_versions(cli) == n
    assert cli("show", "acme/a", "--json").json()["version"] == 1
    m = cli("merge", "acme/a", "--base", base, "--out", tmp_path / "merged")  # still an adapter to merge
    assert m.exit_code == 0, m.output
    # the other way round: a composition's name takes no adapter version (combine, extract)
    assert cli("compose", "acme/a", "acme/b", "--name", "acme/s").exit_code == 0
    assert cli("compose", "acme/b", "acme/a", "--name", "acme/s").exit_code == 0  # compositions: fine
    n = n_versions(cli)
    assert_clean_error(
        cli("combine", "acme/a", "acme/b", "--name", "acme/s", "--how", "cat"),
        "acme/s holds versions of kind composition",
    )
    llama = tm.tiny_llama()
    llama.save_pretrained(str(tmp_path / "lbase"))
    with torch.no_grad():
        llama.model.layers[0].self_attn.q_proj.weight.add_(0.1)
    llama.save_pretrained(str(tmp_path / "lft"))
    assert_clean_error(
        cli(
            "extract",
            "--model",
            tmp_path / "lft",
            "--base",
            tmp_path / "lbase",
            "-r",
            "2",
            "--name",
            "acme/s",
            "--out",
            tmp_path / "x",
        ),
        "acme/s holds versions of kind composition",
    )
    assert n_versions(cli) == n and not (tmp_path / "x").exists()
    # push, and the registry itself (the check in the transaction that stores a version)
    assert_clean_error(
        cli("push", make_lora_dir(tmp_path / "c", seed=5, r=2), "acme/s", "--base", base),
        "acme/s holds versions of kind composition",
    )
    assert n_versions(cli) == n


# -- 4. extract with --rank above a module's size -------------------------------------------------------------
@pytest.fixture
def dense_ft(tmp_path):
    """The tiny Llama (q_proj (32, 32), v_proj (16, 32)) and a full-rank fine-tune of q_proj and v_proj."""
    base = tm.tiny_llama()
    base.save_pretrained(str(tmp_path / "base"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith(("q_proj.weight", "v_proj.weight")):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    base.save_pretrained(str(tmp_path / "ft"))
    return str(tmp_path / "base"), str(tmp_path / "ft"), {n: p.detach().clone() for n, p in base.named_parameters()}


def _peft_merged(adapter_dir):
    pm = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(adapter_dir))
    return {n: p.detach() for n, p in pm.merge_and_unload().named_parameters()}


@pytest.mark.parametrize("rank", [40, 500])
def test_extract_rank_above_module_size_merges_back_exactly(cli, dense_ft, tmp_path, rank):
    base, ft, w_ft = dense_ft
    out = tmp_path / "lora"
    r = cli(
        "extract",
        "--model",
        ft,
        "--base",
        base,
        "--rank",
        rank,
        "--targets",
        "q_proj,v_proj",
        "--name",
        "acme/x",
        "--out",
        out,
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert r.json()["energy_min"] > 1 - 1e-6
    cfg = json.loads((out / "adapter_config.json").read_text())
    tensors = load_file(str(out / "adapter_model.safetensors"))
    # each module's factors have its own full rank, and alpha / r is 1 for every one of them
    from adapterhub.plugins import get_plugins

    lcfg = get_plugins().get("methods", "lora").from_peft_config(cfg)
    for key, a in tensors.items():
        if key.endswith("lora_A.weight"):
            module = key[len("base_model.model.") : -len(".lora_A.weight")]
            assert a.shape[0] == (16 if "v_proj" in module else 32) == lcfg.rank_for(module)
            assert lcfg.scaling_for(module) == 1.0, (module, cfg)
    merged = _peft_merged(out)  # the oracle: real peft
    pulled = cli("pull", "acme/x", "--merged", "--base", base, "--out", tmp_path / "m")
    assert pulled.exit_code == 0, pulled.output
    ours = load_file(str(tmp_path / "m" / "model.safetensors"))
    for name in merged:
        if name.endswith(("q_proj.weight", "v_proj.weight")):
            assert torch.allclose(merged[name], w_ft[name], atol=1e-5, rtol=0), name
            assert torch.allclose(ours[name], w_ft[name], atol=1e-5, rtol=0), name


def test_extract_truncated_module_is_the_best_low_rank_approximation(cli, dense_ft, tmp_path):
    """rank 20: v_proj (16 wide) is exact, q_proj (32) keeps its top 20 singular values."""
    base, ft, w_ft = dense_ft
    out = tmp_path / "lora"
    r = cli(
        "extract",
        "--model",
        ft,
        "--base",
        base,
        "--rank",
        "20",
        "--targets",
        "q_proj,v_proj",
        "--name",
        "acme/x",
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    merged = _peft_merged(out)
    w_base = {n: p.detach() for n, p in tm.tiny_llama().named_parameters()}
    for name in merged:
        if name.endswith("v_proj.weight"):
            assert torch.allclose(merged[name], w_ft[name], atol=1e-5, rtol=0), name
        elif name.endswith("q_proj.weight"):
            s = torch.linalg.svdvals((w_ft[name] - w_base[name]).double())
            err = torch.linalg.matrix_norm((merged[name] - w_ft[name]).double())
            assert abs(float(err) - float(s[20:].square().sum().sqrt())) < 1e-4, name


# -- 5. extract --out is never left half-written ---------------------------------------------------------------
def test_extract_failures_leave_no_output_and_no_version(cli, dense_ft, tmp_path):
    base, ft, _ = dense_ft
    args = ("extract", "--model", ft, "--base", base, "-r", "4", "--targets", "v_proj", "--name", "acme/x")
    n = n_versions(cli)
    assert_clean_error(cli(*args, "--out", tmp_path / "d1", "--alias", "BAD"), "invalid alias 'BAD'")
    assert not (tmp_path / "d1").exists()
    assert_clean_error(
        cli(*args, "--out", tmp_path / "d2", "--alias", "production"),
        "refusing to move acme/x@production",
        "has no evaluation",
    )
    assert not (tmp_path / "d2").exists() and n_versions(cli) == n
    os.mkdir(tmp_path / "d3")  # an empty directory given as --out stays empty
    assert_clean_error(cli(*args, "--out", tmp_path / "d3", "--alias", "production"), "has no evaluation")
    assert os.listdir(tmp_path / "d3") == [] and n_versions(cli) == n
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temp dirs left beside --out
    ok = cli(*args, "--out", tmp_path / "d3", "--alias", "staging")
    assert ok.exit_code == 0, ok.output
    assert sorted(os.listdir(tmp_path / "d3")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapterhub.json",
    ]
