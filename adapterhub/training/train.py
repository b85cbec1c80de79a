"""``adapterhub train``: one generic training loop over every method, on transformers' Trainer.

The method plugin adds its trainable modules (``Method.attach``); the Trainer trains whatever requires
gradients; checkpoints hold only the adapter's tensors (plus optimizer state), never the base weights.
The result is a delta checkpoint with the base fingerprint, data digests, the effective config and the
final metrics in its manifest, optionally pushed with lineage. The same code runs under
``accelerate launch`` / ``torchrun`` for several GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import AdapterhubError, InvalidInput

CHECKPOINT_TENSORS = "adapter_state.safetensors"
_NAME = re.compile(r"^[\w.-]*$")


@dataclass
class TrainOptions:
    base: str                                   # base model directory (transformers layout)
    method: str                                 # a registered method name
    task: str                                   # "causal-lm" | "seq-cls"
    data: str                                   # training JSONL
    out: str                                    # adapter directory to write
    eval: str | None = None                     # evaluation JSONL
    push: str | None = None                     # registry name to push the result to
    settings: dict[str, str] = field(default_factory=dict)  # --set key=value for the method config
    epochs: float = 3.0
    max_steps: int = -1                         # overrides epochs when > 0
    lr: float | None = None                     # default: the method's default_learning_rate or 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    seed: int = 42
    eval_steps: int | None = None               # evaluate (and checkpoint) every N steps
    early_stopping: int | None = None           # stop after N evaluations without eval-loss improvement
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"               # auto | no | bf16 | fp16
    init_from: str | None = None                # registry ref of an adapter to continue training
    resume: bool = True                         # resume from <out>.checkpoints after an interruption
    track: str | None = None                    # tracker plugin name (e.g. mlflow)
    experiment: str | None = None
    allow_dirty_data: bool = False
    allow_base_mismatch: bool = False
    force: bool = False                         # replace a non-empty out directory
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    logging_steps: int | None = None
    optim: str | None = None                    # transformers optimizer name (default adamw_torch)
    quantize: str | None = None                 # quantizer plugin to load the base through (default: the
                                                # method's base_quantizer, e.g. nf4 for qlora; "none": off)
    quantize_options: dict[str, str] = field(default_factory=dict)  # --quant-opt key=value for the quantizer
    progress: bool = True
    home: str | None = None



def resume_point(ckpt: str) -> str | None:
    """The newest *complete* checkpoint under ``ckpt`` (adapter tensors and a readable
    ``trainer_state.json``, which the Trainer writes last), or None. A process killed while saving leaves
    the newest one incomplete: training resumes from the one before it."""
    if not os.path.isdir(ckpt):
        return None
    steps = []
    for name in os.listdir(ckpt):
        prefix, _, step = name.partition("-")
        if prefix == "checkpoint" and step.isdigit():
            steps.append((int(step), os.path.join(ckpt, name)))
    for _, path in sorted(steps, reverse=True):
        try:
            with open(os.path.join(path, "trainer_state.json")) as f:
                json.load(f)
        except (OSError, ValueError):
            continue
        if os.path.isfile(os.path.join(path, CHECKPOINT_TENSORS)):
            return path
    return None


def coerce_settings(method: Any, settings: dict[str, str]) -> dict[str, Any]:
    """Turn ``--set key=value`` strings into typed config values, guided by the config's defaults.
    Unknown keys are left for ``Method.make_config`` to refuse with the list of valid keys."""
    fields = {f.name: f for f in dataclasses.fields(method.config_class)}
    out: dict[str, Any] = {}
    for key, raw in settings.items():
        f = fields.get(key)
        default = None
        if f is not None:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(default, bool) and isinstance(value, str):
            if value.lower() in ("true", "yes", "1", "on"):
                value = True
            elif value.lower() in ("false", "no", "0", "off"):
                value = False
        elif isinstance(default, (list, tuple)) and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, str) and "," in value and all(_NAME.match(v.strip()) for v in value.split(",")):
            value = [v.strip() for v in value.split(",") if v.strip()]  # q_proj,v_proj (a regex stays a string)
        out[key] = value
    return out


def _mixed_precision(mode: str) -> dict[str, bool]:
    import torch

    if mode not in ("auto", "no", "bf16", "fp16"):
        raise InvalidInput(f"invalid --mixed-precision {mode!r} (auto, no, bf16, fp16)")
    cuda = torch.cuda.is_available()
    if mode == "fp16" and not cuda:
        raise InvalidInput("fp16 mixed precision needs a CUDA GPU; on CPU use --mixed-precision bf16 or no")
    if mode == "auto":
        if not cuda:
            return {}
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    return {"bf16": mode == "bf16", "fp16": mode == "fp16"}


def train(opts: TrainOptions, plugins: Any = None, registry: Any = None) -> dict[str, Any]:
    """Train an adapter; returns ``{"out", "method", "trainable_params", "total_params", "metrics",
    ["ref", "digest"]}``. Raises :class:`AdapterhubError` for every user mistake before any work."""
    from .. import api
    from . import data
    from .modeling import TASK_TYPES, check_base_dir, clamp_max_length, load_base_model, load_tokenizer
    from ..plugins import get_plugins
    from ..files.output_dir import check_out, check_out_base
    from .checks import check_numbers, check_registry_writable, init_from_config, run_signature

    plugins = plugins or get_plugins()
    started = time.time()
    check_numbers(opts)
    check_base_dir(opts.base)
    if opts.task not in TASK_TYPES:
        raise InvalidInput(f"unknown task '{opts.task}' (expected one of: {', '.join(TASK_TYPES)})")
    method = plugins.get("methods", opts.method)
    values = coerce_settings(method, opts.settings)
    user_values = dict(values)
    if "task_type" in {f.name for f in dataclasses.fields(method.config_class)}:
        values.setdefault("task_type", TASK_TYPES[opts.task])
    config = method.make_config(values)
    quantizer, quant_options = _quantizer(opts, method, plugins)
    _check_optim(opts.optim)
    if opts.push:
        from ..registry.refs import validate_name

        validate_name(opts.push)
    check_out(opts.out, opts.force)  # refuse a non-empty out before any work
    check_out_base(opts.out, opts.base)  # even with --force: replacing out would delete the base
    check_out_base(_checkpoint_dir(opts), opts.base)
    precision = _mixed_precision(opts.mixed_precision)
    if opts.push:  # an unreachable or read-only registry fails now, not after training
        registry = registry or api.open_registry(opts.home, plugins)
        check_registry_writable(registry)

    # data: read, check, tokenize
    tokenizer = load_tokenizer(opts.base)
    max_length = clamp_max_length(opts.base, tokenizer, opts.max_length)
    if max_length != opts.max_length and opts.max_length != TrainOptions.max_length:  # an explicit value
        import warnings

        warnings.warn(f"--max-length {opts.max_length} is longer than the model takes; using {max_length}",
                      UserWarning, stacklevel=1)
    if max_length != opts.max_length:
        opts = dataclasses.replace(opts, max_length=max_length)
    train_rows = data.read_jsonl(opts.data)
    eval_rows = data.read_jsonl(opts.eval) if opts.eval else None
    report = _check_data(opts, tokenizer)
    parent_manifest = None
    loaded = None
    if opts.init_from:
        loaded = _load_registry_adapter(opts, plugins, registry)
        parent_manifest = loaded.manifest
        if loaded.method.name != method.name:
            raise InvalidInput(f"--init-from {opts.init_from} is a {loaded.method.name} adapter, not {method.name}")
        config = init_from_config(method, loaded, user_values, opts.task)
    labels = None
    if opts.task == "seq-cls":
        labels = (parent_manifest or {}).get("labels") or data.label_map_from(train_rows)
        if len(labels) < 2:
            raise InvalidInput(f"seq-cls needs at least two distinct labels; {os.path.basename(opts.data)} has only "
                               f"{labels[0]!r} (regression is not supported)")
        train_ex = data.seq_cls_examples(train_rows, tokenizer, opts.max_length, labels)
        eval_ex = data.seq_cls_examples(eval_rows, tokenizer, opts.max_length, labels) if eval_rows else None
    else:
        train_ex = data.causal_lm_examples(train_rows, tokenizer, opts.max_length)
        eval_ex = data.causal_lm_examples(eval_rows, tokenizer, opts.max_length) if eval_rows else None

    # model: base + adapter
    from transformers import set_seed

    set_seed(opts.seed)
    fp = api.fingerprint(opts.base, opts.home)
    if loaded is not None:
        expected = (parent_manifest.get("base") or {}).get("fingerprint")
        if not opts.allow_base_mismatch:
            api.check_base(expected, fp.digest, opts.base, (parent_manifest.get("base") or {}).get("name"))
    signature = run_signature(opts, fp.digest, config, [train_rows.digest] + ([eval_rows.digest] if eval_rows else []))
    _prepare_checkpoints(opts, signature)
    quantization = None
    if quantizer is not None:  # quantized as it loads: the full-precision model is never in memory
        model, quantization = quantizer.load_model(opts.base, opts.task, labels, quant_options)
        quantization = {**_jsonable(quantization), "source_fingerprint": fp.digest}
    else:
        model = load_base_model(opts.base, opts.task, labels)
    effective = method.attach(model, config) or config
    if quantizer is not None and hasattr(quantizer, "prepare_training"):
        quantizer.prepare_training(model)
    if loaded is not None:
        method.load_state_dict(model, loaded.tensors)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise AdapterhubError(f"method '{method.name}' left no trainable parameters on this model")

    tracker = _tracker(opts, plugins)
    params = {"method": method.name, "task": opts.task, "base_fingerprint": fp.digest,
              **({"base_quantization": quantization["quantizer"]} if quantization else {}),
              **{f"config.{k}": v for k, v in dataclasses.asdict(effective).items()},
              **{f"train.{k}": getattr(opts, k) for k in ("epochs", "max_steps", "lr", "batch_size", "grad_accum",
                                                           "max_length", "seed")},
              "data.train": train_rows.digest, **({"data.eval": eval_rows.digest} if eval_rows else {})}
    if tracker:
        tracker.start(run_name=os.path.basename(os.path.abspath(opts.out)),
                      experiment=opts.experiment or opts.push, params=params,
                      tags={"adapterhub.method": method.name, "adapterhub.base_fingerprint": fp.digest,
                            **({"adapterhub.name": opts.push} if opts.push else {})})
        if report is not None:
            tracker.log_report("data_check.json", report)

    metrics = _run_trainer(opts, method, model, tokenizer, train_ex, eval_ex, precision, tracker, signature)

    manifest = {
        "method": method.name,
        "config": _jsonable(dataclasses.asdict(effective)),
        "base": {"fingerprint": fp.digest, "name": os.path.basename(os.path.abspath(opts.base)),
                 "tensors": fp.tensors, "bytes": fp.bytes,
                 **({"quantization": quantization} if quantization else {})},
        "task": opts.task,
        "data": [train_rows.describe("train")] + ([eval_rows.describe("eval")] if eval_rows else []),
        "metrics": metrics,
        "training": {k: getattr(opts, k) for k in ("epochs", "max_steps", "lr", "batch_size", "grad_accum",
                                                    "max_length", "seed", "mixed_precision", "gradient_checkpointing",
                                                    "optim")},
        "tokenizer": {"class": type(tokenizer).__name__, "pad_token": tokenizer.pad_token,
                      "chat_template": bool(getattr(tokenizer, "chat_template", None))},
        "plugin": {"name": method.name, "module": type(method).__module__.split(".")[0]},
        "adapterhub_version": __version__,
    }
    if labels is not None:
        manifest["labels"] = labels
    if report is not None:
        manifest["data_check"] = _report_summary(report, opts.allow_dirty_data)
    if tracker:
        manifest["tracking"] = tracker.run_info() or {}
    from ..files.checkpoint import save_adapter

    peft_config = method.to_peft_config(effective, os.path.abspath(opts.base))
    out = save_adapter(opts.out, manifest, method.state_dict(model), peft_config=peft_config, force=True)
    shutil.rmtree(_checkpoint_dir(opts), ignore_errors=True)
    result: dict[str, Any] = {"out": out, "method": method.name, "task": opts.task, "trainable_params": trainable,
                              "total_params": total, "metrics": metrics, "base_fingerprint": fp.digest,
                              "seconds": round(time.time() - started, 1)}
    if quantization:
        result["base_quantization"] = quantization
    if tracker:
        tracker.log_artifacts(out, "adapter")
    if opts.push:
        from ..registry.registry import ParentSpec

        reg = registry or api.open_registry(opts.home, plugins)
        parents = [ParentSpec("trained_from", ref=opts.init_from)] if opts.init_from else []
        pub = api.push(reg, out, opts.push, base=opts.base, parents=parents, home=opts.home, plugins=plugins)
        result.update({"ref": pub.ref, "digest": "sha256:" + pub.digest})
        if tracker:
            tracker.set_tags({"adapterhub.ref": pub.ref, "adapterhub.digest": "sha256:" + pub.digest})
    if tracker:
        tracker.end("FINISHED")
        result["tracking"] = tracker.run_info() or {}
        if tracker.not_logged():
            result["tracking_warning"] = f"not logged to {opts.track}: {', '.join(tracker.not_logged())}"
    return result


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _quantizer(opts: TrainOptions, method: Any, plugins: Any) -> tuple[Any, dict[str, Any]]:
    """The quantizer the base is loaded through (``--quantize``, else the method's ``base_quantizer``)
    and its options; ``(None, {})`` for a full-precision base. Refuses a method that cannot train on a
    quantized base (it must say ``supports_quantized_base = True``)."""
    name = opts.quantize if opts.quantize is not None else getattr(method, "base_quantizer", None)
    if not name or name == "none":
        if opts.quantize_options:
            raise InvalidInput("--quant-opt needs --quantize NAME")
        return None, {}
    quantizer = plugins.get("quantizers", name)  # NotFound lists the available quantizers
    if not getattr(method, "supports_quantized_base", False):
        able = [n for n, _, m in plugins.items("methods") if getattr(m, "supports_quantized_base", False)]
        raise InvalidInput(f"method '{method.name}' cannot train on a quantized base (--quantize {name}); "
                           f"methods that can: {', '.join(able) or 'none installed'}")
    return quantizer, quantizer.make_options(dict(opts.quantize_options))


#: optimizers that need CUDA (bitsandbytes' paged and 8-bit states live in GPU memory)
_CUDA_OPTIM = re.compile(r"paged|8bit|bnb|4bit")


def _check_optim(name: str | None) -> None:
    if not name:
        return
    from transformers.training_args import OptimizerNames

    valid = [o.value for o in OptimizerNames]
    if name not in valid:
        raise InvalidInput(f"unknown --optim {name!r} (e.g. adamw_torch, adafactor, sgd, paged_adamw_8bit)")
    import torch

    if _CUDA_OPTIM.search(name) and not torch.cuda.is_available():
        raise InvalidInput(f"--optim {name} needs a CUDA GPU (paged/8-bit optimizer states); on CPU leave "
                           "--optim out (adamw_torch)")


def _check_data(opts: TrainOptions, tokenizer: Any) -> dict[str, Any] | None:
    """Run the data-quality check first; refuse conflicts or leakage unless --allow-dirty-data."""
    try:
        from . import quality
    except ImportError:  # pragma: no cover - the quality module ships with the package
        return None
    report = quality.check_data(opts.data, opts.eval, task=opts.task, tokenizer=tokenizer, max_length=opts.max_length)
    reasons = quality.gate_data(report)
    if reasons and not opts.allow_dirty_data:
        raise InvalidInput(f"data check failed for {os.path.basename(opts.data)}: {'; '.join(reasons)} "
                           "(see 'adapterhub data check'; --allow-dirty-data trains anyway and records it)")
    return report


def _report_summary(report: dict[str, Any], allowed: bool) -> dict[str, Any]:
    from . import quality

    reasons = quality.gate_data(report)
    return {"status": "failed" if reasons else "passed", "reasons": reasons, "allowed_dirty": bool(reasons and allowed),
            "summary": quality.summary(report) if hasattr(quality, "summary") else {}}


def _load_registry_adapter(opts: TrainOptions, plugins: Any, registry: Any):
    from .. import api
    from ..files.checkpoint import load_adapter_dir

    reg = registry or api.open_registry(opts.home, plugins)
    tmp = tempfile.mkdtemp(prefix="adapterhub-init-")
    try:
        api.pull(reg, opts.init_from, os.path.join(tmp, "a"))
        return load_adapter_dir(os.path.join(tmp, "a"), plugins)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tracker(opts: TrainOptions, plugins: Any):
    name = opts.track or os.environ.get("ADAPTERHUB_TRACKER")
    if not name:
        return None
    from .tracking import SafeTracker

    return SafeTracker(plugins.get("trackers", name)())


def _checkpoint_dir(opts: TrainOptions) -> str:
    return os.path.abspath(opts.out).rstrip("/") + ".checkpoints"


def _prepare_checkpoints(opts: TrainOptions, signature: dict[str, Any]) -> None:
    """Refuse to resume another run's checkpoints; --no-resume discards them. Records this run's options."""
    from .checks import check_resume

    ckpt = _checkpoint_dir(opts)
    if opts.resume:
        check_resume(ckpt, signature, resume_point(ckpt) is not None)
    elif os.path.isdir(ckpt):
        shutil.rmtree(ckpt)


def _run_trainer(opts, method, model, tokenizer, train_ex, eval_ex, precision, tracker, signature) -> dict[str, float]:
    import numpy as np
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from .data import ListDataset, collate

    ckpt = _checkpoint_dir(opts)
    steps_per_epoch = max(1, -(-len(train_ex) // (opts.batch_size * opts.grad_accum)))
    total_steps = opts.max_steps if opts.max_steps > 0 else int(steps_per_epoch * opts.epochs)
    eval_steps = opts.eval_steps or max(1, min(total_steps, steps_per_epoch))
    lr = opts.lr if opts.lr is not None else getattr(method, "default_learning_rate", 2e-4)
    args = TrainingArguments(
        output_dir=ckpt, per_device_train_batch_size=opts.batch_size, per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum, learning_rate=lr, num_train_epochs=opts.epochs,
        max_steps=opts.max_steps, seed=opts.seed, data_seed=opts.seed, warmup_steps=int(opts.warmup_ratio * total_steps),
        weight_decay=opts.weight_decay, logging_steps=opts.logging_steps or max(1, min(10, total_steps // 10)),
        eval_strategy="steps" if eval_ex else "no", eval_steps=eval_steps, save_strategy="steps",
        save_steps=eval_steps, save_total_limit=2, report_to=[], disable_tqdm=not opts.progress,
        gradient_checkpointing=opts.gradient_checkpointing, remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, label_names=["labels"],
        save_only_model=False, **({"optim": opts.optim} if opts.optim else {}), **precision)
    if opts.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()

    def compute_metrics(pred):
        logits, labels = pred.predictions, pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    class AdapterTrainer(Trainer):
        """Checkpoints hold the adapter's tensors only."""

        def _save(self, output_dir=None, state_dict=None):
            from safetensors.torch import save_file

            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in method.state_dict(self.model).items()},
                      os.path.join(output_dir, CHECKPOINT_TENSORS))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            from safetensors.torch import load_file

            method.load_state_dict(model or self.model, load_file(os.path.join(resume_from_checkpoint, CHECKPOINT_TENSORS)))

        def _load_best_model(self):  # we never load the base twice
            return None

    class EarlyStop(TrainerCallback):
        def __init__(self, patience: int):
            self.patience, self.best, self.bad = patience, float("inf"), 0

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if loss is None:
                return
            if loss < self.best - 1e-6:
                self.best, self.bad = loss, 0
            else:
                self.bad += 1
                if self.bad >= self.patience:
                    control.should_training_stop = True

    callbacks = []
    if opts.early_stopping and eval_ex:
        callbacks.append(EarlyStop(opts.early_stopping))
    if tracker:
        from .tracking import trainer_callback

        callbacks.append(trainer_callback(tracker))
    trainer = AdapterTrainer(
        model=model, args=args, train_dataset=ListDataset(train_ex), eval_dataset=ListDataset(eval_ex) if eval_ex else None,
        data_collator=collate(tokenizer.pad_token_id), callbacks=callbacks,
        compute_metrics=compute_metrics if (eval_ex and opts.task == "seq-cls") else None)
    # every method's loss is the model's own mean per batch: a method that re-aligns labels (prompt
    # tuning learns the first real token too) must not be divided by the Trainer's token count
    trainer.model_accepts_loss_kwargs = False
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # stdout is ours (text or --json); progress goes to stderr
    resume = resume_point(ckpt) if opts.resume else None
    try:
        from .checks import write_run_file

        write_run_file(ckpt, signature)  # a later resume checks it is the same run
        out = trainer.train(resume_from_checkpoint=resume)
    except BaseException:
        if resume_point(ckpt) is None:  # nothing to resume from: leave nothing behind
            shutil.rmtree(ckpt, ignore_errors=True)
        raise
    metrics = {"train_loss": float(out.training_loss), "steps": int(out.global_step),
               "epochs": float(trainer.state.epoch or 0)}
    if resume:
        metrics["resumed_from_step"] = int(os.path.basename(resume).split("-")[-1])
    if eval_ex:
        ev = trainer.evaluate()
        metrics.update({k: float(v) for k, v in ev.items() if k in ("eval_loss", "eval_accuracy")})
        if tracker:
            tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith("eval_")}, int(out.global_step))
    model.eval()
    return metrics
