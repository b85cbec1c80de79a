"""Attaching BitFit to a torch model, its state dict and the streaming merge of one tensor.

Nothing is wrapped: ``attach`` unfreezes the chosen bias parameters in place (their original values are kept
for :func:`detach`) and replaces ``modules_to_save`` with trainable copies. Key names follow PEFT's layout::

    base_model.model.<bias parameter path>      a trained bias: its full value (not a delta)
    base_model.model.<module path>.<param>      modules_to_save: the trained copy's full state dict
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from adapterhub.errors import InvalidInput

from .config import SEQ_CLS_HEADS, BitFitConfig

PREFIX = "base_model.model."
_STATE_ATTR = "_adapterhub_bitfit"


@dataclass
class Attached:
    """What :func:`attach` changed, kept on the model (a plain attribute, not a submodule) for :func:`detach`."""

    config: BitFitConfig  # the effective config
    biases: dict[str, torch.Tensor]  # trained bias parameter name -> a copy of its value before attach
    saved: dict[str, nn.Module]  # modules_to_save path -> the original (frozen) module
    requires_grad: dict[str, bool] = field(default_factory=dict)  # parameter name -> flag before attach


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


def _inside(name: str, paths: list[str]) -> bool:
    return any(name.startswith(p + ".") for p in paths)


def resolve(model: nn.Module, config: BitFitConfig) -> tuple[BitFitConfig, list[str], list[str]]:
    """``(effective config, trained bias names, modules_to_save paths)``; refuses a model without biases and a
    ``bias_pattern`` that selects none."""
    mts = list(dict.fromkeys(config.modules_to_save))
    changes = []
    if config.task_type == "SEQ_CLS":
        added = [h for h in SEQ_CLS_HEADS if h not in mts]
        if added:
            mts += added
            changes.append(f"modules_to_save += {added} (task_type SEQ_CLS trains the head, as PEFT does)")
    # modules_to_save: PEFT matches any module path that ends with the name (plain suffix, no dot required)
    saved: list[str] = []
    for path, _ in model.named_modules(remove_duplicate=False):
        if path and any(path.endswith(m) for m in mts) and not _inside(path, saved):
            saved.append(path)
    missing = [m for m in mts if m not in SEQ_CLS_HEADS and not any(p.endswith(m) for p in saved)]
    if missing:
        raise InvalidInput(f"modules_to_save {missing} matched no module of the model")

    all_biases = [n for n, _ in model.named_parameters() if _is_bias(n) and not _inside(n, saved)]
    if not all_biases:
        raise InvalidInput(
            f"bitfit trains bias terms, but this {type(model).__name__} has no bias parameters "
            "(e.g. Llama-style models have none); BitFit needs biases: use lora or ia3 instead"
        )
    biases = [n for n in all_biases if config.trains_bias(n)]
    if not biases:
        shown = ", ".join(all_biases[:6]) + (f" ... ({len(all_biases)} in all)" if len(all_biases) > 6 else "")
        raise InvalidInput(
            f"bias_pattern {config.bias_pattern!r} matched no bias parameter (re.search in the name); "
            f"candidates: {shown}"
        )
    effective = dataclasses.replace(config, modules_to_save=mts)
    if changes:
        warnings.warn("bitfit effective config differs from the one given: " + "; ".join(changes), stacklevel=3)
    return effective, biases, saved


# -- attach / detach -------------------------------------------------------------------------------------
def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def attached(model: nn.Module) -> Attached:
    state = model.__dict__.get(_STATE_ATTR)
    if state is None:
        raise InvalidInput("no bitfit adapter is attached to this model")
    return state


def attach(model: nn.Module, config: BitFitConfig) -> BitFitConfig:
    """Freeze everything but the chosen biases (and the modules_to_save copies); returns the effective config.
    The model's outputs do not change."""
    if _STATE_ATTR in model.__dict__:
        raise InvalidInput("a bitfit adapter is already attached to this model; detach it first")
    effective, bias_names, saved_paths = resolve(model, config)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = dict(model.named_parameters())
    originals = {}
    for name in bias_names:
        originals[name] = params[name].detach().clone()
        params[name].requires_grad_(True)
    saved: dict[str, nn.Module] = {}
    for path in saved_paths:
        original = model.get_submodule(path)
        trained = copy.deepcopy(original)  # full trainable copy (PEFT's ModulesToSaveWrapper)
        for p in trained.parameters():
            p.requires_grad_(True)
        _set_submodule(model, path, trained)
        saved[path] = original
    model.__dict__[_STATE_ATTR] = Attached(effective, originals, saved, flags)
    return effective


def detach(model: nn.Module) -> None:
    """Put back the original bias values, modules and ``requires_grad`` flags."""
    state = attached(model)
    for path, original in reversed(list(state.saved.items())):
        _set_submodule(model, path, original)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.biases.items():
            params[name].copy_(value)
    for name, p in params.items():
        if name in state.requires_grad:
            p.requires_grad_(state.requires_grad[name])
    del model.__dict__[_STATE_ATTR]


# -- state dicts -----------------------------------------------------------------------------------------
def state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained biases and modules_to_save tensors under ``base_model.model.<name>`` (detached, not copied)."""
    state = attached(model)
    params = dict(model.named_parameters())
    out = {f"{PREFIX}{name}": params[name].detach() for name in state.biases}
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
        raise InvalidInput("bitfit tensors do not fit the attached adapter: " + "; ".join(parts))
    for key, target in expected.items():
        value = tensors[key]
        if tuple(value.shape) != tuple(target.shape):
            raise InvalidInput(
                f"bitfit tensor '{key}' has shape {tuple(value.shape)} but the attached adapter expects "
                f"{tuple(target.shape)}"
            )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key])  # `target` shares storage with the parameter/buffer


# -- streaming merge -------------------------------------------------------------------------------------
def merge_tensor(name: str, base: torch.Tensor, tensors: dict[str, torch.Tensor]):
    """The adapter's value for ``base`` (named as in the base model's safetensors), cast to the base dtype and
    device; ``None`` when the adapter does not hold that tensor."""
    value = tensors.get(PREFIX + name)
    if value is None:
        return None
    if tuple(value.shape) != tuple(base.shape):
        raise InvalidInput(f"'{PREFIX + name}' has shape {tuple(value.shape)}, base '{name}' has {tuple(base.shape)}")
    return value.to(device=base.device, dtype=base.dtype, copy=True)
