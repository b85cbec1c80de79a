"""``adapterhub train``: one generic training loop over every method, on transformers' Trainer.

The method plugin adds its trainable modules (``Method.attach``); the Trainer trains whatever requires
gradients; checkpoints hold only the adapter's tensors (plus optimizer state), never the base weights.
The result is a delta checkpoint with the base fingerprint, data digests, the effective config and the
final metrics in its manifest, optionally pushed with lineage. The same code runs on every process under
``accelerate launch`` / ``torchrun`` (see :mod:`adapterhub.training.distributed`): process 0 alone checks
the data, writes, pushes and tracks.
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
from ..errors import AdapterhubError, InvalidInput, ReportedElsewhere, describe
from ..files.hub import base_name, from_path, peft_base_fields
from .trainer import CHECKPOINT_TENSORS, global_batch, resume_point

__all__ = ["TrainOptions", "train", "resume_point", "CHECKPOINT_TENSORS"]
_NAME = re.compile(r"^[\w.-]*$")


@dataclass
class TrainOptions:
    base: str  # base model directory (transformers layout)
    method: str  # a registered method name
    task: str  # "causal-lm" | "seq-cls"
    data: str  # training JSONL
    out: str  # adapter directory to write
    eval: str | None = None  # evaluation JSONL
    push: str | None = None  # registry name to push the result to
    settings: dict[str, str] = field(default_factory=dict)  # --set key=value for the method config
    epochs: float = 3.0
    max_steps: int = -1  # overrides epochs when > 0
    lr: float | None = None  # default: the method's default_learning_rate
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    seed: int = 42
    eval_steps: int | None = None  # evaluate (and checkpoint) every N steps
    early_stopping: int | None = None  # stop after N evaluations without eval-loss improvement
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    init_from: str | None = None  # registry ref of an adapter to continue training
    resume: bool = True  # resume from <out>.checkpoints after an interruption
    track: str | None = None  # tracker plugin name (e.g. mlflow)
    experiment: str | None = None
    allow_dirty_data: bool = False
    fail_on_noise: float | None = None  # refuse seq-cls data whose estimated label noise is above this
    allow_base_mismatch: bool = False
    force: bool = False  # replace a non-empty out directory
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    logging_steps: int | None = None
    optim: str | None = None  # transformers optimizer name (default adamw_torch)
    quantize: str | None = None  # quantizer plugin to load the base through (default: the
    # method's base_quantizer, e.g. nf4 for qlora; "none": off)
    quantize_options: dict[str, str] = field(default_factory=dict)  # --quant-opt key=value for the quantizer
    progress: bool = True
    home: str | None = None
    dist_timeout: float | None = None  # seconds a process waits for the others (several processes)
    allow_resize: bool = False  # resume checkpoints written by another number of processes


@dataclass
class Prepared:
    """A run's checked inputs, before the model is loaded (:func:`_prepare`); the last three are process 0's."""

    opts: TrainOptions  # with --max-length clamped to what the model takes
    registry: Any  # the registry a --push goes to (opened by process 0)
    method: Any
    config: Any  # the method config (an --init-from adapter's, with allowed changes)
    quantizer: Any  # the quantizer the base loads through, or None
    quant_options: dict[str, Any]
    precision: dict[str, bool]  # TrainingArguments' bf16 / fp16
    tokenizer: Any
    train_rows: Any  # data.Rows
    eval_rows: Any
    report: dict[str, Any] | None  # the data check's report
    loaded: Any  # the --init-from adapter (LoadedAdapter) or None
    labels: list[str] | None  # seq-cls label map
    train_ex: list[dict[str, Any]]  # tokenized examples
    eval_ex: list[dict[str, Any]] | None
    fingerprint: Any = None  # the base's Fingerprint
    signature: dict[str, Any] | None = None  # what a resume must match (checks.run_signature)
    resized_from: int | None = None  # processes of the checkpoints resumed with --allow-resize


def coerce_settings(method: Any, settings: dict[str, str]) -> dict[str, Any]:
    """Turn ``--set key=value`` strings into typed config values, guided by the config's defaults.
    Unknown keys are left for ``Method.make_config`` to refuse with the list of valid keys."""
    fields = {f.name: f for f in dataclasses.fields(method.config_class)}
    out: dict[str, Any] = {}
    for key, raw in settings.items():
        f = fields.get(key)
        default = None
        if f is not None:
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            )  # type: ignore[misc]
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


def train(opts: TrainOptions, plugins: Any = None, registry: Any = None) -> dict[str, Any] | None:
    """Train an adapter; returns ``{"out", "method", "trainable_params", "total_params", "metrics",
    "world_size", "global_batch_size", ["ref", "digest"]}``. Raises :class:`AdapterhubError` for every user
    mistake before any work. Under ``torchrun`` / ``accelerate launch`` every process calls this: process 0
    returns the result, the others ``None`` once process 0 has written and pushed it."""
    import torch

    from ..plugins import get_plugins
    from .distributed import DEFAULT_TIMEOUT_S, start, timeout_seconds

    plugins = plugins or get_plugins()
    started = time.time()
    cuda = torch.cuda.is_available()
    try:
        timeout, bad_timeout = timeout_seconds(opts.dist_timeout), None
    except InvalidInput as exc:  # join the others anyway, so that one process reports it
        timeout, bad_timeout = DEFAULT_TIMEOUT_S, exc
    procs = start(timeout, cuda)
    try:
        return _train(opts, plugins, registry, procs, bad_timeout, cuda, started)
    finally:
        procs.close()


def _train(
    opts: TrainOptions,
    plugins: Any,
    registry: Any,
    procs: Any,
    bad_timeout: Exception | None,
    cuda: bool,
    started: float,
) -> dict[str, Any] | None:
    from .distributed import adapter_state, check_engine

    with procs.together("checking the options, base and data"):
        if bad_timeout is not None:
            raise bad_timeout
        notes = check_engine(cuda)
        if procs.main:
            for note in notes:
                import warnings

                warnings.warn(note, UserWarning, stacklevel=1)
        run = _prepare(opts, plugins, registry, procs)
    opts, registry = run.opts, run.registry
    method = run.method
    ckpt = _checkpoint_dir(opts)
    resume = procs.share(
        resume_point(ckpt) if procs.main and opts.resume else None, "finding the checkpoint to resume from"
    )
    with procs.together("loading the model"):
        model, effective, quantization, trainable, total = _build_model(opts, run, resume)
    tracker = _tracker(opts, plugins) if procs.main else None
    fp, train_rows, eval_rows = run.fingerprint, run.train_rows, run.eval_rows
    world, batch = procs.world_size, global_batch(opts, procs.world_size)
    if tracker:
        params = {
            "method": method.name,
            "task": opts.task,
            "base_fingerprint": fp.digest,
            **({"base_quantization": quantization["quantizer"]} if quantization else {}),
            **{f"config.{k}": v for k, v in dataclasses.asdict(effective).items()},
            **{
                f"train.{k}": getattr(opts, k)
                for k in ("epochs", "max_steps", "lr", "batch_size", "grad_accum", "max_length", "seed")
            },
            "train.world_size": world,
            "train.global_batch_size": batch,
            "data.train": train_rows.digest,
            **({"data.eval": eval_rows.digest} if eval_rows else {}),
        }
        tracker.start(
            run_name=os.path.basename(os.path.abspath(opts.out)),
            experiment=opts.experiment or opts.push,
            params=params,
            tags={
                "adapterhub.method": method.name,
                "adapterhub.base_fingerprint": fp.digest,
                **({"adapterhub.name": opts.push} if opts.push else {}),
            },
        )
        if run.report is not None:
            tracker.log_report("data_check.json", run.report)

    from .trainer import run_trainer

    metrics = run_trainer(
        opts,
        method,
        model,
        run.tokenizer,
        run.train_ex,
        run.eval_ex,
        run.precision,
        tracker,
        run.signature,
        procs,
        ckpt,
        resume,
    )
    tensors = adapter_state(method, model)  # every process: under FSDP the shards are gathered
    if not procs.main:
        failed = procs.share(None, "waiting for process 0 to save and push the adapter")
        if failed:
            raise ReportedElsewhere(failed)
        return None
    history = metrics.pop("loss_history", [])
    try:
        training = {
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
                    "mixed_precision",
                    "gradient_checkpointing",
                    "optim",
                )
            },
            "world_size": world,
            "global_batch_size": batch,
            **({"resized_from_world_size": run.resized_from} if resume and run.resized_from else {}),
            "loss_history": history,
        }
        manifest = {
            "method": method.name,
            "config": _jsonable(dataclasses.asdict(effective)),
            "base": {
                "fingerprint": fp.digest,
                "name": base_name(opts.base),
                "tensors": fp.tensors,
                "bytes": fp.bytes,
                **({"quantization": quantization} if quantization else {}),
            },
            "task": opts.task,
            "data": [train_rows.describe("train")] + ([eval_rows.describe("eval")] if eval_rows else []),
            "metrics": metrics,
            "training": training,
            "tokenizer": {
                "class": type(run.tokenizer).__name__,
                "pad_token": run.tokenizer.pad_token,
                "chat_template": bool(getattr(run.tokenizer, "chat_template", None)),
            },
            "plugin": {"name": method.name, "module": type(method).__module__.split(".")[0]},
            "adapterhub_version": __version__,
        }
        result = _publish(opts, plugins, registry, method, effective, manifest, tensors, run, tracker)
        result.update(
            {
                "trainable_params": trainable,
                "total_params": total,
                "world_size": world,
                "global_batch_size": batch,
                "seconds": round(time.time() - started, 1),
            }
        )
    except BaseException as exc:
        procs.share(describe(exc) or type(exc).__name__, "telling the other processes that process 0 failed")
        raise
    procs.share(None, "telling the other processes that the adapter is saved")
    return result


def _prepare(opts: TrainOptions, plugins: Any, registry: Any, procs: Any) -> "Prepared":
    """Every check and input of a run, before the model is loaded: options, method config, base, output,
    registry, data (read, checked by process 0, tokenized), ``--init-from``, the run's checkpoints."""
    from .. import api
    from ..files.output_dir import check_out, check_out_base
    from . import data
    from .checks import check_numbers, check_registry_writable, init_from_config, run_signature
    from .modeling import TASK_TYPES, check_base_dir, clamp_max_length, load_tokenizer

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
    if opts.push and procs.main:  # an unreachable or read-only registry fails now, not after training
        registry = registry or api.open_registry(opts.home, plugins)
        check_registry_writable(registry)

    # data: read, check, tokenize
    tokenizer = load_tokenizer(opts.base)
    max_length = clamp_max_length(opts.base, tokenizer, opts.max_length)
    if max_length != opts.max_length and opts.max_length != TrainOptions.max_length and procs.main:
        import warnings

        warnings.warn(
            f"--max-length {opts.max_length} is longer than the model takes; using {max_length}",
            UserWarning,
            stacklevel=1,
        )
    if max_length != opts.max_length:
        opts = dataclasses.replace(opts, max_length=max_length)
    train_rows = data.read_jsonl(opts.data)
    eval_rows = data.read_jsonl(opts.eval) if opts.eval else None
    report = _check_data(opts, tokenizer) if procs.main else None
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
            raise InvalidInput(
                f"seq-cls needs at least two distinct labels; {os.path.basename(opts.data)} has only "
                f"{labels[0]!r} (regression is not supported)"
            )
        train_ex = data.seq_cls_examples(train_rows, tokenizer, opts.max_length, labels)
        eval_ex = data.seq_cls_examples(eval_rows, tokenizer, opts.max_length, labels) if eval_rows else None
    else:
        train_ex = data.causal_lm_examples(train_rows, tokenizer, opts.max_length)
        eval_ex = data.causal_lm_examples(eval_rows, tokenizer, opts.max_length) if eval_rows else None

    fp = signature = resized_from = None
    if procs.main:  # the base is hashed once; the checkpoints are process 0's to check and clear
        fp = api.fingerprint(opts.base, opts.home)
        if loaded is not None and not opts.allow_base_mismatch:
            api.check_base(
                (parent_manifest.get("base") or {}).get("fingerprint"),
                fp.digest,
                opts.base,
                (parent_manifest.get("base") or {}).get("name"),
            )
        digests = [train_rows.digest] + ([eval_rows.digest] if eval_rows else [])
        signature = run_signature(opts, fp.digest, config, digests, procs.world_size)
        resized_from = _prepare_checkpoints(opts, signature)
    return Prepared(
        opts,
        registry,
        method,
        config,
        quantizer,
        quant_options,
        precision,
        tokenizer,
        train_rows,
        eval_rows,
        report,
        loaded,
        labels,
        train_ex,
        eval_ex,
        fp,
        signature,
        resized_from,
    )


def _build_model(opts: TrainOptions, run: "Prepared", resume: str | None):
    """The base (quantized as it loads when asked) with the adapter attached, its tensors loaded from
    ``--init-from`` or the checkpoint being resumed. Returns (model, effective config, quantization, trainable,
    total)."""
    from transformers import set_seed

    from .modeling import load_base_model

    method, quantizer = run.method, run.quantizer
    if resume and not os.path.isfile(os.path.join(resume, CHECKPOINT_TENSORS)):
        raise InvalidInput(
            f"{resume} is not visible to this process: resuming on several machines needs "
            f"{os.path.dirname(resume)} on storage they all share"
        )
    set_seed(opts.seed)
    quantization = None
    if quantizer is not None:  # quantized as it loads: the full-precision model is never in memory
        model, quantization = quantizer.load_model(opts.base, opts.task, run.labels, run.quant_options)
        quantization = _jsonable(quantization)
        if run.fingerprint is not None:
            quantization["source_fingerprint"] = run.fingerprint.digest
    else:
        model = load_base_model(opts.base, opts.task, run.labels)
    effective = method.attach(model, run.config) or run.config
    if quantizer is not None:
        quantizer.prepare_training(model)
    if run.loaded is not None:
        method.load_state_dict(model, run.loaded.tensors)
    if resume:
        from safetensors.torch import load_file

        method.load_state_dict(model, load_file(os.path.join(resume, CHECKPOINT_TENSORS)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise AdapterhubError(f"method '{method.name}' left no trainable parameters on this model")
    return model, effective, quantization, trainable, total


def _publish(
    opts: TrainOptions,
    plugins: Any,
    registry: Any,
    method: Any,
    effective: Any,
    manifest: dict[str, Any],
    tensors: dict[str, Any],
    run: "Prepared",
    tracker: Any,
) -> dict[str, Any]:
    """Process 0: write the adapter directory, clear the checkpoints, push, and close the tracker's run."""
    from .. import api
    from ..files.checkpoint import save_adapter

    if run.labels is not None:
        manifest["labels"] = run.labels
    if run.report is not None:
        manifest["data_check"] = _report_summary(run.report, opts.allow_dirty_data)
        if opts.fail_on_noise is not None:  # the gate the data passed, beside the noise it was estimated to have
            manifest["data_check"]["fail_on_noise"] = opts.fail_on_noise
    if tracker:
        manifest["tracking"] = tracker.run_info() or {}
    fp, quantization = run.fingerprint, manifest["base"].get("quantization")
    hub = from_path(opts.base)  # a Hub base: its id and commit, what AutoPeftModel loads
    peft_base = peft_base_fields(hub.name) if hub.hub_id else {"base_model_name_or_path": os.path.abspath(opts.base)}
    peft_config = method.to_peft_config(effective, peft_base["base_model_name_or_path"])
    if peft_config is not None:
        peft_config.update(peft_base)
    out = save_adapter(opts.out, manifest, tensors, peft_config=peft_config, force=True)
    shutil.rmtree(_checkpoint_dir(opts), ignore_errors=True)
    result: dict[str, Any] = {
        "out": out,
        "method": method.name,
        "task": opts.task,
        "metrics": manifest["metrics"],
        "base_fingerprint": fp.digest,
    }
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
    name = opts.quantize if opts.quantize is not None else method.base_quantizer
    if not name or name == "none":
        if opts.quantize_options:
            raise InvalidInput("--quant-opt needs --quantize NAME")
        return None, {}
    quantizer = plugins.get("quantizers", name)  # NotFound lists the available quantizers
    if not method.supports_quantized_base:
        able = [n for n, _, m in plugins.items("methods") if m.supports_quantized_base]
        raise InvalidInput(
            f"method '{method.name}' cannot train on a quantized base (--quantize {name}); "
            f"methods that can: {', '.join(able) or 'none installed'}"
        )
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
        raise InvalidInput(
            f"--optim {name} needs a CUDA GPU (paged/8-bit optimizer states); on CPU leave --optim out (adamw_torch)"
        )


def _check_data(opts: TrainOptions, tokenizer: Any) -> dict[str, Any] | None:
    """Run the data-quality check first; refuse conflicts or leakage unless --allow-dirty-data."""
    try:
        from . import quality
    except ImportError:  # pragma: no cover - the quality module ships with the package
        return None
    embed = None
    if opts.fail_on_noise is not None:
        if opts.task != "seq-cls":
            raise InvalidInput("--fail-on-noise needs --task seq-cls (it checks labels)")
        from .embed import embedder

        embed = embedder(opts.base)
    report = quality.check_data(
        opts.data, opts.eval, task=opts.task, tokenizer=tokenizer, max_length=opts.max_length, embed=embed
    )
    from .label_noise import gate_noise

    noisy = gate_noise(report["label_issues"], opts.fail_on_noise)
    if noisy:
        raise InvalidInput(
            f"data check failed for {os.path.basename(opts.data)}: {noisy} (see 'adapterhub data "
            "check --base'; 'adapterhub data clean' writes the data without those rows)"
        )
    reasons = quality.gate_data(report)
    if reasons and not opts.allow_dirty_data:
        raise InvalidInput(
            f"data check failed for {os.path.basename(opts.data)}: {'; '.join(reasons)} "
            "(see 'adapterhub data check'; --allow-dirty-data trains anyway and records it)"
        )
    return report


def _report_summary(report: dict[str, Any], allowed: bool) -> dict[str, Any]:
    from . import quality

    reasons = quality.gate_data(report)
    return {
        "status": "failed" if reasons else "passed",
        "reasons": reasons,
        "allowed_dirty": bool(reasons and allowed),
        "summary": quality.summary(report) if hasattr(quality, "summary") else {},
    }


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


def _prepare_checkpoints(opts: TrainOptions, signature: dict[str, Any]) -> int | None:
    """Refuse to resume another run's checkpoints (or, without --allow-resize, this run's on another number
    of processes); --no-resume discards them. Returns the number of processes a resized run had."""
    from .checks import check_resume

    ckpt = _checkpoint_dir(opts)
    if opts.resume:
        return check_resume(ckpt, signature, resume_point(ckpt) is not None, opts.allow_resize)
    if os.path.isdir(ckpt):
        shutil.rmtree(ckpt)
    return None
