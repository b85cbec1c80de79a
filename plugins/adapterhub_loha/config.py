"""The LoHa config: field names and meanings follow ``peft.LoHaConfig`` (Linear layers), so a config converts
to and from a PEFT ``adapter_config.json`` one to one. This module does not import torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapterhub import tuning as tuners


@dataclass
class LoHaConfig:
    """LoHa (Hyeon-Woo et al. 2022, via LyCORIS): ``ΔW = (w1_a w1_b) ⊙ (w2_a w2_b) · alpha / r``."""

    r: int = field(default=8, metadata={"help": "rank of each of the two low-rank factors"})
    alpha: float = field(default=8, metadata={"help": "scaling numerator: ΔW is multiplied by alpha / r"})
    target_modules: Any = tuners.target_modules_field(
        "Linear layers to adapt: a list of names (exact path or suffix), a regex over the full path, or "
        "'all-linear'; unset: peft's default for the model type"
    )
    modules_to_save: list = tuners.modules_to_save_field()
    task_type: Any = tuners.task_type_field()
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "true: w2_b starts at zero, so the model is unchanged at init (peft's default); false: all random"
        },
    )

    def __post_init__(self) -> None:
        tuners.check_positive_int(self.r, "r")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise ValueError(f"alpha must be a number, got {self.alpha!r}")
        self.target_modules = tuners.check_module_names(self.target_modules, "target_modules")
        self.modules_to_save = tuners.check_modules_to_save(self.modules_to_save)
        tuners.check_task_type(self.task_type)
        tuners.check_flags(self, "init_weights")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def to_peft_dict(config: LoHaConfig, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` peft writes for the same adapter."""
    return {
        "peft_type": "LOHA",
        "task_type": config.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": config.r,
        "alpha": config.alpha,
        "rank_dropout": 0.0,
        "module_dropout": 0.0,
        "use_effective_conv2d": False,
        "target_modules": list(config.target_modules)
        if isinstance(config.target_modules, list)
        else config.target_modules,
        "init_weights": config.init_weights,
        "modules_to_save": list(config.modules_to_save) or None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def from_peft_dict(peft: dict[str, Any]) -> LoHaConfig:
    """Our config from a PEFT ``adapter_config.json``; options we do not model are accepted only at values that
    leave the numbers unchanged (no dropout, no patterns), any other is refused."""
    values = tuners.peft_values(peft, LoHaConfig, peft_type="LOHA", label="LoHa")
    return tuners.peft_config(LoHaConfig, values, "LoHa")
