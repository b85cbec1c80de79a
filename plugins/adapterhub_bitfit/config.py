"""The BitFit config: one dataclass with defaults, help text and validation. This module does not import torch."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: heads trained in full for ``task_type="SEQ_CLS"`` (PEFT's ``PeftModelForSequenceClassification`` names)
SEQ_CLS_HEADS = ["classifier", "score"]

TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")


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
    modules_to_save: list = field(
        default_factory=list,
        metadata={"help": "modules trained in full and saved with the adapter (matched by name suffix, like PEFT)"},
    )
    task_type: Any = field(
        default=None,
        metadata={"help": "PEFT task type (CAUSAL_LM, SEQ_CLS ...); SEQ_CLS also trains the classifier head"},
    )

    def __post_init__(self) -> None:
        if self.bias_pattern == "":
            self.bias_pattern = None
        if self.bias_pattern is not None:
            if not isinstance(self.bias_pattern, str):
                raise ValueError(f"bias_pattern must be a regex string, got {type(self.bias_pattern).__name__}")
            try:
                re.compile(self.bias_pattern)
            except re.error as exc:
                raise ValueError(
                    f"bias_pattern: {self.bias_pattern!r} is not a valid regular expression ({exc})"
                ) from None
        if self.modules_to_save is None:
            self.modules_to_save = []
        if not isinstance(self.modules_to_save, (list, tuple)) or not all(
            isinstance(m, str) and m for m in self.modules_to_save
        ):
            raise ValueError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}")
        self.modules_to_save = list(self.modules_to_save)
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {', '.join(TASK_TYPES)} or empty, got {self.task_type!r}")

    def trains_bias(self, param_name: str) -> bool:
        """Whether the bias parameter ``param_name`` is trained (``bias_pattern`` searched in the name)."""
        return self.bias_pattern is None or re.search(self.bias_pattern, param_name) is not None
