"""A registry for the web UI's tests (and ``scripts/screenshots.py``), built with the real CLI:

- ``acme/chat`` 1, 2 (pushed LoRAs); 2 has a tag, an evaluation (gain over the base), ``staging`` and a
  ``production`` alias forced past the promotion gate;
- ``acme/mix`` 1: ``combine`` of acme/chat:1 (w 0.7) and acme/chat:2 (w 0.3);
- ``acme/stack`` 1: ``compose`` of acme/chat:2 then acme/chat:1;
- ``acme/tuned`` 1: trained (6 steps on a tiny llama: per-step training and eval losses in its manifest);
- ``other/secret`` 1 and ``acme/cross`` 1 = combine of acme/chat:1 and other/secret:1 (a lineage edge into
  another namespace);
- tokens: ``admin``, ``read`` (every namespace), ``acme`` (read, bound to acme), ``write``.
"""

from __future__ import annotations

import json
import os

from conftest import make_lora_dir

EVAL_DIGEST = "sha256:" + "e" * 64


def cli_in(home: str):
    """The CLI, in-process, on registry ``home``: ``run("push", ...)`` -> click Result (exit code checked)."""
    from click.testing import CliRunner

    from adapterhub.cli import add_plugin_commands
    from adapterhub.cli import cli as group

    add_plugin_commands()

    def run(*args: object) -> str:
        r = CliRunner().invoke(group, ["--home", home, *map(str, args)], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.stdout

    return run


def token(home: str, name: str, scope: str, namespace: str | None = None) -> str:
    """``adapterhub token create`` (in-process): the new token's secret."""
    return json.loads(
        cli_in(home)(
            "token",
            "create",
            "--name",
            name,
            "--scope",
            scope,
            "--json",
            *(["--namespace", namespace] if namespace else []),
        )
    )["token"]


def train(run, work: str, steps: int = 6, *extra: str) -> None:
    """``adapterhub train`` a LoRA on a tiny llama (saved under ``work``) and push it to ``acme/tuned``."""
    from tinymodels import save_tiny_llama_base

    base = os.path.join(work, "tiny-llama")
    if not os.path.isdir(base):
        save_tiny_llama_base(base)
    data = os.path.join(work, "train.jsonl")
    with open(data, "w") as f:
        for i in range(12):
            f.write(json.dumps({"text": f"the cat number {i % 4} sat on the mat and it was very happy"}) + "\n")
    evals = os.path.join(work, "eval.jsonl")
    with open(evals, "w") as f:
        for i in range(4):
            f.write(json.dumps({"text": f"the dog number {i} ran to the park and it was happy"}) + "\n")
    run(
        "train",
        "--base",
        base,
        "--method",
        "lora",
        "--task",
        "causal-lm",
        "--data",
        data,
        "--eval",
        evals,
        "--eval-steps",
        "2",
        "--out",
        os.path.join(work, f"tuned-{steps}"),
        "--set",
        "target_modules=q_proj,v_proj",
        "--max-steps",
        str(steps),
        "--lr",
        "2e-2",
        "--batch-size",
        "4",
        "--push",
        "acme/tuned",
        *extra,
    )


def build(home: str, work: str) -> dict[str, str]:
    """Fill registry ``home`` (scratch files under ``work``); returns the tokens by role."""
    from adapterhub.api import local_registry

    run = cli_in(home)
    run("push", make_lora_dir(os.path.join(work, "c1"), seed=1), "acme/chat")
    run("push", make_lora_dir(os.path.join(work, "c2"), seed=2), "acme/chat")
    run("push", make_lora_dir(os.path.join(work, "s1"), seed=3), "other/secret")
    run("combine", "acme/chat:1", "acme/chat:2", "--weights", "0.7,0.3", "--name", "acme/mix")
    run("combine", "acme/chat:1", "other/secret:1", "--name", "acme/cross")
    run("compose", "acme/chat:2", "acme/chat:1", "--name", "acme/stack")
    run("tag", "acme/chat:2", "stage=canary")
    train(run, work)
    reg = local_registry(home)
    try:
        reg.add_evaluation(
            "acme/chat:2",
            EVAL_DIGEST,
            {
                "accuracy": 0.8,
                "macro_f1": 0.78,
                "base_accuracy": 0.5,
                "base_macro_f1": 0.4,
                "gain_accuracy": 0.3,
                "gain_macro_f1": 0.38,
            },
            {
                "task": "seq-cls",
                "primary_metric": "accuracy",
                "higher_is_better": True,
                "data": {"file": "eval.jsonl", "digest": EVAL_DIGEST, "rows": 20},
                "rows": 20,
            },
        )
    finally:
        reg.close()
    run("alias", "set", "acme/chat", "staging", "2", "--reason", "canary looks good")
    run("alias", "set", "acme/chat", "production", "1", "--force", "--reason", "hotfix INC-7")
    return {
        "admin": token(home, "admin-bot", "admin"),
        "read": token(home, "reader", "read"),
        "acme": token(home, "acme-reader", "read", namespace="acme"),
        "write": token(home, "writer", "write"),
    }
