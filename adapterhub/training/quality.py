"""Data-quality checks for training/evaluation JSONL: duplicates, conflicting labels, train/eval
leakage, label balance, empty, over-length and malformed rows.

    report = check_data("train.jsonl", "eval.jsonl", task="seq-cls", tokenizer=tok, max_length=256)
    reasons = gate_data(report)          # [] when training may go ahead

Definitions (every count is over rows, every example names its line):

* A row's **input** is ``text`` (seq-cls and causal-lm ``text`` rows), ``prompt`` (prompt/completion
  rows) or the conversation before the final assistant message (``messages`` rows); its **target** is
  ``label``, ``completion`` or the final assistant message (``text`` rows have none).
* **Normalized** text is NFKC, case-folded, with punctuation removed and whitespace collapsed.
* ``duplicates.exact``: rows whose input *and* target equal an earlier row's; ``duplicates.normalized``:
  rows that equal an earlier row only after normalization (not counted as exact). ``total`` is both.
* ``conflicts.count``: distinct normalized inputs that appear with different normalized targets;
  ``conflicts.rows``: the rows in those groups.
* ``leakage``: eval rows whose example (seq-cls: the input text, whatever its label; causal-lm: input
  + target) equals a training row's (``exact``), or does only after normalization (``normalized``).
* ``lengths``: by the base tokenizer when one is given (``unit: "tokens"``), else by whitespace
  tokens (``unit: "whitespace tokens"``); ``over_length`` only when a maximum length is known.
* ``malformed``: lines that are not JSON objects or lack the task's fields; all of them are reported,
  reading goes on.
* ``label_issues`` (seq-cls, with an ``embed`` function, i.e. ``--base``): likely mislabeled rows by
  confident learning (:mod:`.label_noise`); without one the section says it was skipped.
* ``shift`` (with ``embed`` and an eval set or ``against``, a sample of production inputs): whether those
  inputs look like the training inputs (:mod:`.shift`); with both, the production check is
  ``shift["against"]``.

This module does not import torch.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from typing import Any, Callable

from ..errors import InvalidInput

TASKS = ("causal-lm", "seq-cls")
MAX_EXAMPLES = 20  # examples kept per category
_WS = re.compile(r"\s+")


# -- normalisation ------------------------------------------------------------------------------
def normalize(text: str) -> str:
    """Case, whitespace and punctuation folded: ``"Hello,  World!"`` -> ``"hello world"``."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return _WS.sub(" ", text).strip()


def _key(*parts: Any) -> str:
    return json.dumps(parts, ensure_ascii=False)


# -- reading ------------------------------------------------------------------------------------
class _Row:
    __slots__ = ("line", "input", "target", "has_target", "length_text")

    def __init__(self, line: int, input_: str, target: Any, has_target: bool, length_text: str):
        self.line, self.input, self.target = line, input_, target
        self.has_target, self.length_text = has_target, length_text


def _read(path: str, role: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Every line of ``path``: ``(line, obj)`` for JSON objects, malformed entries for the rest."""
    from .data import scan_jsonl

    rows, bad, lines = scan_jsonl(path)
    info = {"role": role, "path": path, "file": os.path.basename(path), "digest": rows.digest, "lines": lines}
    return rows.rows, bad, info


def infer_task(objs: list[tuple[int, Any]]) -> str:
    """``seq-cls`` when most rows have a ``label``, else ``causal-lm``."""
    with_label = sum(1 for _, o in objs if "label" in o)
    return "seq-cls" if objs and with_label * 2 >= len(objs) else "causal-lm"


def _parse(objs: list[tuple[int, Any]], task: str, name: str, bad: list[dict[str, Any]]) -> list[_Row]:
    rows = []
    for n, o in objs:
        err = None
        if task == "seq-cls":
            if not isinstance(o.get("text"), str):
                err = "field 'text' must be a string"
            elif "label" not in o:
                err = "missing 'label'"
            elif isinstance(o["label"], bool) or not isinstance(o["label"], (str, int)):
                err = "'label' must be a string or an integer"
            else:
                rows.append(_Row(n, o["text"], str(o["label"]), True, o["text"]))
        elif "messages" in o:
            msgs = o["messages"]
            if (
                not isinstance(msgs, list)
                or not msgs
                or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in msgs
                )
            ):
                err = "'messages' must be a list of {role, content} objects"
            else:
                last = msgs[-1]["role"] == "assistant"
                ctx = msgs[:-1] if last else msgs
                input_ = "\n".join(f"{m['role']}: {m['content']}" for m in ctx)
                target = msgs[-1]["content"] if last else None
                rows.append(_Row(n, input_, target, last, "\n".join(m["content"] for m in msgs)))
        elif "prompt" in o or "completion" in o:
            if not isinstance(o.get("prompt"), str):
                err = "field 'prompt' must be a string"
            elif not isinstance(o.get("completion"), str):
                err = "field 'completion' must be a string"
            else:
                rows.append(_Row(n, o["prompt"], o["completion"], True, o["prompt"] + o["completion"]))
        elif "text" in o:
            if not isinstance(o["text"], str):
                err = "field 'text' must be a string"
            else:
                rows.append(_Row(n, o["text"], None, False, o["text"]))
        else:
            err = "expected 'text', 'prompt'+'completion' or 'messages'"
        if err:
            bad.append({"file": name, "line": n, "error": err})
    return rows


def _lengths(rows: list[_Row], tokenizer: Any) -> list[int]:
    if tokenizer is None:
        return [len(r.length_text.split()) for r in rows]
    texts = [r.length_text for r in rows]
    out = []
    for i in range(0, len(texts), 256):
        enc = tokenizer(texts[i : i + 256], add_special_tokens=True, truncation=False)["input_ids"]
        out.extend(len(x) for x in enc)
    return out


# -- the check ----------------------------------------------------------------------------------
def check_data(
    train_path: str,
    eval_path: str | None = None,
    task: str | None = None,
    tokenizer: Any = None,
    max_length: int | None = None,
    embed: Callable[[list[str]], Any] | None = None,
    against: str | None = None,
) -> dict[str, Any]:
    """Check ``train_path`` (and ``eval_path``) and return the report (a JSON-able dict; see the module
    docstring for the definitions). ``embed`` (texts -> sentence embeddings, e.g.
    :func:`.embed.embedder`) turns on the checks that need the base model; ``against`` is a JSONL sample of
    production inputs (``text``, ``prompt`` or ``messages`` rows) for the shift check. Never stops at a bad line;
    raises :class:`InvalidInput` only for a missing or unreadable file or an unknown task."""
    if task is not None and task not in TASKS:
        raise InvalidInput(f"unknown task '{task}' (expected one of: {', '.join(TASKS)})")
    if max_length is not None and max_length <= 0:
        raise InvalidInput(f"--max-length must be positive, got {max_length}")
    t_objs, t_bad, t_info = _read(train_path, "train")
    e_objs, e_bad, e_info = _read(eval_path, "eval") if eval_path else ([], [], None)
    a_objs, a_bad, a_info = _read(against, "against") if against else ([], [], None)
    inferred = task is None
    task = task or infer_task(t_objs)
    train = _parse(t_objs, task, t_info["file"], t_bad)
    evals = _parse(e_objs, task, e_info["file"], e_bad) if e_info else []
    prod = _parse(a_objs, "causal-lm", a_info["file"], a_bad) if a_info else []  # inputs only: no labels needed
    if a_info:
        a_info["rows"] = len(prod)
    t_info["rows"] = len(train)
    if e_info:
        e_info["rows"] = len(evals)

    if max_length is None and tokenizer is not None:
        model_max = getattr(tokenizer, "model_max_length", None)
        max_length = model_max if isinstance(model_max, int) and 0 < model_max < 1_000_000 else None
    unit = "tokens" if tokenizer is not None else "whitespace tokens"

    report: dict[str, Any] = {
        "task": task,
        "task_inferred": inferred,
        "train": t_info,
        "eval": e_info,
        "rows": len(train),
        "duplicates": _duplicates(train, t_info["file"]),
        "conflicts": _conflicts(train, t_info["file"]),
        "leakage": _leakage(train, evals, task, t_info["file"], e_info["file"] if e_info else None),
        "labels": _labels(train, evals, task),
        "empty": _merge(_empty(train, t_info["file"], task), _empty(evals, e_info["file"] if e_info else "", task)),
        "lengths": _length_report(
            train, evals, tokenizer, max_length, unit, t_info["file"], e_info["file"] if e_info else None
        ),
        "malformed": {
            "count": len(t_bad) + len(e_bad) + len(a_bad),
            "examples": (t_bad + e_bad + a_bad)[:MAX_EXAMPLES],
        },
    }
    if e_info:
        report["eval_rows"] = len(evals)
        report["eval_duplicates"] = _duplicates(evals, e_info["file"])
    report["label_issues"] = _label_issues(train, task, embed)
    if a_info:
        report["against"] = a_info
    report["shift"] = _shift(train, [(e_info, evals), (a_info, prod)], embed)
    report["problems"] = problems(report)
    report["status"] = "problems" if report["problems"] else "ok"
    return report


def _label_issues(rows: list[_Row], task: str, embed: Callable[[list[str]], Any] | None) -> dict[str, Any]:
    if embed is None:
        return {"skipped": "without --base"}
    if task != "seq-cls":
        return {"skipped": "causal-lm rows have no labels"}
    from .label_noise import find_label_issues

    rows = [r for r in rows if r.input.strip() and str(r.target).strip()]
    texts = [r.input for r in rows]
    return find_label_issues([r.line for r in rows], texts, [str(r.target) for r in rows], embed(texts))


def _shift(
    train: list[_Row], others: list[tuple[dict[str, Any] | None, list[_Row]]], embed: Callable[[list[str]], Any] | None
) -> dict[str, Any]:
    others = [(info, rows) for info, rows in others if info]
    if embed is None:
        return {"skipped": "without --base"}
    if not others:
        return {"skipped": "without --eval or --against"}
    from .shift import shift_check

    train_emb = embed([r.input for r in train])
    out = []
    for info, rows in others:
        texts = [r.input for r in rows]
        section = shift_check(train_emb, embed(texts), [r.line for r in rows], texts, [r.line for r in train])
        out.append({"compared": info["role"], "file": info["file"], **section})
    return {**out[0], "against": out[1]} if len(out) == 2 else out[0]


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"count": a["count"] + b["count"], "examples": (a["examples"] + b["examples"])[:MAX_EXAMPLES]}


def _duplicates(rows: list[_Row], file: str) -> dict[str, Any]:
    exact: dict[str, int] = {}
    norm: dict[str, int] = {}
    n_exact = n_norm = 0
    examples = []
    for r in rows:
        ek = _key(r.input, r.target)
        nk = _key(normalize(r.input), normalize(r.target) if isinstance(r.target, str) else r.target)
        if ek in exact:
            n_exact += 1
            kind, first = "exact", exact[ek]
        elif nk in norm:
            n_norm += 1
            kind, first = "normalized", norm[nk]
        else:
            exact[ek] = norm[nk] = r.line
            continue
        exact.setdefault(ek, r.line)
        if len(examples) < MAX_EXAMPLES:
            examples.append({"file": file, "line": r.line, "duplicate_of": first, "kind": kind, "input": r.input[:120]})
    return {"exact": n_exact, "normalized": n_norm, "total": n_exact + n_norm, "examples": examples}


def _conflicts(rows: list[_Row], file: str) -> dict[str, Any]:
    groups: dict[str, list[_Row]] = {}
    for r in rows:
        if r.has_target:
            groups.setdefault(normalize(r.input), []).append(r)
    bad = [g for g in groups.values() if len({normalize(str(r.target)) for r in g}) > 1]
    bad.sort(key=lambda g: g[0].line)
    return {
        "count": len(bad),
        "rows": sum(len(g) for g in bad),
        "examples": [
            {
                "file": file,
                "lines": [r.line for r in g],
                "input": g[0].input[:120],
                "targets": sorted({str(r.target)[:80] for r in g}),
            }
            for g in bad[:MAX_EXAMPLES]
        ],
    }


def _leakage(train: list[_Row], evals: list[_Row], task: str, t_file: str, e_file: str | None) -> dict[str, Any]:
    def keys(r: _Row) -> tuple[str, str]:
        if task == "seq-cls":
            return _key(r.input), _key(normalize(r.input))
        tgt = r.target if isinstance(r.target, str) else ""
        return _key(r.input, tgt), _key(normalize(r.input), normalize(tgt))

    exact: dict[str, int] = {}
    norm: dict[str, int] = {}
    for r in train:
        ek, nk = keys(r)
        exact.setdefault(ek, r.line)
        norm.setdefault(nk, r.line)
    n_exact = n_norm = 0
    examples = []
    for r in evals:
        ek, nk = keys(r)
        if ek in exact:
            n_exact += 1
            kind, line = "exact", exact[ek]
        elif nk in norm:
            n_norm += 1
            kind, line = "normalized", norm[nk]
        else:
            continue
        if len(examples) < MAX_EXAMPLES:
            examples.append(
                {
                    "eval_file": e_file,
                    "eval_line": r.line,
                    "train_file": t_file,
                    "train_line": line,
                    "kind": kind,
                    "input": r.input[:120],
                }
            )
    return {
        "exact": n_exact,
        "normalized": n_norm,
        "total": n_exact + n_norm,
        "checked": e_file is not None,
        "examples": examples,
    }


def _labels(train: list[_Row], evals: list[_Row], task: str) -> dict[str, Any]:
    if task != "seq-cls":
        return {"distribution": {}, "imbalance_ratio": None, "note": "causal-lm rows have no labels"}
    dist: dict[str, int] = {}
    for r in train:
        dist[r.target] = dist.get(r.target, 0) + 1
    out: dict[str, Any] = {
        "distribution": dict(sorted(dist.items())),
        "classes": len(dist),
        "imbalance_ratio": round(max(dist.values()) / min(dist.values()), 4) if dist else None,
    }
    if evals:
        e_dist: dict[str, int] = {}
        for r in evals:
            e_dist[r.target] = e_dist.get(r.target, 0) + 1
        out["eval_distribution"] = dict(sorted(e_dist.items()))
        out["unseen_in_train"] = sorted(set(e_dist) - set(dist))
    return out


def _empty(rows: list[_Row], file: str, task: str) -> dict[str, Any]:
    bad = []
    for r in rows:
        inp = r.input.strip()
        tgt = r.target.strip() if isinstance(r.target, str) else None
        if not inp and not tgt:
            bad.append({"file": file, "line": r.line, "what": "empty row"})
        elif r.has_target and tgt == "":
            what = "empty label" if task == "seq-cls" else "empty completion"
            bad.append({"file": file, "line": r.line, "what": what})
        elif not inp and task == "seq-cls":
            bad.append({"file": file, "line": r.line, "what": "empty text"})
    return {"count": len(bad), "examples": bad[:MAX_EXAMPLES]}


def _length_report(
    train: list[_Row],
    evals: list[_Row],
    tokenizer: Any,
    max_length: int | None,
    unit: str,
    t_file: str,
    e_file: str | None,
) -> dict[str, Any]:
    t_len = _lengths(train, tokenizer)
    e_len = _lengths(evals, tokenizer) if evals else []
    both = t_len + e_len
    out: dict[str, Any] = {
        "unit": unit,
        "max_length": max_length,
        "min": min(both) if both else 0,
        "max": max(both) if both else 0,
        "mean": round(sum(both) / len(both), 2) if both else 0.0,
    }
    if max_length is None:
        out["over_length"] = {"count": 0, "checked": False, "examples": []}
        return out
    over = [{"file": t_file, "line": r.line, "length": n} for r, n in zip(train, t_len) if n > max_length]
    over += [{"file": e_file, "line": r.line, "length": n} for r, n in zip(evals, e_len) if n > max_length]
    out["over_length"] = {"count": len(over), "checked": True, "examples": over[:MAX_EXAMPLES]}
    return out


# -- verdicts -----------------------------------------------------------------------------------
def problems(report: dict[str, Any]) -> list[str]:
    """Every problem the report found, one short phrase each (empty when the data is clean)."""
    out = []
    if report["rows"] == 0:
        out.append("no usable training rows")
    if report["malformed"]["count"]:
        out.append(f"{report['malformed']['count']} malformed line(s)")
    d = report["duplicates"]
    if d["total"]:
        out.append(f"{d['total']} duplicate row(s) ({d['exact']} exact, {d['normalized']} normalized)")
    if report["conflicts"]["count"]:
        out.append(
            f"{report['conflicts']['count']} input(s) with conflicting labels ({report['conflicts']['rows']} rows)"
        )
    lk = report["leakage"]
    if lk["total"]:
        out.append(f"{lk['total']} eval row(s) leaked from train ({lk['exact']} exact, {lk['normalized']} normalized)")
    if report["empty"]["count"]:
        out.append(f"{report['empty']['count']} empty row(s)")
    ol = report["lengths"]["over_length"]
    if ol["count"]:
        out.append(f"{ol['count']} row(s) over {report['lengths']['max_length']} {report['lengths']['unit']}")
    labels = report["labels"]
    if labels.get("unseen_in_train"):
        out.append(f"eval labels not in train: {', '.join(labels['unseen_in_train'])}")
    if report.get("eval_duplicates", {}).get("total"):
        out.append(f"{report['eval_duplicates']['total']} duplicate row(s) in the eval set")
    for sh in _shifts(report):
        if sh.get("shifted"):
            out.append(f"{sh['file']} differs from the training data (shift p={sh['p_value']:g})")
    li = report.get("label_issues") or {}
    if li.get("count"):
        out.append(f"{li['count']} likely mislabeled row(s) (estimated label noise {li['estimated_noise_rate']:.1%})")
    return out


def _shifts(report: dict[str, Any]) -> list[dict[str, Any]]:
    sh = report.get("shift") or {}
    return [x for x in (sh, sh.get("against")) if x and "p_value" in x]


def gate_data(report: dict[str, Any], max_conflicts: int = 0, max_leakage: int = 0) -> list[str]:
    """Why training should refuse this data (empty list: go ahead): conflicting labels above
    ``max_conflicts`` inputs, leaked eval rows above ``max_leakage``, malformed lines, no rows."""
    reasons = []
    if report["rows"] == 0:
        reasons.append("no usable training rows")
    if report["malformed"]["count"]:
        first = report["malformed"]["examples"][0]
        reasons.append(
            f"{report['malformed']['count']} malformed line(s) (first: {first['file']}:{first['line']}: "
            f"{first['error']})"
        )
    c = report["conflicts"]
    if c["count"] > max_conflicts:
        lines = c["examples"][0]["lines"] if c["examples"] else []
        reasons.append(
            f"{c['count']} input(s) with conflicting labels (first at lines "
            f"{', '.join(map(str, lines[:5]))}; allowed {max_conflicts})"
        )
    lk = report["leakage"]
    if lk["total"] > max_leakage:
        first = lk["examples"][0] if lk["examples"] else None
        where = f" (first: eval line {first['eval_line']} = train line {first['train_line']})" if first else ""
        reasons.append(f"{lk['total']} eval row(s) also in the training data{where}; allowed {max_leakage}")
    return reasons


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The counts of a report, small enough for a manifest (no examples)."""
    li = report.get("label_issues") or {}
    return {
        "task": report["task"],
        "train_digest": report["train"]["digest"],
        "eval_digest": report["eval"]["digest"] if report.get("eval") else None,
        "rows": report["rows"],
        "eval_rows": report.get("eval_rows"),
        "duplicates": {k: report["duplicates"][k] for k in ("exact", "normalized")},
        "conflicts": report["conflicts"]["count"],
        "leakage": {k: report["leakage"][k] for k in ("exact", "normalized")},
        "malformed": report["malformed"]["count"],
        "empty": report["empty"]["count"],
        "over_length": report["lengths"]["over_length"]["count"],
        "length_unit": report["lengths"]["unit"],
        "max_length": report["lengths"]["max_length"],
        "label_distribution": report["labels"].get("distribution") or None,
        "imbalance_ratio": report["labels"].get("imbalance_ratio"),
        "shift": {x["compared"]: {"p_value": x["p_value"], "shifted": x["shifted"]} for x in _shifts(report)} or None,
        "label_issues": (
            {k: li[k] for k in ("estimated_noise_rate", "count")} if "count" in li else {"skipped": li.get("skipped")}
        ),
        "problems": report["problems"],
    }


def render(report: dict[str, Any]) -> str:
    """The report as text for the terminal."""
    lines = [
        f"{report['train']['file']}: {report['rows']} rows ({report['task']}"
        + (", inferred" if report["task_inferred"] else "")
        + f"), {report['train']['digest'][:19]}"
    ]
    if report.get("eval"):
        lines.append(f"{report['eval']['file']}: {report['eval_rows']} eval rows, {report['eval']['digest'][:19]}")
    if report.get("against"):
        a = report["against"]
        lines.append(f"{a['file']}: {a['rows']} production rows (--against), {a['digest'][:19]}")
    d = report["duplicates"]
    lines.append(f"duplicates: {d['exact']} exact, {d['normalized']} normalized")
    for e in d["examples"][:5]:
        lines.append(f"  {e['file']}:{e['line']} {e['kind']} duplicate of line {e['duplicate_of']}")
    c = report["conflicts"]
    lines.append(f"conflicting labels: {c['count']} input(s), {c['rows']} rows")
    for e in c["examples"][:5]:
        lines.append(f"  lines {', '.join(map(str, e['lines']))}: {e['input'][:60]!r} -> {', '.join(e['targets'])}")
    lk = report["leakage"]
    if lk["checked"]:
        lines.append(f"train/eval leakage: {lk['exact']} exact, {lk['normalized']} normalized")
        for e in lk["examples"][:5]:
            lines.append(f"  {e['eval_file']}:{e['eval_line']} = {e['train_file']}:{e['train_line']} ({e['kind']})")
    else:
        lines.append("train/eval leakage: not checked (no --eval)")
    lb = report["labels"]
    if lb.get("distribution"):
        lines.append(
            "labels: "
            + ", ".join(f"{k}={v}" for k, v in lb["distribution"].items())
            + f" (imbalance {lb['imbalance_ratio']:g}x)"
        )
        if lb.get("unseen_in_train"):
            lines.append("  eval labels not in train: " + ", ".join(lb["unseen_in_train"]))
    lines.append(f"empty rows: {report['empty']['count']}")
    for e in report["empty"]["examples"][:5]:
        lines.append(f"  {e['file']}:{e['line']} {e['what']}")
    ln = report["lengths"]
    if ln["over_length"]["checked"]:
        lines.append(
            f"over-length rows: {ln['over_length']['count']} (> {ln['max_length']} {ln['unit']}; "
            f"max {ln['max']}, mean {ln['mean']:g})"
        )
        for e in ln["over_length"]["examples"][:5]:
            lines.append(f"  {e['file']}:{e['line']} {e['length']} {ln['unit']}")
    else:
        lines.append(f"lengths: max {ln['max']}, mean {ln['mean']:g} {ln['unit']} (no --max-length: not checked)")
    li = report.get("label_issues") or {}
    if "skipped" in li:
        lines.append(f"likely mislabeled rows: not checked ({li['skipped']})")
    elif li:
        lines.append(
            f"likely mislabeled rows: {li['count']} of {li['checked']} (estimated label noise "
            f"{li['estimated_noise_rate']:.1%}; {li['folds']}-fold probe on the base's embeddings)"
        )
        for e in li["rows"][:10]:
            lines.append(
                f"  line {e['line']}: {e['label']} -> {e['suggested']} (score {e['score']:.3f}) {e['text'][:60]!r}"
            )
        if li["count"] > 10:
            lines.append(f"  ... {li['count'] - 10} more (--json lists them all)")
    sh = report.get("shift") or {}
    if "skipped" in sh and "file" not in sh:
        lines.append(f"shift: not checked ({sh['skipped']})")
    for x in [sh, sh.get("against")] if "file" in sh else []:
        if not x:
            continue
        if "skipped" in x:
            lines.append(f"shift of {x['file']}: not checked ({x['skipped']})")
            continue
        verdict = "DIFFERS from" if x["shifted"] else "looks like"
        lines.append(
            f"shift: {x['file']} {verdict} the training data (MMD on the base's embeddings, "
            f"p={x['p_value']:g}, {x['permutations']} permutations)"
        )
        for e in x["farthest"][: 5 if x["shifted"] else 3]:
            lines.append(
                f"  farthest: {x['file']}:{e['line']} (distance {e['distance']:.3f} to train line "
                f"{e['nearest_train_line']}) {e['text'][:60]!r}"
            )
    m = report["malformed"]
    lines.append(f"malformed lines: {m['count']}")
    for e in m["examples"][:10]:
        lines.append(f"  {e['file']}:{e['line']}: {e['error']}")
    lines.append("status: " + ("ok" if not report["problems"] else "problems: " + "; ".join(report["problems"])))
    return "\n".join(lines)
