"""Attaching (IA)³ to a torch model, PEFT-named state dicts, the streaming merge and linear combination.

Key names are exactly those PEFT writes to ``adapter_model.safetensors`` (adapter name removed)::

    base_model.model.<module path>.ia3_l        (out, 1) attention-style layer, (1, in) feed-forward layer
    base_model.model.<module path>.<param>      modules_to_save: the trained copy's full state dict
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

from .config import ALL_LINEAR, DEFAULT_FEEDFORWARD, DEFAULT_TARGETS, SEQ_CLS_HEADS, IA3Config
from .layer import LINEAR_TYPES, IA3Linear, is_conv1d, merge_bias, merge_weight, upcast

PREFIX = "base_model.model."
SUFFIX = ".ia3_l"
_STATE_ATTR = "_adapterhub_ia3"


@dataclass
class Attached:
    """What :func:`attach` changed, kept on the model (a plain attribute, not a submodule) for :func:`detach`."""

    config: IA3Config  # the effective config (what was actually applied)
    wrapped: list[str]  # module paths replaced by IA3Linear
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


def resolve(model: nn.Module, config: IA3Config) -> tuple[IA3Config, list[str], list[str]]:
    """``(effective config, target paths, modules_to_save paths)`` for ``model``; refuses targets that match
    nothing or match a layer type (IA)³ cannot wrap."""
    changes: list[str] = []
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    mts = list(dict.fromkeys(config.modules_to_save))
    if config.task_type == "SEQ_CLS":
        added = [h for h in SEQ_CLS_HEADS if h not in mts]
        if added:
            mts += added
            changes.append(f"modules_to_save += {added} (task_type SEQ_CLS trains the head, as PEFT does)")
    target_modules = config.target_modules
    if target_modules is None or target_modules == []:
        if model_type not in DEFAULT_TARGETS:
            raise InvalidInput(
                f"no default ia3 target_modules for model type {model_type!r}; set target_modules "
                f"(candidates: {', '.join(candidate_names(model))})"
            )
        target_modules = list(DEFAULT_TARGETS[model_type])
        changes.append(f"target_modules = {target_modules} (PEFT's default for {model_type})")
    feedforward = config.feedforward_modules
    if feedforward is None:
        if model_type not in DEFAULT_FEEDFORWARD:
            raise InvalidInput(
                f"no default ia3 feedforward_modules for model type {model_type!r}; set feedforward_modules "
                "(a subset of target_modules, or [] for none)"
            )
        feedforward = list(DEFAULT_FEEDFORWARD[model_type])
        changes.append(f"feedforward_modules = {feedforward} (PEFT's default for {model_type})")

    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        matched = [p for p in _all_linear(model, config.task_type) if not _excluded_by_modules_to_save(mts, p)]
    else:
        matched = []
        for path, module in model.named_modules():
            if not path or _excluded_by_modules_to_save(mts, path) or not _matches_target(target_modules, path):
                continue
            if not isinstance(module, LINEAR_TYPES):
                raise InvalidInput(
                    f"target_modules matched '{path}', a {type(module).__name__}; ia3 wraps only Linear and "
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
        raise InvalidInput("ia3 cannot target Linear and Conv1D layers in the same adapter (fan_in_fan_out differs)")
    if fan_in_fan_out != config.fan_in_fan_out:
        changes.append(
            f"fan_in_fan_out = {fan_in_fan_out} (the targeted layers are {'Conv1D' if conv else 'Linear'}, "
            "as PEFT sets it)"
        )
    effective = dataclasses.replace(
        config,
        target_modules=target_modules,
        feedforward_modules=feedforward,
        modules_to_save=mts,
        fan_in_fan_out=fan_in_fan_out,
    )
    if changes:
        warnings.warn("ia3 effective config differs from the one given: " + "; ".join(changes), stacklevel=3)
    return effective, matched, saved


# -- attach / detach -------------------------------------------------------------------------------------
def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def attached(model: nn.Module) -> Attached:
    state = model.__dict__.get(_STATE_ATTR)
    if state is None:
        raise InvalidInput("no ia3 adapter is attached to this model")
    return state


def attach(model: nn.Module, config: IA3Config) -> IA3Config:
    """Wrap the targeted layers in place, freeze everything else, and return the effective config."""
    if _STATE_ATTR in model.__dict__:
        raise InvalidInput("an ia3 adapter is already attached to this model; detach it first")
    effective, targets, saved_paths = resolve(model, config)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for path in targets:
        wrapper = IA3Linear(
            model.get_submodule(path),
            is_feedforward=effective.is_feedforward(path),
            init_ia3_weights=effective.init_ia3_weights,
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
        out[f"{PREFIX}{path}{SUFFIX}"] = model.get_submodule(path).ia3_l.detach()
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
        raise InvalidInput("ia3 tensors do not fit the attached adapter: " + "; ".join(parts))
    for key, target in expected.items():
        value = tensors[key]
        if tuple(value.shape) != tuple(target.shape):
            hint = ""
            if key.endswith(SUFFIX) and tuple(value.shape) == tuple(target.shape)[::-1]:
                hint = " (a feed-forward vector is (1, in), an attention one (out, 1): check feedforward_modules)"
            raise InvalidInput(
                f"ia3 tensor '{key}' has shape {tuple(value.shape)} but the attached adapter expects "
                f"{tuple(target.shape)}{hint}"
            )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key])  # `target` shares storage with the parameter/buffer


# -- streaming merge -------------------------------------------------------------------------------------
def merge_tensor(name: str, base: torch.Tensor, tensors: dict[str, torch.Tensor], config: IA3Config):
    """``base`` (named as in the base model's safetensors) with the adapter merged in, bit for bit what
    ``PeftModel.merge_and_unload()`` produces; ``None`` when the adapter does not touch it."""
    saved = tensors.get(PREFIX + name)
    if saved is not None:  # a modules_to_save copy replaces the base tensor
        if tuple(saved.shape) != tuple(base.shape):
            raise InvalidInput(
                f"'{PREFIX + name}' has shape {tuple(saved.shape)}, base '{name}' has {tuple(base.shape)}"
            )
        return saved.to(device=base.device, dtype=base.dtype, copy=True)
    path, _, param = name.rpartition(".")
    key = f"{PREFIX}{path}{SUFFIX}"
    if param not in ("weight", "bias") or key not in tensors:
        return None
    ia3_l = upcast(tensors[key].to(base.device))  # as PEFT holds it after loading
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
            hint = f"; the weight is stored {'(out, in)' if ffo else '(in, out)'}: use the effective config " \
                   f"(fan_in_fan_out={not ffo})"
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
                        f"'{key[len(PREFIX):]}' (modules_to_save); PEFT refuses this too"
                    )
                saved_from[key] = i
                out[key] = value.detach().clone()
                continue
            value = upcast(value.detach())
            if key not in out:
                out[key] = torch.zeros_like(value)
            elif out[key].shape != value.shape:
                raise InvalidInput(
                    f"cannot combine ia3 vectors '{key}' of shapes {tuple(out[key].shape)} and {tuple(value.shape)} "
                    "(one adapter treats the layer as feed-forward, the other not)"
                )
            out[key] += value * weight
    return config, out
