"""Training-data commands: data check (duplicates, conflicts, leakage, likely mislabeled rows) and data
clean (the data without its likely mislabeled rows)."""

from __future__ import annotations

import click

from .app import BASE, TASK_CHOICE, cli, emit, json_option


def check_rate(ctx, param, value):
    """A click callback: --fail-on-noise is a fraction."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"must be a fraction between 0 and 1, got {value:g}")
    return value


@cli.group()
def data():
    """Training data: quality checks and cleaning."""


@data.command(name="check")
@click.argument("file", type=click.Path())
@click.option(
    "--eval",
    "eval_",
    type=click.Path(),
    help="Evaluation data (JSONL): checked for train/eval leakage (and shift, with --base).",
)
@click.option(
    "--against",
    type=click.Path(),
    help="A sample of production inputs (JSONL): with --base, checked for shift from the training data.",
)
@click.option("--task", type=TASK_CHOICE, help="Task of the rows (default: seq-cls if rows have 'label').")
@click.option(
    "--base",
    type=BASE,
    help="Base model: measure lengths with its tokenizer, and on its embeddings find likely mislabeled "
    "rows (seq-cls) and shift of --eval / --against from the training data.",
)
@click.option("--max-length", type=int, help="Flag rows longer than this (tokens with --base, else whitespace tokens).")
@click.option(
    "--fail-on-noise",
    type=float,
    metavar="RATE",
    callback=check_rate,
    help="Exit 1 when the estimated label noise is above RATE (e.g. 0.05; needs --base).",
)
@click.option("--strict", is_flag=True, help="Exit 1 when any problem is found.")
@json_option
def data_check(file, eval_, against, task, base, max_length, fail_on_noise, strict, as_json):
    """Check FILE (JSONL) for duplicates, conflicting labels, train/eval leakage, label imbalance,
    empty, over-length and malformed rows and, with --base, likely mislabeled rows and whether --eval
    (and --against, production inputs) look like the training data; every finding names its line.

    Exit code 0 for a report, whatever it finds, unless --strict or --fail-on-noise."""
    from ..training.label_noise import gate_noise
    from ..training.quality import check_data, render

    if fail_on_noise is not None and not base:
        raise click.UsageError("--fail-on-noise needs --base (the probe runs on the base model's embeddings)")
    tokenizer = embed = None
    if base:
        from ..training.embed import embedder
        from ..training.modeling import check_base_dir, load_tokenizer

        check_base_dir(base)
        tokenizer = load_tokenizer(base)
        embed = embedder(base)
    report = check_data(
        file, eval_, task=task, tokenizer=tokenizer, max_length=max_length, embed=embed, against=against
    )
    emit(as_json, report, render)
    reason = gate_noise(report.get("label_issues"), fail_on_noise)
    if reason:
        click.echo(f"data check failed: {reason}", err=True)
        raise SystemExit(1)
    if strict and report["problems"]:
        click.echo(f"data check failed (--strict): {'; '.join(report['problems'])}", err=True)
        raise SystemExit(1)


@data.command(name="clean")
@click.argument("file", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="The cleaned JSONL file to write (only this file).")
@click.option("--base", required=True, type=BASE, help="Base model directory: the probe runs on its embeddings.")
@click.option("--relabel", is_flag=True, help="Give the flagged rows the suggested label instead of dropping them.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@json_option
def data_clean(file, out, base, relabel, force, as_json):
    """Write FILE (seq-cls JSONL) to --out without the rows that `data check --base` flags as likely
    mislabeled (or relabelled, --relabel). Other lines are copied byte for byte; the report gives the
    digests of both files, so a version trained on the output names the data it came from."""
    from ..training.embed import embedder
    from ..training.label_noise import check_out, clean_file
    from ..training.modeling import check_base_dir
    from ..training.quality import check_data

    check_out(file, out, force)
    check_base_dir(base)
    report = check_data(file, task="seq-cls", embed=embedder(base))
    result = clean_file(file, out, report, relabel=relabel, force=force)

    def text(r):
        verb = "relabelled" if r["action"] == "relabelled" else "removed"
        lines = [
            f"{verb} {r['count']} likely mislabeled row(s) of {r['input']['rows']} (estimated label noise "
            f"{r['estimated_noise_rate']:.1%})"
        ]
        for e in r["rows"][:10]:
            lines.append(f"  line {e['line']}: {e['label']} -> {e['suggested']} (score {e['score']:.3f})")
        if r["count"] > 10:
            lines.append(f"  ... {r['count'] - 10} more (--json lists them all)")
        lines.append(f"input  {r['input']['path']}: {r['input']['digest']}")
        lines.append(f"output {r['output']['path']}: {r['output']['rows']} rows, {r['output']['digest']}")
        return "\n".join(lines)

    emit(as_json, result, text)
