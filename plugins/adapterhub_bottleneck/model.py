"""Attaching bottleneck / Compacter adapters to a torch model, and their state dicts.

The adapter for the module at ``<path>`` is registered as its submodule ``adapter`` and applied by a forward
hook to the module's output (``y -> adapter(y)``); the base modules are not replaced, so base parameter names
do not change, and :func:`detach` removes the hooks and the submodule. The placement options that read the
residual stream (``original_ln_before``, ``is_parallel``, ``original_ln_after=False``) add a forward pre-hook
on the module that receives the sub-block's input (its :class:`~adapterhub.tuning.Site`), and, on a
post-LN block without ``original_ln_after``, a forward hook that makes the adapter's output the block's. Compacter's shared PHM rule is a
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
    base_model.model.<path>.adapter.norm_before.{weight,bias} (d,)    ln_before
    base_model.model.<path>.adapter.norm_after.{weight,bias}  (d,)    ln_after
    base_model.model.phm_rule                          (n, n, n)      compacter, shared_phm_rule (once)
    base_model.model.<path>.<param>                   modules_to_save: the trained copy's full state dict
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.errors import InvalidInput
from adapterhub.tuning import PEFT_PREFIX as PREFIX
from adapterhub.tuning import PLACEMENTS, Placement, Site

from .config import DEFAULT_NON_LINEARITY, AdapterConfig, CompacterConfig
from .layer import ADAPTER_DTYPE, PHMLinear, init_phm_rule, linear_bottleneck, phm_bottleneck

SHARED_RULE = "phm_rule"  # attribute of the root model holding compacter's shared PHM rule
ADAPTER = "adapter"  # submodule name of the adapter inside the adapted module
_STATE_ATTR = "_adapterhub_bottleneck"
_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


@dataclass
class Attached(tuners.Attached):
    """What :func:`attach` changed (see :class:`adapterhub.tuning.Attached`; ``targets``: the modules whose
    output goes through an adapter), plus whether the root model holds the shared PHM rule."""

    shared_rule: bool = False


@dataclass
class Wiring:
    """How one adapter reads and writes around its sub-block (the adapters library's ``pre_forward`` /
    ``post_forward``); kept on the adapter module as a plain attribute. ``layer_norm`` is the post-LN block's
    LayerNorm (``None`` on pre-LN models); ``post_ln`` whether the block applies one."""

    original_ln_before: bool
    original_ln_after: bool
    residual_before_ln: Any
    is_parallel: bool
    post_ln: bool
    layer_norm: Any = None
    residual_input: Any = None  # the sub-block's input x, set by the pre-hook for the current forward
    block_output: Any = None  # post-LN, original_ln_after=False: what the block returns instead of LN(. + x)


def _apply_adapter(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    """The forward hook: the adapted module's output ``d`` goes through its ``adapter`` submodule, wired as
    the placement options say (adapters' ``bottleneck_layer_forward`` with the block's residual add and
    LayerNorm left to the block when ``original_ln_after``)."""
    adapter = module.adapter
    w: Wiring | None = adapter.__dict__.get("wiring")
    if w is None:
        return adapter(output)
    x, w.residual_input = w.residual_input, None
    if x is None:
        raise RuntimeError(f"{type(module).__name__}: the sub-block input was not captured before the adapter ran")
    d = output
    if w.is_parallel:
        out = d + adapter.parallel(x)
    else:
        residual = h = d
        if w.original_ln_before:
            h = d + x
            if w.layer_norm is not None:
                if w.residual_before_ln == "post_add":
                    residual = h
                h = w.layer_norm(h)
        if w.residual_before_ln is False:
            residual = h
        out = adapter(h, residual)
    if w.original_ln_after:
        return out  # the block adds x (and applies its LayerNorm), as adapters' post_forward does
    if w.post_ln:
        w.block_output = out
        return out
    return out - x  # a pre-LN layer adds x back right after the projection


def _capture(adapter: nn.Module, arg: int, kwarg: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook on the module that receives the sub-block's input: remember it for the adapter."""
    adapter.wiring.residual_input = args[arg] if len(args) > arg else kwargs[kwarg]


def _block_output(adapter: nn.Module, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on a post-LN block when ``original_ln_after`` is false: the adapter's output is the block's."""
    out, adapter.wiring.block_output = adapter.wiring.block_output, None
    return out


# -- placement ---------------------------------------------------------------------------------------------
def layer_index(path: str) -> int | None:
    """The transformer layer index of a module path: its first numeric component (``model.layers.3.mlp`` -> 3)."""
    m = _LAYER_RE.search(path)
    return int(m.group(1)) if m else None


def out_features(module: nn.Module) -> int:
    """The width of a Linear's (weight (out, in)) or Conv1D's (weight (in, out)) output."""
    w = module.weight
    return w.shape[1] if tuners.is_conv1d(module) else w.shape[0]


def candidate_names(model: nn.Module) -> list[str]:
    """The Linear/Conv1D module names, the part after the layer index (``self_attn.o_proj``), deduplicated."""
    names = set()
    for path, module in model.named_modules():
        if path and isinstance(module, tuners.linear_types()):
            m = _LAYER_RE.search(path)
            names.add(path[m.end() :] if m and m.end() < len(path) else path)
    return sorted(names)


def _default_pattern(model: nn.Module, style: str, method: str) -> str:
    """The built-in placement for ``model``: the first table family whose modules the model has."""
    linear = [p for p, m in model.named_modules() if p and isinstance(m, tuners.linear_types())]
    for placement in PLACEMENTS:
        has_ffn = any(re.fullmatch(placement.regex([placement.ffn.projection]), p) for p in linear)
        has_attn = any(re.fullmatch(placement.regex([placement.attention.projection]), p) for p in linear)
        if has_ffn and (has_attn or style == "pfeiffer"):
            return placement.pattern(style)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    raise InvalidInput(
        f"{method}: no built-in adapter placement for this architecture (model type {model_type!r}); set "
        f"target_layers to the output projections to adapt (candidates: {', '.join(candidate_names(model))})"
    )


@dataclass(frozen=True)
class Binding:
    """A :class:`~adapterhub.tuning.Site` resolved to module paths for one adapted projection."""

    residual_from: str
    residual_arg: int
    residual_kwarg: str
    layer_norm: str | None
    block: str | None


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def bind_site(model: nn.Module, path: str, config: AdapterConfig, method: str) -> Binding:
    """Where the adapter on ``path`` finds its sub-block's input (and the block's LayerNorm); refuses a module
    no built-in family describes, or a layer whose residual stream differs from its family's."""
    options = "original_ln_before, is_parallel and original_ln_after=false read the sub-block's input"
    for placement in PLACEMENTS:
        for site in (placement.attention, placement.ffn):
            m = re.fullmatch(r"((?:.*\.)?\d+)\." + re.escape(site.projection), path)
            if m is None:
                continue
            layer = m.group(1)
            binding = _binding(layer, site)
            if not _has(model, binding.residual_from) or (binding.layer_norm and not _has(model, binding.layer_norm)):
                continue
            _check_family(model, layer, placement, method, options)
            if config.residual_before_ln == "post_add" and binding.layer_norm is None:
                raise InvalidInput(
                    f"{method}: residual_before_ln='post_add' takes the residual sum before the "
                    f"block's LayerNorm; '{path}' is in a pre-LN layer ({placement.family}-like), "
                    "which has none there: use true or false"
                )
            return binding
    raise InvalidInput(
        f"{method}: {options}, which adapterhub finds for the built-in placements only (BERT-, "
        f"Llama- and GPT-2-like layers); '{path}' is not one: set original_ln_before=false, "
        "is_parallel=false and original_ln_after=true"
    )


def _binding(layer: str, site: Site) -> Binding:
    return Binding(
        f"{layer}.{site.residual_from}",
        site.residual_arg,
        site.residual_kwarg,
        f"{layer}.{site.layer_norm}" if site.layer_norm else None,
        f"{layer}.{site.block}" if site.block else None,
    )


def _check_family(model: nn.Module, layer: str, placement: Placement, method: str, options: str) -> None:
    extra = [n for n in placement.unsupported if _has(model, f"{layer}.{n}")]
    if extra:
        raise InvalidInput(
            f"{method}: {options}; layer '{layer}' has '{extra[0]}' (it normalises the sub-block "
            f"output before the residual add), so its residual stream is not {placement.family}'s "
            "and the adapters library's placement is not defined for it: set original_ln_before="
            "false, is_parallel=false and original_ln_after=true"
        )


def resolve(model: nn.Module, config: AdapterConfig, method: str) -> tuple[AdapterConfig, list[str], list[str]]:
    """``(effective config, target paths, modules_to_save paths)``; refuses what cannot be attached."""
    mts = tuners.with_seq_cls_heads(config.modules_to_save, config.task_type)
    pattern = config.target_layers
    if pattern is None:
        pattern = _default_pattern(model, config.style, method)
    matched = tuners.match_modules(
        model,
        pattern,
        types=tuners.linear_types(),
        field="target_layers",
        exclude=mts,
        literal=True,
        wraps=f"{method} adapters go after Linear or Conv1D projections",
        candidates=lambda: candidate_names(model),
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

    if config.reads_residual():
        for path in matched:
            bind_site(model, path, config, method)

    saved = tuners.modules_to_save_paths(model, mts)
    if any(p in saved or any(p.startswith(s + ".") for s in saved) for p in matched):
        raise InvalidInput("target_layers and modules_to_save overlap; a module cannot be both")

    non_linearity = config.non_linearity or DEFAULT_NON_LINEARITY[config.style]
    effective = dataclasses.replace(config, target_layers=pattern, modules_to_save=mts, non_linearity=non_linearity)
    return effective, matched, saved


# -- attach / detach -------------------------------------------------------------------------------------
def attached(model: nn.Module, method: str | None = None) -> Attached:
    return tuners.attached(model, _STATE_ATTR, method, family="bottleneck")


def attach(model: nn.Module, config: AdapterConfig, method: str) -> AdapterConfig:
    """Add an adapter after each target module, freeze everything else; return the effective config."""
    tuners.check_free(model, _STATE_ATTR)
    effective, targets, saved_paths = resolve(model, config, method)
    compacter = isinstance(effective, CompacterConfig)
    shared = compacter and effective.shared_phm_rule
    if shared and hasattr(model, SHARED_RULE):
        raise InvalidInput(f"the model already has an attribute '{SHARED_RULE}'; cannot share a PHM rule there")
    taken = [p for p in targets if hasattr(model.get_submodule(p), ADAPTER)]
    if taken:
        raise InvalidInput(f"module '{taken[0]}' already has an attribute '{ADAPTER}'")

    flags = tuners.freeze(model)
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
        ln_before=effective.ln_before,
        ln_after=effective.ln_after,
        adapter_residual_before_ln=effective.adapter_residual_before_ln,
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
        if effective.reads_residual():
            _wire(model, adapter, bind_site(model, path, effective, method), effective)
        module.register_forward_hook(_apply_adapter)
    saved = tuners.train_copies(model, saved_paths)
    model.__dict__[_STATE_ATTR] = Attached(method, effective, saved, flags, targets, shared_rule=shared)
    return effective


def _wire(model: nn.Module, adapter: nn.Module, binding: Binding, config: AdapterConfig) -> None:
    """Give ``adapter`` its :class:`Wiring` and the hooks that feed it the sub-block's input."""
    norm = model.get_submodule(binding.layer_norm) if binding.layer_norm else None
    adapter.wiring = Wiring(
        config.original_ln_before,
        config.original_ln_after,
        config.residual_before_ln,
        config.is_parallel,
        post_ln=norm is not None,
        layer_norm=norm,
    )
    model.get_submodule(binding.residual_from).register_forward_pre_hook(
        functools.partial(_capture, adapter, binding.residual_arg, binding.residual_kwarg), with_kwargs=True
    )
    if not config.original_ln_after and binding.block:
        model.get_submodule(binding.block).register_forward_hook(functools.partial(_block_output, adapter))


def _unhook(module: nn.Module, adapter: nn.Module) -> None:
    """Remove the forward (pre-)hooks :func:`_wire` put on ``module`` for ``adapter``."""
    for hooks, extra in (
        (module._forward_pre_hooks, (module._forward_pre_hooks_with_kwargs,)),
        (module._forward_hooks, (module._forward_hooks_with_kwargs, module._forward_hooks_always_called)),
    ):
        for key, hook in list(hooks.items()):
            if isinstance(hook, functools.partial) and hook.args and hook.args[0] is adapter:
                del hooks[key]
                for d in extra:
                    d.pop(key, None)


def detach(model: nn.Module, method: str | None = None) -> None:
    """Remove the hooks, the adapter submodules and the shared rule; put back modules_to_save originals and
    the ``requires_grad`` flags. The model is then the base model again."""
    state = attached(model, method)
    for path in state.targets:
        module = model.get_submodule(path)
        adapter = getattr(module, ADAPTER)
        if "wiring" in adapter.__dict__:
            for other in model.modules():
                _unhook(other, adapter)
        for key, hook in list(module._forward_hooks.items()):
            if hook is _apply_adapter:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
        del module._modules[ADAPTER]
    if state.shared_rule:
        del model._parameters[SHARED_RULE]
    tuners.release(model, _STATE_ATTR, state)


# -- state dicts -----------------------------------------------------------------------------------------
def state_dict(model: nn.Module, method: str | None = None) -> dict[str, torch.Tensor]:
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
    out.update(tuners.saved_tensors(model, state.saved))
    return out


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], method: str | None = None) -> None:
    """Strict inverse of :func:`state_dict`: every key present, no extra key, every shape equal."""
    tuners.load_strict(attached(model, method).method, state_dict(model, method), tensors)


def adapters(model: nn.Module, method: str | None = None) -> dict[str, nn.Module]:
    """``{module path: its adapter}`` for an attached model (inspection and tests)."""
    state = attached(model, method)
    return {p: getattr(model.get_submodule(p), ADAPTER) for p in state.targets}


__all__ = [
    "PREFIX",
    "SHARED_RULE",
    "Attached",
    "PHMLinear",
    "adapters",
    "attach",
    "attached",
    "candidate_names",
    "detach",
    "layer_index",
    "load_state_dict",
    "resolve",
    "state_dict",
]
