"""The LoKr config: field names and meanings follow ``peft.LoKrConfig`` (Linear layers), so a config converts
to and from a PEFT ``adapter_config.json`` one to one. This module does not import torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapterhub import tuning as tuners


@dataclass
class LoKrConfig:
    """LoKr (LyCORIS): ``ΔW = (w1 ⊗ w2) · alpha / r``, each factor full or a rank-``r`` product."""

    r: int = field(default=8, metadata={"help": "rank of the factors that are decomposed"})
    alpha: float = field(default=8, metadata={"help": "scaling numerator: ΔW is multiplied by alpha / r"})
    decompose_both: bool = field(
        default=False,
        metadata={"help": "decompose the left Kronecker factor too (when r is under half its larger side)"},
    )
    decompose_factor: int = field(
        default=-1,
        metadata={
            "help": "split each dimension into two factors, one as close to this as possible; -1: near its square root"
        },
    )
    target_modules: Any = tuners.target_modules_field(
        "Linear layers to adapt: a list of names (exact path or suffix), a regex over the full path, or "
        "'all-linear'; unset: peft's default for the model type"
    )
    modules_to_save: list = tuners.modules_to_save_field()
    task_type: Any = tuners.task_type_field()
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "true: w1 starts at zero, so the model is unchanged at init (peft's default); false: all random"
        },
    )

    def __post_init__(self) -> None:
        tuners.check_positive_int(self.r, "r")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise ValueError(f"alpha must be a number, got {self.alpha!r}")
        if (
            isinstance(self.decompose_factor, bool)
            or not isinstance(self.decompose_factor, int)
            or (self.decompose_factor < 1 and self.decompose_factor != -1)
        ):
            raise ValueError(f"decompose_factor must be -1 or a positive integer, got {self.decompose_factor!r}")
        self.target_modules = tuners.check_module_names(self.target_modules, "target_modules")
        self.modules_to_save = tuners.check_modules_to_save(self.modules_to_save)
        tuners.check_task_type(self.task_type)
        tuners.check_flags(self, "decompose_both", "init_weights")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """``(m, n)`` with ``m * n == dimension`` and ``m <= n``, ``m`` as close to ``factor`` as possible (near the
    square root for -1): peft's (and LyCORIS') rule, which decides the factors' shapes."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def factor_shapes(config: LoKrConfig, out_dim: int, in_dim: int) -> dict[str, tuple[int, int]]:
    """The tensors a layer of ``out_dim x in_dim`` holds and their shapes (peft's ``create_adapter_parameters``)."""
    in_m, in_n = factorization(in_dim, config.decompose_factor)
    out_l, out_k = factorization(out_dim, config.decompose_factor)
    r = config.r
    shapes: dict[str, tuple[int, int]] = {}
    if not (config.decompose_both and r < max(out_l, in_m) / 2):
        shapes["lokr_w1"] = (out_l, in_m)
    else:
        shapes.update(lokr_w1_a=(out_l, r), lokr_w1_b=(r, in_m))
    if not r < max(out_k, in_n) / 2:
        shapes["lokr_w2"] = (out_k, in_n)
    else:
        shapes.update(lokr_w2_a=(out_k, r), lokr_w2_b=(r, in_n))
    return shapes


def to_peft_dict(config: LoKrConfig, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` peft writes for the same adapter."""
    return {
        "peft_type": "LOKR",
        "task_type": config.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": config.r,
        "alpha": config.alpha,
        "rank_dropout": 0.0,
        "module_dropout": 0.0,
        "use_effective_conv2d": False,
        "decompose_both": config.decompose_both,
        "decompose_factor": config.decompose_factor,
        "rank_dropout_scale": False,
        "target_modules": list(config.target_modules)
        if isinstance(config.target_modules, list)
        else config.target_modules,
        "init_weights": config.init_weights,
        "modules_to_save": list(config.modules_to_save) or None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def from_peft_dict(peft: dict[str, Any]) -> LoKrConfig:
    """Our config from a PEFT ``adapter_config.json``; options we do not model are accepted only at values that
    leave the numbers unchanged (no dropout, no patterns), any other is refused."""
    values = tuners.peft_values(peft, LoKrConfig, peft_type="LOKR", label="LoKr")
    return tuners.peft_config(LoKrConfig, values, "LoKr")
