"""The torch side of LoHa on Linear layers: the wrapper, attach/detach, state dicts and the streaming merge.

Keys follow peft's layout, ``base_model.model.<module path>.hada_w{1,2}_{a,b}``; the arithmetic is peft's
(``((w1_a @ w1_b) * (w2_a @ w2_b)) * scale`` with ``scale`` a float32 scalar tensor), so merges are bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.tuning import PEFT_PREFIX

from .config import LoHaConfig

_SLOT = "_adapterhub_loha"
FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


def delta_weight(
    w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """ΔW of one layer, computed exactly as peft's ``HadaWeight.forward``."""
    return ((w1a @ w1b) * (w2a @ w2b)) * torch.tensor(scaling)


class LoHaLinear(nn.Module):
    """``base_layer(x) + x ΔWᵀ`` (the base layer keeps its bias); factors in float32, as peft keeps them."""

    def __init__(self, base_layer: nn.Linear, r: int, scaling: float, init_weights: bool):
        super().__init__()
        self.base_layer, self.scaling = base_layer, scaling
        out_f, in_f = base_layer.out_features, base_layer.in_features
        device = base_layer.weight.device
        self.hada_w1_a = nn.Parameter(torch.empty(out_f, r, device=device))
        self.hada_w1_b = nn.Parameter(torch.empty(r, in_f, device=device))
        self.hada_w2_a = nn.Parameter(torch.empty(out_f, r, device=device))
        self.hada_w2_b = nn.Parameter(torch.empty(r, in_f, device=device))
        for p in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        if init_weights:
            nn.init.zeros_(self.hada_w2_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        delta = delta_weight(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scaling)
        return (result + F.linear(x.to(delta.dtype), delta)).to(x.dtype)


def attached(model: nn.Module, method: str | None = None) -> tuners.Attached:
    return tuners.attached(model, _SLOT, method, family="loha")


def attach(model: nn.Module, config: LoHaConfig, method: str = "loha") -> LoHaConfig:
    return tuners.attach_wrappers(
        model,
        _SLOT,
        method,
        lambda m: resolve(m, config),
        lambda cfg, path, module: LoHaLinear(module, cfg.r, cfg.scaling, cfg.init_weights),
    )


def resolve(model: nn.Module, config: LoHaConfig) -> tuple[LoHaConfig, list[str], list[str]]:
    """``(effective config, target paths, modules_to_save paths)``; unset targets: peft's LoHa table (LoRA's)."""
    changes: list[str] = []
    resolved = tuners.resolve_targets(model, config, "loha", defaults=tuners.LORA_TARGETS, changes=changes)
    tuners.warn_changes("loha", changes)
    return resolved


def detach(model: nn.Module, method: str | None = None) -> None:
    tuners.detach_wrappers(model, _SLOT, method, family="loha")


def state_dict(model: nn.Module, method: str | None = None) -> dict[str, torch.Tensor]:
    state = attached(model, method)
    out = {
        f"{PEFT_PREFIX}{path}.{name}": getattr(model.get_submodule(path), name).detach()
        for path in state.targets
        for name in FACTORS
    }
    out.update(tuners.saved_tensors(model, state.saved))
    return out


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], method: str | None = None) -> None:
    tuners.load_strict(attached(model, method).method, state_dict(model, method), tensors)


def merge_tensor(name: str, base: torch.Tensor, tensors: dict[str, torch.Tensor], config: LoHaConfig):
    """``base + ΔW`` for a targeted layer's weight (peft's ``weight.data += delta``: added in float32, cast to
    the base dtype); a ``modules_to_save`` copy's value; else ``None``."""
    module, _, param = name.rpartition(".")
    keys = [f"{PEFT_PREFIX}{module}.{f}" for f in FACTORS]
    if param != "weight" or keys[0] not in tensors:
        return tuners.saved_copy(name, base, tensors)
    w1a, w1b, w2a, w2b = (tensors[k].to(device=base.device, dtype=torch.float32) for k in keys)
    delta = delta_weight(w1a, w1b, w2a, w2b, config.scaling).reshape(base.shape)
    merged = base.clone()
    merged += delta
    return merged
