"""Up-front checks for ``adapterhub train``: numeric options, ``--init-from`` compatibility and the run
signature stored with ``OUT.checkpoints`` (so a resume never continues a different run). Every check
raises one-line :class:`InvalidInput` before anything is written."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

from ..errors import InvalidInput

RUN_FILE = "adapterhub-run.json"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_numbers(opts: Any) -> None:
    """Refuse numeric options that would train nothing, divide by zero or crash mid-run."""

    def bad(flag: str, value: Any, need: str) -> InvalidInput:
        return InvalidInput(f"{flag} must be {need}, got {value}")

    if not _finite(opts.epochs) or opts.epochs <= 0:
        raise bad("--epochs", opts.epochs, "a positive number")
    if not isinstance(opts.max_steps, int) or opts.max_steps == 0 or opts.max_steps < -1:
        raise bad("--max-steps", opts.max_steps, "a positive integer")
    if opts.lr is not None and (not _finite(opts.lr) or opts.lr <= 0):
        raise bad("--lr", opts.lr, "a positive number")
    for flag, value in (
        ("--batch-size", opts.batch_size),
        ("--grad-accum", opts.grad_accum),
        ("--max-length", opts.max_length),
    ):
        if not isinstance(value, int) or value < 1:
            raise bad(flag, value, "a positive integer")
    for flag, value in (
        ("--eval-steps", opts.eval_steps),
        ("--early-stopping", opts.early_stopping),
        ("logging_steps", opts.logging_steps),
    ):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise bad(flag, value, "a positive integer")
    if not _finite(opts.warmup_ratio) or not 0 <= opts.warmup_ratio < 1:
        raise bad("warmup_ratio", opts.warmup_ratio, "in [0, 1)")
    if not _finite(opts.weight_decay) or opts.weight_decay < 0:
        raise bad("weight_decay", opts.weight_decay, "a non-negative number")
    if opts.early_stopping is not None and not opts.eval:
        raise InvalidInput("--early-stopping needs --eval (it watches the evaluation loss)")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple, set)) and isinstance(b, (list, tuple, set)):
        return sorted(map(str, a)) == sorted(map(str, b))
    return a == b


def init_from_config(method: Any, loaded: Any, values: dict[str, Any], task: str) -> Any:
    """The config to continue training an ``--init-from`` adapter with: its own, with the ``--set`` values
    that do not change the adapter's shape applied (dropout); refuses any other changed key and a task
    other than the adapter's."""
    parent_task = (loaded.manifest or {}).get("task")
    if parent_task and parent_task != task:
        raise InvalidInput(
            f"--init-from adapter was trained for --task {parent_task}, not {task}; continue it "
            f"with --task {parent_task}"
        )
    current = {f.name: getattr(loaded.config, f.name) for f in dataclasses.fields(loaded.config)}
    changed, refused = {}, []
    for key, value in values.items():
        if key not in current:
            method.make_config({key: value})  # refuses the unknown key with the list of valid ones
        if _same(current[key], value):
            continue
        if "dropout" in key:
            changed[key] = value
        else:
            refused.append(f"{key}={value} (the adapter has {current[key]!r})")
    if refused:
        raise InvalidInput(
            f"--set {', '.join(refused)} conflicts with the --init-from adapter: a continued "
            "adapter keeps its shape; only dropout can change (or train a new adapter without "
            "--init-from)"
        )
    if not changed:
        return loaded.config
    return method.make_config({**current, **changed})


def run_signature(
    opts: Any, base_fingerprint: str, config: Any, data_digests: list[str], world_size: int = 1
) -> dict[str, Any]:
    """What must be the same for a checkpoint to be resumed: base, method, task, config, data and the
    options that shape the schedule (the digest), and the number of processes (kept beside the digest:
    ``--allow-resize`` may change it)."""
    sig = {
        "base_fingerprint": base_fingerprint,
        "method": opts.method,
        "task": opts.task,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str, sort_keys=True)),
        "data": data_digests,
        "init_from": opts.init_from,
        "quantize": opts.quantize,
        "quantize_options": dict(sorted(opts.quantize_options.items())),
        **{
            k: getattr(opts, k)
            for k in (
                "epochs",
                "max_steps",
                "lr",
                "batch_size",
                "grad_accum",
                "max_length",
                "seed",
                "warmup_ratio",
                "weight_decay",
                "optim",
                "mixed_precision",
                "gradient_checkpointing",
                "eval_steps",
            )
        },
    }
    sig["digest"] = hashlib.sha256(json.dumps(sig, sort_keys=True, default=str).encode()).hexdigest()
    sig["world_size"] = world_size
    return sig


def _processes(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")


def check_resume(ckpt: str, signature: dict[str, Any], has_checkpoint: bool, allow_resize: bool = False) -> int | None:
    """Refuse to resume checkpoints of a run with different options (or of unknown options), or of this run on
    another number of processes unless ``allow_resize``. Returns the old number of processes when it changes."""
    if not has_checkpoint:
        return None
    try:
        with open(os.path.join(ckpt, RUN_FILE)) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and old.get("digest") == signature["digest"]:
        was, now = old.get("world_size", 1), signature["world_size"]
        if was == now:
            return None
        if allow_resize:
            return was
        per = signature["batch_size"] * signature["grad_accum"]
        raise InvalidInput(
            f"{ckpt} holds checkpoints of this run on {_processes(was)} (global batch {per * was}); "
            f"this launch has {_processes(now)} (global batch {per * now}): relaunch with {was} to "
            "resume it, pass --allow-resize to continue on this many (the global batch changes and "
            "the rest of the epoch sees the data in another order), or --no-resume to start fresh"
        )
    if isinstance(old, dict):
        diff = sorted(k for k in signature if k not in ("digest", "world_size") and old.get(k) != signature[k])
        what = f"with different {', '.join(d.replace('_', '-') for d in diff) or 'options'}"
    else:
        what = "whose options were not recorded"
    raise InvalidInput(
        f"{ckpt} holds checkpoints of an interrupted run {what}; rerun with the same options to "
        "resume it, or pass --no-resume to discard them and start fresh"
    )


def write_run_file(ckpt: str, signature: dict[str, Any]) -> None:
    os.makedirs(ckpt, exist_ok=True)
    tmp = os.path.join(ckpt, RUN_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(signature, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(ckpt, RUN_FILE))


def check_registry_writable(reg: Any) -> None:
    """Open the registry a ``--push`` goes to (and take a write transaction) before training, so an
    unreachable or read-only registry fails first, not after the work."""
    reg.ready()
    with reg.write():
        pass
