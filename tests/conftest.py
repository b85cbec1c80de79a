"""Shared fixtures: a fresh registry home per test, a CLI runner, and tiny adapter directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server over HTTP on 127.0.0.1 (a free port), for the whole test session."""
    from s3server import MotoS3Server

    with MotoS3Server() as server:
        yield server


PG_ADMIN = os.environ.get("ADAPTERHUB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import uuid

    import psycopg

    name = "ah_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def web_hub(tmp_path_factory):
    """The web UI's registry (tests/webhub.py, built with the real CLI) behind one real ``adapterhub serve``,
    shared by its HTTP and browser tests."""
    from serverproc import RegistryServer
    from webhub import build

    home = str(tmp_path_factory.mktemp("web-home"))
    tokens = build(home, str(tmp_path_factory.mktemp("web-work")))
    with RegistryServer(env={"ADAPTERHUB_HOME": home}) as srv:
        yield {"url": srv.url, "home": home, "tokens": tokens}


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy AWS credentials and region; a developer's own AWS setup never leaks into a test."""
    from s3server import AWS_ENV_TO_CLEAR, aws_test_env

    for name in AWS_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_test_env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh registry home, also exported as ADAPTERHUB_HOME for subprocesses."""
    h = tmp_path / "home"
    monkeypatch.setenv("ADAPTERHUB_HOME", str(h))
    monkeypatch.delenv("ADAPTERHUB_LOAD_PLUGINS", raising=False)
    return h


class Result:
    def __init__(self, code, out, err):
        self.exit_code, self.stdout, self.stderr = code, out, err
        self.output = out + err

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def cli(home):
    """Run the CLI in-process: ``cli("push", src, name)`` -> Result (never raises on user errors)."""
    from adapterhub.cli import add_plugin_commands
    from adapterhub.cli import cli as group

    add_plugin_commands()

    def run(*args, input=None):
        r = CliRunner().invoke(group, [str(a) for a in args], input=input, catch_exceptions=True)
        if r.exception and not isinstance(r.exception, SystemExit):
            raise r.exception  # a bug: surface the traceback in the test report
        return Result(r.exit_code, r.stdout, r.stderr)

    return run


def run_subprocess(*args, env=None, timeout=120):
    """Run the real ``adapterhub`` console script in a subprocess."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(
        [sys.executable, "-m", "adapterhub", *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout
    )
    return Result(p.returncode, p.stdout, p.stderr)


def assert_clean_error(r, *needles, code=(1, 2)):
    """A clear one-line error: exit code 1 or 2, 'Error:' line naming the problem, no traceback."""
    codes = code if isinstance(code, tuple) else (code,)
    assert r.exit_code in codes, (r.exit_code, r.output)
    assert "Traceback" not in r.output, r.output
    err_lines = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(err_lines) == 1, r.output
    for n in needles:
        assert n in err_lines[0], (n, err_lines[0])


def make_lora_dir(path, seed=0, r=4, hidden=16, layers=2, extra_config=None, base_name="tiny-llama"):
    """A PEFT-layout LoRA directory (adapter_config.json + adapter_model.safetensors) with random
    non-zero tensors; written with the real safetensors library."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(layers):
        for proj in ("q_proj", "v_proj"):
            pre = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{pre}.lora_A.weight"] = rng.standard_normal((r, hidden)).astype(np.float32)
            tensors[f"{pre}.lora_B.weight"] = rng.standard_normal((hidden, r)).astype(np.float32)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base_name,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
    }
    cfg.update(extra_config or {})
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return str(path)


def make_base_dir(path, seed=0, hidden=16, layers=2, shards=1):
    """A tiny 'base model' directory of safetensors weights (what fingerprints hash)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {
        f"model.layers.{i}.self_attn.{p}.weight": rng.standard_normal((hidden, hidden)).astype(np.float32)
        for i in range(layers)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    tensors["model.embed_tokens.weight"] = rng.standard_normal((32, hidden)).astype(np.float32)
    os.makedirs(path, exist_ok=True)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, os.path.join(path, "model.safetensors"))
    else:
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::shards]}
            save_file(part, os.path.join(path, fname))
            weight_map.update({n: fname for n in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "hidden_size": hidden}, f)
    return str(path)
