"""Bad inputs the integrity audit found: non-finite tensors, registry regexes of unbounded cost, and
credentials in every URL shown (listings, and error text built from them, parsable or not)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import assert_clean_error, make_lora_dir


def _rewrite(path, change):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


@pytest.mark.parametrize("dtype,value", [(np.float32, np.inf), (np.float16, np.nan)])
def test_a_non_finite_adapter_tensor_is_refused_at_push_naming_it(cli, tmp_path, dtype, value):
    src = make_lora_dir(tmp_path / "a")
    name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"

    def poison(t):
        for k in t:
            t[k] = t[k].astype(dtype)
        t[name] = np.full_like(t[name], value)

    _rewrite(f"{src}/adapter_model.safetensors", poison)
    r = cli("push", src, "acme/chat")
    assert_clean_error(r, name, "NaN/inf")
    assert cli("list", "--json").json() == []


def test_a_rank_pattern_of_exponential_cost_is_refused_at_push_at_once(cli, tmp_path):
    src = make_lora_dir(tmp_path / "a", extra_config={"rank_pattern": {"([a-z_.0-9]+)*z": 8}})
    start = time.monotonic()
    assert_clean_error(cli("push", src, "acme/chat"), "([a-z_.0-9]+)*z", "exponential")
    assert time.monotonic() - start < 5  # the audit measured 1.1 s per match on a 24-character path, doubling
    src = make_lora_dir(tmp_path / "b", extra_config={"alpha_pattern": {"x" * 300: 8}})
    assert_clean_error(cli("push", src, "acme/chat"), "at most 256 characters")
    # an ordinary pattern still pushes
    src = make_lora_dir(tmp_path / "c", extra_config={"rank_pattern": {r".*\.layers\.1\.self_attn\.(q|v)_proj": 4}})
    assert cli("push", src, "acme/chat").exit_code == 0


@pytest.mark.parametrize(
    "url,hidden,shown",
    [
        ("postgresql://u:p@ssSECRET@db.example/x", ["ssSECRET"], "postgresql://u:***@db.example/x"),
        (
            "s3://b/p?endpoint_url=http%3A%2F%2FAKIAKEY%3As3cr3tPW%40minio%3A9000",
            ["s3cr3tPW"],
            "s3://b/p?endpoint_url=http://AKIAKEY:***@minio:9000",
        ),
        ("s3://b/p?secret_access_key=zzSECRETzz&region=x", ["zzSECRETzz"], "s3://b/p?secret_access_key=***&region=x"),
        ("https://ghp_TOKENTOKEN@registry.example/api", ["ghp_TOKENTOKEN"], "https://***@registry.example/api"),
        ("postgresql://u:pw/with/slashSECRET@[::1/x", ["slashSECRET"], "postgresql://u:***@[::1/x"),  # does not parse
        ("postgresql://postgres@127.0.0.1/x", [], "postgresql://postgres@127.0.0.1/x"),
        ("sqlite:////abs/path.db", [], "sqlite:////abs/path.db"),
    ],
)
def test_mask_and_scrub_every_url_form(url, hidden, shown):
    from adapterhub.registry.remotes import mask, scrub

    assert mask(url) == shown
    for secret in hidden:
        assert secret not in mask(url)
        assert secret not in scrub(f"failed to resolve host '{secret}@db' using {url}", [url])


def test_remote_add_and_list_never_print_credentials(cli, home):
    endpoint = "http://AKIAUSER:s3cr3tPW@127.0.0.1:1"
    r = cli(
        "remote",
        "add",
        "t",
        "--no-check",
        "--db",
        "postgresql://postgres:pgSECRET@127.0.0.1/x",
        "--store",
        "s3://b/x?secret_access_key=zzSECRET",
        "--endpoint-url",
        endpoint,
        "--json",
    )
    assert r.exit_code == 0, r.output
    for out in (r.output, cli("remote", "list").output, cli("remote", "list", "--json").output):
        assert "s3cr3tPW" not in out and "pgSECRET" not in out and "zzSECRET" not in out, out
        assert "AKIAUSER:***@127.0.0.1:1" in out
    assert json.loads(open(home / "config.json").read())["remotes"]["t"]["db"].endswith("pgSECRET@127.0.0.1/x")
    # a raw @ in a password: the driver reads a host of 'ssSECRET@127.0.0.1' and says so; never shown
    r = cli("remote", "add", "u", "--db", "postgresql://postgres:p@ssSECRET@127.0.0.1:5432/x", "--store", "s3://b/x")
    assert_clean_error(r)
    assert "ssSECRET" not in r.output and "***" in r.output, r.output
