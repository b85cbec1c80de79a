"""`adapterhub plugin init`: the package it writes installs (a real pip install), `adapterhub methods` lists the
method, its own conformance test passes as written, and the method trains, pushes and merges through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import assert_clean_error, run_subprocess
from tinymodels import save_tiny_llama_base


def test_plugin_init_installs_lists_passes_its_tests_and_trains(cli, home, tmp_path):
    d = tmp_path / "adapterhub-scale"
    r = cli("plugin", "init", d, "--method", "scale", "--json")
    assert r.exit_code == 0, r.output
    made = r.json()
    assert made["package"] == "adapterhub_scale" and "tests/test_conformance.py" in made["files"]

    site = tmp_path / "site"  # pip's own install (entry point metadata included), kept out of the test venv
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(d),
        ],
        check=True,
        capture_output=True,
    )
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    methods = run_subprocess("methods", "--json", env=env)
    row = next(m for m in methods.json() if m["name"] == "scale")
    assert row["plugin"] == "scale" and row["capabilities"] == ["merge"]

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=d,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0 and " passed" in tests.stdout, tests.stdout[-2000:]

    base = save_tiny_llama_base(tmp_path / "tiny-llama")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": "the cat sat on the mat and it was very happy"}) for _ in range(8)))
    r = run_subprocess(
        "train",
        "--base",
        base,
        "--method",
        "scale",
        "--task",
        "causal-lm",
        "--data",
        data,
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--set",
        "target_modules=q_proj,v_proj",
        "--out",
        tmp_path / "trained",
        "--push",
        "acme/scaled",
        env=env,
    )
    assert r.exit_code == 0, r.output
    r = run_subprocess("merge", "acme/scaled", "--base", base, "--out", tmp_path / "merged", "--json", env=env)
    assert r.exit_code == 0, r.output
    assert os.path.isfile(tmp_path / "merged" / "model.safetensors")


def test_plugin_init_bad_input(cli, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert_clean_error(cli("plugin", "init", tmp_path / "full", "--method", "scale"), "not an empty directory")
    assert_clean_error(cli("plugin", "init", tmp_path / "new", "--method", "Scale!"), "--method 'Scale!'")
    assert_clean_error(cli("plugin", "init", tmp_path / "bad name", "--method", "scale"), "cannot name a Python")
    assert not (tmp_path / "new").exists()
