"""``LoraMethod.combine``: several LoRA adapters (same base) into one, in ΔW space.

Per module the task tensor of adapter i is ``ΔW_i = s_i · B_i @ A_i`` (out, in) with ``s_i`` its scaling
(``alpha/r``, rsLoRA ``alpha/sqrt(r)``, rank/alpha patterns honoured). A module only some adapters target
counts as ``ΔW = 0`` for the others (for TIES/DARE that is the same as leaving them out: a zero never
agrees with the elected sign). The maths is the toolkit's (:mod:`adapterhub.tuning.combine`); see its table for
each ``how``.

The result is a plain LoRA with scaling 1 in every module (``lora_alpha = r`` and matching
``alpha_pattern``), ``use_rslora`` off, and per-module ranks in ``rank_pattern`` where they differ from
``r``:

* ``cat``: rank Σ r_i (the modules' own sums); ``A = [A_1; A_2; ...]``, ``B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]``.
* ``linear``: rank min(Σ r_i, in, out); an orthogonal re-factoring of ``Σ w_i ΔW_i`` (QR + SVD of the factors).
* ``svd`` and the sparsifying ones: ``rank`` (default: the largest input rank), capped at min(in, out).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from adapterhub.errors import InvalidInput
from adapterhub.tuning import combine as cmb

from .config import LoraConfig
from .model import PREFIX

_A, _B = ".lora_A.weight", ".lora_B.weight"


def _modules(i: int, config: LoraConfig, tensors: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """``{module path: (A fp32 (r, in), B fp32 (out, r), scaling)}`` of one adapter, validated."""
    if config.use_dora:
        raise InvalidInput(
            "DoRA adapters cannot be combined: a DoRA magnitude is relative to the base weights, not a delta; "
            "merge them into the base instead, or combine LoRA adapters"
        )
    if config.modules_to_save:
        raise InvalidInput(
            f"adapter {i + 1} has modules_to_save {config.modules_to_save}: full module copies "
            "cannot be combined as deltas"
        )
    out = {}
    for key in tensors:
        if key.startswith(PREFIX) and key.endswith(_A):
            path = key[len(PREFIX) : -len(_A)]
            b_key = f"{PREFIX}{path}{_B}"
            if b_key not in tensors:
                raise InvalidInput(f"adapter {i + 1} has '{key}' but no '{b_key}'")
            a, b = tensors[key].float(), tensors[b_key].float()
            r = config.rank_for(path)
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
                raise InvalidInput(
                    f"adapter {i + 1}: '{key}' {tuple(a.shape)} and '{b_key}' {tuple(b.shape)} do not "
                    f"form a rank-{r} LoRA (rank from its config)"
                )
            out[path] = (a, b, config.scaling_for(path))
        elif not (key.startswith(PREFIX) and key.endswith(_B)):
            raise InvalidInput(f"adapter {i + 1} has tensor '{key}', which is not a LoRA factor; cannot combine it")
    if not out:
        raise InvalidInput(f"adapter {i + 1} has no LoRA factors")
    return out


def combine(
    adapters: list[tuple[LoraConfig, dict[str, torch.Tensor]]],
    weights: list[float],
    how: str,
    density: float | None = None,
    rank: int | None = None,
    seed: int | None = None,
) -> tuple[LoraConfig, dict]:
    opts = cmb.check_options(how, len(adapters), weights, density, rank, seed)
    weights = opts["weights"]
    configs = [c for c, _ in adapters]
    per = [_modules(i, c, t) for i, (c, t) in enumerate(adapters)]
    if len({c.fan_in_fan_out for c in configs}) > 1:
        raise InvalidInput("cannot combine adapters whose layers differ in layout (fan_in_fan_out)")
    paths = sorted({p for m in per for p in m})
    default_rank = opts["rank"] or max(a.shape[0] for m in per for a, _, _ in m.values())
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for path in paths:
        members = [(w, m[path]) for w, m in zip(weights, per) if path in m]
        shapes = {(a.shape[1], b.shape[0]) for _, (a, b, _) in members}
        if len(shapes) > 1:
            raise InvalidInput(f"adapters disagree on the shape of '{path}' (in, out): {sorted(shapes)}")
        fin, fout = shapes.pop()
        As = [a for _, (a, _, _) in members]
        Bs = [b * (w * s) for w, (_, b, s) in members]  # scaling and weight folded into B: B_i A_i = w_i ΔW_i
        if how == "cat":
            new_a, new_b = torch.cat(As, dim=0), torch.cat(Bs, dim=1)
        elif how == "linear":
            new_a, new_b = cmb.low_rank_factored(As, Bs, min(sum(a.shape[0] for a in As), fin, fout))
        elif how == "svd":
            new_a, new_b = cmb.low_rank_factored(As, Bs, min(default_rank, fin, fout))
        else:
            deltas = [(b * s) @ a for _, (a, b, s) in members]  # ΔW_i (out, in)
            gen = cmb.module_generator(opts["seed"], path) if how in cmb.RANDOM else None
            delta = cmb.combine_dense(deltas, [w for w, _ in members], how, opts["density"], gen)
            new_a, new_b = cmb.low_rank(delta, min(default_rank, fin, fout))
        tensors[f"{PREFIX}{path}{_A}"] = new_a.contiguous()
        tensors[f"{PREFIX}{path}{_B}"] = new_b.contiguous()
        ranks[path] = new_a.shape[0]
    return _result_config(configs, paths, ranks), tensors


def _result_config(configs: list[LoraConfig], paths: list[str], ranks: dict[str, int]) -> LoraConfig:
    unit = cmb.unit_scaling_ranks(ranks)  # scaling 1 everywhere
    first = configs[0]
    same_targets = all(c.target_modules == first.target_modules for c in configs) and all(
        not c.rank_pattern and not c.alpha_pattern for c in configs
    )
    targets: Any = first.target_modules if same_targets and first.target_modules else list(paths)
    tasks = {c.task_type for c in configs}
    return dataclasses.replace(
        first,
        **unit,
        target_modules=targets,
        use_rslora=False,
        use_dora=False,
        modules_to_save=[],
        init_lora_weights=True,
        task_type=tasks.pop() if len(tasks) == 1 else None,
        lora_dropout=max(c.lora_dropout for c in configs),
    )
