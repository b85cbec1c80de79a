"""The torch side of VeRA on Linear/Conv1D layers: the shared projections, the wrapper, attach/detach, state
dicts and the streaming merge.

Keys follow peft's layout::

    base_model.model.<module path>.vera_lambda_b   (out,)      trained, per layer
    base_model.model.<module path>.vera_lambda_d   (r,)        trained, per layer
    base_model.vera_A                              (r, in_max)   frozen, shared; only with save_projection
    base_model.vera_B                              (out_max, r)  frozen, shared; only with save_projection

``in_max``/``out_max`` are the largest input/output sizes over the targeted layers; each layer uses the slices
``A[:, :in]`` and ``B[:out, :]``. The arithmetic is peft's, so outputs match and merges are bit for bit.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.errors import InvalidInput
from adapterhub.tuning import PEFT_PREFIX

from . import LAMBDAS, VERA_A, VERA_B
from .config import VeraConfig

_SLOT = "_adapterhub_vera"


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """peft's ``_kaiming_init``: U(-bound, bound), ``bound = sqrt(3) * sqrt(2) / sqrt(fan_in)``, drawn from
    ``generator`` (the same expression, so the same bits)."""
    tensor = torch.empty(shape)
    std = math.sqrt(2) / math.sqrt(shape[1])  # fan_in of a 2-d tensor: its second size
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def projections(r: int, out_max: int, in_max: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` as peft draws them: one CPU generator seeded with ``projection_prng_key``, A first."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    vera_a = _kaiming_uniform((r, in_max), generator)
    vera_b = _kaiming_uniform((out_max, r), generator)
    return vera_a, vera_b


class Projections(nn.Module):
    """The shared A and B: one module object that every wrapper holds, so ``model.to()`` moves them once and
    loading a state dict updates them for all layers. Non-persistent buffers: never in ``model.state_dict()``."""

    def __init__(self, vera_a: torch.Tensor, vera_b: torch.Tensor):
        super().__init__()
        self.register_buffer("vera_A", vera_a, persistent=False)
        self.register_buffer("vera_B", vera_b, persistent=False)


class VeraLinear(nn.Module):
    """``base_layer(x) + lambda_b ⊙ (B[:out] (lambda_d ⊙ (A[:, :in] x)))``, computed as peft's ``Linear.forward``;
    the vectors in float32, as peft keeps them."""

    def __init__(self, base_layer: nn.Module, shared: Projections, config: VeraConfig):
        super().__init__()
        self.base_layer, self.projections = base_layer, shared
        self.in_features, self.out_features = tuners.in_out_features(base_layer)
        device = base_layer.weight.device
        self.vera_lambda_b = nn.Parameter(torch.ones(self.out_features, device=device))
        self.vera_lambda_d = nn.Parameter(torch.randn(config.r, device=device))
        if config.init_weights:
            with torch.no_grad():
                self.vera_lambda_d.fill_(config.d_initial)
                self.vera_lambda_b.zero_()
        self.dropout = nn.Dropout(config.vera_dropout) if config.vera_dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        previous_dtype = x.dtype
        result = self.base_layer(x)
        orig_dtype = result.dtype
        sliced_a = self.projections.vera_A[:, : self.in_features]
        sliced_b = self.projections.vera_B[: self.out_features, :]
        x = x.to(self.vera_lambda_d.dtype)
        result = result + self.vera_lambda_b * F.linear(
            self.vera_lambda_d * F.linear(self.dropout(x), sliced_a), sliced_b
        )
        return result.to(orig_dtype).to(previous_dtype)


def delta_weight(
    lambda_b: torch.Tensor,
    lambda_d: torch.Tensor,
    vera_a: torch.Tensor,
    vera_b: torch.Tensor,
    out_features: int,
    in_features: int,
    fan_in_fan_out: bool,
) -> torch.Tensor:
    """ΔW of one layer, computed exactly as peft's ``get_delta_weight`` (transposed for Conv1D)."""
    delta = (lambda_b.unsqueeze(-1) * vera_b[:out_features, :]) @ (lambda_d.unsqueeze(-1) * vera_a[:, :in_features])
    return delta.T if fan_in_fan_out else delta


def resolve(model: nn.Module, config: VeraConfig) -> tuple[VeraConfig, list[str], list[str]]:
    """``(effective config, target paths, modules_to_save paths)``; ``fan_in_fan_out`` follows the targets."""
    changes: list[str] = []
    effective, targets, saved = tuners.resolve_targets(
        model, config, "vera", types=tuners.linear_types(), defaults=tuners.VERA_TARGETS, changes=changes
    )
    ffo = tuners.fan_in_fan_out(model, targets, config.fan_in_fan_out, method="vera", changes=changes)
    tuners.warn_changes("vera", changes)
    return dataclasses.replace(effective, fan_in_fan_out=ffo), targets, saved


def attached(model: nn.Module, method: str | None = None) -> tuners.Attached:
    return tuners.attached(model, _SLOT, method, family="vera")


def attach(model: nn.Module, config: VeraConfig, method: str = "vera") -> VeraConfig:
    """Wrap the targeted layers; A and B are drawn once, sized by the largest targeted layer (peft's
    ``_find_dim``), on the CPU and then moved to the layers' device."""
    shared: list[Projections] = []

    def resolve_and_draw(m: nn.Module) -> tuple[VeraConfig, list[str], list[str]]:
        effective, targets, saved = resolve(m, config)
        sizes = [tuners.in_out_features(m.get_submodule(p)) for p in targets]  # (in, out) each
        vera_a, vera_b = projections(
            effective.r, max(o for _, o in sizes), max(i for i, _ in sizes), effective.projection_prng_key
        )
        shared.append(Projections(vera_a, vera_b).to(m.get_submodule(targets[0]).weight.device))
        return effective, targets, saved

    return tuners.attach_wrappers(
        model, _SLOT, method, resolve_and_draw, lambda cfg, path, module: VeraLinear(module, shared[0], cfg)
    )


def detach(model: nn.Module, method: str | None = None) -> None:
    tuners.detach_wrappers(model, _SLOT, method, family="vera")


def state_dict(model: nn.Module, method: str | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors under peft's names: the vectors of every layer, A and B once (with
    ``save_projection``), the ``modules_to_save`` copies."""
    state = attached(model, method)
    out = {
        f"{PEFT_PREFIX}{path}.{name}": getattr(model.get_submodule(path), name).detach()
        for path in state.targets
        for name in LAMBDAS
    }
    if state.config.save_projection and state.targets:
        shared = model.get_submodule(state.targets[0]).projections
        out[VERA_A], out[VERA_B] = shared.vera_A.detach(), shared.vera_B.detach()
    out.update(tuners.saved_tensors(model, state.saved))
    return out


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], method: str | None = None) -> None:
    tuners.load_strict(attached(model, method).method, state_dict(model, method), tensors)


def merge_tensor(name: str, base: torch.Tensor, tensors: dict[str, torch.Tensor], config: VeraConfig):
    """``base + ΔW`` for a targeted layer's weight (peft's ``weight += delta``: added in float32, cast to the
    base dtype); a ``modules_to_save`` copy's value; else ``None``."""
    module, _, param = name.rpartition(".")
    key_b, key_d = (f"{PEFT_PREFIX}{module}.{n}" for n in LAMBDAS)
    if param != "weight" or key_b not in tensors:
        return tuners.saved_copy(name, base, tensors)
    if VERA_A not in tensors or VERA_B not in tensors:
        raise InvalidInput(
            f"the vera adapter holds no {VERA_A} / {VERA_B} (saved with save_projection=false): "
            "merging needs them; attach it to the model and save it with save_projection=true"
        )
    if base.dim() != 2:
        raise InvalidInput(f"base '{name}' has shape {tuple(base.shape)}; vera merges only 2-d Linear/Conv1D weights")
    out_f, in_f = (base.shape[1], base.shape[0]) if config.fan_in_fan_out else (base.shape[0], base.shape[1])
    lambda_b, lambda_d, vera_a, vera_b = (
        tensors[k].to(device=base.device, dtype=torch.float32) for k in (key_b, key_d, VERA_A, VERA_B)
    )
    r = config.r
    if (
        tuple(lambda_b.shape) != (out_f,)
        or tuple(lambda_d.shape) != (r,)
        or vera_a.dim() != 2
        or vera_b.dim() != 2
        or vera_a.shape[0] != r
        or vera_a.shape[1] < in_f
        or vera_b.shape[1] != r
        or vera_b.shape[0] < out_f
    ):
        raise InvalidInput(
            f"vera tensors of '{module}' (lambda_b {tuple(lambda_b.shape)}, lambda_d "
            f"{tuple(lambda_d.shape)}, A {tuple(vera_a.shape)}, B {tuple(vera_b.shape)}) do not fit "
            f"base '{name}' {tuple(base.shape)} with r={r}"
        )
    merged = base.clone()
    merged += delta_weight(lambda_b, lambda_d, vera_a, vera_b, out_f, in_f, config.fan_in_fan_out)
    return merged
