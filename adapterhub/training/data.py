"""Training data: JSONL files, their digests, and tokenized examples.

Row formats (one JSON object per line):

* causal-lm: ``{"text": ...}`` (loss on every token), ``{"prompt": ..., "completion": ...}`` (loss on
  the completion only) or ``{"messages": [{"role", "content"}, ...]}`` rendered with the tokenizer's chat
  template (loss on the final assistant message).
* seq-cls: ``{"text": ..., "label": ...}``; labels are strings or ints, mapped to ids by a label map
  that is saved with the adapter.

Every error names the file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput

TASKS = ("causal-lm", "seq-cls")
IGNORE = -100  # label id ignored by the loss


@dataclass
class Rows:
    """A JSONL file read into memory: ``(line number, object)`` pairs plus the file's digest."""

    path: str
    digest: str  # "sha256:<hex>" of the file bytes
    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def describe(self, role: str) -> dict[str, Any]:
        return {"role": role, "path": os.path.basename(self.path), "digest": self.digest, "rows": len(self.rows)}


def scan_jsonl(path: str) -> tuple[Rows, list[dict[str, Any]], int]:
    """Every line of a JSONL file: ``(rows of JSON objects, malformed lines, non-blank line count)``.
    Malformed lines are collected (``{"file", "line", "error"}``), not raised: the data check reports them
    all; :func:`read_jsonl` refuses the first."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InvalidInput(f"data file {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput(f"data file {path} is a directory") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read data file {path}: {exc.strerror}") from None
    out = Rows(path, "sha256:" + hashlib.sha256(raw).hexdigest())
    bad: list[dict[str, Any]] = []
    lines = 0
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        lines += 1
        try:
            obj = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            bad.append({"file": name, "line": n, "error": f"invalid JSON ({exc.__class__.__name__}: {str(exc)[:80]})"})
            continue
        if not isinstance(obj, dict):
            bad.append({"file": name, "line": n, "error": f"expected a JSON object, got {type(obj).__name__}"})
            continue
        out.rows.append((n, obj))
    return out, bad, lines


def read_jsonl(path: str) -> Rows:
    """Read a JSONL file; blank lines are skipped; a malformed line is an error naming file:line."""
    out, bad, _ = scan_jsonl(path)
    if bad:
        raise InvalidInput(f"{bad[0]['file']}:{bad[0]['line']}: {bad[0]['error']}")
    if not out.rows:
        raise InvalidInput(f"{os.path.basename(path)}: the dataset is empty")
    return out


def _str_field(obj: dict[str, Any], key: str, name: str, n: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidInput(f"{name}:{n}: field '{key}' must be a string")
    return value


# -- causal language modelling ------------------------------------------------------------------
def causal_lm_examples(rows: Rows, tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenize causal-lm rows into ``input_ids``/``attention_mask``/``labels`` (prompt tokens masked)."""
    name = os.path.basename(rows.path)
    out = []
    eos = tokenizer.eos_token or ""
    for n, obj in rows.rows:
        if "messages" in obj:
            prompt, completion = _chat_parts(obj["messages"], tokenizer, name, n)
        elif "prompt" in obj or "completion" in obj:
            prompt, completion = _str_field(obj, "prompt", name, n), _str_field(obj, "completion", name, n) + eos
        elif "text" in obj:
            prompt, completion = "", _str_field(obj, "text", name, n) + eos
        else:
            raise InvalidInput(f"{name}:{n}: expected 'text', 'prompt'+'completion' or 'messages'")
        p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
        c_ids = tokenizer(completion, add_special_tokens=not prompt)["input_ids"]
        ids = (p_ids + c_ids)[:max_length]
        labels = ([IGNORE] * len(p_ids) + c_ids)[:max_length]
        if all(x == IGNORE for x in labels):
            raise InvalidInput(f"{name}:{n}: nothing to learn: the prompt fills --max-length {max_length}")
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return out


def _chat_parts(messages: Any, tokenizer: Any, name: str, n: int) -> tuple[str, str]:
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise InvalidInput(f"{name}:{n}: 'messages' must be a list of {{role, content}} objects")
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput(f"{name}:{n}: the base tokenizer has no chat template; use 'text' or 'prompt'/'completion'")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if messages[-1]["role"] != "assistant":
        return "", full
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        return "", full
    return prompt, full[len(prompt) :]


# -- sequence classification --------------------------------------------------------------------
def label_map_from(rows: Rows) -> list[str]:
    """Label names in id order: sorted strings, or ``"0".."K-1"`` for integer labels."""
    name = os.path.basename(rows.path)
    labels = set()
    for n, obj in rows.rows:
        if "label" not in obj:
            raise InvalidInput(f"{name}:{n}: missing 'label'")
        value = obj["label"]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InvalidInput(f"{name}:{n}: 'label' must be a string or an integer")
        labels.add(value)
    if all(isinstance(v, int) for v in labels):
        if min(labels) < 0:
            raise InvalidInput(f"{name}: integer labels must be >= 0")
        return [str(i) for i in range(max(labels) + 1)]
    if any(isinstance(v, int) for v in labels):
        raise InvalidInput(f"{name}: labels mix strings and integers")
    return sorted(labels)


def seq_cls_examples(rows: Rows, tokenizer: Any, max_length: int, labels: list[str]) -> list[dict[str, Any]]:
    name = os.path.basename(rows.path)
    index = {label: i for i, label in enumerate(labels)}
    out = []
    for n, obj in rows.rows:
        text = _str_field(obj, "text", name, n)
        if "label" not in obj:
            raise InvalidInput(f"{name}:{n}: missing 'label'")
        key = str(obj["label"])
        if key not in index:
            raise InvalidInput(f"{name}:{n}: label {obj['label']!r} is not in the label map {labels}")
        enc = tokenizer(text, truncation=True, max_length=max_length)
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": index[key]})
    return out


class ListDataset:
    """A list of tokenized examples as a map-style dataset (what the Trainer needs)."""

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def collate(pad_id: int):
    """Pad a batch: ids with ``pad_id``, masks with 0, token labels with -100 (right padding)."""
    import torch

    def fn(batch: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(b["input_ids"]) for b in batch)
        out = {
            "input_ids": torch.tensor([b["input_ids"] + [pad_id] * (width - len(b["input_ids"])) for b in batch]),
            "attention_mask": torch.tensor(
                [b["attention_mask"] + [0] * (width - len(b["attention_mask"])) for b in batch]
            ),
        }
        if isinstance(batch[0]["labels"], list):
            out["labels"] = torch.tensor([b["labels"] + [IGNORE] * (width - len(b["labels"])) for b in batch])
        else:
            out["labels"] = torch.tensor([b["labels"] for b in batch])
        return out

    return fn
