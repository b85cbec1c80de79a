"""What a bottleneck / Compacter adapter's tensors must be, checked on header shapes before anything is stored.

``push`` calls :func:`check_adapter_tensors` through ``Method.check_tensors`` with each tensor's header entry
(``.shape``; no data read): every tensor an attach will load is present with the shape the config implies, and
nothing else is there. This module does not import torch.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from adapterhub import tuning as tuners
from adapterhub.errors import InvalidInput
from adapterhub.tuning import PLACEMENTS, adapter_width

from .config import AdapterConfig, CompacterConfig

PREFIX = tuners.PEFT_PREFIX
ADAPTER = ".adapter."
SHARED_RULE = PREFIX + "phm_rule"
_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def expected_shapes(config: AdapterConfig, d: int) -> dict[str, tuple[int, ...]]:
    """The adapter's parameters (names inside ``<path>.adapter.``) and shapes on a ``d``-wide hidden state."""
    b = config.bottleneck_for(d)
    shapes: dict[str, tuple[int, ...]] = {}
    if isinstance(config, CompacterConfig):
        n, k = config.phm_dim, config.phm_rank
        for name, (i, o) in (("down", (d, b)), ("up", (b, d))):
            if config.factorized_phm_W:
                shapes[f"{name}.W_left"] = (n, i // n, k)
                shapes[f"{name}.W_right"] = (n, k, o // n)
            else:
                shapes[f"{name}.W"] = (n, i // n, o // n)
            if config.phm_bias:
                shapes[f"{name}.bias"] = (o,)
            if not config.shared_phm_rule:
                shapes[f"{name}.phm_rule"] = (n, n, n)
    else:
        shapes.update({"down.weight": (b, d), "down.bias": (b,), "up.weight": (d, b), "up.bias": (d,)})
    for flag, name in ((config.ln_before, "norm_before"), (config.ln_after, "norm_after")):
        if flag:
            shapes.update({f"{name}.weight": (d,), f"{name}.bias": (d,)})
    return shapes


def check_adapter_tensors(
    method: str, config: AdapterConfig, tensors: Mapping[str, Any], base: Mapping[str, Any] | None = None
) -> None:
    """Refuse tensors that an attach of ``config`` would not load exactly (one line naming the tensor)."""
    adapters: dict[str, dict[str, Any]] = {}
    others = []
    for key, info in tensors.items():
        if key.startswith(PREFIX) and ADAPTER in key:
            path, _, param = key[len(PREFIX) :].partition(ADAPTER)
            adapters.setdefault(path, {})[param] = info
        elif key != SHARED_RULE:
            others.append(key)
    if not adapters:
        raise InvalidInput(f"{method}: no adapter tensors (keys '{PREFIX}<module path>{ADAPTER}...')")
    saved = tuners.with_seq_cls_heads(config.modules_to_save, config.task_type)
    for key in sorted(others):
        path = key[len(PREFIX) :] if key.startswith(PREFIX) else ""
        if not any(re.search(rf"(?:^|\.){re.escape(m)}\.", path) for m in saved):
            raise InvalidInput(
                f"{method}: unexpected tensor '{key}' (neither an adapter tensor nor one of "
                f"modules_to_save {saved or '[]'})"
            )
    compacter = isinstance(config, CompacterConfig)
    shared = compacter and config.shared_phm_rule
    if shared:
        n = config.phm_dim
        if SHARED_RULE not in tensors:
            raise InvalidInput(f"{method}: shared_phm_rule is set but '{SHARED_RULE}' ({n}, {n}, {n}) is missing")
        _check_shape(method, SHARED_RULE, tensors[SHARED_RULE], (n, n, n))
    elif SHARED_RULE in tensors:
        raise InvalidInput(
            f"{method}: '{SHARED_RULE}' is present but shared_phm_rule is false (each PHM layer has its own phm_rule)"
        )
    pattern = config.target_layers if isinstance(config.target_layers, str) else None
    for path in sorted(adapters):
        params = adapters[path]
        key = f"{PREFIX}{path}{ADAPTER}"
        if pattern is not None and not re.fullmatch(pattern, path):
            raise InvalidInput(f"{method}: '{key}...' adapts '{path}', which target_layers {pattern!r} does not select")
        m = _LAYER_RE.search(path)
        if m and int(m.group(1)) in config.leave_out:
            raise InvalidInput(f"{method}: '{key}...' is in layer {m.group(1)}, which leave_out excludes")
        phm_dim = config.phm_dim if isinstance(config, CompacterConfig) else 1
        d = _base_width(method, path, base) if base is not None else adapter_width(params, phm_dim)
        if d is None:
            raise InvalidInput(f"{method}: '{key}up...' is missing (the up projection gives the adapter's width)")
        shapes = expected_shapes(config, d)
        missing = sorted(set(shapes) - set(params))
        if missing:
            raise InvalidInput(
                f"{method}: '{key}{missing[0]}' {shapes[missing[0]]} is missing"
                + (f" (and {len(missing) - 1} more of this adapter)" if len(missing) > 1 else "")
            )
        extra = sorted(set(params) - set(shapes))
        if extra:
            raise InvalidInput(f"{method}: unexpected tensor '{key}{extra[0]}' for this config ({_what(config)})")
        for name, shape in shapes.items():
            _check_shape(method, key + name, params[name], shape)


def _what(config: AdapterConfig) -> str:
    if not isinstance(config, CompacterConfig):
        return f"ln_before={config.ln_before}, ln_after={config.ln_after}"
    return (
        f"shared_phm_rule={config.shared_phm_rule}, factorized_phm_W={config.factorized_phm_W}, "
        f"phm_bias={config.phm_bias}, ln_before={config.ln_before}, ln_after={config.ln_after}"
    )


def _base_width(method: str, path: str, base: Mapping[str, Any]) -> int:
    """The output width of the base module at ``path``: Linear weight (out, in), or (in, out) for the
    transformers Conv1D projections of the GPT-2 family."""
    weight = base.get(path + ".weight")
    if weight is None or len(weight.shape) != 2:
        raise InvalidInput(f"{method}: the adapter targets '{path}', which the base model has no 2-d weight for")
    conv1d = any(p.conv1d and re.fullmatch(p.pattern("houlsby"), path) for p in PLACEMENTS)
    return weight.shape[1] if conv1d else weight.shape[0]


def _check_shape(method: str, key: str, info: Any, shape: tuple[int, ...]) -> None:
    if tuple(info.shape) != tuple(shape):
        raise InvalidInput(f"{method}: tensor '{key}' has shape {tuple(info.shape)}, the config implies {tuple(shape)}")
