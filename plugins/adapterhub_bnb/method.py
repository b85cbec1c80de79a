"""The ``qlora`` method: LoRA trained on a 4-bit (``nf4``) base.

The adapter is a plain LoRA adapter (PEFT ``peft_type="LORA"`` directory, same keys, same merge maths);
what makes it QLoRA is where it was trained: ``train`` loads the base through the quantizer named by
``base_quantizer`` (or ``--quantize``) and records the quantization in ``manifest["base"]["quantization"]``.
Merging it lands on the dequantized base by default (see ``adapterhub merge --onto``).

What LoRA needs on bitsandbytes layers beyond plain LoRA is done here: the 4-bit layers stay off
bitsandbytes' packed CPU kernel (no backward). (LoRA sizes its branch from ``in_features`` /
``out_features``, so a packed 4-bit ``weight`` does not mislead it.) DoRA and GPT-2 style Conv1D layers on
a quantized base are refused.
"""

from __future__ import annotations

from typing import Any

from adapterhub_lora import LoraMethod

class QLoraMethod(LoraMethod):
    """QLoRA: LoRA on a 4-bit NF4 base (double quantization; paged optimizers on CUDA)."""

    name = "qlora"
    #: train loads the base through this quantizer unless ``--quantize`` names another one
    base_quantizer = "nf4"
    #: this method's attach works on bitsandbytes-quantized layers
    supports_quantized_base = True

    def matches_peft_config(self, peft_config: dict[str, Any]) -> bool:
        return False  # a PEFT LoRA directory is imported as 'lora'; qlora is LoRA + where it was trained

    def attach(self, model: Any, config: Any):
        if not _has_bnb(model):
            return super().attach(model, config)
        from adapterhub.errors import InvalidInput

        from . import ops

        if self._config(config).use_dora:
            raise InvalidInput("DoRA cannot train on a quantized base here (its weight norm needs the dequantized "
                               "weight at every step); use qlora without use_dora, or dora on the full-precision base")
        effective = super().attach(model, config)  # LoRA sizes A/B from in/out_features, not the packed weight
        try:
            ops.fit_lora_to_quantized(model, effective.init_lora_weights)  # checks; refits if LoRA changes
            ops.no_cpu_packing(model)  # bitsandbytes' packed CPU kernel has no backward
        except Exception:
            super().detach(model)
            raise
        return effective


def _has_bnb(model: Any) -> bool:
    return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())
