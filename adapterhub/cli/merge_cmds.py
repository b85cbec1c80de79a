"""Merge, export and extract commands (``pull --merged`` lives with ``pull`` in registry_cmds)."""

from __future__ import annotations

import os
import sys

import click

from .app import BASE, KEY_VALUE, PROCESS, App, cli, emit, human_size, json_option, pass_app

DTYPES = ("bf16", "fp16", "fp32")


def merge_options(f):
    """The options shared by ``merge``, ``pull --merged`` and ``export --format merged``."""
    f = click.option(
        "--allow-base-mismatch", is_flag=True, help="Merge even if the base's fingerprint differs from the adapter's."
    )(f)
    f = click.option(
        "--shard-size", default="5GB", show_default=True, help="Largest output shard (5GB, 500MB, 2GiB ...)."
    )(f)
    f = click.option("--dtype", type=click.Choice(DTYPES), help="Output dtype (default: the base's).")(f)
    return f


class TensorBar:
    """A tqdm bar over tensors on stderr (hidden when stderr is not a terminal)."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=self.desc, unit="tensor", file=sys.stderr, disable=None, leave=False)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_merge(
    app: App,
    ref: str,
    base: str,
    out: str,
    *,
    dtype,
    shard_size,
    allow_base_mismatch,
    force,
    no_cache: bool = False,
    deploy: bool = False,
    registry=None,
    onto: str = "dequantized",
    quantize: str | None = None,
    quant_opts=(),
    checked: bool = False,
    probe=None,
) -> dict:
    """Merge (``export.merge_ref``); with ``checked`` or ``quantize``, ``qmerge.merge_checked``: re-quantize,
    and compare logits for adapters trained on a quantized base (``probe``: None auto, False skip, a file).
    ``deploy``: a ``pull --merged`` from a remote, which keeps no cache unless ADAPTERHUB_MERGE_CACHE asks."""

    if PROCESS["main"]:  # the adapterhub process itself (not the CLI run inside another program, or tests):
        import gc  # it ends after the merge and makes no garbage cycles worth collecting; with the collector

        gc.disable()  # on, importing torch and re-enabling it after the writer cost ~0.1-0.2 s of passes
        PROCESS["fast_exit"] = True
        if "numpy" not in sys.modules:  # numpy's OpenBLAS (unused: torch has its own BLAS) would start a
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # thread per core that spins ~0.1 CPU-s
    bar = TensorBar("merge")
    registry = registry if registry is not None else _OnUse(lambda: app.registry)
    kwargs = dict(
        dtype=dtype,
        shard_size=shard_size,
        allow_base_mismatch=allow_base_mismatch,
        force=force,
        use_cache=False if no_cache else "unless-auto" if deploy else True,
        home=app.home,
        plugins=app.plugins,
        progress=bar.update,
        on_plan=bar.start,
        onto=onto,
    )
    try:
        if quantize or checked:
            from ..merge.quantized import merge_checked

            return cache_warnings(
                merge_checked(
                    registry,
                    ref,
                    base,
                    out,
                    quantize=quantize,
                    quantize_options=dict(quant_opts),
                    probe=probe,
                    **kwargs,
                )
            )
        from ..operations.export import merge_ref

        return cache_warnings(merge_ref(registry, ref, base, out, **kwargs))
    finally:
        bar.close()


class _OnUse:
    """The registry, opened on first use: merging an adapter directory needs none (opening one imports
    SQLAlchemy and checks the schema: a tenth of a second on every merge)."""

    def __init__(self, get):
        self._get = get

    def __getattr__(self, name: str):
        return getattr(self._get(), name)


def merge_text(d: dict) -> str:
    src = d.get("ref") or "adapter"
    how = (
        "from cache"
        if d.get("cached")
        else (
            f"{d['tensors_merged']} merged, {d['tensors_untouched']} untouched"
            + (f", {d['tensors_added']} added" if d.get("tensors_added") else "")
        )
    )
    lines = [
        f"{src} -> {d['out']} ({len(d['files'])} files, {human_size(d['bytes'])}, {d['dtype']}; {how}; "
        f"{d['seconds']:.1f}s)"
    ]
    if d.get("untied"):
        lines.append(
            f"untied {' and '.join(d['untied'])} (the adapter changes a tied weight): tie_word_embeddings=false"
        )
    for note in d.get("notes") or []:
        lines.append(f"note: {note}")
    if d.get("onto"):
        lines.append(
            f"merged onto the {d['onto']} base weights"
            + (f" ({d['tensors_dequantized']} dequantized)" if d.get("tensors_dequantized") else "")
        )
    if d.get("quantization"):
        q = d["quantization"]
        lines.append(f"re-quantized to {q['quant_type']}: {q['quantized_layers']} layers")
    if d.get("probe"):
        p = d["probe"]
        lines.append(
            f"logits vs the {p['reference']} on {p['probe']}: mean |diff| {p['mean_abs_diff']:.4g}, "
            f"max |diff| {p['max_abs_diff']:.4g} (mean |logit| {p['mean_abs_logit']:.4g})"
        )
    return "\n".join(lines)


def cache_warnings(d: dict) -> dict:
    """The merged-model cache's problems, one line each on stderr (the merge itself succeeded)."""
    if d.get("cache_problem"):
        click.echo(f"warning: {d['cache_problem']}", err=True)
    if d.get("cache_error"):
        click.echo(f"warning: not cached: {d['cache_error']}", err=True)
    return d


@cli.command()
@click.argument("ref")
@click.option("--base", required=True, type=BASE, help="The base model directory to merge into.")
@click.option("--out", required=True, type=click.Path(), help="Directory to write the merged model to.")
@merge_options
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option(
    "--no-cache", is_flag=True, help="Neither read nor fill the merged-model cache (ADAPTERHUB_MERGE_CACHE=off)."
)
@click.option(
    "--onto",
    type=click.Choice(("dequantized", "original")),
    default="dequantized",
    show_default=True,
    help="An adapter trained on a quantized base (QLoRA): merge onto the weights as the quantized base "
    "held them (quantized and dequantized exactly as in training), or onto the original weights.",
)
@click.option(
    "--quantize",
    metavar="QUANTIZER",
    help="Re-quantize the merged model (nf4, fp4, int8 ...): OUT loads as a quantized model.",
)
@click.option("--quant-opt", "quant_opts", multiple=True, type=KEY_VALUE, help="--quantize option (repeatable).")
@click.option(
    "--probe",
    type=click.Path(),
    help="JSONL rows to compare unmerged and merged logits on (default: a fixed batch of token ids).",
)
@click.option("--no-probe", is_flag=True, help="Skip comparing the unmerged (quantized) and merged logits.")
@json_option
@pass_app
def merge(
    app: App,
    ref,
    base,
    out,
    dtype,
    shard_size,
    allow_base_mismatch,
    force,
    no_cache,
    onto,
    quantize,
    quant_opts,
    probe,
    no_probe,
    as_json,
):
    """Merge adapter REF (a ref, or an adapter directory) into the base model and write a plain
    transformers model directory (config, tokenizer, sharded safetensors) that from_pretrained loads.

    Streams one tensor at a time (memory stays near the largest tensor). Where it pays, the result is
    cached under the home as read-only hard links (ADAPTERHUB_MERGE_CACHE: auto, link, off), so the same
    merge again costs a few stat calls; OUT's files are then read-only.

    An adapter trained on a quantized base (QLoRA) is merged onto the dequantized base weights by default, and
    the mean/max difference of logits between the unmerged adapter on the quantized base and the merged model
    is reported (the merge's cost; --no-probe skips it)."""
    if quant_opts and not quantize:
        raise click.UsageError("--quant-opt goes with --quantize")
    if probe and no_probe:
        raise click.UsageError("--probe and --no-probe exclude each other")
    emit(
        as_json,
        run_merge(
            app,
            ref,
            base,
            out,
            dtype=dtype,
            shard_size=shard_size,
            allow_base_mismatch=allow_base_mismatch,
            force=force,
            no_cache=no_cache,
            onto=onto,
            quantize=quantize,
            quant_opts=quant_opts,
            checked=True,
            probe=False if no_probe else probe,
        ),
        merge_text,
    )


@cli.command(name="export")
@click.argument("ref")
@click.option("--format", "fmt", required=True, help="Export format: peft, merged, adapters (or one a plugin adds).")
@click.option("--out", type=click.Path(), help="Directory to write to.")
@click.option(
    "--to",
    "to",
    metavar="hf://ORG/NAME",
    help="--format peft: upload to this Hugging Face model repo "
    "(created if missing) with a model card carrying the base fingerprint and lineage, instead of --out.",
)
@click.option("--private", is_flag=True, help="--to: create the Hub repo private.")
@click.option("--base", type=BASE, help="Base model directory (--format merged).")
@merge_options
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@json_option
@pass_app
def export_cmd(app: App, ref, fmt, out, to, private, base, dtype, shard_size, allow_base_mismatch, force, as_json):
    """Export adapter REF: --format peft writes a PEFT adapter directory (adapter_config.json +
    adapter_model.safetensors), or uploads it to the Hugging Face Hub with --to hf://ORG/NAME (HF_TOKEN);
    --format merged writes the merged model (as merge / pull --merged); --format adapters writes what
    AdapterHub's adapters library loads (load_adapter(DIR, use_safetensors=True))."""
    from click.core import ParameterSource

    from ..operations.export import export

    if bool(out) == bool(to):
        raise click.UsageError("give one of --out DIR and --to hf://ORG/NAME")
    if to:
        if fmt != "peft" or force or base or dtype or allow_base_mismatch:
            raise click.UsageError(
                "--to uploads --format peft (without --force, --base, --dtype, --allow-base-mismatch)"
            )
        from ..operations.hub_export import export_to_hub

        d = export_to_hub(app.registry, ref, to, plugins=app.plugins, private=private)
        emit(as_json, d, lambda d: f"{d['ref']} -> {d['to']} (peft: {', '.join(d['files'])})")
        return
    if private:
        raise click.UsageError("--private goes with --to")

    options = {"force": force}
    merge_opts = dict(base=base, dtype=dtype, shard_size=shard_size, allow_base_mismatch=allow_base_mismatch)
    if fmt != "merged":  # only what the user gave: a format that cannot use an option refuses it (peft does)
        source = click.get_current_context().get_parameter_source
        defaults = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
        merge_opts = {k: v for k, v in merge_opts.items() if source(k) not in defaults}
    if fmt == "merged" or merge_opts:
        bar = TensorBar("merge")
        options.update(merge_opts, home=app.home, progress=bar.update, on_plan=bar.start)
    else:
        bar = None
    try:
        d = cache_warnings(export(app.registry, ref, fmt, out, plugins=app.plugins, **options))
    finally:
        if bar:
            bar.close()
    emit(
        as_json,
        d,
        merge_text
        if "tensors_merged" in d or d.get("cached")
        else (lambda d: f"{d['ref']} -> {d['out']} ({fmt}: {', '.join(f['path'] for f in d['files'])})"),
    )


@cli.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="The fully fine-tuned model directory.")
@click.option("--base", required=True, type=BASE, help="The base model it was fine-tuned from.")
@click.option("--rank", "-r", required=True, type=click.IntRange(min=1), help="LoRA rank.")
@click.option("--name", required=True, help="Push the extracted LoRA as a new version of NAME.")
@click.option(
    "--targets",
    multiple=True,
    metavar="NAME",
    help="Modules to extract (name suffixes such as q_proj; repeatable or comma separated). "
    "Default: every 2-D weight that differs, except embeddings and the output head.",
)
@click.option("--out", type=click.Path(), help="Also keep the adapter directory here.")
@click.option("--alias", "aliases", multiple=True, help="Point this alias at the new version (repeatable).")
@json_option
@pass_app
def extract(app: App, model_dir, base, rank, name, targets, out, aliases, as_json):
    """Turn a full fine-tune into a LoRA of rank R: ΔW = W_ft − W_base per target weight, truncated
    SVD (B = U·S, A = Vᵀ, alpha = r), one module at a time; reports the energy each module keeps."""
    from ..operations.extract import extract_lora

    tlist = [t.strip() for item in targets for t in item.split(",") if t.strip()] or None
    bar = TensorBar("extract")
    try:
        d = extract_lora(
            app.registry,
            model_dir,
            base,
            rank,
            name,
            targets=tlist,
            out=out,
            aliases=aliases,
            home=app.home,
            plugins=app.plugins,
            progress=bar.update,
            on_plan=bar.start,
        )
    finally:
        bar.close()

    def text(d):
        lines = [
            f"{d['ref']} ({d['digest'][:19]}): lora r={rank} on {d['modules']} modules, "
            f"energy kept min {d['energy_min']:.4f} mean {d['energy_mean']:.4f}"
        ]
        worst = sorted(d["energy"].items(), key=lambda kv: kv[1])[:5]
        lines += [f"  {k}: {v:.4f}" for k, v in worst]
        return "\n".join(lines)

    emit(as_json, d, text)
