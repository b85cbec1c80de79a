"""Loading base models and tokenizers from local directories, and attaching stored adapters.

Shared by training, evaluation and latency benchmarks. Nothing here touches the registry.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import InvalidInput

TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq-cls": "SEQ_CLS"}


def check_base_dir(base_dir: str) -> None:
    """Refuse anything that is not a transformers model directory, with a one-line reason."""
    if not os.path.isdir(base_dir):
        raise InvalidInput(f"base {base_dir} does not exist or is not a directory")
    if not os.path.isfile(os.path.join(base_dir, "config.json")):
        raise InvalidInput(f"base {base_dir} is not a transformers model directory (no config.json)")


def quiet_transformers() -> None:
    """Our own progress bars and messages replace transformers' per-load logs and bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(base_dir: str) -> Any:
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    except Exception as exc:
        raise InvalidInput(f"cannot load a tokenizer from {base_dir}: {str(exc).splitlines()[0][:200]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_base_model(base_dir: str, task: str, labels: list[str] | None = None, dtype: Any = None) -> Any:
    """The base model for ``task`` (``causal-lm`` or ``seq-cls``; seq-cls gets a head of
    ``len(labels)`` classes, new and randomly initialised if the base has none)."""
    import transformers
    from transformers import AutoConfig

    quiet_transformers()

    check_base_dir(base_dir)
    if task not in TASK_TYPES:
        raise InvalidInput(f"unknown task '{task}' (expected one of: {', '.join(TASK_TYPES)})")
    try:
        config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    except Exception as exc:
        raise InvalidInput(f"base {base_dir} is not a transformers model: {str(exc).splitlines()[0][:200]}") from None
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if task == "seq-cls":
        labels = labels or ["0", "1"]
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        auto = transformers.AutoModelForSequenceClassification
    else:
        auto = transformers.AutoModelForCausalLM
    if getattr(config, "pad_token_id", None) is None and task == "seq-cls":
        config.pad_token_id = getattr(config, "eos_token_id", None) or 0
    try:
        model = auto.from_pretrained(base_dir, config=config, **kwargs)
    except ValueError as exc:
        raise InvalidInput(f"cannot load {base_dir} for {task}: {str(exc).splitlines()[0][:200]}") from None
    model.eval()
    return model


def attach_loaded(model: Any, loaded: Any) -> Any:
    """Attach a :class:`~adapterhub.checkpoint.LoadedAdapter` to ``model`` and load its tensors;
    returns the effective config."""
    effective = loaded.method.attach(model, loaded.config)
    loaded.method.load_state_dict(model, loaded.tensors)
    model.eval()
    return effective if effective is not None else loaded.config
