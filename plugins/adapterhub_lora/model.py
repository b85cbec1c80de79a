"""Attaching LoRA to a torch model, PEFT-named state dicts, and the streaming merge of one tensor.

Key names are exactly those PEFT writes to ``adapter_model.safetensors`` (adapter name removed)::

    base_model.model.<module path>.lora_A.weight          (r, in)
    base_model.model.<module path>.lora_B.weight          (out, r)
    base_model.model.<module path>.lora_magnitude_vector  (out,)        DoRA
    base_model.model.<module path>.<param>                modules_to_save: the trained copy's full state dict
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.errors import InvalidInput
from adapterhub.tuning import PEFT_PREFIX as PREFIX
from adapterhub.tuning import Attached  # what attach changed, kept on the model

from .config import LoraConfig, check_factors
from .layer import LoraLinear, merge_weight, row_kernel

STATE_ATTR = "_adapterhub_lora"  # lora, dora (and methods built on them) share one slot


def candidate_names(model: nn.Module) -> list[str]:
    """The distinct last names of the Linear/Conv1D modules (what ``target_modules`` usually lists)."""
    return tuners.candidate_names(model, tuners.linear_types())


def resolve(model: nn.Module, config: LoraConfig) -> tuple[LoraConfig, list[str], list[str]]:
    """``(effective config, target paths, modules_to_save paths)`` for ``model``; refuses targets that match
    nothing or match a layer type LoRA cannot wrap."""
    changes: list[str] = []
    mts = tuners.with_seq_cls_heads(config.modules_to_save, config.task_type, changes)
    target_modules = config.target_modules
    if target_modules is None or target_modules == []:
        target_modules = tuners.peft_default(
            model,
            tuners.LORA_TARGETS,
            field="target_modules",
            method="lora",
            changes=changes,
            hint=lambda: f"candidates: {', '.join(candidate_names(model))}",
        )
    matched = tuners.select_targets(
        model, target_modules, types=tuners.linear_types(), method="lora", exclude=mts, task_type=config.task_type
    )
    saved = tuners.modules_to_save_paths(model, mts)
    ffo = tuners.fan_in_fan_out(model, matched, config.fan_in_fan_out, method="lora", changes=changes)
    effective = dataclasses.replace(config, target_modules=target_modules, modules_to_save=mts, fan_in_fan_out=ffo)
    tuners.warn_changes("lora", changes)
    return effective, matched, saved


# -- attach / detach -------------------------------------------------------------------------------------
def attached(model: nn.Module, method: str | None = None) -> Attached:
    return tuners.attached(model, STATE_ATTR, method, family="lora")


def attach(model: nn.Module, config: LoraConfig, method: str = "lora") -> LoraConfig:
    """Wrap the targeted layers in place, freeze everything else, and return the effective config."""
    return tuners.attach_wrappers(model, STATE_ATTR, method, lambda m: resolve(m, config), _wrapper)


def _wrapper(config: LoraConfig, path: str, base: nn.Module) -> LoraLinear:
    return LoraLinear(
        base,
        r=config.rank_for(path),
        lora_alpha=config.alpha_for(path),
        lora_dropout=config.lora_dropout,
        use_rslora=config.use_rslora,
        use_dora=config.use_dora,
        init_lora_weights=config.init_lora_weights,
    )


def detach(model: nn.Module, method: str | None = None) -> None:
    """Put back the original modules and ``requires_grad`` flags."""
    tuners.detach_wrappers(model, STATE_ATTR, method, family="lora")


# -- state dicts -----------------------------------------------------------------------------------------
def state_dict(model: nn.Module, method: str | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's checkpoint key names (detached, not copied)."""
    state = attached(model, method)
    out: dict[str, torch.Tensor] = {}
    for path in state.targets:
        layer: LoraLinear = model.get_submodule(path)
        out[f"{PREFIX}{path}.lora_A.weight"] = layer.lora_A.weight.detach()
        out[f"{PREFIX}{path}.lora_B.weight"] = layer.lora_B.weight.detach()
        if layer.lora_magnitude_vector is not None:
            out[f"{PREFIX}{path}.lora_magnitude_vector"] = layer.lora_magnitude_vector.detach()
    out.update(tuners.saved_tensors(model, state.saved))
    return out


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], method: str | None = None) -> None:
    """Strict inverse of :func:`state_dict`: every key present, no extra key, every shape equal."""
    tuners.load_strict(attached(model, method).method, state_dict(model, method), tensors)


# -- streaming merge -------------------------------------------------------------------------------------
def _fp32(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Adapter tensors are used in fp32 like PEFT's default ``autocast_adapter_dtype=True``."""
    t = t.to(device)
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _factors(name: str, shape: tuple[int, ...], device: Any, tensors: dict[str, torch.Tensor], config: LoraConfig):
    """``(A, B, magnitude, scaling, fan_in_fan_out)`` in fp32 for base tensor ``name`` of ``shape``, checked
    against it; ``None`` when the adapter has no LoRA factors for it."""
    if not name.endswith(".weight"):
        return None
    path = name[: -len(".weight")]
    key_a = f"{PREFIX}{path}.lora_A.weight"
    if key_a not in tensors:
        return None
    key_b, key_m = f"{PREFIX}{path}.lora_B.weight", f"{PREFIX}{path}.lora_magnitude_vector"
    if key_b not in tensors:
        raise InvalidInput(f"adapter has '{key_a}' but no '{key_b}'")
    a, b = _fp32(tensors[key_a], device), _fp32(tensors[key_b], device)  # (r, in), (out, r)
    magnitude = _fp32(tensors[key_m], device) if key_m in tensors else None  # (out,)
    if config.use_dora and magnitude is None:
        raise InvalidInput(f"DoRA adapter has no '{key_m}'")
    check_factors(config, path, tensors)  # ranks of A, B and the config agree (names the one that differs)
    ffo = config.fan_in_fan_out
    layout = (a.shape[1], b.shape[0]) if ffo else (b.shape[0], a.shape[1])  # (in, out) or (out, in)
    if tuple(shape) != layout:
        hint = ""
        if tuple(shape) == layout[::-1]:
            hint = (
                f"; the weight is stored {'(out, in)' if ffo else '(in, out)'}: "
                f"use the effective config (fan_in_fan_out={not ffo})"
            )
        raise InvalidInput(f"base '{name}' has shape {tuple(shape)} but the adapter expects {layout}{hint}")
    return a, b, magnitude, config.scaling_for(path), ffo


def merge_tensor(
    name: str, base: torch.Tensor, tensors: dict[str, torch.Tensor], config: LoraConfig, inplace: bool = False
):
    """``base`` (named as in the base model's safetensors) with the adapter merged in, bit for bit what
    ``PeftModel.merge_and_unload()`` produces; ``None`` when the adapter does not touch it. ``inplace``:
    the result may be written into ``base`` itself (the caller owns it)."""
    saved = tuners.saved_copy(name, base, tensors)
    if saved is not None:  # a modules_to_save copy replaces the base tensor
        return saved
    found = _factors(name, tuple(base.shape), base.device, tensors, config)
    if found is None:
        return None
    a, b, magnitude, scaling, ffo = found
    return merge_weight(base, a, b, scaling, ffo, magnitude, out=base if inplace else None)


def row_merger(
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    tensors: dict[str, torch.Tensor],
    config: LoraConfig,
    blocks: list[tuple[int, int]],
):
    """``merge(block, i, j)`` merging rows ``i:j`` of the 2-d CPU weight ``name`` in place (LoRA, not DoRA:
    its norm needs whole columns for Conv1D); ``None`` when the tensor must go through :func:`merge_tensor`."""
    if len(shape) != 2 or PREFIX + name in tensors:  # a modules_to_save copy: merge_tensor replaces it
        return None
    found = _factors(name, shape, torch.device("cpu"), tensors, config)
    if found is None or found[2] is not None:
        return None
    a, b, _, scaling, ffo = found
    return row_kernel(a, b, scaling, ffo, dtype, blocks, shape[1])
