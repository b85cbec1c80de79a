"""The habits CI keeps, as tests so that the README's one test command runs them: ruff's lint and format
check over everything, and mypy over the public surface (the files ``[tool.mypy]`` names: what users and
plugin authors import; ``py.typed`` ships it typed)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = os.path.dirname(sys.executable)


def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, name), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    p = tool("ruff", "check", "--no-cache", ".")
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]


def test_the_code_is_ruff_formatted():
    p = tool("ruff", "format", "--check", "--no-cache", ".")
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:] + "\n(run: ruff format .)"


def test_the_public_surface_type_checks():
    p = tool("mypy", "--cache-dir", os.devnull)
    assert p.returncode == 0 and "Success" in p.stdout, p.stdout[-6000:] + p.stderr[-2000:]
    assert (ROOT / "adapterhub" / "py.typed").exists()
