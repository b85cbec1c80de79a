"""The prompt tuning and prefix tuning configs: dataclasses with defaults, help text and validation.

Field names and meanings follow ``peft.PromptTuningConfig`` / ``peft.PrefixTuningConfig`` so that a config
converts to and from a PEFT ``adapter_config.json`` one to one (:func:`to_peft_dict`, :func:`from_peft_dict`).
``token_dim`` / ``num_layers`` / ``num_attention_heads`` (and ``encoder_hidden_size``) are left empty by users:
``attach`` infers them from the model config exactly as PEFT does and reports them in the effective config.
This module does not import torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from adapterhub import tuning as tuners
from adapterhub.errors import InvalidInput

#: task types whose PEFT forward the prompt methods reproduce (encoder-decoder models are not supported)
TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS", "FEATURE_EXTRACTION")
PROMPT_INITS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")


def _check_common(cfg: Any) -> None:
    tuners.check_positive_int(cfg.num_virtual_tokens, "num_virtual_tokens")
    for name in ("token_dim", "num_layers", "num_attention_heads"):
        tuners.check_positive_int(getattr(cfg, name), name, optional=True)
    if cfg.token_dim is not None and cfg.num_attention_heads is not None and cfg.token_dim % cfg.num_attention_heads:
        raise ValueError(
            f"token_dim ({cfg.token_dim}) must be a multiple of num_attention_heads ({cfg.num_attention_heads})"
        )
    cfg.modules_to_save = tuners.check_modules_to_save(cfg.modules_to_save)
    tuners.check_task_type(
        cfg.task_type, TASK_TYPES, note=" (prompt methods support decoder-only and encoder-only models)"
    )


_NUM_VIRTUAL_TOKENS_HELP = "number of virtual tokens (learned prompt positions) prepended to every sequence"
_INFERRED = "inferred from the model config when empty (reported in the effective config)"


@dataclass
class PromptTuningConfig:
    """Prompt tuning (Lester et al. 2021): learned input embeddings prepended to the token embeddings."""

    num_virtual_tokens: int = field(default=20, metadata={"help": _NUM_VIRTUAL_TOKENS_HELP})
    prompt_tuning_init: str = field(
        default="RANDOM",
        metadata={
            "help": "initial prompt: RANDOM (N(0, 1)), TEXT (embeddings of prompt_tuning_init_text, repeated or "
            "truncated to num_virtual_tokens) or SAMPLE_VOCAB (embeddings of uniformly sampled vocabulary tokens)"
        },
    )
    prompt_tuning_init_text: Any = field(default=None, metadata={"help": "the text for TEXT init"})
    tokenizer_name_or_path: Any = field(
        default=None,
        metadata={
            "help": "tokenizer for TEXT init (a path or hub name); attach(..., init_tokenizer=tok) may pass the "
            "tokenizer object instead, whose name_or_path is then recorded here"
        },
    )
    tokenizer_kwargs: Any = field(
        default=None, metadata={"help": "keyword arguments for AutoTokenizer.from_pretrained (TEXT init only)"}
    )
    token_dim: Any = field(default=None, metadata={"help": "embedding width; " + _INFERRED})
    num_layers: Any = field(default=None, metadata={"help": "number of transformer layers (informative); " + _INFERRED})
    num_attention_heads: Any = field(
        default=None, metadata={"help": "number of attention heads (informative); " + _INFERRED}
    )
    modules_to_save: list = field(
        default_factory=list,
        metadata={"help": "modules trained in full and saved with the adapter (SEQ_CLS adds the head, like PEFT)"},
    )
    task_type: Any = field(
        default=None,
        metadata={"help": "PEFT task type: CAUSAL_LM (labels padded with -100), SEQ_CLS (head trained too) ..."},
    )

    def __post_init__(self) -> None:
        _check_common(self)
        init = self.prompt_tuning_init
        if not isinstance(init, str) or init.upper() not in PROMPT_INITS:
            raise ValueError(f"prompt_tuning_init must be one of {', '.join(PROMPT_INITS)}, got {init!r}")
        self.prompt_tuning_init = init.upper()
        if self.prompt_tuning_init == "TEXT":
            if not isinstance(self.prompt_tuning_init_text, str) or not self.prompt_tuning_init_text:
                raise ValueError("prompt_tuning_init TEXT needs a non-empty prompt_tuning_init_text")
        if self.tokenizer_name_or_path is not None and not isinstance(self.tokenizer_name_or_path, str):
            raise ValueError(f"tokenizer_name_or_path must be a string, got {self.tokenizer_name_or_path!r}")
        if self.tokenizer_kwargs is not None:
            if not isinstance(self.tokenizer_kwargs, dict):
                raise ValueError(f"tokenizer_kwargs must be a mapping, got {self.tokenizer_kwargs!r}")
            if self.tokenizer_kwargs and self.prompt_tuning_init != "TEXT":
                raise ValueError("tokenizer_kwargs are only valid with prompt_tuning_init TEXT")


@dataclass
class PrefixTuningConfig:
    """Prefix tuning / P-tuning v2 (Li & Liang 2021; Liu et al. 2022): learned key/value prefixes at every layer."""

    num_virtual_tokens: int = field(default=20, metadata={"help": _NUM_VIRTUAL_TOKENS_HELP})
    prefix_projection: bool = field(
        default=False,
        metadata={
            "help": "reparameterise the prefix through a 2-layer MLP (token_dim -> encoder_hidden_size -> "
            "num_layers*2*token_dim) during training; the saved adapter holds the projected prefix (as PEFT's)"
        },
    )
    encoder_hidden_size: Any = field(
        default=None, metadata={"help": "hidden width of the projection MLP; defaults to token_dim"}
    )
    init_weights: Any = field(
        default=None,
        metadata={"help": "None: random N(0, 1) prefix; 'zero': zero prefix (keys and values all zero)"},
    )
    token_dim: Any = field(
        default=None,
        metadata={"help": "width of one layer's key (head_dim * num_key_value_heads for GQA); " + _INFERRED},
    )
    num_layers: Any = field(default=None, metadata={"help": "number of transformer layers; " + _INFERRED})
    num_attention_heads: Any = field(
        default=None, metadata={"help": "key/value heads per layer (num_key_value_heads for GQA); " + _INFERRED}
    )
    modules_to_save: list = field(
        default_factory=list,
        metadata={"help": "modules trained in full and saved with the adapter (SEQ_CLS adds the head, like PEFT)"},
    )
    task_type: Any = field(default=None, metadata={"help": "PEFT task type: CAUSAL_LM, SEQ_CLS (head trained too) ..."})

    def __post_init__(self) -> None:
        _check_common(self)
        tuners.check_flags(self, "prefix_projection")
        tuners.check_positive_int(self.encoder_hidden_size, "encoder_hidden_size", optional=True)
        if self.init_weights not in (None, "zero"):
            raise ValueError(f"init_weights must be empty or 'zero', got {self.init_weights!r}")


#: PEFT's key of the trained prompt, and the prefix of the saved head copies' keys (PEFT's prompt-learning models
#: keep the base model at ``base_model``: no ``LoraModel`` layer)
EMBEDDING_KEY = "prompt_embeddings"
SAVED_PREFIX = "base_model."


def prompt_shape(config: Any) -> tuple[int, Any]:
    """The shape of ``prompt_embeddings``: ``(num_virtual_tokens, token_dim)`` for prompt tuning, ``(...,
    num_layers * 2 * token_dim)`` for prefix tuning; the width is ``None`` while the dimensions are unknown (a
    user's config before ``attach`` infers them)."""
    if config.token_dim is None or (isinstance(config, PrefixTuningConfig) and config.num_layers is None):
        return config.num_virtual_tokens, None
    width = config.num_layers * 2 * config.token_dim if isinstance(config, PrefixTuningConfig) else config.token_dim
    return config.num_virtual_tokens, width


# -- PEFT adapter_config.json ------------------------------------------------------------------------
#: PEFT keys that carry no meaning for the adapter's numbers (bookkeeping); ignored on import
_PEFT_BOOKKEEPING = tuners.PEFT_BOOKKEEPING | {"num_transformer_submodules"}
PEFT_TYPES = {PromptTuningConfig: "PROMPT_TUNING", PrefixTuningConfig: "PREFIX_TUNING"}


def to_peft_dict(config: Any, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` PEFT writes for the same adapter (``PeftConfig.from_pretrained`` reads it).
    Give it the *effective* config (dimensions filled in by ``attach``)."""
    out = {
        "peft_type": PEFT_TYPES[type(config)],
        "task_type": config.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "num_transformer_submodules": 1,
    }
    for f in dataclasses.fields(config):
        if f.name != "task_type":
            value = getattr(config, f.name)
            out[f.name] = list(value) if isinstance(value, list) else value
    out["modules_to_save"] = list(config.modules_to_save) or None
    return out


def from_peft_dict(peft: dict[str, Any], config_class: type) -> Any:
    """Our config from a PEFT ``adapter_config.json``. Keys we do not model are accepted only at values that
    leave the numbers unchanged (null, false, empty); any other value is refused, never silently dropped."""
    peft_type = PEFT_TYPES[config_class]
    if peft.get("peft_type") == peft_type and peft.get("num_transformer_submodules") not in (None, 1):
        raise InvalidInput(
            f"PEFT {peft_type} adapter for an encoder-decoder model (num_transformer_submodules="
            f"{peft['num_transformer_submodules']}) is not supported"
        )
    values = tuners.peft_values(peft, config_class, peft_type=peft_type, bookkeeping=_PEFT_BOOKKEEPING)
    # PEFT's SEQ_CLS model appends the heads once more on every load; keep each name once
    values["modules_to_save"] = list(dict.fromkeys(values.get("modules_to_save") or []))
    return tuners.peft_config(config_class, values, peft_type)
