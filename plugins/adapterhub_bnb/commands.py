"""``adapterhub quantize``: write a bitsandbytes-quantized copy of a base model directory."""

from __future__ import annotations

import click

from adapterhub.cli.app import BASE, App, emit, human_size, json_option, pass_app


@click.command()
@click.argument("base_dir", type=BASE)
@click.option(
    "--to", "to", required=True, metavar="QUANTIZER", help="Quantizer: nf4, fp4, int8 (see 'adapterhub plugins')."
)
@click.option("--out", required=True, type=click.Path(), help="Directory to write the quantized model to.")
@click.option(
    "--double-quant/--no-double-quant", default=None, help="4-bit: also quantize the absmax constants (default: on)."
)
@click.option("--blocksize", type=int, help="4-bit: weights per absmax block (default 64).")
@click.option(
    "--compute-dtype",
    type=click.Choice(("auto", "float32", "bfloat16", "float16")),
    help="4-bit: matmul dtype (default auto: bf16 on a GPU that has it, else float32).",
)
@click.option("--threshold", type=float, help="int8: LLM.int8() outlier threshold (default 6.0).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@json_option
@pass_app
def quantize(app: App, base_dir, to, out, double_quant, blocksize, compute_dtype, threshold, force, as_json):
    """Quantize the model in BASE_DIR with bitsandbytes and write a transformers model directory to OUT
    that AutoModel*.from_pretrained loads as a quantized model (Linear4bit / Linear8bitLt layers).

    The quantization (type, double quant, blocksize, compute dtype, the fingerprint of the original
    weights) is recorded in OUT/config.json under "adapterhub_quantization"."""
    from adapterhub.errors import InvalidInput

    quantizer = app.plugins.get("quantizers", to)
    given = {
        "double_quant": double_quant,
        "blocksize": blocksize,
        "compute_dtype": compute_dtype,
        "threshold": threshold,
    }
    given = {k: v for k, v in given.items() if v is not None}
    fields = {f["name"] for f in quantizer.option_fields()}  # (the Quantizer contract declares it)
    wrong = sorted(k for k in given if k not in fields)
    if wrong:
        raise InvalidInput(
            f"{', '.join('--' + k.replace('_', '-') for k in wrong)} does not apply to quantizer "
            f"'{to}' (its options: {', '.join(sorted(fields)) or 'none'})"
        )
    result = quantizer.quantize(base_dir, out, force=force, home=app.home, **given)

    def text(r):
        q = r["quantization"]
        how = ", ".join(f"{k}={q[k]}" for k in ("double_quant", "blocksize", "compute_dtype", "threshold") if k in q)
        return (
            f"quantized {q['quantized_layers']} layers to {q['quant_type']} ({how}): {r['out']} "
            f"({human_size(r['bytes'])}, from {human_size(r['source_bytes'])})\n"
            f"source fingerprint {q['source_fingerprint']}"
        )

    emit(as_json, result, text)
