"""The quantizer objects and their options (no torch at import; the work is in :mod:`adapterhub_bnb.ops`).

Options (``--quant-opt key=value`` on ``train``, flags on ``quantize``)::

    nf4 / fp4   double_quant   bool   quantize the per-block absmax constants too (8-bit, blocks of 256)
                blocksize      int    weights per absmax block: 64 (default), 128, 256, 512, 1024, 2048, 4096
                compute_dtype  str    dtype of the matmul: auto (bf16 on a CUDA GPU that has it, else
                                      float32), float32, bfloat16, float16
    int8        threshold      float  LLM.int8() outlier threshold on activations (6.0; 0 disables)
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from adapterhub.errors import InvalidInput
from adapterhub.interfaces import BaseTransform, Quantizer

BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("true", "yes", "1", "on"):
        return True
    if s in ("false", "no", "0", "off"):
        return False
    raise InvalidInput(f"invalid {key} {value!r}: expected true or false")


def _number(key: str, value: Any, kind: type) -> Any:
    try:
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        if not math.isfinite(value):  # nan, inf: refused for every number option
            raise InvalidInput(f"invalid {key} {value!r}: expected a finite number")
        if kind is int and value != int(value):
            raise ValueError
        return kind(value)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"invalid {key} {value!r}: expected {'an integer' if kind is int else 'a number'}") from None


class _Quantizer(Quantizer):
    """What the bitsandbytes quantizers share: options from :attr:`fields`, the work in :mod:`adapterhub_bnb.ops`."""

    bits = 0
    quant_type = ""
    #: option name -> (default, help)
    fields: dict[str, tuple[Any, str]] = {}

    def option_fields(self) -> list[dict[str, Any]]:
        return [{"name": k, "default": d, "help": h} for k, (d, h) in self.fields.items()]

    def make_options(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self._validate(super().make_options(values))

    def _validate(self, opts: dict[str, Any]) -> dict[str, Any]:
        return opts

    # -- the work (torch) ----------------------------------------------------------------------------
    def quantize(
        self, model_dir: str, out_dir: str, *, force: bool = False, home: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """Write ``model_dir`` quantized to ``out_dir`` (a transformers model directory that
        ``from_pretrained`` loads as a bitsandbytes model); returns the record (also in its config)."""
        from . import ops

        return ops.quantize_dir(self, model_dir, out_dir, self.make_options(options), force=force, home=home)

    def load_model(
        self, base_dir: str, task: str | None, labels: list[str] | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """The base model for ``task``, quantized as it loads; ``(model, record)``."""
        from . import ops

        return ops.load_quantized(self, base_dir, task, labels, self.make_options(options or {}))

    def base_transform(self, record: Mapping[str, Any]) -> BaseTransform:
        """The quantize→dequantize round trip of the weights ``record`` says were quantized."""
        from . import ops

        return ops.RoundTrip(self, dict(record))

    def prepare_training(self, model: Any) -> None:
        """Tell transformers an adapter is attached (its Trainer refuses a "purely quantized" model otherwise)
        and keep 4-bit layers off bitsandbytes' packed CPU kernel, which has no backward."""
        from adapterhub.tuning import no_cpu_packing

        model._hf_peft_config_loaded = True
        no_cpu_packing(model)

    def prepare(self, model: Any) -> None:
        """bitsandbytes' packed CPU kernel refuses small layers; those keep the plain path."""
        from . import ops

        ops.cpu_safe(model)


class Bnb4bitQuantizer(_Quantizer):
    """4-bit bitsandbytes weights (QLoRA): NormalFloat4 or FP4 codes, one absmax per block."""

    bits = 4
    fields = {
        "double_quant": (True, "also quantize the per-block absmax constants (saves ~0.37 bit/weight)"),
        "blocksize": (64, f"weights per absmax block ({', '.join(map(str, BLOCKSIZES))})"),
        "compute_dtype": (
            "auto",
            "matmul dtype: auto (bf16 on a GPU that has it, else float32), float32, bfloat16, float16",
        ),
    }

    def __init__(self, quant_type: str):
        self.name = self.quant_type = quant_type

    def _validate(self, opts: dict[str, Any]) -> dict[str, Any]:
        opts["double_quant"] = _bool("double_quant", opts["double_quant"])
        opts["blocksize"] = _number("blocksize", opts["blocksize"], int)
        if opts["blocksize"] not in BLOCKSIZES:
            raise InvalidInput(
                f"invalid blocksize {opts['blocksize']}: expected one of {', '.join(map(str, BLOCKSIZES))}"
            )
        if opts["compute_dtype"] not in COMPUTE_DTYPES:
            raise InvalidInput(
                f"invalid compute_dtype {opts['compute_dtype']!r}: expected one of {', '.join(COMPUTE_DTYPES)}"
            )
        return opts


class Int8Quantizer(_Quantizer):
    """8-bit bitsandbytes weights (LLM.int8()): one absmax per output row, outliers in 16 bit at run time."""

    name = "int8"
    quant_type = "int8"
    bits = 8
    fields = {"threshold": (6.0, "LLM.int8() outlier threshold on activations (0 disables the decomposition)")}

    def _validate(self, opts: dict[str, Any]) -> dict[str, Any]:
        opts["threshold"] = _number("threshold", opts["threshold"], float)
        if opts["threshold"] < 0:
            raise InvalidInput(f"invalid threshold {opts['threshold']}: must be >= 0")
        return opts


QUANTIZERS = [Bnb4bitQuantizer("nf4"), Bnb4bitQuantizer("fp4"), Int8Quantizer()]
