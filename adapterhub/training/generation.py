"""Generation evaluation of causal-LM adapters: what the base and the adapter actually write, scored
against reference completions with the registered metrics (``register_metrics``).

    r = evaluate_generation(reg, "acme/bot:3", "./base", "eval.jsonl", max_new_tokens=32)

Rows: ``{"prompt", "completion"}`` (the training format; ``reference`` may stand for ``completion``) or
``{"messages": [...]}`` ending with an assistant message (the prompt is the chat template up to it with
the generation prompt, the reference is its content). Prompts are tokenized as training tokenizes them,
so the adapter sees what it was trained on; a prompt too long for ``max_length - max_new_tokens`` loses
its start, not its end. Decoding is greedy, batched with left padding, under ``torch.no_grad``; an output
ends at the first end-of-sequence token (the tokenizer's or the model's generation config's) or after
``max_new_tokens``. Outputs and references are stripped before scoring.

The scores (``exact_match``, ``rouge_l``, ``chrf`` unless ``metrics`` names others; ``base_*`` and
``gain_*`` = adapter - base) are stored as an evaluation of the version keyed by the data's digest, with
``details.kind == "generation"``, the primary metric the promotion gate compares (``rouge_l`` when
selected, else the first) and ``samples``: the first rows' prompt, reference, base and adapter outputs.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..errors import InvalidInput
from .evaluate import (
    DEFAULT_MAX_LENGTH,
    ProgressFactory,
    _bar,
    _batches,
    _check_base,
    _r,
    load_base,
    load_version,
    task_of,
)

DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_SAMPLES = 5
SAMPLE_CHARS = 400  # each stored sample string is cut to this many characters


def generation_rows(rows: Any, tokenizer: Any) -> list[dict[str, Any]]:
    """``{"line", "prompt", "reference"}`` per row; a row without a prompt and a non-blank reference is
    refused naming its line."""
    from .data import _chat_parts

    name = os.path.basename(rows.path)
    out = []
    for n, obj in rows.rows:
        if "messages" in obj:
            msgs = obj["messages"]
            last = msgs[-1] if isinstance(msgs, list) and msgs else None
            if not isinstance(last, dict) or last.get("role") != "assistant":
                raise InvalidInput(f"{name}:{n}: 'messages' must end with an assistant message (the reference)")
            prompt, _ = _chat_parts(msgs, tokenizer, name, n)
            reference = msgs[-1]["content"]
        elif "prompt" in obj and ("completion" in obj or "reference" in obj):
            key = "completion" if "completion" in obj else "reference"
            prompt, reference = obj["prompt"], obj[key]
            for k, v in (("prompt", prompt), (key, reference)):
                if not isinstance(v, str):
                    raise InvalidInput(f"{name}:{n}: field '{k}' must be a string")
        else:
            raise InvalidInput(
                f"{name}:{n}: --generate needs 'prompt' and 'completion' (or 'reference'), or "
                "'messages' ending with an assistant message"
            )
        if not reference.strip():
            raise InvalidInput(f"{name}:{n}: the reference completion is empty: nothing to score against")
        out.append({"line": n, "prompt": prompt, "reference": reference.strip()})
    return out


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = []
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return ids


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    device: Any,
    tick=lambda n: None,
) -> list[str]:
    """Greedy continuations of tokenized ``prompts`` (batched, left padding), decoded without special
    tokens and cut at the first end-of-sequence token."""
    import torch
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = _eos_ids(model, tokenizer)
    cfg = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos or None
    )
    out: list[str] = []
    with torch.no_grad():
        for chunk in _batches(prompts, batch_size):
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
            for row in gen[:, width:].tolist():
                cut = next((i for i, t in enumerate(row) if t in eos), len(row))
                out.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
            tick(1)
    return out


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


def evaluate_generation(
    reg: Any,
    ref: str,
    base_dir: str,
    data_path: str,
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    metrics: list[str] | None = None,
    samples: int = DEFAULT_SAMPLES,
    batch_size: int = 8,
    max_length: int | None = None,
    task: str | None = None,
    allow_base_mismatch: bool = False,
    store: bool = True,
    home: str | None = None,
    plugins: Any = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Generate with the bare base and with version ``ref`` for every prompt of ``data_path``, score both
    against the references and store the scores (see the module docstring). Returns the full result."""
    import torch

    from ..metrics import primary_of, resolve, score
    from ..plugins import get_plugins
    from . import data as D
    from .modeling import attach_loaded, load_tokenizer, max_positions

    for opt, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value <= 0:
            raise InvalidInput(f"{opt} must be positive, got {value}")
    if max_length is not None and max_length <= 0:
        raise InvalidInput(f"--max-length must be positive, got {max_length}")
    if samples < 0:
        raise InvalidInput(f"--samples must be >= 0, got {samples}")
    plugins = plugins or get_plugins()
    chosen = resolve(plugins, metrics)
    primary = primary_of(chosen)
    info = reg.show(ref)
    task = task_of(info.manifest, task)
    if task != "causal-lm":
        raise InvalidInput(
            f"--generate is for causal-lm adapters; {info.ref} is {task} (evaluate it without --generate)"
        )
    rows = D.read_jsonl(data_path)
    tokenizer = load_tokenizer(base_dir)
    items = generation_rows(rows, tokenizer)
    fp, mismatched = _check_base(info, base_dir, home, allow_base_mismatch)
    _, loaded = load_version(reg, info.ref, plugins)

    model = load_base(base_dir, task, None)
    limit = max_length or (info.manifest.get("training") or {}).get("max_length") or DEFAULT_MAX_LENGTH
    for cap in (getattr(tokenizer, "model_max_length", None), max_positions(model.config)):
        if isinstance(cap, int) and 0 < cap < limit:
            limit = cap
    keep = limit - max_new_tokens
    if keep <= 0:
        raise InvalidInput(
            f"--max-new-tokens {max_new_tokens} leaves no room for the prompt within "
            f"{limit} tokens (--max-length, or the model's limit)"
        )
    prompts, truncated = [], 0
    for it in items:
        ids = tokenizer(it["prompt"], add_special_tokens=True)["input_ids"]
        if not ids:
            raise InvalidInput(f"{os.path.basename(data_path)}:{it['line']}: the prompt is empty")
        truncated += len(ids) > keep
        prompts.append(ids[-keep:])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    refs = [it["reference"] for it in items]
    started = time.time()
    with _bar(progress, 2 * -(-len(prompts) // batch_size)) as tick:
        base_out = generate(
            model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, tick=tick
        )
        attach_loaded(model, loaded)
        model.to(device)
        adapter_out = generate(
            model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, tick=tick
        )
    base_m, adapter_m = score(chosen, base_out, refs), score(chosen, adapter_out, refs)
    gain = {k: _r(adapter_m[k] - base_m[k]) for k in adapter_m}
    flat: dict[str, Any] = dict(adapter_m)
    flat.update({f"base_{k}": v for k, v in base_m.items()})
    flat.update({f"gain_{k}": v for k, v in gain.items()})
    shown = [
        {
            "line": it["line"],
            "prompt": _clip(it["prompt"]),
            "reference": _clip(it["reference"]),
            "base": _clip(b),
            "adapter": _clip(a),
        }
        for it, b, a in list(zip(items, base_out, adapter_out))[:samples]
    ]
    generation = {
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "max_length": limit,
        "truncated_prompts": truncated,
    }
    details: dict[str, Any] = {
        "task": task,
        "kind": "generation",
        "primary_metric": primary.name,
        "higher_is_better": primary.higher_is_better,
        "metric_info": {m.name: {"plugin": p, "higher_is_better": m.higher_is_better} for p, m in chosen},
        "base_fingerprint": fp,
        "expected_base_fingerprint": info.base_fingerprint,
        "data": {"file": os.path.basename(data_path), "digest": rows.digest, "rows": len(items)},
        "rows": len(items),
        "generation": generation,
        "samples": shown,
    }
    stored = store and not mismatched
    if stored:
        reg.add_evaluation(info.ref, rows.digest, flat, details)
    return {
        "ref": info.ref,
        "digest": info.digest,
        "task": task,
        "kind": "generation",
        "data_digest": rows.digest,
        "rows": len(items),
        "metric_names": [m.name for _, m in chosen],
        "primary_metric": primary.name,
        "adapter": adapter_m,
        "base": base_m,
        "gain": gain,
        "metrics": flat,
        "samples": shown,
        "generation": generation,
        "details": details,
        "base_fingerprint": fp,
        "base_mismatch": mismatched,
        "stored": stored,
        "seconds": round(time.time() - started, 2),
    }
