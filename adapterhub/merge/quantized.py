"""Merging an adapter that was trained on a quantized base (QLoRA): re-quantize the merged model, and
measure what the merge cost — the logits of the unmerged adapter on the base as it was trained (4-bit)
against the merged result, on a probe batch."""

from __future__ import annotations

import os
import shutil
from typing import Any

from ..errors import InvalidInput
from ..files.checkpoint import LoadedAdapter, load_json
from .plan import ONTO

PROBE_ROWS, PROBE_LEN = 4, 32


def merge_checked(
    reg: Any,
    ref: str,
    base_dir: str,
    out: str,
    *,
    onto: str = "dequantized",
    quantize: str | None = None,
    quantize_options: dict[str, Any] | None = None,
    probe: str | bool | None = None,
    force: bool = False,
    plugins: Any = None,
    home: str | None = None,
    **merge_kwargs: Any,
) -> dict[str, Any]:
    """:func:`adapterhub.operations.export.merge_ref`, then optionally re-quantize the merged model with the quantizer
    plugin ``quantize`` (``out`` loads as a quantized model), then, for an adapter trained on a quantized
    base (or with ``quantize`` or a ``probe`` file), compare the logits of the unmerged adapter on the base
    as it was trained with the merged result (:func:`probe_difference`; ``probe=False`` skips it)."""
    from ..files.output_dir import check_out, check_out_base, prepare_out
    from ..operations.export import merge_ref, open_adapter
    from ..plugins import get_plugins
    from .plan import base_config

    base_config(base_dir)  # before any work: a transformers model directory ...
    check_out_base(out, base_dir)  # ... that the output would not replace
    plugins = plugins or get_plugins()
    if onto not in ONTO:
        raise InvalidInput(f"invalid --onto {onto!r} (expected one of: {', '.join(ONTO)})")
    quantizer = plugins.get("quantizers", quantize) if quantize else None
    qopts = quantizer.make_options(quantize_options or {}) if quantizer else None
    if probe not in (None, True, False) and not os.path.isfile(str(probe)):
        raise InvalidInput(f"probe file {probe} does not exist")
    check_out(out, force)
    target = prepare_out(out, force) if quantizer else out  # merged (full precision) here first
    try:
        result = merge_ref(
            reg,
            ref,
            base_dir,
            target,
            force=force or bool(quantizer),
            plugins=plugins,
            home=home,
            onto=onto,
            **merge_kwargs,
        )
        if quantizer:
            q = quantizer.quantize(target, out, force=force, home=home, **qopts)
            result.update(
                out=q["out"], files=q["files"], bytes=q["bytes"], quantization=q["quantization"], cached=False
            )
    finally:
        if quantizer:
            shutil.rmtree(target, ignore_errors=True)
    with open_adapter(reg, ref, plugins) as (adapter, _info):
        quantized = bool((adapter.manifest.get("base") or {}).get("quantization"))
        if quantized:
            result.setdefault("onto", onto)  # a cache hit's summary predates the option
        if probe is not False and (quantized or quantizer or probe):
            result["probe"] = probe_difference(
                adapter, base_dir, out, plugins=plugins, probe_path=probe if isinstance(probe, str) else None
            )
    return result


def probe_difference(
    adapter: LoadedAdapter,
    base_dir: str,
    merged_dir: str,
    *,
    plugins: Any = None,
    probe_path: str | None = None,
    max_length: int = 128,
) -> dict[str, Any]:
    """Mean and max ``|logits(unmerged) - logits(merged)|`` on a probe batch, where *unmerged* is the adapter
    attached to the base as it was trained (through the recorded quantizer for a quantized base, e.g. 4-bit
    for QLoRA) and *merged* is ``merged_dir`` loaded with plain ``from_pretrained``. The probe is
    ``probe_path`` (JSONL rows: ``text``, ``prompt``/``completion`` or ``messages``; the first 64) or a fixed
    batch of token ids (4 × 32, seed 0). Padding positions are left out."""
    import torch

    from ..training import data as D
    from ..training.modeling import attach_loaded, load_base_model, load_tokenizer, quiet_transformers

    if plugins is None:
        from ..plugins import get_plugins

        plugins = get_plugins()
    quiet_transformers()
    task = adapter.manifest.get("task") or "causal-lm"
    labels = adapter.manifest.get("labels")
    record = (adapter.manifest.get("base") or {}).get("quantization")
    if probe_path:
        tok = load_tokenizer(base_dir)
        rows = D.read_jsonl(probe_path)
        rows.rows = rows.rows[:64]
        if task == "seq-cls":
            ids = [
                tok(str(o.get("text", "")), truncation=True, max_length=max_length)["input_ids"] for _, o in rows.rows
            ]
        else:
            ids = [e["input_ids"] for e in D.causal_lm_examples(rows, tok, max_length)]
        ids = [i for i in ids if i]
        if not ids:
            raise InvalidInput(f"probe file {probe_path} has no rows with text")
        pad = tok.pad_token_id or 0
        width = max(len(i) for i in ids)
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
        source = os.path.basename(probe_path)
    else:
        cfg = load_json(os.path.join(base_dir, "config.json"))
        vocab = int(cfg.get("vocab_size") or 1000)
        g = torch.Generator().manual_seed(0)
        input_ids = torch.randint(min(4, vocab - 1), vocab, (PROBE_ROWS, PROBE_LEN), generator=g)
        mask = torch.ones_like(input_ids)
        source = f"fixed {PROBE_ROWS}x{PROBE_LEN} token ids (seed 0)"

    def logits(model: Any) -> Any:
        dev = next(model.parameters()).device
        with torch.no_grad():
            out = model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev)).logits.float().cpu()
        return out

    if record:
        quantizer = plugins.get("quantizers", record.get("quantizer", "?"))
        model, _ = quantizer.load_model(base_dir, task, labels, quantizer.options_from_record(record))
    else:
        model = load_base_model(base_dir, task, labels)
    attach_loaded(model, adapter)
    ref_logits = logits(model)
    del model
    import transformers

    auto = transformers.AutoModelForSequenceClassification if task == "seq-cls" else transformers.AutoModelForCausalLM
    merged = auto.from_pretrained(merged_dir, local_files_only=True)
    cfg = getattr(merged.config, "quantization_config", None)
    if cfg is not None:  # a re-quantized output: let its quantizer make it runnable here (e.g. CPU kernels)
        name = (getattr(merged.config, "adapterhub_quantization", None) or {}).get("quantizer")
        if name:
            plugins.get("quantizers", name).prepare(merged)
    merged.eval()
    new_logits = logits(merged)
    del merged
    if task != "seq-cls":
        keep = mask.bool()
        ref_logits, new_logits = ref_logits[keep], new_logits[keep]
    diff = (ref_logits - new_logits).abs()
    return {
        "probe": source,
        "reference": f"unmerged adapter on the {record['quant_type']} base"
        if record
        else "unmerged adapter on the base",
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_logit": float(ref_logits.abs().mean()),
    }
