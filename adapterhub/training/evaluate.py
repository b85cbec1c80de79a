"""Evaluating a registry version against its bare base, latency benchmarks, and comparing versions.

    result = evaluate(reg, "acme/clf:3", "./base", "eval.jsonl", probe_path="general.jsonl")
    bench = bench_latency(reg, "acme/clf:3", "./base", runs=20)
    diff = compare(reg, "acme/clf:2", "acme/clf:3")

Metrics: seq-cls gets accuracy, macro-F1 and per-class precision/recall/F1; causal-lm gets the mean loss
over completion tokens (prompt tokens masked, as in training) and its perplexity. The bare base is
measured on the same rows; for seq-cls it has no trained head, so it gets one initialised with a fixed
seed (:data:`BASE_HEAD_SEED`) unless the base checkpoint has its own classification head. ``gain`` is
adapter − base (for loss, negative is better). A probe set measures forgetting: causal-lm: the change of
the probe loss (adapter − base; positive means forgotten); seq-cls: how often adapter and base agree,
each one's accuracy on the probe when its labels are in the label map, and the cosine similarity of
the mean-pooled last hidden states (1.0: the encoder is unchanged on general text).

Results are stored as evaluations of the version, keyed by the eval data's digest. Only ``compare``
runs without torch; the others import it when called.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..errors import AdapterhubError, InvalidInput
from ..registry.entities import Evaluation, VersionInfo

BASE_HEAD_SEED = 0
DEFAULT_MAX_LENGTH = 512
ProgressFactory = Callable[[int], tuple[Callable[[int], Any], Callable[[], Any]]]


# -- loading a version --------------------------------------------------------------------------
@contextmanager
def _nothing(total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def _bar(progress: ProgressFactory | None, total: int):
    if progress is None:
        return _nothing(total)

    @contextmanager
    def cm():
        update, close = progress(total)
        try:
            yield update
        finally:
            close()

    return cm()


def load_version(reg: Any, ref: str, plugins: Any) -> tuple[VersionInfo, Any]:
    """``(show(ref), LoadedAdapter)`` as the registry operations load one (:func:`operations.stored.load_version`:
    blobs verified, the registry's manifest), read into memory from a temporary directory removed after."""
    from ..operations.stored import load_version as load_stored

    tmp = tempfile.mkdtemp(prefix="adapterhub-eval-")
    try:
        return load_stored(reg, ref, plugins, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def task_of(manifest: dict[str, Any], override: str | None = None) -> str:
    """The version's task: the manifest's ``task``, else its config's PEFT ``task_type``. ``override``
    (``--task``) is only for versions that record no task: one that differs from the recorded task is
    refused (evaluating a causal-lm adapter as seq-cls would score a random head)."""
    from .data import TASKS

    if override and override not in TASKS:
        raise InvalidInput(f"unknown task '{override}' (expected one of: {', '.join(TASKS)})")
    task = manifest.get("task")
    if task not in TASKS:
        task_type = (manifest.get("config") or {}).get("task_type")
        task = {"SEQ_CLS": "seq-cls", "CAUSAL_LM": "causal-lm"}.get(task_type)
    if override and task and override != task:
        raise InvalidInput(
            f"--task {override} does not match the version's recorded task {task} "
            "(--task is only for versions that record no task)"
        )
    if override or task:
        return override or task
    raise InvalidInput("the version records no task; pass --task causal-lm or --task seq-cls")


def non_finite(metrics: dict[str, Any]) -> list[str]:
    """The names of the metrics that are NaN or infinite."""
    return sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))


def _check_base(info: VersionInfo, base_dir: str, home: str | None, allow_mismatch: bool) -> tuple[str, bool]:
    """The base's fingerprint, checked against the version's; ``(fingerprint, mismatched)``."""
    from .. import api
    from .modeling import check_base_dir

    check_base_dir(base_dir)
    fp = api.fingerprint(base_dir, home).digest
    expected = info.base_fingerprint
    hint = info.base.name if info.base else None
    if allow_mismatch:
        return fp, bool(expected and expected != fp)
    api.check_base(expected, fp, base_dir, hint)
    return fp, False


def _base_has_head(base_dir: str) -> bool:
    try:
        with open(os.path.join(base_dir, "config.json"), encoding="utf-8") as f:
            archs = json.load(f).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in archs)


def load_base(base_dir: str, task: str, labels: list[str] | None) -> Any:
    """The base model; a seq-cls head missing from the checkpoint is initialised with
    :data:`BASE_HEAD_SEED` (the global RNG is left as it was)."""
    import torch

    from .modeling import load_base_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_HEAD_SEED)
        return load_base_model(base_dir, task, labels)


# -- metrics ------------------------------------------------------------------------------------
def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over the classes present in truth or predictions) and per-class
    precision/recall/F1/support."""
    n = len(y_true)
    per_class: dict[str, dict[str, float]] = {}
    present = sorted(set(y_true) | set(y_pred))
    f1s = []
    for k in present:
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == k and p == k)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != k and p == k)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == k and p != k)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        f1s.append(f1)
        name = labels[k] if 0 <= k < len(labels) else str(k)
        per_class[name] = {"precision": _r(prec), "recall": _r(rec), "f1": _r(f1), "support": tp + fn}
    acc = sum(1 for t, p in zip(y_true, y_pred) if t == p) / n if n else 0.0
    return {"accuracy": _r(acc), "macro_f1": _r(sum(f1s) / len(f1s) if f1s else 0.0), "per_class": per_class}


def _r(x: float) -> float:
    return round(float(x), 6)


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _run_seq_cls(
    model: Any, examples: list[dict[str, Any]], batch_size: int, pad_id: int, tick, hidden: bool = False
) -> tuple[list[int], Any]:
    import torch

    from .data import collate

    fn = collate(pad_id)
    preds: list[int] = []
    pooled = []
    with torch.inference_mode():
        for chunk in _batches(examples, batch_size):
            batch = fn(chunk)
            batch.pop("labels")
            out = model(**batch, output_hidden_states=hidden)
            preds.extend(out.logits.argmax(-1).tolist())
            if hidden:
                h = out.hidden_states[-1].float()
                m = batch["attention_mask"].unsqueeze(-1).float()
                pooled.append((h * m).sum(1) / m.sum(1).clamp(min=1))
            tick(1)
    return preds, (torch.cat(pooled) if pooled else None)


def _run_causal(model: Any, examples: list[dict[str, Any]], batch_size: int, pad_id: int, tick) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from .data import IGNORE, collate

    fn = collate(pad_id)
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for chunk in _batches(examples, batch_size):
            batch = fn(chunk)
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
            loss = F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            total += float(loss)
            tokens += int((shift_labels != IGNORE).sum())
            tick(1)
    if tokens == 0:
        raise InvalidInput("no completion tokens to score (every row is only a prompt after truncation)")
    mean = total / tokens
    return {"loss": _r(mean), "perplexity": _r(math.exp(min(mean, 700.0))), "tokens": tokens}


# -- evaluation ---------------------------------------------------------------------------------
def evaluate(
    reg: Any,
    ref: str,
    base_dir: str,
    data_path: str,
    *,
    probe_path: str | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    task: str | None = None,
    allow_base_mismatch: bool = False,
    store: bool = True,
    home: str | None = None,
    plugins: Any = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Evaluate version ``ref`` and its bare base on ``data_path`` (and the probe set); store the result
    as an evaluation of the version keyed by the data's digest (unless ``store`` is false or the base's
    fingerprint differs and ``allow_base_mismatch`` let it run). Returns the full result."""
    from ..plugins import get_plugins
    from . import data as D
    from .modeling import attach_loaded, load_tokenizer, max_positions

    if batch_size <= 0:
        raise InvalidInput(f"--batch-size must be positive, got {batch_size}")
    if max_length is not None and max_length <= 0:
        raise InvalidInput(f"--max-length must be positive, got {max_length}")
    plugins = plugins or get_plugins()
    info = reg.show(ref)
    manifest = info.manifest
    task = task_of(manifest, task)
    rows = D.read_jsonl(data_path)
    probe = D.read_jsonl(probe_path) if probe_path else None
    fp, mismatched = _check_base(info, base_dir, home, allow_base_mismatch)
    _, loaded = load_version(reg, info.ref, plugins)

    tokenizer = load_tokenizer(base_dir)
    labels = manifest.get("labels")
    labels_source = "manifest"
    if task == "seq-cls" and not labels:
        labels, labels_source = D.label_map_from(rows), "eval data"
    max_length = max_length or (manifest.get("training") or {}).get("max_length") or DEFAULT_MAX_LENGTH
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < max_length:
        max_length = tok_max

    if task == "seq-cls":
        examples = D.seq_cls_examples(rows, tokenizer, max_length, labels)
        probe_ex, probe_labelled = _probe_seq_cls(probe, tokenizer, max_length, labels) if probe else (None, False)
    else:
        examples = D.causal_lm_examples(rows, tokenizer, max_length)
        probe_ex = D.causal_lm_examples(probe, tokenizer, max_length) if probe else None
        probe_labelled = False

    model = load_base(base_dir, task, labels)
    pos = max_positions(model.config)
    if pos and max_length > pos:
        max_length = pos
        for ex in examples + (probe_ex or []):
            for k in ("input_ids", "attention_mask"):
                ex[k] = ex[k][:pos]
            if isinstance(ex["labels"], list):
                ex["labels"] = ex["labels"][:pos]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_pass = -(-len(examples) // batch_size) + (-(-len(probe_ex) // batch_size) if probe_ex else 0)
    base_head = None
    if task == "seq-cls":
        base_head = (
            "from the base checkpoint"
            if _base_has_head(base_dir)
            else f"none in the base: a new head initialised with seed {BASE_HEAD_SEED} (chance-level baseline)"
        )

    started = time.time()
    with _bar(progress, 2 * per_pass) as tick:
        if task == "seq-cls":
            y = [ex["labels"] for ex in examples]
            base_pred, _ = _run_seq_cls(model, examples, batch_size, pad, tick)
            base_probe = _run_seq_cls(model, probe_ex, batch_size, pad, tick, hidden=True) if probe_ex else None
            effective = attach_loaded(model, loaded)
            ad_pred, _ = _run_seq_cls(model, examples, batch_size, pad, tick)
            ad_probe = _run_seq_cls(model, probe_ex, batch_size, pad, tick, hidden=True) if probe_ex else None
            adapter_m = classification_metrics(y, ad_pred, labels)
            base_m = classification_metrics(y, base_pred, labels)
            probe_m = _probe_seq_cls_metrics(probe_ex, probe_labelled, base_probe, ad_probe) if probe_ex else None
        else:
            base_m = _run_causal(model, examples, batch_size, pad, tick)
            base_probe = _run_causal(model, probe_ex, batch_size, pad, tick) if probe_ex else None
            effective = attach_loaded(model, loaded)
            adapter_m = _run_causal(model, examples, batch_size, pad, tick)
            ad_probe = _run_causal(model, probe_ex, batch_size, pad, tick) if probe_ex else None
            probe_m = None
            if probe_ex:
                probe_m = {
                    "rows": len(probe_ex),
                    "base_loss": base_probe["loss"],
                    "adapter_loss": ad_probe["loss"],
                    "forgetting": _r(ad_probe["loss"] - base_probe["loss"]),
                    "base_perplexity": base_probe["perplexity"],
                    "adapter_perplexity": ad_probe["perplexity"],
                }
    del effective
    scalar = ("accuracy", "macro_f1") if task == "seq-cls" else ("loss", "perplexity")
    gain = {k: _r(adapter_m[k] - base_m[k]) for k in scalar}
    metrics: dict[str, Any] = {k: adapter_m[k] for k in scalar}
    metrics.update({f"base_{k}": base_m[k] for k in scalar})
    metrics.update({f"gain_{k}": gain[k] for k in scalar})
    if probe_m:
        metrics.update({f"probe_{k}": v for k, v in probe_m.items() if k != "rows" and v is not None})
    from ..registry.gates import PRIMARY

    primary, higher = PRIMARY[task]
    details: dict[str, Any] = {
        "task": task,
        "primary_metric": primary,
        "higher_is_better": higher,
        "base_fingerprint": fp,
        "expected_base_fingerprint": info.base_fingerprint,
        "data": {"file": os.path.basename(data_path), "digest": rows.digest, "rows": len(examples)},
        "rows": len(examples),
        "probe_digest": probe.digest if probe else None,
        "probe_rows": len(probe_ex) if probe_ex else 0,
        "max_length": max_length,
        "batch_size": batch_size,
    }
    if task == "seq-cls":
        details.update(
            {
                "labels": labels,
                "labels_source": labels_source,
                "base_head": base_head,
                "per_class": adapter_m["per_class"],
                "base_per_class": base_m["per_class"],
            }
        )
    else:
        details["tokens"] = adapter_m["tokens"]
    stored = store and not mismatched
    if stored and (bad := non_finite(metrics)):
        raise InvalidInput(
            f"{info.ref} produces non-finite results on {os.path.basename(data_path)} "
            f"({', '.join(f'{k}={metrics[k]}' for k in bad)}): "
            + ("the base model" if all(k.startswith(("base_", "probe_base_")) for k in bad) else "the adapter")
            + " produces NaN/inf outputs; not stored "
            "(use --no-store to see the full result)"
        )
    if stored:
        reg.add_evaluation(info.ref, rows.digest, metrics, details)
    return {
        "ref": info.ref,
        "digest": info.digest,
        "task": task,
        "data_digest": rows.digest,
        "rows": len(examples),
        "adapter": adapter_m,
        "base": base_m,
        "gain": gain,
        "probe": probe_m,
        "metrics": metrics,
        "details": details,
        "base_head": base_head,
        "base_fingerprint": fp,
        "base_mismatch": mismatched,
        "stored": stored,
        "seconds": round(time.time() - started, 2),
    }


def _probe_seq_cls(probe: Any, tokenizer: Any, max_length: int, labels: list[str]) -> tuple[list[dict], bool]:
    """Probe rows need ``text``; their labels count only when every one is in the label map."""
    name = os.path.basename(probe.path)
    index = {label: i for i, label in enumerate(labels)}
    labelled = all("label" in o and str(o["label"]) in index for _, o in probe.rows)
    out = []
    for n, o in probe.rows:
        text = o.get("text")
        if not isinstance(text, str):
            raise InvalidInput(f"{name}:{n}: field 'text' must be a string")
        enc = tokenizer(text, truncation=True, max_length=max_length)
        out.append(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": index[str(o["label"])] if labelled else -1,
            }
        )
    return out, labelled


def _probe_seq_cls_metrics(probe_ex, labelled, base_out, ad_out) -> dict[str, Any]:
    import torch

    base_pred, base_h = base_out
    ad_pred, ad_h = ad_out
    agree = sum(1 for a, b in zip(base_pred, ad_pred) if a == b) / len(base_pred)
    cos = torch.nn.functional.cosine_similarity(base_h, ad_h, dim=-1).mean().item()
    out: dict[str, Any] = {
        "rows": len(probe_ex),
        "agreement": _r(agree),
        "hidden_cosine": _r(cos),
        "base_accuracy": None,
        "adapter_accuracy": None,
    }
    if labelled:
        y = [ex["labels"] for ex in probe_ex]
        out["base_accuracy"] = _r(sum(1 for t, p in zip(y, base_pred) if t == p) / len(y))
        out["adapter_accuracy"] = _r(sum(1 for t, p in zip(y, ad_pred) if t == p) / len(y))
    return out


# -- latency ------------------------------------------------------------------------------------
def _timings(model: Any, inputs: dict[str, Any], runs: int, warmup: int, sync: Callable[[], None], tick) -> list[float]:
    import torch

    out = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            sync()
            t0 = time.perf_counter()
            model(**inputs)
            sync()
            if i >= warmup:
                out.append(time.perf_counter() - t0)
            tick(1)
    return out


def _stats(times: list[float], tokens: int) -> dict[str, float]:
    import numpy as np

    arr = np.asarray(times)
    return {
        "p50_ms": _r(float(np.percentile(arr, 50)) * 1000),
        "p95_ms": _r(float(np.percentile(arr, 95)) * 1000),
        "mean_ms": _r(float(arr.mean()) * 1000),
        "tokens_per_s": _r(tokens / float(np.median(arr))),
    }


def bench_latency(
    reg: Any,
    ref: str,
    base_dir: str,
    *,
    runs: int = 20,
    batch_size: int = 1,
    seq_len: int = 128,
    warmup: int = 3,
    task: str | None = None,
    allow_base_mismatch: bool = False,
    home: str | None = None,
    plugins: Any = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Forward-pass latency (p50/p95 ms) and tokens/s of the bare base, the base with the adapter
    attached, and the merged model (the adapter merged into a copy of the base's state dict with
    ``Method.merge_tensor``; ``"n/a"`` for methods that cannot merge), on random token ids."""
    import torch

    from ..plugins import get_plugins
    from .modeling import attach_loaded, max_positions

    for opt, value in (("--runs", runs), ("--batch-size", batch_size), ("--seq-len", seq_len)):
        if value <= 0:
            raise InvalidInput(f"{opt} must be positive, got {value}")
    if warmup < 0:
        raise InvalidInput(f"--warmup must be >= 0, got {warmup}")
    plugins = plugins or get_plugins()
    info = reg.show(ref)
    manifest = info.manifest
    task = task_of(manifest, task)
    fp, mismatched = _check_base(info, base_dir, home, allow_base_mismatch)
    _, loaded = load_version(reg, info.ref, plugins)
    labels = manifest.get("labels") or (["0", "1"] if task == "seq-cls" else None)
    model = load_base(base_dir, task, labels)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pos = max_positions(model.config)
    seq = min(seq_len, pos) if pos else seq_len
    vocab = int(getattr(model.config, "vocab_size", 0) or 1000)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch_size, seq), generator=g).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    tokens = batch_size * seq

    with _bar(progress, 3 * (runs + warmup)) as tick:
        base = _stats(_timings(model, inputs, runs, warmup, sync, tick), tokens)
        merged: dict[str, Any] = {}
        try:
            merged_sd = _merged_state_dict(model, loaded)
        except AdapterhubError as exc:
            merged_sd, merged = None, {"status": "n/a", "reason": str(exc)}
        attach_loaded(model, loaded)
        model.to(device)
        adapter = _stats(_timings(model, inputs, runs, warmup, sync, tick), tokens)
        adapter["overhead"] = _r(adapter["p50_ms"] / base["p50_ms"]) if base["p50_ms"] else None
        if merged_sd is None:
            tick(runs + warmup)
        else:
            with torch.inference_mode():
                ref_out = _out(model(**inputs))
            loaded.method.detach(model)
            model.load_state_dict(merged_sd)
            del merged_sd
            merged = {"status": "ok", **_stats(_timings(model, inputs, runs, warmup, sync, tick), tokens)}
            merged["overhead"] = _r(merged["p50_ms"] / base["p50_ms"]) if base["p50_ms"] else None
            with torch.inference_mode():
                diff = (_out(model(**inputs)).float() - ref_out.float()).abs().max().item()
            merged["max_abs_diff_vs_adapter"] = _r(diff)
    return {
        "ref": info.ref,
        "digest": info.digest,
        "task": task,
        "method": loaded.method.name,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "seq_len": seq,
        "runs": runs,
        "warmup": warmup,
        "base_fingerprint": fp,
        "base_mismatch": mismatched,
        "base": base,
        "adapter": adapter,
        "merged": merged,
    }


def _out(output: Any) -> Any:
    value = getattr(output, "logits", None)
    return value if value is not None else output.last_hidden_state


def _merged_state_dict(model: Any, loaded: Any) -> dict[str, Any]:
    """A copy of the bare ``model``'s state dict with the adapter merged in by ``Method.merge_tensor``;
    raises :class:`AdapterhubError` when the method cannot merge."""
    method = loaded.method
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    touched = 0
    for name, tensor in list(sd.items()):
        merged = method.merge_tensor(name, tensor, loaded.tensors, loaded.config)
        if merged is not None:
            sd[name] = merged
            touched += 1
    if touched == 0:
        raise AdapterhubError(f"method '{method.name}' merged into no base tensor")
    return sd


# -- comparing two versions ---------------------------------------------------------------------
def compare(reg: Any, ref_a: str, ref_b: str) -> dict[str, Any]:
    """Two versions side by side: method/task/base, config differences, data digests, training metrics
    and evaluations on shared data digests (with ``delta`` = b − a; a generation evaluation beside a loss or
    accuracy one of the same data, ``kind`` says which). No torch."""
    a, b = reg.show(ref_a), reg.show(ref_b)

    def flat(cfg: Any) -> dict[str, Any]:
        return {k: v for k, v in (cfg or {}).items()}

    ca, cb = flat(a.config), flat(b.config)
    config = [
        {"key": k, "a": ca.get(k), "b": cb.get(k), "same": ca.get(k) == cb.get(k)} for k in sorted(set(ca) | set(cb))
    ]
    summary = []
    getters: tuple[tuple[str, Callable[[VersionInfo], Any]], ...] = (
        ("method", lambda v: v.method),
        ("task", lambda v: v.task),
        ("base_fingerprint", lambda v: v.base_fingerprint),
        ("digest", lambda v: v.digest),
        ("created_at", lambda v: v.created_at),
        ("aliases", lambda v: list(v.aliases)),
        ("data_check", lambda v: (v.manifest.get("data_check") or {}).get("status")),
    )
    for key, getter in getters:
        summary.append({"key": key, "a": getter(a), "b": getter(b), "same": getter(a) == getter(b)})

    def by_role(v: VersionInfo) -> dict[str, dict[str, Any]]:
        out = {}
        for d in v.data:
            role = d.get("role") or "data"
            out[role if role not in out else f"{role}{len(out)}"] = d
        return out

    da, db = by_role(a), by_role(b)
    data = [
        {
            "role": r,
            "a": (da.get(r) or {}).get("digest"),
            "b": (db.get(r) or {}).get("digest"),
            "a_rows": (da.get(r) or {}).get("rows"),
            "b_rows": (db.get(r) or {}).get("rows"),
            "same": (da.get(r) or {}).get("digest") == (db.get(r) or {}).get("digest"),
        }
        for r in sorted(set(da) | set(db))
    ]
    ma, mb = a.metrics, b.metrics
    metrics = [
        {"key": k, "a": ma.get(k), "b": mb.get(k), "delta": _delta(ma.get(k), mb.get(k))}
        for k in sorted(set(ma) | set(mb))
    ]

    def latest(v: VersionInfo) -> dict[tuple[str, str], Evaluation]:
        out: dict[tuple[str, str], Evaluation] = {}
        for e in v.evaluations:  # ordered by id: the last one of each data digest and kind wins
            out[(e.data_digest, (e.details or {}).get("kind") or "loss")] = e
        return out

    ea, eb = latest(a), latest(b)
    evaluations = []
    for key in sorted(set(ea) | set(eb)):
        xa, xb = ea[key].metrics if key in ea else {}, eb[key].metrics if key in eb else {}
        evaluations.append(
            {
                "data_digest": key[0],
                "kind": key[1],
                "shared": key in ea and key in eb,
                "metrics": [
                    {"key": k, "a": xa.get(k), "b": xb.get(k), "delta": _delta(xa.get(k), xb.get(k))}
                    for k in sorted(set(xa) | set(xb))
                ],
            }
        )
    return {
        "a": a.ref,
        "b": b.ref,
        "summary": summary,
        "config": config,
        "data": data,
        "metrics": metrics,
        "evaluations": evaluations,
    }


def _delta(x: Any, y: Any) -> float | None:
    def num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if num(x) and num(y):
        return _r(y - x)
    return None
