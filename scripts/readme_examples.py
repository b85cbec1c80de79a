"""Check or regenerate the README's console examples, so a changed output fails CI (like cog).

A ```console block right after a ``<!-- example -->`` line is checked: its ``$ `` lines run in order, in one
scenario directory shared by every checked block (a tiny Llama built from a config with its tokenizer, the
demo data, a few deliberately broken adapters; one registry), and what they print (stdout and stderr) must
be what the README shows, up to the clock: timestamps and durations are compared as placeholders.

    python scripts/readme_examples.py            # check: a diff per block that differs, exit 1
    python scripts/readme_examples.py --update   # rewrite the blocks that differ with today's outputs
"""

from __future__ import annotations

import argparse
import difflib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
MARKER = "<!-- example -->"
BIN = os.path.dirname(sys.executable)

#: what the clock and the machine's speed change from run to run
VOLATILE = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?"), "<time>"),
    (re.compile(r"\bin \d+(?:\.\d+)? s\b"), "in <t> s"),
    (re.compile(r"; \d+(?:\.\d+)?s\)"), "; <t>s)"),
    (re.compile(r'"(seconds|train_seconds)": \d+(?:\.\d+)?'), r'"\1": <t>'),
    (re.compile(r"history head: sha256:[0-9a-f]{64}"), "history head: <the chain's head, which hashes the times>"),
]
#: the scenario's directory: always the same path, since adapters record their base's path (and so their digests do)
WORK = os.path.join(tempfile.gettempdir(), "adapterhub-readme-examples")


@dataclass
class Example:
    """One checked console block: where it sits in the README and its commands with their outputs."""

    start: int  # index of the first line inside the fence
    end: int  # index of the closing fence
    steps: list[tuple[str, list[str]]]  # (command, output lines)

    def render(self) -> list[str]:
        return [line for command, output in self.steps for line in (f"$ {command}", *output)]


def parse(lines: list[str]) -> list[Example]:
    examples = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if not lines[i + 1].startswith("```console"):
            raise SystemExit(f"README.md:{i + 1}: {MARKER} must stand right before a ```console block")
        end = lines.index("```", i + 2)
        steps: list[tuple[str, list[str]]] = []
        for body in lines[i + 2 : end]:
            if body.startswith("$ "):
                steps.append((body[2:], []))
            elif not steps:
                raise SystemExit(f"README.md:{i + 3}: a checked block starts with a command ($ ...)")
            else:
                steps[-1][1].append(body)
        examples.append(Example(i + 2, end, steps))
    return examples


def normalize(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, placeholder in VOLATILE:
            line = pattern.sub(placeholder, line)
        out.append(line.rstrip())
    return out


def prepare(work: str) -> dict[str, str]:
    """The files the examples name, built the same way every time; returns the environment they run in."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from adapterhub import demo
    from adapterhub.testing.models import save_tiny_llama_base

    base = save_tiny_llama_base(os.path.join(work, "tiny-llama"))
    turns = ["hello", "what color sky", "the cat sat on the", "the dog ran to the", "is it good", "yes or no"]
    answers = ["world", "blue", "mat", "park", "yes it is very good", "no"]
    with open(os.path.join(work, "chat.jsonl"), "w") as f:
        for i in range(24):
            f.write(json.dumps({"prompt": f"user says {turns[i % 6]}", "completion": answers[i % 6]}) + "\n")
    with open(os.path.join(work, "chat-eval.jsonl"), "w") as f:
        for prompt, answer in (("the user says hello", "world"), ("the user says what color sky", "blue")):
            f.write(json.dumps({"prompt": prompt, "completion": answer}) + "\n")
    here = os.path.dirname(demo.__file__)
    for name in ("sentiment_train.jsonl", "sentiment_eval.jsonl"):
        shutil.copy(os.path.join(here, name), work)

    # adapters push refuses: factors of the wrong rank, of the wrong width, a link out of the directory
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    good = os.path.join(work, "with-link")
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(good)
    os.symlink("/etc/hostname", os.path.join(good, "notes.txt"))
    weights = load_file(os.path.join(good, "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    for name, change in (
        ("bad-rank", {key.format("B"): weights[key.format("B")][:, :3].contiguous()}),
        ("bad-shape", {key.format("A"): weights[key.format("A")][:, :16].contiguous()}),
    ):
        os.makedirs(os.path.join(work, name))
        shutil.copy(os.path.join(good, "adapter_config.json"), os.path.join(work, name))
        save_file({**weights, **change}, os.path.join(work, name, "adapter_model.safetensors"))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTERHUB_", "MLFLOW_"))}
    env.update(
        ADAPTERHUB_HOME=os.path.join(work, ".adapterhub"),
        ADAPTERHUB_USER="alice@laptop",
        PATH=BIN + os.pathsep + env.get("PATH", ""),
        OMP_NUM_THREADS="1",
        COLUMNS="200",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONWARNINGS="ignore",
    )
    return env


def run(examples: list[Example], work: str, env: dict[str, str]) -> list[list[tuple[str, list[str]]]]:
    """Every example's steps as they come out today, run in README order (the scenario directory printed
    as ``.``, where the README's reader runs them)."""
    results = []
    for example in examples:
        steps = []
        for command, _ in example.steps:
            p = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=600)
            printed = (p.stdout + p.stderr).replace(work + os.sep, "./").replace(work, ".").rstrip("\n")
            steps.append((command, printed.split("\n") if printed else []))
        results.append(steps)
    return results


def differences(examples: list[Example], results: list[list[tuple[str, list[str]]]], lines: list[str]) -> list[str]:
    """A unified diff for each example whose output differs from the README's (clock aside)."""
    diffs = []
    for example, steps in zip(examples, results):
        expected = normalize(example.render())
        actual = normalize([line for command, output in steps for line in (f"$ {command}", *output)])
        if expected != actual:
            diffs.append(
                "\n".join(
                    difflib.unified_diff(
                        expected, actual, f"README.md:{example.start + 1}", "today's output", lineterm=""
                    )
                )
            )
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite the checked blocks with today's outputs")
    args = parser.parse_args(argv)
    with open(README) as f:
        lines = f.read().split("\n")
    examples = parse(lines)
    with open(WORK + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time uses the directory
        shutil.rmtree(WORK, ignore_errors=True)
        os.makedirs(WORK)
        try:
            results = run(examples, WORK, prepare(WORK))
        finally:
            shutil.rmtree(WORK, ignore_errors=True)
    diffs = differences(examples, results, lines)
    if args.update:
        for example, steps in reversed(list(zip(examples, results))):
            today = [line for command, output in steps for line in (f"$ {command}", *output)]
            if normalize(today) != normalize(example.render()):  # a block that differs only in times stays
                lines[example.start : example.end] = today
        with open(README, "w") as f:
            f.write("\n".join(lines))
        print(f"README.md: {len(diffs)} of {len(examples)} checked examples rewritten")
        return 0
    for diff in diffs:
        print(diff, end="\n\n")
    print(
        f"README.md: {len(examples) - len(diffs)} of {len(examples)} checked examples match"
        + ("" if not diffs else " (python scripts/readme_examples.py --update rewrites them)")
    )
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
