"""``adapterhub quantize`` (bitsandbytes) refuses bad input with one clean line, leaves no output behind and never
touches the base: an --out that contains the base, a config.json that does not match the weights, and
non-finite option values. Real tiny models (tests/tinymodels.py), bitsandbytes on the CPU."""

from __future__ import annotations

import json
import os
import shutil

import bitsandbytes  # noqa: F401  (a test dependency: the [bnb] extra; never skipped)
import pytest
from conftest import assert_clean_error
from tinymodels import save_tiny_llama_base


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_llama_base(tmp_path_factory.mktemp("base") / "tiny-llama")


from test_merge_bad_input import _tree  # noqa: E402  (every file -> sha256)


# -- 1. an --out that contains the base ---------------------------------------------------------------------------
def test_out_that_contains_the_base_is_refused_even_with_force(cli, base, tmp_path):
    par = tmp_path / "qpar"
    inner = par / "base"
    shutil.copytree(base, inner)
    before = _tree(inner)
    os.symlink(par, tmp_path / "link")
    for out in (par, tmp_path / "link", tmp_path):
        r = cli("quantize", inner, "--to", "nf4", "--out", out, "--force")
        assert_clean_error(r, "contains the base directory", "--force")
        assert _tree(inner) == before
        assert sorted(os.listdir(par)) == ["base"]
    assert sorted(set(os.listdir(tmp_path)) - {"home"}) == ["link", "qpar"]  # no temp dir left beside it
    for out in (inner, tmp_path / "link" / "base"):
        assert_clean_error(cli("quantize", inner, "--to", "int8", "--out", out, "--force"), "is the base directory")
        assert _tree(inner) == before
    # a directory inside the base leaves its own files alone: allowed
    r = cli("quantize", inner, "--to", "nf4", "--out", inner / "q4")
    assert r.exit_code == 0, r.output
    assert {k: v for k, v in _tree(inner).items() if not k.startswith("q4/")} == before


# -- 2. a config.json that does not match the weights -------------------------------------------------------------
@pytest.mark.parametrize("to", ["nf4", "int8"])
def test_config_that_does_not_match_the_weights_is_refused(to, cli, base, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(base, bad)
    cfg = json.loads((bad / "config.json").read_text())
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    cfg["intermediate_size"] = inter + 32
    (bad / "config.json").write_text(json.dumps(cfg))
    before = _tree(bad)
    r = cli("quantize", bad, "--to", to, "--out", tmp_path / "q")
    assert_clean_error(
        r,
        "config.json does not match the weights",
        "mlp.",
        f"{hidden}x{inter} in model.safetensors",
        f"{hidden}x{inter + 32}",
    )
    assert r.exit_code == 1
    assert sorted(set(os.listdir(tmp_path)) - {"home"}) == ["bad"]  # no output, no temp dir
    assert _tree(bad) == before
    # the matching config quantizes
    assert cli("quantize", base, "--to", to, "--out", tmp_path / "ok").exit_code == 0


# -- 3. non-finite option values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_threshold_is_refused(value, cli, base, tmp_path):
    r = cli("quantize", base, "--to", "int8", "--threshold", value, "--out", tmp_path / "q")
    assert_clean_error(r, "invalid threshold", "finite")
    assert not os.path.exists(tmp_path / "q")


@pytest.mark.parametrize(
    "key,value",
    [
        ("threshold", "NaN"),
        ("threshold", "Infinity"),
        ("threshold", float("nan")),
        ("threshold", float("-inf")),
        ("blocksize", "Infinity"),
        ("blocksize", "NaN"),
    ],
)
def test_non_finite_quant_opts_are_refused(key, value):
    from adapterhub.errors import InvalidInput
    from adapterhub.plugins import Plugins

    q = Plugins().get("quantizers", "int8" if key == "threshold" else "nf4")
    with pytest.raises(InvalidInput, match=f"invalid {key} .*finite"):
        q.make_options({key: value})
