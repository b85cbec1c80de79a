"""Training commands: train, methods, demo."""

from __future__ import annotations

import click

from .app import BASE, KEY_VALUE, App, batch_text, cli, emit, json_option, pass_app
from .data_cmds import check_rate


@cli.command()
@click.option("--base", required=True, type=BASE, help="Base model directory (transformers layout).")
@click.option("--method", required=True, help="PEFT method (see 'adapterhub methods').")
@click.option("--task", required=True, type=click.Choice(["causal-lm", "seq-cls"]))
@click.option("--data", required=True, type=click.Path(), help="Training data (JSONL).")
@click.option("--eval", "eval_", type=click.Path(), help="Evaluation data (JSONL).")
@click.option("--out", required=True, type=click.Path(), help="Adapter directory to write.")
@click.option("--push", metavar="NAME", help="Push the result to the registry as NAME.")
@click.option("--set", "sets", multiple=True, type=KEY_VALUE, help="Method config (repeatable), e.g. r=16.")
@click.option("--epochs", type=float, default=3.0, show_default=True)
@click.option("--max-steps", type=int, default=-1, help="Stop after N optimizer steps (overrides --epochs).")
@click.option("--lr", type=float, help="Learning rate (default: the method's, 2e-4 for LoRA).")
@click.option(
    "--batch-size",
    type=int,
    default=8,
    show_default=True,
    help="Rows per step on each process (the global batch: x --grad-accum x processes).",
)
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option("--max-length", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--eval-steps", type=int, help="Evaluate and checkpoint every N steps (default: every epoch).")
@click.option("--early-stopping", type=int, metavar="N", help="Stop after N evaluations without eval-loss improvement.")
@click.option("--gradient-checkpointing", is_flag=True)
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--init-from", metavar="REF", help="Continue training this registry version (lineage: trained_from).")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Resume from OUT.checkpoints if present.")
@click.option(
    "--allow-resize",
    is_flag=True,
    help="Resume checkpoints written by another number of processes (the global batch changes).",
)
@click.option(
    "--dist-timeout",
    type=float,
    metavar="SECONDS",
    help="Under torchrun / accelerate launch: how long a process waits for the others before failing "
    "[default: $ADAPTERHUB_DIST_TIMEOUT or 1800].",
)
@click.option("--track", metavar="TRACKER", envvar="ADAPTERHUB_TRACKER", help="Experiment tracker (e.g. mlflow).")
@click.option("--experiment", help="Tracker experiment name (default: $MLFLOW_EXPERIMENT_NAME or the --push name).")
@click.option("--allow-dirty-data", is_flag=True, help="Train even if the data check finds conflicts or leakage.")
@click.option(
    "--fail-on-noise",
    type=float,
    metavar="RATE",
    callback=check_rate,
    help="seq-cls: refuse the data when its estimated label noise (data check --base) is above RATE.",
)
@click.option("--allow-base-mismatch", is_flag=True, help="Allow --init-from an adapter of another base.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option(
    "--quantize",
    metavar="QUANTIZER",
    help="Load the base through this quantizer plugin (nf4, fp4, int8 ...) and train on it; 'none' "
    "turns off a method's default (qlora: nf4). The fingerprint stays the original weights'.",
)
@click.option(
    "--quant-opt",
    "quant_opts",
    multiple=True,
    type=KEY_VALUE,
    help="Quantizer option (repeatable), e.g. blocksize=128, double_quant=false, compute_dtype=bfloat16.",
)
@click.option(
    "--optim",
    metavar="NAME",
    help="transformers optimizer (default adamw_torch; paged_adamw_8bit ... need a CUDA GPU).",
)
@json_option
@pass_app
def train(
    app: App,
    base,
    method,
    task,
    data,
    eval_,
    out,
    push,
    sets,
    epochs,
    max_steps,
    lr,
    batch_size,
    grad_accum,
    max_length,
    seed,
    eval_steps,
    early_stopping,
    gradient_checkpointing,
    mixed_precision,
    init_from,
    resume,
    allow_resize,
    dist_timeout,
    track,
    experiment,
    allow_dirty_data,
    fail_on_noise,
    allow_base_mismatch,
    force,
    quantize,
    quant_opts,
    optim,
    as_json,
):
    """Train an adapter on BASE with METHOD and push it (optionally) to the registry.

    Under torchrun or accelerate launch every process trains its share of each batch (--batch-size is per
    process); process 0 alone writes, pushes, tracks and prints."""
    import sys
    import warnings

    from ..training.train import TrainOptions
    from ..training.train import train as do_train

    opts = TrainOptions(
        base=base,
        method=method,
        task=task,
        data=data,
        out=out,
        eval=eval_,
        push=push,
        settings=dict(sets),
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        seed=seed,
        eval_steps=eval_steps,
        early_stopping=early_stopping,
        gradient_checkpointing=gradient_checkpointing,
        mixed_precision=mixed_precision,
        init_from=init_from,
        resume=resume,
        track=track,
        experiment=experiment,
        allow_dirty_data=allow_dirty_data,
        fail_on_noise=fail_on_noise,
        allow_base_mismatch=allow_base_mismatch,
        force=force,
        progress=sys.stderr.isatty(),
        home=app.home,
        quantize=quantize,
        optim=optim,
        quantize_options=dict(quant_opts),
        allow_resize=allow_resize,
        dist_timeout=dist_timeout,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = do_train(opts, app.plugins, app.registry if push or init_from else None)
    if result is None:  # another process of a torchrun / accelerate launch: process 0 reports
        return
    for w in caught:
        if issubclass(w.category, (UserWarning, RuntimeWarning)) and "adapterhub" in str(w.filename) + str(w.message):
            click.echo(f"Warning: {w.message}", err=True)
    if result.get("tracking_warning"):
        click.echo(f"Warning: {result['tracking_warning']}", err=True)

    def text(r):
        m = r["metrics"]
        q = r.get("base_quantization")
        on = f" ({q['quant_type']} base)" if q else ""
        lines = [
            f"trained {r['method']} on {r['task']}{on}: {r['trainable_params']:,} of {r['total_params']:,} "
            f"parameters ({100 * r['trainable_params'] / r['total_params']:.2f}%) in {r['seconds']} s",
            "metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()),
            f"global batch {r['global_batch_size']} ({batch_text(r['world_size'], opts.batch_size, opts.grad_accum)})",
            f"saved {r['out']}",
        ]
        if r.get("ref"):
            lines.append(f"pushed {r['ref']} ({r['digest'][:19]})")
        if r.get("tracking", {}).get("url"):
            lines.append(f"tracked at {r['tracking']['url']}")
        return "\n".join(lines)

    emit(as_json, result, text)


@cli.command()
@json_option
@pass_app
def methods(app: App, as_json):
    """List PEFT methods with their config fields, defaults and capabilities."""
    rows = []
    for name, plugin, m in app.plugins.items("methods"):
        rows.append(
            {
                "name": name,
                "plugin": plugin,
                "peft_type": m.peft_type,
                "capabilities": m.capabilities(),
                "fields": m.config_fields(),
                "doc": (type(m).__doc__ or "").strip().splitlines()[0] if type(m).__doc__ else "",
            }
        )

    def text(rows):
        out = []
        for r in rows:
            caps = ", ".join(r["capabilities"]) or "-"
            out.append(f"{r['name']}  ({r['plugin']}; PEFT: {r['peft_type'] or 'no'}; can: {caps})  {r['doc']}")
            for f in r["fields"]:
                out.append(f"    {f['name']} = {f['default']!r}  {f['help']}".rstrip())
        return "\n".join(out) or "no methods installed"

    emit(as_json, rows, text)
