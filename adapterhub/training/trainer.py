"""The transformers ``Trainer`` as ``adapterhub train`` runs it: checkpoints hold only the adapter's tensors
(plus optimizer, scheduler and RNG state), a checkpoint is complete once every process has saved its part,
and the loss and schedule are those of the global batch (``--batch-size`` per process x ``--grad-accum`` x
the number of processes)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import AdapterhubError, describe

CHECKPOINT_TENSORS = "adapter_state.safetensors"
#: what DDP says when a trainable parameter got no gradient
_UNUSED_PARAMETERS = "Expected to have finished reduction in the prior iteration"


def resume_point(ckpt: str) -> str | None:
    """The newest *complete* checkpoint under ``ckpt`` (adapter tensors and a readable
    ``trainer_state.json``, which process 0 writes last, after every process saved its RNG state), or None.
    A process killed while saving leaves the newest one incomplete: training resumes from the one before."""
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


def global_batch(opts: Any, world_size: int) -> int:
    """Rows per optimizer step over all processes."""
    return opts.batch_size * opts.grad_accum * world_size


def run_trainer(
    opts: Any,
    method: Any,
    model: Any,
    tokenizer: Any,
    train_ex: list,
    eval_ex: list | None,
    precision: dict[str, bool],
    tracker: Any,
    signature: dict[str, Any] | None,
    procs: Any,
    ckpt: str,
    resume: str | None,
) -> dict[str, float]:
    """Train ``model`` (the adapter's tensors were loaded from ``resume`` already) and return the metrics
    of the whole run. Every process calls this; ``signature`` and ``tracker`` are process 0's."""
    import numpy as np
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from .data import ListDataset, collate
    from .distributed import adapter_state, peer_failure

    steps_per_epoch = max(1, -(-len(train_ex) // global_batch(opts, procs.world_size)))
    total_steps = opts.max_steps if opts.max_steps > 0 else int(steps_per_epoch * opts.epochs)
    eval_steps = opts.eval_steps or max(1, min(total_steps, steps_per_epoch))
    lr = opts.lr if opts.lr is not None else method.default_learning_rate
    args = TrainingArguments(
        output_dir=ckpt,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        learning_rate=lr,
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        seed=opts.seed,
        data_seed=opts.seed,
        warmup_steps=int(opts.warmup_ratio * total_steps),
        weight_decay=opts.weight_decay,
        logging_steps=opts.logging_steps or max(1, min(10, total_steps // 10)),
        eval_strategy="steps" if eval_ex else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        report_to=[],
        disable_tqdm=not opts.progress,
        gradient_checkpointing=opts.gradient_checkpointing,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        label_names=["labels"],
        save_only_model=False,
        ddp_timeout=int(procs.timeout_s),
        # every trainable parameter takes part in the forward pass (a method's contract): DDP need not
        # search the autograd graph for unused ones at each step
        ddp_find_unused_parameters=False,
        **({"optim": opts.optim} if opts.optim else {}),
        **precision,
    )
    if opts.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()

    def compute_metrics(pred):
        logits, labels = pred.predictions, pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    class AdapterTrainer(Trainer):
        """Checkpoints hold the adapter's tensors only, written by process 0."""

        def save_model(self, output_dir=None, _internal_call=False):
            from safetensors.torch import save_file

            tensors = adapter_state(method, self.model)  # every process: FSDP gathers the shards
            if self.args.should_save:
                output_dir = output_dir or self.args.output_dir
                os.makedirs(output_dir, exist_ok=True)
                save_file(tensors, os.path.join(output_dir, CHECKPOINT_TENSORS))

        def _save_rng_state(self, output_dir):
            super()._save_rng_state(output_dir)
            # process 0 writes trainer_state.json (the mark of a complete checkpoint) after this: only once
            # every process's RNG state is on disk
            procs.barrier("saving a checkpoint")

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            return None  # the adapter's tensors were loaded before training, on every process

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
        model=model,
        args=args,
        train_dataset=ListDataset(train_ex),
        eval_dataset=ListDataset(eval_ex) if eval_ex else None,
        data_collator=collate(tokenizer.pad_token_id),
        callbacks=callbacks,
        compute_metrics=compute_metrics if (eval_ex and opts.task == "seq-cls") else None,
    )
    # every method's loss is the model's own mean per batch: a method that re-aligns labels (prompt
    # tuning learns the first real token too) must not be divided by the Trainer's token count
    trainer.model_accepts_loss_kwargs = False
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # stdout is ours (text or --json); progress goes to stderr
    try:
        if procs.main:
            from .checks import write_run_file

            write_run_file(ckpt, signature)  # a later resume checks it is the same run
        with _stopped_by_launcher(procs):
            out = trainer.train(resume_from_checkpoint=resume)
            # the Trainer's loss is the global mean at logging steps plus this process's own since the last one
            train_loss = procs.mean(float(out.training_loss), "averaging the training loss")
            metrics = {
                "train_loss": train_loss,
                "steps": int(out.global_step),
                "epochs": float(trainer.state.epoch or 0),
                "loss_history": loss_history(trainer.state.log_history),
            }
            if resume:
                metrics["resumed_from_step"] = int(os.path.basename(resume).split("-")[-1])
            if eval_ex:
                ev = trainer.evaluate()
                metrics.update({k: float(v) for k, v in ev.items() if k in ("eval_loss", "eval_accuracy")})
                if tracker:
                    tracker.log_metrics(
                        {k: v for k, v in metrics.items() if k.startswith("eval_")}, int(out.global_step)
                    )
    except BaseException as exc:
        if procs.main and resume_point(ckpt) is None:  # nothing to resume from: leave nothing behind
            shutil.rmtree(ckpt, ignore_errors=True)
        if procs.world_size > 1 and isinstance(exc, Exception) and not isinstance(exc, AdapterhubError):
            if isinstance(exc, LauncherStopped):
                lost = procs.stopped("training")
            elif peer_failure(exc):
                lost = procs.lost(exc, "training")
            else:  # this process's own failure: it prints it, the others stay quiet
                if _UNUSED_PARAMETERS in str(exc):
                    exc = AdapterhubError(
                        f"method '{method.name}' makes parameters trainable that its forward "
                        "pass does not use, which DDP cannot average: a bug of the method's "
                        "plugin (train on one process meanwhile)"
                    )
                procs.note_failure(describe(exc))
                raise exc from None
            point = resume_point(ckpt) if procs.main else None
            hint = f"; rerun the same command to resume from {os.path.basename(point)}" if point else ""
            raise type(lost)(f"{lost}{hint}") from None
        raise
    model.eval()
    return metrics


#: most points of a run's loss curve kept in its manifest (a long run's log is thinned evenly)
MAX_LOSS_POINTS = 1000


def loss_history(log_history: list[dict[str, Any]], limit: int = MAX_LOSS_POINTS) -> list[dict[str, Any]]:
    """The training loss at each logging step and the eval loss at each evaluation (the Trainer's
    ``log_history``), ordered by step, for the manifest's ``training.loss_history`` and the web UI's chart;
    each kind thinned evenly to at most ``limit`` points, its last one kept."""

    def points(key: str) -> list[dict[str, Any]]:
        kept = [
            {"step": int(e["step"]), key: round(float(e[key]), 6)}
            for e in log_history
            if key in e and "step" in e and math.isfinite(float(e[key]))
        ]
        if len(kept) <= limit:
            return kept
        stride = math.ceil(len(kept) / limit)
        return kept[:-1][::stride][: limit - 1] + kept[-1:]

    return sorted(points("loss") + points("eval_loss"), key=lambda p: (p["step"], "eval_loss" in p))


class LauncherStopped(RuntimeError):
    """The launcher sent SIGTERM: another process of the run failed (torchrun stops the rest) or the run
    was interrupted."""


@contextmanager
def _stopped_by_launcher(procs: Any) -> Iterator[None]:
    """On several processes, SIGTERM from the launcher becomes :class:`LauncherStopped`, so that process 0
    says once what happened (and where to resume) instead of vanishing without a word."""
    if procs.world_size == 1 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: the report below must not be cut short
        raise LauncherStopped("stopped by the launcher (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except BaseException:
        # this process is on its way out with an error: process 0 still has to print it. A peer's failure
        # brings the launcher's SIGTERM any moment now, and the default action would end the process
        # before its one line is written (the launcher follows up with SIGKILL if it lingers).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
    signal.signal(signal.SIGTERM, previous)
