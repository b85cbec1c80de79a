"""Built-in plugin: bitsandbytes quantizers (``nf4``, ``fp4``, ``int8``) and the ``adapterhub quantize`` command.
(The ``qlora`` method, LoRA trained on a base these quantizers load, is the lora plugin's.)

Importing this package does not import torch or bitsandbytes (``adapterhub --help`` loads it); the
torch-side code lives in :mod:`adapterhub_bnb.ops` and is imported on first use.

* **Quantizers** (``register_quantizers``): ``nf4`` and ``fp4`` (4-bit, per-block absmax, optional double
  quantization of the absmax constants, compute dtype, blocksize) and ``int8`` (LLM.int8(): per-row
  absmax int8 weights, outlier threshold on activations), each an :class:`adapterhub.interfaces.Quantizer`:

  - ``make_options(values) -> dict``: validated options with defaults (``--quant-opt key=value``);
  - ``quantize(model_dir, out_dir, **options) -> record``: a transformers model directory that
    ``AutoModel*.from_pretrained`` loads as a bitsandbytes model (``Linear4bit`` / ``Linear8bitLt``);
  - ``load_model(base_dir, task, labels, options) -> (model, record)``: the base quantized on load
    (streamed: the full-precision model is never held in memory);
  - ``base_transform(record)``: the exact quantize→dequantize round trip of every weight training
    quantized, so a merge lands on the weights the adapter actually saw.

  The *record* is what is written to the manifest (``manifest["base"]["quantization"]``) and to the
  quantized model's ``config.json`` (``adapterhub_quantization``): quantizer, quant type, double quant,
  blocksize, compute dtype, the dtype the weights were quantized from, the quantized modules (as
  layer-index patterns) and the fingerprint of the source (original) weights.
* **Command** ``adapterhub quantize BASE_DIR --to nf4 --out DIR``.
"""

from __future__ import annotations

from typing import Any

import adapterhub

from .quantizers import QUANTIZERS, Bnb4bitQuantizer, Int8Quantizer

__all__ = ["Bnb4bitQuantizer", "Int8Quantizer", "QUANTIZERS"]


@adapterhub.hookimpl
def register_quantizers(register) -> None:
    for q in QUANTIZERS:
        register(q)


@adapterhub.hookimpl
def register_commands(cli: Any) -> None:
    from .commands import quantize

    cli.add_command(quantize)
