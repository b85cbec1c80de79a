"""The BitFit config: one dataclass with defaults, help text and validation. This module does not import torch."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from adapterhub import tuning as tuners


@dataclass
class BitFitConfig:
    """BitFit (Ben Zaken et al. 2021): train only the bias terms of the base model (plus, for SEQ_CLS, the head)."""

    bias_pattern: Any = field(
        default=None,
        metadata={
            "help": "regex searched (re.search) in each bias parameter's name, e.g. 'attention' or "
            "r'\\.(query|value)\\.bias$'; only matching biases are trained; empty: every bias"
        },
    )
    modules_to_save: list = tuners.modules_to_save_field()
    task_type: Any = tuners.task_type_field()

    def __post_init__(self) -> None:
        if self.bias_pattern == "":
            self.bias_pattern = None
        if self.bias_pattern is not None:
            if not isinstance(self.bias_pattern, str):
                raise ValueError(f"bias_pattern must be a regex string, got {type(self.bias_pattern).__name__}")
            tuners.check_regex(self.bias_pattern, "bias_pattern")
        self.modules_to_save = tuners.check_modules_to_save(self.modules_to_save)
        tuners.check_task_type(self.task_type)

    def trains_bias(self, param_name: str) -> bool:
        """Whether the bias parameter ``param_name`` is trained (``bias_pattern`` searched in the name)."""
        return self.bias_pattern is None or re.search(self.bias_pattern, param_name) is not None
