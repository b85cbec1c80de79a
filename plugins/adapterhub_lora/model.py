"""Attaching LoRA to a torch model, PEFT-named state dicts, and the streaming merge of one tensor.

Key names are exactly those PEFT writes to ``adapter_model.safetensors`` (adapter name removed)::

    base_model.model.<module path>.lora_A.weight          (r, in)
    base_model.model.<module path>.lora_B.weight          (out, r)
    base_model.model.<module path>.lora_magnitude_vector  (out,)        DoRA
    base_model.model.<module path>.<param>                modules_to_save: the trained copy's full state dict
"""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adapterhub.errors import InvalidInput

from .config import ALL_LINEAR, DEFAULT_TARGETS, SEQ_CLS_HEADS, LoraConfig
from .layer import LINEAR_TYPES, LoraLinear, is_conv1d, merge_weight

PREFIX = "base_model.model."
_STATE_ATTR = "_adapterhub_lora"


@dataclass
class Attached:
    """What :func:`attach` changed, kept on the model (a plain attribute, not a submodule) for :func:`detach`."""

    config: LoraConfig  # the effective config (what was actually applied)
    wrapped: list[str]  # module paths replaced by LoraLinear
    saved: dict[str, nn.Module]  # modules_to_save path -> the original (frozen) module
    requires_grad: dict[str, bool] = field(default_factory=dict)  # parameter name -> flag before attach


# -- target resolution (PEFT's matching rules) -----------------------------------------------------------
def _matches_target(target_modules: Any, path: str) -> bool:
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, path) is not None
    return path in target_modules or any(path.endswith(f".{t}") for t in target_modules)


def _excluded_by_modules_to_save(modules_to_save: list[str], path: str) -> bool:
    return any(re.match(rf"(^|.*\.){m}($|\..*)", path) for m in modules_to_save)


def _all_linear(model: nn.Module, task_type: str | None) -> list[str]:
    """PEFT's ``all-linear``: every Linear/Conv1D except the output embedding (and, for SEQ_CLS, the head)."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, LINEAR_TYPES)]
    exclude: set[int] = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    if out_emb is not None:
        exclude.add(id(out_emb))
    elif task_type == "SEQ_CLS":
        for head in ("score", "classifier"):  # PEFT's SEQ_CLS_HEAD_NAMES order
            if getattr(model, head, None) is not None:
                exclude.add(id(getattr(model, head)))
                break
    return [n for n in names if id(model.get_submodule(n)) not in exclude]


def candidate_names(model: nn.Module) -> list[str]:
    """The distinct last names of the Linear/Conv1D modules (what ``target_modules`` usually lists)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, LINEAR_TYPES)})


def resolve(model: nn.Module, config: LoraConfig) -> tuple[LoraConfig, list[str], list[str]]:
    """``(effective config, target paths, modules_to_save paths)`` for ``model``; refuses targets that match
    nothing or match a layer type LoRA cannot wrap."""
    changes: list[str] = []
    mts = list(dict.fromkeys(config.modules_to_save))
    if config.task_type == "SEQ_CLS":
        added = [h for h in SEQ_CLS_HEADS if h not in mts]
        if added:
            mts += added
            changes.append(f"modules_to_save += {added} (task_type SEQ_CLS trains the head, as PEFT does)")
    target_modules = config.target_modules
    if target_modules is None or target_modules == []:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise InvalidInput(
                f"no default target_modules for model type {model_type!r}; set target_modules "
                f"(candidates: {', '.join(candidate_names(model))})"
            )
        target_modules = list(DEFAULT_TARGETS[model_type])
        changes.append(f"target_modules = {target_modules} (PEFT's default for {model_type})")

    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        pool = _all_linear(model, config.task_type)
        matched = [p for p in pool if not _excluded_by_modules_to_save(mts, p)]
    else:
        matched = []
        for path, module in model.named_modules():
            if not path or _excluded_by_modules_to_save(mts, path) or not _matches_target(target_modules, path):
                continue
            if not isinstance(module, LINEAR_TYPES):
                raise InvalidInput(
                    f"target_modules matched '{path}', a {type(module).__name__}; lora wraps only Linear and "
                    f"Conv1D layers (candidates: {', '.join(candidate_names(model))})"
                )
            matched.append(path)
    if not matched:
        raise InvalidInput(
            f"target_modules {target_modules!r} matched no module of the model; "
            f"candidates: {', '.join(candidate_names(model))}"
        )

    # modules_to_save: PEFT matches any module path that ends with the name (plain suffix, no dot required)
    saved: list[str] = []
    for path, _ in model.named_modules(remove_duplicate=False):
        if path and any(path.endswith(m) for m in mts) and not any(path.startswith(s + ".") for s in saved):
            saved.append(path)
    missing = [m for m in mts if m not in SEQ_CLS_HEADS and not any(p.endswith(m) for p in saved)]
    if missing:
        raise InvalidInput(f"modules_to_save {missing} matched no module of the model")

    conv = [p for p in matched if is_conv1d(model.get_submodule(p))]
    fan_in_fan_out = bool(conv)
    if conv and len(conv) != len(matched):
        raise InvalidInput("lora cannot target Linear and Conv1D layers in the same adapter (fan_in_fan_out differs)")
    if fan_in_fan_out != config.fan_in_fan_out:
        changes.append(
            f"fan_in_fan_out = {fan_in_fan_out} (the targeted layers are {'Conv1D' if conv else 'Linear'}, "
            "as PEFT sets it)"
        )
    effective = dataclasses.replace(
        config, target_modules=target_modules, modules_to_save=mts, fan_in_fan_out=fan_in_fan_out
    )
    if changes:
        warnings.warn("lora effective config differs from the one given: " + "; ".join(changes), stacklevel=3)
    return effective, matched, saved


# -- attach / detach -------------------------------------------------------------------------------------
def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def attached(model: nn.Module) -> Attached:
    state = model.__dict__.get(_STATE_ATTR)
    if state is None:
        raise InvalidInput("no lora adapter is attached to this model")
    return state


def attach(model: nn.Module, config: LoraConfig) -> LoraConfig:
    """Wrap the targeted layers in place, freeze everything else, and return the effective config."""
    if _STATE_ATTR in model.__dict__:
        raise InvalidInput("a lora adapter is already attached to this model; detach it first")
    effective, targets, saved_paths = resolve(model, config)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for path in targets:
        wrapper = LoraLinear(
            model.get_submodule(path),
            r=effective.rank_for(path),
            lora_alpha=effective.alpha_for(path),
            lora_dropout=effective.lora_dropout,
            use_rslora=effective.use_rslora,
            use_dora=effective.use_dora,
            init_lora_weights=effective.init_lora_weights,
        )
        wrapper.train(wrapper.base_layer.training)  # new modules start in train mode; follow the model's
        _set_submodule(model, path, wrapper)
    saved: dict[str, nn.Module] = {}
    for path in saved_paths:
        original = model.get_submodule(path)
        trained = copy.deepcopy(original)  # full trainable copy (PEFT's ModulesToSaveWrapper)
        for p in trained.parameters():
            p.requires_grad_(True)
        _set_submodule(model, path, trained)
        saved[path] = original
    model.__dict__[_STATE_ATTR] = Attached(effective, targets, saved, flags)
    return effective


def detach(model: nn.Module) -> None:
    """Put back the original modules and ``requires_grad`` flags."""
    state = attached(model)
    for path in state.wrapped:
        _set_submodule(model, path, model.get_submodule(path).base_layer)
    for path, original in reversed(list(state.saved.items())):
        _set_submodule(model, path, original)
    for name, p in model.named_parameters():
        if name in state.requires_grad:
            p.requires_grad_(state.requires_grad[name])
    del model.__dict__[_STATE_ATTR]


# -- state dicts -----------------------------------------------------------------------------------------
def state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's checkpoint key names (detached, not copied)."""
    state = attached(model)
    out: dict[str, torch.Tensor] = {}
    for path in state.wrapped:
        layer: LoraLinear = model.get_submodule(path)
        out[f"{PREFIX}{path}.lora_A.weight"] = layer.lora_A.weight.detach()
        out[f"{PREFIX}{path}.lora_B.weight"] = layer.lora_B.weight.detach()
        if layer.lora_magnitude_vector is not None:
            out[f"{PREFIX}{path}.lora_magnitude_vector"] = layer.lora_magnitude_vector.detach()
    for path in state.saved:
        for key, value in model.get_submodule(path).state_dict().items():
            out[f"{PREFIX}{path}.{key}"] = value.detach()
    return out


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Strict inverse of :func:`state_dict`: every key present, no extra key, every shape equal."""
    expected = state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        raise InvalidInput("lora tensors do not fit the attached adapter: " + "; ".join(parts))
    for key, target in expected.items():
        value = tensors[key]
        if tuple(value.shape) != tuple(target.shape):
            raise InvalidInput(
                f"lora tensor '{key}' has shape {tuple(value.shape)} but the attached adapter expects "
                f"{tuple(target.shape)}"
            )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key])  # `target` shares storage with the parameter/buffer


# -- streaming merge -------------------------------------------------------------------------------------
def _fp32(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Adapter tensors are used in fp32 like PEFT's default ``autocast_adapter_dtype=True``."""
    t = t.to(device)
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def merge_tensor(name: str, base: torch.Tensor, tensors: dict[str, torch.Tensor], config: LoraConfig):
    """``base`` (named as in the base model's safetensors) with the adapter merged in, bit for bit what
    ``PeftModel.merge_and_unload()`` produces; ``None`` when the adapter does not touch it."""
    saved = tensors.get(PREFIX + name)
    if saved is not None:  # a modules_to_save copy replaces the base tensor
        if tuple(saved.shape) != tuple(base.shape):
            raise InvalidInput(
                f"'{PREFIX + name}' has shape {tuple(saved.shape)}, base '{name}' has {tuple(base.shape)}"
            )
        return saved.to(device=base.device, dtype=base.dtype, copy=True)
    if not name.endswith(".weight"):
        return None
    path = name[: -len(".weight")]
    key_a = f"{PREFIX}{path}.lora_A.weight"
    if key_a not in tensors:
        return None
    key_b, key_m = f"{PREFIX}{path}.lora_B.weight", f"{PREFIX}{path}.lora_magnitude_vector"
    if key_b not in tensors:
        raise InvalidInput(f"adapter has '{key_a}' but no '{key_b}'")
    a, b = _fp32(tensors[key_a], base.device), _fp32(tensors[key_b], base.device)  # (r, in), (out, r)
    magnitude = _fp32(tensors[key_m], base.device) if key_m in tensors else None  # (out,)
    if config.use_dora and magnitude is None:
        raise InvalidInput(f"DoRA adapter has no '{key_m}'")
    r = config.rank_for(path)
    if a.shape[0] != r or b.shape[1] != r:
        raise InvalidInput(f"'{key_a}' has rank {a.shape[0]} but the config gives rank {r} for '{path}'")
    ffo = config.fan_in_fan_out
    layout = (a.shape[1], b.shape[0]) if ffo else (b.shape[0], a.shape[1])  # (in, out) or (out, in)
    if tuple(base.shape) != layout:
        hint = ""
        if tuple(base.shape) == layout[::-1]:
            hint = (
                f"; the weight is stored {'(out, in)' if ffo else '(in, out)'}: "
                f"use the effective config (fan_in_fan_out={not ffo})"
            )
        raise InvalidInput(f"base '{name}' has shape {tuple(base.shape)} but the adapter expects {layout}{hint}")
    return merge_weight(base, a, b, config.scaling_for(path), ffo, magnitude)
