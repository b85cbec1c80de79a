"""Adapter directories are checked when they are read (``push``, ``merge DIR``): tensors that do not fit
their config or the base, non-floating tensors, unknown PEFT methods, symbolic links, control characters
in file names, and an ``adapter_config.json`` that contradicts ``adapterhub.json``. Each bad input gives
one ``Error:`` line and stores nothing."""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import peft as peft
import pytest
import torch as torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
import tinymodels as tm  # noqa: E402
from conftest import assert_clean_error  # noqa: E402

from adapterhub.errors import InvalidInput  # noqa: E402
from adapterhub.registry.registry import check_relpath  # noqa: E402

Q = "base_model.model.model.layers.0.self_attn.q_proj"  # Linear 32 -> 32
V = "base_model.model.model.layers.0.self_attn.v_proj"  # Linear 32 -> 16 (grouped-query attention)
WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny Llama base and PEFT-written LoRA, DoRA and IA3 directories on it (non-zero tensors)."""
    root = tmp_path_factory.mktemp("made")
    base = str(root / "base")
    tm.tiny_llama().save_pretrained(base)

    def adapter(name, config):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = peft.get_peft_model(tm.tiny_llama(), config)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "ia3" in n else 0.0))
        pm.save_pretrained(str(root / name))
        return str(root / name)

    targets = ["q_proj", "v_proj"]
    return {
        "base": base,
        "lora": adapter("lora", peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets)),
        "dora": adapter("dora", peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True)),
        "ia3": adapter(
            "ia3", peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
        ),
    }


def variant(src, dst, tensors=None, config=None):
    """A copy of adapter directory ``src`` with ``tensors(state_dict)`` / ``config(dict)`` applied."""
    shutil.copytree(src, dst)
    if tensors:
        sd = load_file(os.path.join(dst, WEIGHTS))
        save_file({k: v.contiguous() for k, v in tensors(sd).items()}, os.path.join(dst, WEIGHTS))
    if config:
        path = os.path.join(dst, PEFT_CONFIG)
        with open(path) as f:
            cfg = json.load(f)
        config(cfg)
        with open(path, "w") as f:
            json.dump(cfg, f)
    return str(dst)


def replace(key, value):
    return lambda sd: {k: (value(v) if k == key else v) for k, v in sd.items()}


def nothing_stored(cli):
    assert cli("list", "--json").json() == []


# -- tensors that do not fit ------------------------------------------------------------------------------
LORA_CASES = {
    # id: (tensors, config, with --base, needles in the error line)
    "A-in-features": (
        replace(Q + ".lora_A.weight", lambda v: torch.randn(4, 16)),
        None,
        True,
        [Q + ".lora_A.weight", "(4, 16)", "needs (4, 32)"],
    ),
    "B-out-features": (
        replace(V + ".lora_B.weight", lambda v: torch.randn(32, 4)),
        None,
        True,
        [V + ".lora_B.weight", "(32, 4)", "needs (16, 4)"],
    ),
    "B-rank-3": (
        replace(Q + ".lora_B.weight", lambda v: v[:, :3]),
        None,
        False,
        [Q + ".lora_B.weight", "(32, 3), rank 3", "config give rank 4"],
    ),
    "config-r-8": (None, lambda c: c.update(r=8), False, [Q + ".lora_A.weight", "rank 4", "config gives rank 8"]),
    "rank-pattern": (
        None,
        lambda c: c.update(rank_pattern={"v_proj": 2}),
        False,
        [V + ".lora_A.weight", "rank 4", "config gives rank 2 (rank_pattern)"],
    ),
    "A-1d": (
        replace(Q + ".lora_A.weight", lambda v: v.flatten()),
        None,
        False,
        [Q + ".lora_A.weight", "(128,)", "2-d"],
    ),
    "B-int32": (
        replace(Q + ".lora_B.weight", lambda v: v.to(torch.int32)),
        None,
        False,
        [Q + ".lora_B.weight", "I32", "floating point"],
    ),
    "module-not-targeted": (
        lambda sd: {k.replace("q_proj", "zz_proj"): v for k, v in sd.items()},
        None,
        False,
        ["zz_proj.lora_A.weight", "target_modules"],
    ),
    "module-not-in-base": (
        lambda sd: {k.replace("q_proj", "zz_proj"): v for k, v in sd.items()},
        lambda c: c.update(target_modules="all-linear"),
        True,
        ["zz_proj.lora_A.weight", "the base has no 'model.layers.0.self_attn.zz_proj.weight'"],
    ),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_tensors_that_do_not_fit_are_refused_at_push(case, made, cli, tmp_path):
    tensors, config, with_base, needles = LORA_CASES[case]
    src = variant(made["lora"], tmp_path / "bad", tensors, config)
    args = ["--base", made["base"]] if with_base else []
    r = cli("push", src, "acme/bad", *args)
    assert_clean_error(r, *needles)
    nothing_stored(cli)


def test_rank_mismatch_names_the_tensor_that_disagrees(made, cli, tmp_path):
    """B has rank 3; A and the config 4: the message says so (not 'rank 4 but the config gives rank 4'),
    at push, at merge of the directory and at merge of a version an older registry stored unchecked."""
    src = variant(made["lora"], tmp_path / "bad", replace(Q + ".lora_B.weight", lambda v: v[:, :3]))
    needle = (
        f"'{Q}.lora_B.weight' has shape (32, 3), rank 3, but '{Q}.lora_A.weight' (4, 32) and the config give rank 4"
    )
    for r in (cli("push", src, "acme/bad"), cli("merge", src, "--base", made["base"], "--out", tmp_path / "m1")):
        assert_clean_error(r, needle)
    from adapterhub.api import open_registry
    from adapterhub.registry.blobs import hash_file
    from adapterhub.registry.registry import LocalFile

    reg = open_registry()
    files = [LocalFile(n, os.path.join(src, n), *hash_file(os.path.join(src, n))) for n in (WEIGHTS, PEFT_CONFIG)]
    with open(os.path.join(src, PEFT_CONFIG)) as f:
        manifest = {"method": "lora", "config": json.load(f), "format": "peft"}
    reg.publish("acme/old", manifest, files)
    r = cli("merge", "acme/old", "--base", made["base"], "--out", tmp_path / "m2")
    assert_clean_error(r, needle)
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_int_tensor_is_refused_when_the_adapter_is_read(made, cli, tmp_path):
    src = variant(made["lora"], tmp_path / "bad", replace(V + ".lora_A.weight", lambda v: (v * 100).to(torch.int64)))
    r = cli("merge", src, "--base", made["base"], "--out", tmp_path / "m")
    assert_clean_error(r, V + ".lora_A.weight", "I64", "must be floating point")
    assert "internal error" not in r.output and not (tmp_path / "m").exists()
    assert_clean_error(cli("push", src, "acme/bad", "--base", made["base"]), "must be floating point")
    nothing_stored(cli)


def test_dora_and_ia3_are_checked_too(made, cli, tmp_path):
    base = made["base"]
    for name in ("lora", "dora", "ia3"):  # the real ones push, with and without --base
        assert cli("push", made[name], f"acme/{name}", "--base", base).exit_code == 0
        assert cli("push", made[name], f"acme/{name}-nb").exit_code == 0
    n = len(cli("list", "--json").json())
    m = V + ".lora_magnitude_vector"
    bad = [
        (
            variant(made["dora"], tmp_path / "d1", lambda sd: {k: v for k, v in sd.items() if k != m}),
            [],
            [f"DoRA adapter has no '{m}'"],
        ),
        (variant(made["dora"], tmp_path / "d2", replace(m, lambda v: torch.ones(32))), [], [m, "(32,)", "(16,)"]),
        (
            variant(made["ia3"], tmp_path / "i1", replace(V + ".ia3_l", lambda v: torch.ones(32, 1))),
            ["--base", base],
            [V + ".ia3_l", "(32, 1)", "needs (16, 1)"],
        ),
        (
            variant(made["ia3"], tmp_path / "i2", replace(V + ".ia3_l", lambda v: torch.ones(1, 32))),
            [],
            [V + ".ia3_l", "attention-style", "(out, 1)"],
        ),
    ]
    for src, args, needles in bad:
        assert_clean_error(cli("push", src, "acme/bad", *args), *needles)
    assert len(cli("list", "--json").json()) == n


# -- unknown PEFT methods ---------------------------------------------------------------------------------
def test_unknown_peft_type_is_refused_listing_the_installed_methods(made, cli, tmp_path):
    src = variant(made["lora"], tmp_path / "foo", config=lambda c: c.update(peft_type="FOO"))
    r = cli("push", src, "acme/foo")
    assert_clean_error(r, "unknown PEFT method", "'FOO'", "LORA (", "lora", "IA3 (ia3)")
    nothing_stored(cli)


# -- what a directory may contain -------------------------------------------------------------------------
def test_symbolic_links_in_the_source_are_refused(made, cli, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the adapter")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.md").write_text("outside")
    a = variant(made["lora"], tmp_path / "a")
    os.symlink(secret, os.path.join(a, "passwd.txt"))
    b = variant(made["lora"], tmp_path / "b")
    os.symlink(tmp_path / "elsewhere", os.path.join(b, "extra"))  # a link to a directory is not skipped silently
    for src, name in ((a, "passwd.txt"), (b, "extra")):
        assert_clean_error(cli("push", src, "acme/link"), f"{name} in {src} is a symbolic link")
    nothing_stored(cli)


@pytest.mark.parametrize(
    "name", ["evil\nline2.txt", "red\x1b[31m.txt", "tab\there.md", "cod\u202etxt.exe", "del\x7f.md"]
)
def test_file_names_with_control_characters_are_refused(name, made, cli, tmp_path):
    src = variant(made["lora"], tmp_path / "a")
    with open(os.path.join(src, name), "w") as f:
        f.write("x")
    assert_clean_error(cli("push", src, "acme/ctl"), "control character")
    nothing_stored(cli)
    with pytest.raises(InvalidInput, match="control character"):
        check_relpath("docs/" + name)
    assert check_relpath("docs/café notes.md") == "docs/café notes.md"


# -- adapterhub.json and adapter_config.json --------------------------------------------------------------
def _native(src, dst, **changes):
    """``src`` plus the adapterhub.json our tools write beside adapter_config.json, with ``changes``."""
    from dataclasses import asdict

    from adapterhub.plugins import get_plugins

    dst = variant(src, dst)
    with open(os.path.join(dst, PEFT_CONFIG)) as f:
        config = asdict(get_plugins().get("methods", "lora").from_peft_config(json.load(f)))
    with open(os.path.join(dst, "adapterhub.json"), "w") as f:
        json.dump({"method": "lora", "config": {**config, **changes}}, f)
    return dst


def test_manifest_and_peft_config_must_agree(made, cli, tmp_path):
    assert cli("push", _native(made["lora"], tmp_path / "ok"), "acme/ok").exit_code == 0
    bad = _native(made["lora"], tmp_path / "bad", lora_alpha=4, use_rslora=True)
    needles = [
        "adapter_config.json and adapterhub.json",
        "disagree",
        "lora_alpha: 8 in adapter_config.json, 4 in adapterhub.json",
        "use_rslora: False in adapter_config.json, True in adapterhub.json",
    ]
    assert_clean_error(cli("push", bad, "acme/bad"), *needles)
    assert_clean_error(cli("merge", bad, "--base", made["base"], "--out", tmp_path / "m"), *needles)
    assert [v["ref"] for v in cli("list", "--json").json()] == ["acme/ok:1"] and not (tmp_path / "m").exists()


def test_fields_the_manifest_leaves_out_come_from_adapter_config(made, cli, tmp_path):
    """A hand-written adapterhub.json stating only some fields: those must agree, the rest are PEFT's (never
    our defaults, which could give another scaling than peft and vLLM use)."""
    src = variant(made["lora"], tmp_path / "a", config=lambda c: c.update(lora_alpha=16))
    with open(os.path.join(src, "adapterhub.json"), "w") as f:
        json.dump({"method": "lora", "config": {"r": 4}}, f)
    r = cli("push", src, "acme/partial", "--json")
    assert r.exit_code == 0, r.output
    config = cli("show", "acme/partial", "--json").json()["config"]
    assert config["r"] == 4 and config["lora_alpha"] == 16 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_extract_output_still_pushes_and_an_edited_copy_does_not(made, cli, tmp_path):
    ft = tm.tiny_llama()
    with torch.no_grad():
        ft.model.layers[0].self_attn.q_proj.weight.add_(0.01)
    ft.save_pretrained(str(tmp_path / "ft"))
    out = tmp_path / "x"
    r = cli(
        "extract", "--model", tmp_path / "ft", "--base", made["base"], "--rank", "2", "--name", "acme/x", "--out", out
    )
    assert r.exit_code == 0, r.output
    r = cli("push", out, "acme/x", "--base", made["base"])  # what extract wrote (both files) pushes as it is
    assert r.exit_code == 0, r.output
    edited = variant(out, tmp_path / "edited", config=lambda c: c.update(lora_alpha=16))
    assert_clean_error(cli("push", edited, "acme/x", "--base", made["base"]), "lora_alpha: 16 in adapter_config.json")
    assert len(cli("list", "--json").json()) == 2
