"""Training on a quantized base: what a quantizer plugin (it loads bitsandbytes layers) and a method that wraps
them (QLoRA) both need to know about bitsandbytes' layers. torch and bitsandbytes are imported on call.

bitsandbytes runs on the CPU too (slowly: 4-bit matmuls dequantize; it saves memory, not time). On CPUs with
AVX512-BF16 its eval-mode no-grad forward repacks 4-bit weights for a fused kernel that has no backward, so a
model with an adapter attached keeps every 4-bit layer on the plain path (:func:`no_cpu_packing`).
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import AdapterhubError


def bitsandbytes() -> Any:
    """The ``bitsandbytes`` module (its optional-kernel notice on a CPU import silenced); a one-line error saying
    how to install it when it is missing."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError:
        raise AdapterhubError(
            "the bitsandbytes quantizers need the bitsandbytes package: pip install 'adapterhub[bnb]'"
        ) from None
    return bitsandbytes


def quantized_layer_types() -> tuple[type, ...]:
    """bitsandbytes' quantized Linear layers: ``Linear4bit`` (nf4, fp4) and ``Linear8bitLt`` (int8)."""
    b = bitsandbytes()
    return (b.nn.Linear4bit, b.nn.Linear8bitLt)


def has_quantized_layers(model: Any) -> bool:
    """Whether any module of ``model`` is a bitsandbytes layer (checked without importing bitsandbytes)."""
    return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())


def from_conv1d(module: Any) -> bool:
    """Whether a quantized layer was made from a transformers ``Conv1D`` (GPT-2 style, weight ``(in, out)``)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return False
    src = getattr(module, "source_cls", None)
    return isinstance(src, type) and issubclass(src, Conv1D)


def no_cpu_packing(model: Any) -> None:
    """Keep every 4-bit layer on bitsandbytes' plain (dequantize + matmul) CPU path. Its packed kernel,
    switched on by the first eval-mode no-grad forward, has no autograd: after an evaluation, training
    would silently get zero gradients through the base layers. Weights already packed are unpacked."""
    b = bitsandbytes()
    for m in model.modules():
        if isinstance(m, b.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            qs = getattr(m.weight, "quant_state", None)
            if qs is not None and getattr(qs, "packing_format_for_cpu", False):
                from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

                m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu_inverse(m.weight.data, qs)
