"""Attaching (IA)³ to a torch model, PEFT-named state dicts, the streaming merge and linear combination.

Key names are exactly those PEFT writes to ``adapter_model.safetensors`` (adapter name removed)::

    base_model.model.<module path>.ia3_l        (out, 1) attention-style layer, (1, in) feed-forward layer
    base_model.model.<module path>.<param>      modules_to_save: the trained copy's full state dict
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

from .config import IA3Config
from .layer import IA3Linear, merge_bias, merge_weight

SUFFIX = ".ia3_l"
_STATE_ATTR = "_adapterhub_ia3"


def candidate_names(model: nn.Module) -> list[str]:
    """The distinct last names of the Linear/Conv1D modules (what ``target_modules`` usually lists)."""
    return tuners.candidate_names(model, tuners.linear_types())


def resolve(model: nn.Module, config: IA3Config) -> tuple[IA3Config, list[str], list[str]]:
    """``(effective config, target paths, modules_to_save paths)`` for ``model``; refuses targets that match
    nothing or match a layer type (IA)³ cannot wrap."""
    changes: list[str] = []
    mts = tuners.with_seq_cls_heads(config.modules_to_save, config.task_type, changes)
    target_modules = config.target_modules
    if target_modules is None or target_modules == []:
        target_modules = tuners.peft_default(
            model,
            tuners.IA3_TARGETS,
            field="target_modules",
            method="ia3",
            changes=changes,
            hint=lambda: f"candidates: {', '.join(candidate_names(model))}",
        )
    feedforward = config.feedforward_modules
    if feedforward is None:
        feedforward = tuners.peft_default(
            model,
            tuners.IA3_FEEDFORWARD,
            field="feedforward_modules",
            method="ia3",
            changes=changes,
            hint="a subset of target_modules, or [] for none",
        )
    matched = tuners.select_targets(
        model, target_modules, types=tuners.linear_types(), method="ia3", exclude=mts, task_type=config.task_type
    )
    saved = tuners.modules_to_save_paths(model, mts)
    ffo = tuners.fan_in_fan_out(model, matched, config.fan_in_fan_out, method="ia3", changes=changes)
    effective = dataclasses.replace(
        config, target_modules=target_modules, feedforward_modules=feedforward, modules_to_save=mts, fan_in_fan_out=ffo
    )
    tuners.warn_changes("ia3", changes)
    return effective, matched, saved


# -- attach / detach -------------------------------------------------------------------------------------
def attached(model: nn.Module, method: str | None = None) -> Attached:
    return tuners.attached(model, _STATE_ATTR, method, family="ia3")


def attach(model: nn.Module, config: IA3Config, method: str = "ia3") -> IA3Config:
    """Wrap the targeted layers in place, freeze everything else, and return the effective config."""
    return tuners.attach_wrappers(model, _STATE_ATTR, method, lambda m: resolve(m, config), _wrapper)


def _wrapper(config: IA3Config, path: str, base: nn.Module) -> IA3Linear:
    return IA3Linear(base, is_feedforward=config.is_feedforward(path), init_ia3_weights=config.init_ia3_weights)


def detach(model: nn.Module, method: str | None = None) -> None:
    """Put back the original modules and ``requires_grad`` flags."""
    tuners.detach_wrappers(model, _STATE_ATTR, method, family="ia3")


# -- state dicts -----------------------------------------------------------------------------------------
def state_dict(model: nn.Module, method: str | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's checkpoint key names (detached, not copied)."""
    state = attached(model, method)
    out = {f"{PREFIX}{path}{SUFFIX}": model.get_submodule(path).ia3_l.detach() for path in state.targets}
    out.update(tuners.saved_tensors(model, state.saved))
    return out


def _shape_hint(key: str, got: tuple, expected: tuple) -> str:
    if key.endswith(SUFFIX) and got == expected[::-1]:
        return " (a feed-forward vector is (1, in), an attention one (out, 1): check feedforward_modules)"
    return ""


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], method: str | None = None) -> None:
    """Strict inverse of :func:`state_dict`: every key present, no extra key, every shape equal."""
    tuners.load_strict(attached(model, method).method, state_dict(model, method), tensors, _shape_hint)


# -- streaming merge -------------------------------------------------------------------------------------
def merge_tensor(
    name: str, base: torch.Tensor, tensors: dict[str, torch.Tensor], config: IA3Config, inplace: bool = False
):
    """``base`` (named as in the base model's safetensors) with the adapter merged in, bit for bit what
    ``PeftModel.merge_and_unload()`` produces; ``None`` when the adapter does not touch it. (``inplace`` is
    accepted and unused: the result is always a new tensor.)"""
    saved = tuners.saved_copy(name, base, tensors)
    if saved is not None:  # a modules_to_save copy replaces the base tensor
        return saved
    path, _, param = name.rpartition(".")
    key = f"{PREFIX}{path}{SUFFIX}"
    if param not in ("weight", "bias") or key not in tensors:
        return None
    ia3_l = tuners.upcast_adapter(tensors[key].to(base.device))  # as PEFT holds it after loading
    feedforward = config.is_feedforward(path)
    ffo = config.fan_in_fan_out
    if param == "bias":
        if feedforward:
            return None  # a feed-forward vector scales the input: the bias is untouched
        if ia3_l.numel() != base.numel():
            raise InvalidInput(f"'{key}' has {ia3_l.numel()} values but base '{name}' has {base.numel()}")
        return merge_bias(base, ia3_l)
    if base.dim() != 2:
        raise InvalidInput(f"base '{name}' has shape {tuple(base.shape)}; ia3 merges only 2-d Linear/Conv1D weights")
    out_dim, in_dim = (base.shape[1], base.shape[0]) if ffo else (base.shape[0], base.shape[1])
    expected = (1, in_dim) if feedforward else (out_dim, 1)
    if tuple(ia3_l.shape) != expected:
        kind = "feed-forward" if feedforward else "attention"
        hint = ""
        if tuple(ia3_l.shape) == ((out_dim, 1) if feedforward else (1, in_dim)):
            hint = "; the vector's shape says the opposite kind: check feedforward_modules in the config"
        elif base.shape[0] != base.shape[1] and tuple(ia3_l.shape) in ((1, out_dim), (in_dim, 1)):
            hint = (
                f"; the weight is stored {'(out, in)' if ffo else '(in, out)'}: use the effective config "
                f"(fan_in_fan_out={not ffo})"
            )
        raise InvalidInput(
            f"'{key}' has shape {tuple(ia3_l.shape)} but base '{name}' {tuple(base.shape)} as a {kind} layer "
            f"expects {expected}{hint}"
        )
    return merge_weight(base, ia3_l, ffo)


# -- combine (PEFT's IA3Model.add_weighted_adapter) ------------------------------------------------------
def _union(values: list[Any], what: str) -> Any:
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        raise InvalidInput(
            f"cannot combine ia3 adapters whose {what} mix regexes and name lists; use one form in all of them"
        )
    if values[0] is None:
        return None
    if isinstance(values[0], str):
        return "|".join(f"({v})" for v in values)
    return sorted(set().union(*values))


def combine(
    adapters: list[tuple[IA3Config, dict[str, torch.Tensor]]], weights: list[float]
) -> tuple[IA3Config, dict[str, torch.Tensor]]:
    """A new adapter whose vectors are ``sum_i weights[i] * l_i`` over the adapters that have the layer (PEFT's
    ``add_weighted_adapter``: the new vector starts at zero, so a layer only one adapter targets is scaled by that
    adapter's weight). ``modules_to_save`` copies are carried over unchanged; two adapters saving the same
    module are refused, as PEFT does."""
    configs = [c for c, _ in adapters]
    target_modules = _union([c.target_modules for c in configs], "target_modules")
    feedforward = _union([c.feedforward_modules for c in configs], "feedforward_modules")
    ffo = {c.fan_in_fan_out for c in configs}
    if len(ffo) > 1:
        raise InvalidInput("cannot combine ia3 adapters with different fan_in_fan_out (Linear vs Conv1D layers)")
    config = dataclasses.replace(
        configs[0],
        target_modules=target_modules,
        feedforward_modules=feedforward,
        modules_to_save=list(dict.fromkeys(m for c in configs for m in c.modules_to_save)),
    )
    out: dict[str, torch.Tensor] = {}
    saved_from: dict[str, int] = {}
    for i, ((_, tensors), weight) in enumerate(zip(adapters, weights)):
        for key, value in tensors.items():
            if not key.endswith(SUFFIX):  # a modules_to_save tensor
                if key in saved_from:
                    raise InvalidInput(
                        f"cannot combine ia3 adapters {saved_from[key]} and {i}: both train and save "
                        f"'{key[len(PREFIX) :]}' (modules_to_save); PEFT refuses this too"
                    )
                saved_from[key] = i
                out[key] = value.detach().clone()
                continue
            value = tuners.upcast_adapter(value.detach())
            if key not in out:
                out[key] = torch.zeros_like(value)
            elif out[key].shape != value.shape:
                raise InvalidInput(
                    f"cannot combine ia3 vectors '{key}' of shapes {tuple(out[key].shape)} and {tuple(value.shape)} "
                    "(one adapter treats the layer as feed-forward, the other not)"
                )
            out[key] += value * weight
    return config, out
