"""The LoRA / DoRA config: one dataclass with defaults, help text and validation.

Field names and meanings follow ``peft.LoraConfig`` so that a config converts to and from a PEFT
``adapter_config.json`` one to one (see :func:`to_peft_dict` and :func:`from_peft_dict`).
This module does not import torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from adapterhub import tuners

#: PEFT's default ``target_modules`` per ``model_type`` (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``),
#: used when ``target_modules`` is left empty; the common subset.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "bloom": ["query_key_value"],
    "opt": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt_neo": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "llama": ["q_proj", "v_proj"],
    "gpt_bigcode": ["c_attn"],
    "falcon": ["query_key_value"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "stablelm": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj", "fc1", "fc2"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
}

INIT_CHOICES = (True, False, "gaussian")


@dataclass
class LoraConfig:
    """LoRA (and DoRA) hyper-parameters; field names and semantics are PEFT's."""

    r: int = field(default=8, metadata={"help": "rank of the update B·A (A: r×in, B: out×r)"})
    lora_alpha: float = field(
        default=8, metadata={"help": "scaling numerator: scaling = lora_alpha / r (or / sqrt(r) with use_rslora)"}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input, in [0, 1)"})
    target_modules: Any = tuners.target_modules_field()
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA: scaling = lora_alpha / sqrt(r)"})
    use_dora: bool = field(
        default=False, metadata={"help": "DoRA: learn a per-output magnitude vector on top of the LoRA direction"}
    )
    rank_pattern: dict = field(
        default_factory=dict,
        metadata={"help": "per-module rank: {regex matching the end of the module path: r}, first match wins"},
    )
    alpha_pattern: dict = field(
        default_factory=dict,
        metadata={"help": "per-module alpha: {regex matching the end of the module path: alpha}, first match wins"},
    )
    modules_to_save: list = tuners.modules_to_save_field()
    fan_in_fan_out: bool = tuners.fan_in_fan_out_field()
    bias: str = field(default="none", metadata={"help": "which biases to train; only 'none' is supported"})
    init_lora_weights: Any = field(
        default=True,
        metadata={
            "help": "True: A kaiming-uniform, B zero (outputs unchanged); 'gaussian': A ~ N(0, 1/r), B zero; "
            "False: both random (for tests)"
        },
    )
    task_type: Any = tuners.task_type_field()

    def __post_init__(self) -> None:
        tuners.check_positive_int(self.r, "r")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not isinstance(self.lora_dropout, (int, float)) or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        self.target_modules = tuners.check_module_names(self.target_modules, "target_modules")
        tuners.check_flags(self, "use_rslora", "use_dora", "fan_in_fan_out")
        for name, kind in (("rank_pattern", int), ("alpha_pattern", (int, float))):
            pattern = getattr(self, name)
            if pattern is None:
                setattr(self, name, {})
                continue
            if not isinstance(pattern, dict):
                raise ValueError(f"{name} must be a mapping {{regex: value}}, got {type(pattern).__name__}")
            for key, value in pattern.items():
                tuners.check_regex(key, name)
                if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
                    raise ValueError(f"{name}[{key!r}] must be a positive {'integer' if kind is int else 'number'}")
        self.modules_to_save = tuners.check_modules_to_save(self.modules_to_save)
        if self.bias != "none":
            raise ValueError(f"bias={self.bias!r} is not supported; only 'none' (biases stay frozen)")
        if not isinstance(self.init_lora_weights, (bool, str)) or self.init_lora_weights not in INIT_CHOICES:
            raise ValueError(
                f"init_lora_weights must be one of true, false, 'gaussian'; got {self.init_lora_weights!r}"
            )
        tuners.check_task_type(self.task_type)

    # -- per-module values (PEFT's rank_pattern / alpha_pattern semantics) -----------------------------
    def rank_for(self, module_path: str) -> int:
        key = _pattern_key(self.rank_pattern, module_path)
        return self.rank_pattern.get(key, self.r)

    def alpha_for(self, module_path: str) -> float:
        key = _pattern_key(self.alpha_pattern, module_path)
        return self.alpha_pattern.get(key, self.lora_alpha)

    def scaling_for(self, module_path: str) -> float:
        """``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA), computed exactly as PEFT does."""
        import math

        r, alpha = self.rank_for(module_path), self.alpha_for(module_path)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _pattern_key(patterns: dict, module_path: str) -> str:
    """PEFT's ``get_pattern_key``: the first key ``k`` with ``re.match(rf"(.*\\.)?({k})$", path)``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module_path):
            return key
    return module_path


# -- PEFT adapter_config.json ------------------------------------------------------------------------
#: PEFT keys that carry no meaning for the adapter's numbers (bookkeeping); ignored on import
_PEFT_BOOKKEEPING = tuners.PEFT_BOOKKEEPING | {"megatron_core", "qalora_group_size"}


def to_peft_dict(config: LoraConfig, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` PEFT writes for the same adapter (``LoraConfig.from_pretrained`` reads it)."""
    tm = config.target_modules
    return {
        "peft_type": "LORA",
        "task_type": config.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(tm) if isinstance(tm, list) else tm,
        "use_rslora": config.use_rslora,
        "use_dora": config.use_dora,
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": dict(config.alpha_pattern),
        "modules_to_save": list(config.modules_to_save) or None,
        "fan_in_fan_out": config.fan_in_fan_out,
        "bias": config.bias,
        "init_lora_weights": config.init_lora_weights,
        "lora_bias": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "exclude_modules": None,
    }


def from_peft_dict(peft: dict[str, Any], *, force_dora: bool = False) -> LoraConfig:
    """Our config from a PEFT ``adapter_config.json``. Keys we do not model are accepted only at values that
    leave the numbers unchanged (null, false, empty); any other value is refused, never silently dropped."""
    values = tuners.peft_values(
        peft, LoraConfig, peft_type="LORA", label="LoRA", bookkeeping=_PEFT_BOOKKEEPING,
        neutral=tuners.NEUTRAL_VALUES + ("none",),
    )
    if force_dora:
        values["use_dora"] = True
    return tuners.peft_config(LoraConfig, values, "LoRA")
