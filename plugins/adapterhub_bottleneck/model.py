"""Attaching bottleneck / Compacter adapters to a torch model, and their state dicts.

The adapter for the module at ``<path>`` is registered as its submodule ``adapter`` and applied by a forward
hook to the module's output (``y -> adapter(y)``); the base modules are not replaced, so base parameter names
do not change, and :func:`detach` removes the hook and the submodule. Compacter's shared PHM rule is a
parameter of the root model named ``phm_rule`` (and also registered, as the same tensor object, in every PHM
layer, so ``model.parameters()`` yields it once).

Checkpoint key names (stable; ``<path>`` is the adapted module's path in the base model)::

    base_model.model.<path>.adapter.down.weight      (b, d)   bottleneck
    base_model.model.<path>.adapter.down.bias        (b,)
    base_model.model.<path>.adapter.up.weight        (d, b)
    base_model.model.<path>.adapter.up.bias          (d,)
    base_model.model.<path>.adapter.{down,up}.W_left   (n, in/n, k)   compacter, factorized_phm_W
    base_model.model.<path>.adapter.{down,up}.W_right  (n, k, out/n)
    base_model.model.<path>.adapter.{down,up}.W        (n, in/n, out/n) compacter, not factorized
    base_model.model.<path>.adapter.{down,up}.bias     (out,)         compacter, phm_bias
    base_model.model.<path>.adapter.{down,up}.phm_rule (n, n, n)      compacter, not shared_phm_rule
    base_model.model.phm_rule                          (n, n, n)      compacter, shared_phm_rule (once)
    base_model.model.<path>.<param>                   modules_to_save: the trained copy's full state dict
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adapterhub.errors import InvalidInput

from .config import DEFAULT_NON_LINEARITY, PLACEMENTS, SEQ_CLS_HEADS, AdapterConfig, CompacterConfig
from .layer import ADAPTER_DTYPE, PHMLinear, init_phm_rule, linear_bottleneck, phm_bottleneck

try:  # transformers' GPT-2 style layer: y = x @ W + b with W of shape (in, out)
    from transformers.pytorch_utils import Conv1D
except Exception:  # pragma: no cover - transformers is part of the torch extra
    Conv1D = ()  # type: ignore[assignment]

PREFIX = "base_model.model."
SHARED_RULE = "phm_rule"  # attribute of the root model holding compacter's shared PHM rule
ADAPTER = "adapter"  # submodule name of the adapter inside the adapted module
_STATE_ATTR = "_adapterhub_bottleneck"
LINEAR_TYPES = (nn.Linear,) + ((Conv1D,) if isinstance(Conv1D, type) else ())
_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


@dataclass
class Attached:
    """What :func:`attach` changed, kept on the model (a plain attribute, not a submodule) for :func:`detach`."""

    method: str  # "bottleneck" or "compacter"
    config: AdapterConfig  # the effective config
    targets: list[str]  # paths of the modules whose output goes through an adapter
    saved: dict[str, nn.Module]  # modules_to_save path -> the original (frozen) module
    shared_rule: bool = False  # the root model holds `phm_rule`
    requires_grad: dict[str, bool] = field(default_factory=dict)  # parameter name -> flag before attach


def _apply_adapter(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    """The forward hook: the adapted module's output goes through its ``adapter`` submodule."""
    return module.adapter(output)


# -- placement ---------------------------------------------------------------------------------------------
def layer_index(path: str) -> int | None:
    """The transformer layer index of a module path: its first numeric component (``model.layers.3.mlp`` -> 3)."""
    m = _LAYER_RE.search(path)
    return int(m.group(1)) if m else None


def out_features(module: nn.Module) -> int:
    """The width of a Linear's (weight (out, in)) or Conv1D's (weight (in, out)) output."""
    w = module.weight
    return w.shape[1] if isinstance(Conv1D, type) and isinstance(module, Conv1D) else w.shape[0]


def candidate_names(model: nn.Module) -> list[str]:
    """The Linear/Conv1D module names, the part after the layer index (``self_attn.o_proj``), deduplicated."""
    names = set()
    for path, module in model.named_modules():
        if path and isinstance(module, LINEAR_TYPES):
            m = _LAYER_RE.search(path)
            names.add(path[m.end():] if m and m.end() < len(path) else path)
    return sorted(names)


def _matches(target: Any, path: str) -> bool:
    if isinstance(target, str):
        return re.fullmatch(target, path) is not None
    return path in target or any(path.endswith(f".{t}") for t in target)


def _excluded_by_modules_to_save(modules_to_save: list[str], path: str) -> bool:
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", path) for m in modules_to_save)


def _default_pattern(model: nn.Module, style: str, method: str) -> str:
    """The built-in placement for ``model``: the first table family whose modules the model has."""
    linear = [p for p, m in model.named_modules() if p and isinstance(m, LINEAR_TYPES)]
    for placement in PLACEMENTS:
        has_ffn = any(re.fullmatch(placement.regex([placement.ffn]), p) for p in linear)
        has_attn = any(re.fullmatch(placement.regex([placement.attention]), p) for p in linear)
        if has_ffn and (has_attn or style == "pfeiffer"):
            return placement.pattern(style)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    raise InvalidInput(
        f"{method}: no built-in adapter placement for this architecture (model type {model_type!r}); set "
        f"target_layers to the output projections to adapt (candidates: {', '.join(candidate_names(model))})"
    )


def resolve(model: nn.Module, config: AdapterConfig, method: str) -> tuple[AdapterConfig, list[str], list[str]]:
    """``(effective config, target paths, modules_to_save paths)``; refuses what cannot be attached."""
    mts = list(dict.fromkeys(config.modules_to_save))
    if config.task_type == "SEQ_CLS":
        mts += [h for h in SEQ_CLS_HEADS if h not in mts]
    pattern = config.target_layers if config.target_layers is not None else _default_pattern(model, config.style, method)

    matched: list[str] = []
    for path, module in model.named_modules():
        if not path or _excluded_by_modules_to_save(mts, path) or not _matches(pattern, path):
            continue
        if not isinstance(module, LINEAR_TYPES):
            raise InvalidInput(
                f"target_layers matched '{path}', a {type(module).__name__}; {method} adapters go after Linear "
                f"or Conv1D projections (candidates: {', '.join(candidate_names(model))})"
            )
        matched.append(path)
    if not matched:
        raise InvalidInput(
            f"target_layers {pattern!r} matched no module of the model; candidates: {', '.join(candidate_names(model))}"
        )

    if config.leave_out:
        indices = {layer_index(p) for p in matched} - {None}
        unknown = [i for i in config.leave_out if i not in indices]
        if unknown:
            have = f"{min(indices)}..{max(indices)}" if indices else "none"
            raise InvalidInput(f"leave_out {unknown} names no adapted layer (layers: {have})")
        matched = [p for p in matched if layer_index(p) not in config.leave_out]
        if not matched:
            raise InvalidInput(f"leave_out {config.leave_out} leaves out every adapted layer")

    for path in matched:
        d = out_features(model.get_submodule(path))
        b = config.bottleneck_for(d)
        if b <= 0:
            raise InvalidInput(
                f"hidden size {d} // reduction_factor {config.reduction_factor} is 0 at '{path}'; "
                "lower reduction_factor or set bottleneck_size"
            )
        if isinstance(config, CompacterConfig):
            n = config.phm_dim
            for what, size in (("hidden size", d), ("bottleneck size", b)):
                if size % n:
                    raise InvalidInput(
                        f"compacter: {what} {size} at '{path}' is not divisible by phm_dim {n}; choose a phm_dim "
                        f"that divides both (or set bottleneck_size / reduction_factor)"
                    )

    saved: list[str] = []
    for path, _ in model.named_modules(remove_duplicate=False):
        if path and any(path.endswith(m) for m in mts) and not any(path.startswith(s + ".") for s in saved):
            saved.append(path)
    missing = [m for m in mts if m not in SEQ_CLS_HEADS and not any(p.endswith(m) for p in saved)]
    if missing:
        raise InvalidInput(f"modules_to_save {missing} matched no module of the model")
    if any(p in saved or any(p.startswith(s + ".") for s in saved) for p in matched):
        raise InvalidInput("target_layers and modules_to_save overlap; a module cannot be both")

    non_linearity = config.non_linearity or DEFAULT_NON_LINEARITY[config.style]
    effective = dataclasses.replace(config, target_layers=pattern, modules_to_save=mts, non_linearity=non_linearity)
    return effective, matched, saved


# -- attach / detach -------------------------------------------------------------------------------------
def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def attached(model: nn.Module, method: str | None = None) -> Attached:
    state = model.__dict__.get(_STATE_ATTR)
    if state is None or (method is not None and state.method != method):
        extra = f" (a {state.method} adapter is)" if state is not None else ""
        raise InvalidInput(f"no {method or 'bottleneck'} adapter is attached to this model{extra}")
    return state


def attach(model: nn.Module, config: AdapterConfig, method: str) -> AdapterConfig:
    """Add an adapter after each target module, freeze everything else; return the effective config."""
    if _STATE_ATTR in model.__dict__:
        raise InvalidInput(f"a {model.__dict__[_STATE_ATTR].method} adapter is already attached; detach it first")
    effective, targets, saved_paths = resolve(model, config, method)
    compacter = isinstance(effective, CompacterConfig)
    shared = compacter and effective.shared_phm_rule
    if shared and hasattr(model, SHARED_RULE):
        raise InvalidInput(f"the model already has an attribute '{SHARED_RULE}'; cannot share a PHM rule there")
    taken = [p for p in targets if hasattr(model.get_submodule(p), ADAPTER)]
    if taken:
        raise InvalidInput(f"module '{taken[0]}' already has an attribute '{ADAPTER}'")

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    rule = None
    if shared:
        n = effective.phm_dim
        device = model.get_submodule(targets[0]).weight.device
        rule = nn.Parameter(torch.empty(n, n, n, device=device, dtype=ADAPTER_DTYPE))
        init_phm_rule(rule, effective.phm_c_init, effective.phm_init_range)
        model.register_parameter(SHARED_RULE, rule)
    common = dict(
        non_linearity=effective.non_linearity,
        residual=effective.residual,
        scaling=effective.scaling,
        dropout=effective.dropout,
    )
    for path in targets:
        module = model.get_submodule(path)
        d, device = out_features(module), module.weight.device
        b = effective.bottleneck_for(d)
        if compacter:
            adapter = phm_bottleneck(d, b, effective, shared_rule=rule, device=device, **common)
        else:
            adapter = linear_bottleneck(d, b, effective.init, device=device, **common)
        adapter.train(module.training)  # new modules start in train mode; follow the model's
        module.add_module(ADAPTER, adapter)
        module.register_forward_hook(_apply_adapter)
    saved: dict[str, nn.Module] = {}
    for path in saved_paths:
        original = model.get_submodule(path)
        trained = copy.deepcopy(original)  # full trainable copy (PEFT's ModulesToSaveWrapper)
        for p in trained.parameters():
            p.requires_grad_(True)
        _set_submodule(model, path, trained)
        saved[path] = original
    model.__dict__[_STATE_ATTR] = Attached(method, effective, targets, saved, shared, flags)
    return effective


def detach(model: nn.Module, method: str) -> None:
    """Remove the hooks, the adapter submodules and the shared rule; put back modules_to_save originals and
    the ``requires_grad`` flags. The model is then the base model again."""
    state = attached(model, method)
    for path in state.targets:
        module = model.get_submodule(path)
        for key, hook in list(module._forward_hooks.items()):
            if hook is _apply_adapter:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
        del module._modules[ADAPTER]
    if state.shared_rule:
        del model._parameters[SHARED_RULE]
    for path, original in reversed(list(state.saved.items())):
        _set_submodule(model, path, original)
    for name, p in model.named_parameters():
        if name in state.requires_grad:
            p.requires_grad_(state.requires_grad[name])
    del model.__dict__[_STATE_ATTR]


# -- state dicts -----------------------------------------------------------------------------------------
def state_dict(model: nn.Module, method: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the key names in the module docstring (detached, not copied)."""
    state = attached(model, method)
    shared = model._parameters.get(SHARED_RULE) if state.shared_rule else None
    out: dict[str, torch.Tensor] = {}
    for path in state.targets:
        adapter = getattr(model.get_submodule(path), ADAPTER)
        for name, p in adapter.named_parameters():
            if p is not shared:
                out[f"{PREFIX}{path}.{ADAPTER}.{name}"] = p.detach()
    if shared is not None:
        out[PREFIX + SHARED_RULE] = shared.detach()
    for path in state.saved:
        for key, value in model.get_submodule(path).state_dict().items():
            out[f"{PREFIX}{path}.{key}"] = value.detach()
    return out


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], method: str) -> None:
    """Strict inverse of :func:`state_dict`: every key present, no extra key, every shape equal."""
    expected = state_dict(model, method)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        raise InvalidInput(f"{method} tensors do not fit the attached adapter: " + "; ".join(parts))
    for key, target in expected.items():
        value = tensors[key]
        if tuple(value.shape) != tuple(target.shape):
            raise InvalidInput(
                f"{method} tensor '{key}' has shape {tuple(value.shape)} but the attached adapter expects "
                f"{tuple(target.shape)}"
            )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key])  # `target` shares storage with the parameter/buffer


def adapters(model: nn.Module, method: str) -> dict[str, nn.Module]:
    """``{module path: its adapter}`` for an attached model (inspection and tests)."""
    state = attached(model, method)
    return {p: getattr(model.get_submodule(p), ADAPTER) for p in state.targets}


__all__ = [
    "PREFIX", "SHARED_RULE", "Attached", "PHMLinear", "adapters", "attach", "attached", "candidate_names",
    "detach", "layer_index", "load_state_dict", "resolve", "state_dict",
]
