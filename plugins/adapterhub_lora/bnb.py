"""LoRA on bitsandbytes' quantized layers (QLoRA), as PEFT keeps ``lora/bnb.py`` beside its LoRA layers: the
quantizer plugin loads the base; this fits the LoRA branches :mod:`adapterhub_lora.model` wrapped around its
layers. Imported on first use (torch, bitsandbytes).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from adapterhub.errors import InvalidInput
from adapterhub.tuning import from_conv1d, quantized_layer_types

from .layer import ADAPTER_DTYPE, LoraLinear


def fit_to_quantized(model: torch.nn.Module, init: Any = True) -> int:
    """LoRA reads ``(in, out)`` from ``weight.shape``, which is packed for 4-bit layers: give every LoRA
    branch around a quantized layer A (r, in) / B (out, r) of the layer's real ``in_features`` /
    ``out_features``, initialised as LoRA does (``init``: the config's ``init_lora_weights``). Returns the number
    of branches fixed."""
    quantized = quantized_layer_types()
    fixed = 0
    for path, m in model.named_modules():
        if not isinstance(m, LoraLinear) or not isinstance(m.base_layer, quantized):
            continue
        if from_conv1d(m.base_layer):
            raise InvalidInput(
                f"'{path}' is a quantized Conv1D (GPT-2 style) layer; LoRA on a quantized base "
                "supports Linear layers only"
            )
        if m.lora_magnitude_vector is not None:
            raise InvalidInput(
                "DoRA cannot train on a quantized base here (its weight norm needs the dequantized "
                "weight at every step); use qlora without use_dora, or lora/dora on the "
                "full-precision base"
            )
        fin, fout = m.base_layer.in_features, m.base_layer.out_features
        if (m.lora_A.in_features, m.lora_B.out_features) == (fin, fout):
            continue
        r, dev = m.r, m.lora_A.weight.device
        m.lora_A = torch.nn.Linear(fin, r, bias=False, device=dev, dtype=ADAPTER_DTYPE)
        m.lora_B = torch.nn.Linear(r, fout, bias=False, device=dev, dtype=ADAPTER_DTYPE)
        if init is True:
            torch.nn.init.kaiming_uniform_(m.lora_A.weight, a=math.sqrt(5))
            torch.nn.init.zeros_(m.lora_B.weight)
        elif init == "gaussian":
            torch.nn.init.normal_(m.lora_A.weight, std=1 / r)
            torch.nn.init.zeros_(m.lora_B.weight)
        m.in_features, m.out_features = fin, fout
        m.train(m.base_layer.training)
        fixed += 1
    return fixed
