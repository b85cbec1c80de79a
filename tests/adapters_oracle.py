"""Our side of the ``adapters`` library oracle: find its virtual environment, run batches of jobs through
tests/adapters_driver.py in one subprocess, read back what it wrote.

The venv is ``.venv-adapters`` at the repository root (``ADAPTERHUB_ADAPTERS_PYTHON`` may name another python),
built by ``bash .ci/adapters-venv`` (``.ci/run`` does it). Without it the tests fail, loudly, saying how to
build it: a missing oracle is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "adapters_driver.py")


def python() -> str:
    """The oracle venv's python, or a test failure that says how to build it."""
    exe = os.environ.get("ADAPTERHUB_ADAPTERS_PYTHON") or os.path.join(ROOT, ".venv-adapters", "bin", "python")
    if not os.access(exe, os.X_OK):
        pytest.fail(
            f"the adapters library oracle venv is missing ({exe}); build it with `bash .ci/adapters-venv` "
            "(.ci/run does) or set ADAPTERHUB_ADAPTERS_PYTHON",
            pytrace=False,
        )
    return exe


def run(jobs: list[dict], workdir: str, timeout: float = 600) -> dict[str, dict]:
    """Run ``jobs`` (see tests/adapters_driver.py) in one subprocess; ``{job out dir: {"logits": tensor} or
    {"error": text}}``."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"jobs-{len(os.listdir(workdir))}.json")
    with open(path, "w") as f:
        json.dump(jobs, f)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": "",
    }
    proc = subprocess.run([python(), DRIVER, path], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode not in (0, 1):  # 1: some job failed (reported per job below)
        pytest.fail(f"the adapters oracle crashed (exit {proc.returncode}): {proc.stderr[-2000:]}", pytrace=False)
    results = {}
    for job in jobs:
        err = os.path.join(job["out"], "error.txt")
        if os.path.exists(err):
            with open(err) as f:
                results[job["out"]] = {"error": f.read().strip()}
        else:
            results[job["out"]] = {"logits": load_file(os.path.join(job["out"], "logits.safetensors"))["logits"]}
    return results


def logits(result: dict) -> torch.Tensor:
    """The logits of one job's result, or a failure naming the oracle's error."""
    if "error" in result:
        pytest.fail(f"the adapters library failed: {result['error']}", pytrace=False)
    return result["logits"]
