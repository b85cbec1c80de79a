"""The LoRA / DoRA config: one dataclass with defaults, help text and validation.

Field names and meanings follow ``peft.LoraConfig`` so that a config converts to and from a PEFT
``adapter_config.json`` one to one (see :func:`to_peft_dict` and :func:`from_peft_dict`).
This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from adapterhub.errors import InvalidInput

#: ``target_modules`` shorthand for every Linear/Conv1D layer except the output head
ALL_LINEAR = "all-linear"

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

#: PEFT adds these heads to ``modules_to_save`` for ``task_type="SEQ_CLS"`` (``PeftModelForSequenceClassification``)
SEQ_CLS_HEADS = ["classifier", "score"]

TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
INIT_CHOICES = (True, False, "gaussian")


@dataclass
class LoraConfig:
    """LoRA (and DoRA) hyper-parameters; field names and semantics are PEFT's."""

    r: int = field(default=8, metadata={"help": "rank of the update B·A (A: r×in, B: out×r)"})
    lora_alpha: float = field(
        default=8, metadata={"help": "scaling numerator: scaling = lora_alpha / r (or / sqrt(r) with use_rslora)"}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input, in [0, 1)"})
    target_modules: Any = field(
        default=None,
        metadata={
            "help": "modules to adapt: a list of names (exact path or suffix '.name'), a regex string that must "
            "fullmatch the module path, or 'all-linear' (all Linear/Conv1D but the output head); empty: PEFT's "
            "default for the model type"
        },
    )
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
    modules_to_save: list = field(
        default_factory=list,
        metadata={"help": "modules trained in full and saved with the adapter (matched by name suffix, like PEFT)"},
    )
    fan_in_fan_out: bool = field(
        default=False,
        metadata={
            "help": "the layer stores its weight as (in, out); set automatically for transformers Conv1D (GPT-2) "
            "and reported in the effective config"
        },
    )
    bias: str = field(default="none", metadata={"help": "which biases to train; only 'none' is supported"})
    init_lora_weights: Any = field(
        default=True,
        metadata={
            "help": "True: A kaiming-uniform, B zero (outputs unchanged); 'gaussian': A ~ N(0, 1/r), B zero; "
            "False: both random (for tests)"
        },
    )
    task_type: Any = field(
        default=None,
        metadata={"help": "PEFT task type (CAUSAL_LM, SEQ_CLS ...); SEQ_CLS also trains the classifier head"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r must be a positive integer, got {self.r!r}")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not isinstance(self.lora_dropout, (int, float)) or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        tm = self.target_modules
        if isinstance(tm, (set, tuple)):
            self.target_modules = tm = sorted(tm)
        if tm is not None and not isinstance(tm, (str, list)):
            raise ValueError(f"target_modules must be a list of names or a regex string, got {type(tm).__name__}")
        if isinstance(tm, list) and not all(isinstance(t, str) and t for t in tm):
            raise ValueError(f"target_modules must be non-empty strings, got {tm!r}")
        if isinstance(tm, str):
            if not tm:
                raise ValueError("target_modules must not be an empty string")
            if tm.lower() != ALL_LINEAR:
                _check_regex(tm, "target_modules")
        for flag in ("use_rslora", "use_dora", "fan_in_fan_out"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        for name, kind in (("rank_pattern", int), ("alpha_pattern", (int, float))):
            pattern = getattr(self, name)
            if pattern is None:
                setattr(self, name, {})
                continue
            if not isinstance(pattern, dict):
                raise ValueError(f"{name} must be a mapping {{regex: value}}, got {type(pattern).__name__}")
            for key, value in pattern.items():
                _check_regex(key, name)
                if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
                    raise ValueError(f"{name}[{key!r}] must be a positive {'integer' if kind is int else 'number'}")
        if self.modules_to_save is None:
            self.modules_to_save = []
        if not isinstance(self.modules_to_save, (list, tuple)) or not all(
            isinstance(m, str) and m for m in self.modules_to_save
        ):
            raise ValueError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}")
        self.modules_to_save = list(self.modules_to_save)
        if self.bias != "none":
            raise ValueError(f"bias={self.bias!r} is not supported; only 'none' (biases stay frozen)")
        if not isinstance(self.init_lora_weights, (bool, str)) or self.init_lora_weights not in INIT_CHOICES:
            raise ValueError(
                f"init_lora_weights must be one of true, false, 'gaussian'; got {self.init_lora_weights!r}"
            )
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {', '.join(TASK_TYPES)} or empty, got {self.task_type!r}")

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


def _check_regex(pattern: str, what: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{what}: {pattern!r} is not a valid regular expression ({exc})") from None


def _pattern_key(patterns: dict, module_path: str) -> str:
    """PEFT's ``get_pattern_key``: the first key ``k`` with ``re.match(rf"(.*\\.)?({k})$", path)``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module_path):
            return key
    return module_path


# -- PEFT adapter_config.json ------------------------------------------------------------------------
#: PEFT keys that carry no meaning for the adapter's numbers (bookkeeping); ignored on import
_PEFT_BOOKKEEPING = {
    "peft_type", "peft_version", "auto_mapping", "base_model_name_or_path", "revision", "inference_mode",
    "megatron_core", "qalora_group_size", "task_type",
}


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
    if peft.get("peft_type") != "LORA":
        raise InvalidInput(f"not a PEFT LoRA config (peft_type={peft.get('peft_type')!r})")
    ours = {f.name for f in dataclasses.fields(LoraConfig)}
    values: dict[str, Any] = {}
    for key, value in peft.items():
        if key in ours:
            values[key] = value
        elif key in _PEFT_BOOKKEEPING:
            continue
        elif value not in (None, False, {}, [], "", "none"):
            raise InvalidInput(
                f"PEFT LoRA option {key}={value!r} is not supported by adapterhub's lora method "
                "(only its default value is)"
            )
    values["task_type"] = peft.get("task_type")
    if force_dora:
        values["use_dora"] = True
    try:
        return LoraConfig(**values)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"invalid PEFT LoRA config: {exc}") from None
