"""Attaching BitFit to a torch model, its state dict and the streaming merge of one tensor.

Nothing is wrapped: ``attach`` unfreezes the chosen bias parameters in place (their original values are kept
for :func:`detach`) and replaces ``modules_to_save`` with trainable copies. Key names follow PEFT's layout::

    base_model.model.<bias parameter path>      a trained bias: its full value (not a delta)
    base_model.model.<module path>.<param>      modules_to_save: the trained copy's full state dict
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.errors import InvalidInput
from adapterhub.tuning import PEFT_PREFIX as PREFIX

from .config import BitFitConfig

_STATE_ATTR = "_adapterhub_bitfit"


@dataclass
class Attached(tuners.Attached):
    """What :func:`attach` changed (see :class:`adapterhub.tuning.Attached`), plus the trained biases."""

    biases: dict[str, torch.Tensor] = field(default_factory=dict)  # bias name -> a copy of its value before attach


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


def resolve(model: nn.Module, config: BitFitConfig) -> tuple[BitFitConfig, list[str], list[str]]:
    """``(effective config, trained bias names, modules_to_save paths)``; refuses a model without biases and a
    ``bias_pattern`` that selects none."""
    changes: list[str] = []
    mts = tuners.with_seq_cls_heads(config.modules_to_save, config.task_type, changes)
    saved = tuners.modules_to_save_paths(model, mts)
    all_biases = [
        n for n, _ in model.named_parameters() if _is_bias(n) and not any(n.startswith(p + ".") for p in saved)
    ]
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
    tuners.warn_changes("bitfit", changes)
    return effective, biases, saved


# -- attach / detach -------------------------------------------------------------------------------------
def attached(model: nn.Module, method: str | None = None) -> Attached:
    return tuners.attached(model, _STATE_ATTR, method, family="bitfit")


def attach(model: nn.Module, config: BitFitConfig, method: str = "bitfit") -> BitFitConfig:
    """Freeze everything but the chosen biases (and the modules_to_save copies); returns the effective config.
    The model's outputs do not change."""
    tuners.check_free(model, _STATE_ATTR)
    effective, bias_names, saved_paths = resolve(model, config)
    flags = tuners.freeze(model)
    params = dict(model.named_parameters())
    originals = {}
    for name in bias_names:
        originals[name] = params[name].detach().clone()
        params[name].requires_grad_(True)
    saved = tuners.train_copies(model, saved_paths)
    model.__dict__[_STATE_ATTR] = Attached(method, effective, saved, flags, biases=originals)
    return effective


def detach(model: nn.Module, method: str | None = None) -> None:
    """Put back the original bias values, modules and ``requires_grad`` flags."""
    state = attached(model, method)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.biases.items():
            params[name].copy_(value)
    tuners.release(model, _STATE_ATTR, state)


# -- state dicts -----------------------------------------------------------------------------------------
def state_dict(model: nn.Module, method: str | None = None) -> dict[str, torch.Tensor]:
    """The trained biases and modules_to_save tensors under ``base_model.model.<name>`` (detached, not copied)."""
    state = attached(model, method)
    params = dict(model.named_parameters())
    out = {f"{PREFIX}{name}": params[name].detach() for name in state.biases}
    out.update(tuners.saved_tensors(model, state.saved))
    return out


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], method: str | None = None) -> None:
    """Strict inverse of :func:`state_dict`: every key present, no extra key, every shape equal."""
    tuners.load_strict(attached(model, method).method, state_dict(model, method), tensors)


# -- streaming merge -------------------------------------------------------------------------------------
def merge_tensor(name: str, base: torch.Tensor, tensors: dict[str, torch.Tensor]):
    """The adapter's value for ``base`` (named as in the base model's safetensors), cast to the base dtype and
    device; ``None`` when the adapter does not hold that tensor."""
    return tuners.saved_copy(name, base, tensors)
