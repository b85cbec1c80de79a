"""Evaluation commands: eval, bench-latency, compare."""

from __future__ import annotations

import sys

import click

from .app import BASE, TASK_CHOICE, App, cli, emit, format_table, json_option, pass_app, pass_app_for_refs


def batch_bar(desc: str):
    """A progress factory (``total -> (update, close)``) counting batches on stderr; hidden when stderr
    is not a terminal."""

    def factory(total: int):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, disable=None, leave=False)
        return bar.update, bar.close

    return factory


def _f(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


# -- eval ---------------------------------------------------------------------------------------
@cli.command(name="eval")
@click.argument("ref")
@click.option("--base", required=True, type=BASE, help="Base model directory (fingerprint is checked).")
@click.option("--data", "data_path", required=True, type=click.Path(), help="Evaluation data (JSONL).")
@click.option("--probe", type=click.Path(), help="General-purpose data (JSONL) to measure forgetting.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--max-length", type=int, help="Truncate rows to this many tokens (default: training's, else 512).")
@click.option("--task", type=TASK_CHOICE, help="Only for versions that record no task.")
@click.option("--no-store", is_flag=True, help="Do not record the result in the registry.")
@click.option(
    "--allow-base-mismatch",
    is_flag=True,
    help="Evaluate on a base other than the adapter's (the result is then not stored).",
)
@click.option(
    "--generate",
    is_flag=True,
    help="causal-lm: generate greedily for each prompt and score the outputs against the references.",
)
@click.option("--max-new-tokens", type=int, help="With --generate: tokens generated per prompt at most (default 64).")
@click.option(
    "--metric",
    "metric_names",
    multiple=True,
    help="With --generate: a registered metric (repeatable; default exact_match, rouge_l, chrf).",
)
@click.option("--samples", type=int, help="With --generate: rows whose outputs are stored side by side (default 5).")
@json_option
@pass_app_for_refs("ref")
def eval_cmd(
    app: App,
    ref,
    base,
    data_path,
    probe,
    batch_size,
    max_length,
    task,
    no_store,
    allow_base_mismatch,
    generate,
    max_new_tokens,
    metric_names,
    samples,
    as_json,
):
    """Evaluate version REF and its bare base on --data; store the metrics on the version.

    seq-cls: accuracy, macro-F1, per-class precision/recall/F1. causal-lm: loss and perplexity over
    completion tokens; with --generate, what each model writes for the prompts ('prompt' + 'completion'
    rows, or 'messages'), scored with exact match, ROUGE-L and chrF (or --metric), plus a few outputs side
    by side (shown by `adapterhub show`). The gain is adapter - base. --probe measures forgetting on
    general data."""
    from ..errors import InvalidInput

    if generate:
        if probe:
            raise InvalidInput("--probe measures forgetting with the loss; run it without --generate")
        from ..training.generation import DEFAULT_MAX_NEW_TOKENS, DEFAULT_SAMPLES, evaluate_generation

        r = evaluate_generation(
            app.registry,
            ref,
            base,
            data_path,
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens,
            metrics=list(metric_names) or None,
            samples=DEFAULT_SAMPLES if samples is None else samples,
            batch_size=batch_size,
            max_length=max_length,
            task=task,
            allow_base_mismatch=allow_base_mismatch,
            store=not no_store,
            home=app.home,
            plugins=app.plugins,
            progress=batch_bar("generate"),
        )
        emit(as_json, r, _eval_text)
        return
    for opt, value in (
        ("--max-new-tokens", max_new_tokens),
        ("--metric", metric_names or None),
        ("--samples", samples),
    ):
        if value is not None:
            raise InvalidInput(f"{opt} needs --generate")
    from ..training.evaluate import evaluate

    r = evaluate(
        app.registry,
        ref,
        base,
        data_path,
        probe_path=probe,
        batch_size=batch_size,
        max_length=max_length,
        task=task,
        allow_base_mismatch=allow_base_mismatch,
        store=not no_store,
        home=app.home,
        plugins=app.plugins,
        progress=batch_bar("eval"),
    )
    emit(as_json, r, _eval_text)


def _eval_text(r) -> str:
    gen = r.get("generation")
    how = f", greedy, {gen['max_new_tokens']} new tokens at most" if gen else ""
    lines = [
        f"{r['ref']} on {r['details']['data']['file']} ({r['data_digest'][:19]}, {r['rows']} rows, {r['task']}{how})"
    ]
    keys = r.get("metric_names") or (("accuracy", "macro_f1") if r["task"] == "seq-cls" else ("loss", "perplexity"))
    lines.append(f"  {'':<12}" + "".join(f"{k:>12}" for k in keys))
    lines.append(f"  {'adapter':<12}" + "".join(f"{_f(r['adapter'][k]):>12}" for k in keys))
    lines.append(f"  {'base':<12}" + "".join(f"{_f(r['base'][k]):>12}" for k in keys))
    lines.append(f"  {'gain':<12}" + "".join(f"{r['gain'][k]:>+12.4g}" for k in keys))
    if r["task"] == "seq-cls":
        lines.append(f"  base head: {r['base_head']}")
        for name, m in r["adapter"]["per_class"].items():
            lines.append(
                f"  class {name}: precision {_f(m['precision'])}, recall {_f(m['recall'])}, "
                f"f1 {_f(m['f1'])}, support {m['support']}"
            )
    p = r.get("probe")
    if p:
        if r["task"] == "seq-cls":
            text = f"agreement with base {_f(p['agreement'])}, hidden-state cosine {_f(p['hidden_cosine'])}"
            if p.get("adapter_accuracy") is not None:
                text += f", accuracy {_f(p['adapter_accuracy'])} (base {_f(p['base_accuracy'])})"
        else:
            text = f"loss {_f(p['adapter_loss'])} (base {_f(p['base_loss'])}), forgetting {p['forgetting']:+.4g}"
        lines.append(f"  probe ({p['rows']} rows): {text}")
    if gen:
        lines.append(
            f"  primary metric (for the promotion gate): {r['primary_metric']}"
            + (
                f"; {gen['truncated_prompts']} prompts cut to their last "
                f"{gen['max_length'] - gen['max_new_tokens']} tokens"
                if gen["truncated_prompts"]
                else ""
            )
        )
        lines.extend(samples_text(r["samples"], r["rows"]))
    if r["stored"]:
        lines.append(f"  stored as an evaluation of {r['ref']}")
    elif r["base_mismatch"]:
        lines.append("  not stored: evaluated on a base other than the adapter's")
    else:
        lines.append("  not stored (--no-store)")
    return "\n".join(lines)


def samples_text(samples, rows, indent: str = "  ") -> list[str]:
    """Generation samples side by side: prompt, reference, base and adapter output (one line each)."""
    if not samples:
        return []

    def one(text: str) -> str:
        text = " ".join(text.split())
        return "(empty)" if not text else text if len(text) <= 100 else text[:99] + "…"

    lines = [f"{indent}samples ({len(samples)} of {rows} rows):"]
    for s in samples:
        lines.append(f"{indent}  line {s['line']}: {one(s['prompt'])}")
        for k in ("reference", "base", "adapter"):
            lines.append(f"{indent}    {k + ':':<11}{one(s[k])}")
    return lines


# -- latency ------------------------------------------------------------------------------------
@cli.command(name="bench-latency")
@click.argument("ref")
@click.option("--base", required=True, type=BASE, help="Base model directory (fingerprint is checked).")
@click.option("--runs", type=int, default=20, show_default=True, help="Timed forward passes per variant.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed passes first.")
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--seq-len", type=int, default=128, show_default=True)
@click.option("--task", type=TASK_CHOICE, help="Only for versions that record no task.")
@click.option("--allow-base-mismatch", is_flag=True, help="Benchmark on a base other than the adapter's.")
@json_option
@pass_app
def bench_latency_cmd(app: App, ref, base, runs, warmup, batch_size, seq_len, task, allow_base_mismatch, as_json):
    """Forward latency (p50/p95) and tokens/s of the base, the base with REF attached, and REF merged
    into the base (n/a for methods that cannot merge), on this machine."""
    from ..training.evaluate import bench_latency

    r = bench_latency(
        app.registry,
        ref,
        base,
        runs=runs,
        warmup=warmup,
        batch_size=batch_size,
        seq_len=seq_len,
        task=task,
        allow_base_mismatch=allow_base_mismatch,
        home=app.home,
        plugins=app.plugins,
        progress=batch_bar("bench"),
    )

    def text(r):
        lines = [
            f"{r['ref']} ({r['method']}, {r['task']}) on {r['device']} ({r['threads']} threads), "
            f"batch {r['batch_size']} x {r['seq_len']} tokens, {r['runs']} runs"
        ]
        lines.append(f"  {'':<10}{'p50 ms':>10}{'p95 ms':>10}{'tokens/s':>12}{'vs base':>9}")
        for name in ("base", "adapter", "merged"):
            m = r[name]
            if m.get("status") == "n/a":
                lines.append(f"  {name:<10}{'n/a':>10}  ({m['reason']})")
                continue
            ratio = f"{m['overhead']:.2f}x" if m.get("overhead") else "-"
            lines.append(
                f"  {name:<10}{m['p50_ms']:>10.2f}{m['p95_ms']:>10.2f}{m['tokens_per_s']:>12.0f}"
                f"{ratio if name != 'base' else '':>9}"
            )
        return "\n".join(lines)

    emit(as_json, r, text)


# -- compare ------------------------------------------------------------------------------------
@cli.command()
@click.argument("ref_a", metavar="REF")
@click.argument("ref_b", metavar="REF")
@click.option("--all", "show_all", is_flag=True, help="Show config keys that are the same too.")
@json_option
@pass_app_for_refs("ref_a", "ref_b")
def compare(app: App, ref_a, ref_b, show_all, as_json):
    """Two versions side by side: config differences, data digests, metrics and evaluations."""
    from ..training.evaluate import compare as do_compare

    r = do_compare(app.registry, ref_a, ref_b)
    emit(as_json, r, lambda r: _compare_text(r, show_all))


def _compare_text(r, show_all: bool) -> str:
    def cell(x) -> str:
        if x is None or x == [] or x == {}:
            return "-"
        if isinstance(x, str) and x.startswith("sha256:"):
            return x[:19]
        return _f(x) if not isinstance(x, (list, dict)) else (",".join(map(str, x)) if isinstance(x, list) else str(x))

    out = [format_table(("", r["a"], r["b"]), [(s["key"], cell(s["a"]), cell(s["b"])) for s in r["summary"]])]
    cfg = [c for c in r["config"] if show_all or not c["same"]]
    out.append("")
    if cfg:
        out.append(format_table(("CONFIG", r["a"], r["b"]), [(c["key"], cell(c["a"]), cell(c["b"])) for c in cfg]))
    else:
        out.append("config: identical")
    if r["data"]:
        out.append("")
        out.append(
            format_table(
                ("DATA", r["a"], r["b"]),
                [
                    (
                        d["role"],
                        f"{cell(d['a'])} ({cell(d['a_rows'])} rows)",
                        f"{cell(d['b'])} ({cell(d['b_rows'])} rows)" + ("" if d["same"] else "  *"),
                    )
                    for d in r["data"]
                ],
            )
        )
    if r["metrics"]:
        out.append("")
        out.append(
            format_table(
                ("METRIC", r["a"], r["b"], "DELTA"),
                [(m["key"], cell(m["a"]), cell(m["b"]), cell(m["delta"])) for m in r["metrics"]],
            )
        )
    for e in r["evaluations"]:
        out.append("")
        kind = " (generation)" if e.get("kind") == "generation" else ""
        out.append(
            format_table(
                (f"EVAL {e['data_digest'][:19]}{kind}", r["a"], r["b"], "DELTA"),
                [(m["key"], cell(m["a"]), cell(m["b"]), cell(m["delta"])) for m in e["metrics"]],
            )
        )
    return "\n".join(out)
