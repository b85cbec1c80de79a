"""The torch side of LoKr on Linear layers: the wrapper, attach/detach, state dicts and the streaming merge.

Keys follow peft's layout, ``base_model.model.<module path>.lokr_w1`` (or ``lokr_w1_a``/``_b``) and ``lokr_w2``
(or ``lokr_w2_a``/``_b``); the arithmetic is peft's (``torch.kron(w1, w2) * scale``), so merges are bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.tuning import PEFT_PREFIX

from .config import LoKrConfig, factor_shapes

_SLOT = "_adapterhub_lokr"
ALL_FACTORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def delta_weight(factors: dict[str, torch.Tensor], scaling: float) -> torch.Tensor:
    """ΔW of one layer from its factors (by name), computed exactly as peft's ``get_delta_weight``."""
    w1 = factors["lokr_w1"] if "lokr_w1" in factors else factors["lokr_w1_a"] @ factors["lokr_w1_b"]
    w2 = factors["lokr_w2"] if "lokr_w2" in factors else factors["lokr_w2_a"] @ factors["lokr_w2_b"]
    return torch.kron(w1, w2.contiguous()) * scaling


class LoKrLinear(nn.Module):
    """``base_layer(x) + x ΔWᵀ`` (the base layer keeps its bias); factors in float32, as peft keeps them."""

    def __init__(self, base_layer: nn.Linear, config: LoKrConfig):
        super().__init__()
        self.base_layer, self.scaling = base_layer, config.scaling
        self.names = list(factor_shapes(config, base_layer.out_features, base_layer.in_features).items())
        device = base_layer.weight.device
        for name, shape in self.names:
            p = nn.Parameter(torch.empty(shape, device=device))
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            setattr(self, name, p)
        if config.init_weights:  # peft: w1 (or w1_a) starts at zero
            nn.init.zeros_(getattr(self, "lokr_w1" if hasattr(self, "lokr_w1") else "lokr_w1_a"))

    def factors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name, _ in self.names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        delta = delta_weight(self.factors(), self.scaling).reshape(self.base_layer.weight.shape)
        return (result + F.linear(x.to(delta.dtype), delta)).to(x.dtype)


def attached(model: nn.Module, method: str | None = None) -> tuners.Attached:
    return tuners.attached(model, _SLOT, method, family="lokr")


def attach(model: nn.Module, config: LoKrConfig, method: str = "lokr") -> LoKrConfig:
    return tuners.attach_wrappers(
        model, _SLOT, method, lambda m: resolve(m, config), lambda cfg, path, module: LoKrLinear(module, cfg)
    )


def resolve(model: nn.Module, config: LoKrConfig) -> tuple[LoKrConfig, list[str], list[str]]:
    """``(effective config, target paths, modules_to_save paths)``; unset targets: peft's LoKr table (LoRA's)."""
    changes: list[str] = []
    resolved = tuners.resolve_targets(model, config, "lokr", defaults=tuners.LORA_TARGETS, changes=changes)
    tuners.warn_changes("lokr", changes)
    return resolved


def detach(model: nn.Module, method: str | None = None) -> None:
    tuners.detach_wrappers(model, _SLOT, method, family="lokr")


def state_dict(model: nn.Module, method: str | None = None) -> dict[str, torch.Tensor]:
    state = attached(model, method)
    out = {
        f"{PEFT_PREFIX}{path}.{name}": value.detach()
        for path in state.targets
        for name, value in model.get_submodule(path).factors().items()
    }
    out.update(tuners.saved_tensors(model, state.saved))
    return out


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], method: str | None = None) -> None:
    tuners.load_strict(attached(model, method).method, state_dict(model, method), tensors)


def merge_tensor(name: str, base: torch.Tensor, tensors: dict[str, torch.Tensor], config: LoKrConfig):
    """``base + ΔW`` for a targeted layer's weight (peft's ``weight.data += delta``: added in float32, cast to
    the base dtype); a ``modules_to_save`` copy's value; else ``None``."""
    module, _, param = name.rpartition(".")
    factors = {
        f: tensors[f"{PEFT_PREFIX}{module}.{f}"].to(device=base.device, dtype=torch.float32)
        for f in ALL_FACTORS
        if f"{PEFT_PREFIX}{module}.{f}" in tensors
    }
    if param != "weight" or not factors:
        return tuners.saved_copy(name, base, tensors)
    merged = base.clone()
    merged += delta_weight(factors, config.scaling).reshape(base.shape)
    return merged
