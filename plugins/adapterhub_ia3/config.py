"""The (IA)³ config: one dataclass with defaults, help text and validation.

Field names and meanings follow ``peft.IA3Config`` so that a config converts to and from a PEFT
``adapter_config.json`` one to one (see :func:`to_peft_dict` and :func:`from_peft_dict`).
This module does not import torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from adapterhub import tuning as tuners


@dataclass
class IA3Config:
    """(IA)³ hyper-parameters; field names and semantics are PEFT's.

    A targeted layer gets one learned vector ``l``: attention-style layers scale their *output*
    (``y = l ⊙ base(x)``, ``l``: (out, 1)); feed-forward layers scale their *input* (``y = base(l ⊙ x)``,
    ``l``: (1, in)).
    """

    target_modules: Any = tuners.target_modules_field()
    feedforward_modules: Any = field(
        default=None,
        metadata={
            "help": "targeted modules whose *input* is scaled (the rest scale their output): a list of names "
            "(a module whose path ends with one, no dot needed, as PEFT) or a regex that must fullmatch the path; "
            "unset: PEFT's default for the model type; [] for none"
        },
    )
    fan_in_fan_out: bool = tuners.fan_in_fan_out_field()
    init_ia3_weights: bool = field(
        default=True,
        metadata={"help": "True: vectors start at ones (outputs unchanged); False: random normal (for tests)"},
    )
    modules_to_save: list = tuners.modules_to_save_field()
    task_type: Any = tuners.task_type_field()

    def __post_init__(self) -> None:
        self.target_modules = tuners.check_module_names(self.target_modules, "target_modules")
        self.feedforward_modules = tuners.check_module_names(self.feedforward_modules, "feedforward_modules")
        tm, ff = self.target_modules, self.feedforward_modules
        if isinstance(tm, list) and tm and isinstance(ff, list) and not set(ff) <= set(tm):
            # PEFT's IA3Config check, with the offending names
            raise ValueError(
                f"feedforward_modules must be a subset of target_modules; not targeted: {sorted(set(ff) - set(tm))}"
            )
        tuners.check_flags(self, "fan_in_fan_out", "init_ia3_weights")
        self.modules_to_save = tuners.check_modules_to_save(self.modules_to_save)
        tuners.check_task_type(self.task_type)

    def is_feedforward(self, module_path: str) -> bool:
        """PEFT's ``_check_target_module_feedforward``: regex fullmatch, or the path ends with a listed name
        (a plain suffix: ``output.dense`` matches ``attention.output.dense`` too)."""
        ff = self.feedforward_modules
        if ff is None:
            return False
        if isinstance(ff, str):
            return re.fullmatch(ff, module_path) is not None
        return any(module_path.endswith(name) for name in ff)


# -- PEFT adapter_config.json ------------------------------------------------------------------------
def to_peft_dict(config: IA3Config, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` PEFT writes for the same adapter (``IA3Config.from_pretrained`` reads it)."""

    def _listed(value: Any) -> Any:
        return list(value) if isinstance(value, list) else value

    return {
        "peft_type": "IA3",
        "task_type": config.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "target_modules": _listed(config.target_modules),
        "feedforward_modules": _listed(config.feedforward_modules),
        "exclude_modules": None,
        "fan_in_fan_out": config.fan_in_fan_out,
        "init_ia3_weights": config.init_ia3_weights,
        "modules_to_save": list(config.modules_to_save) or None,
    }


def from_peft_dict(peft: dict[str, Any]) -> IA3Config:
    """Our config from a PEFT ``adapter_config.json``. Keys we do not model are accepted only at values that
    leave the numbers unchanged (null, false, empty); any other value is refused, never silently dropped."""
    values = tuners.peft_values(peft, IA3Config, peft_type="IA3")
    return tuners.peft_config(IA3Config, values, "IA3")
