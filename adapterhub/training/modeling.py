"""Loading base models and tokenizers from local directories, and attaching stored adapters.

Shared by training, evaluation and latency benchmarks. Nothing here touches the registry.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InvalidInput

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


def max_positions(config: Any) -> int | None:
    """The longest sequence the model's position embeddings take (None: no limit in its config)."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def clamp_max_length(base_dir: str, tokenizer: Any, max_length: int) -> int:
    """``max_length`` clamped to what the tokenizer and the model's positions take (as evaluation does)."""
    from transformers import AutoConfig

    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < max_length:
        max_length = tok_max
    try:
        pos = max_positions(AutoConfig.from_pretrained(base_dir, local_files_only=True))
    except Exception as exc:
        raise InvalidInput(f"base {base_dir} is not a transformers model: {str(exc).splitlines()[0][:200]}") from None
    return min(max_length, pos) if pos else max_length


def weight_shape_mismatch(base_dir: str, config: Any, cls: Any) -> tuple[str, tuple, tuple, str] | None:
    """The first checkpoint tensor whose shape differs from the model ``cls`` builds from ``config`` (on the meta
    device: no memory), as ``(name, shape in the weights, shape from the config, file)``; None when every tensor
    fits. Raises what building the model raises."""
    import torch

    from ..files.fingerprint import find_weight_files
    from ..files.safetensors_header import read_header

    with torch.device("meta"):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    prefix = (getattr(model, "base_model_prefix", "") or "") + "."
    del model
    for path in find_weight_files(base_dir):
        for name, t in read_header(path).tensors.items():
            for key in (name, prefix + name, name.removeprefix(prefix)):
                if key in shapes:
                    if shapes[key] != tuple(t.shape):
                        return name, tuple(t.shape), shapes[key], os.path.basename(path)
                    break
    return None


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
    except RuntimeError as exc:
        msg = str(exc)
        if "mismatched" not in msg and "size mismatch" not in msg:
            raise
        try:
            found = weight_shape_mismatch(base_dir, config, auto)
        except Exception:  # best effort: the message below still names the problem
            found = None
        detail = (
            f"{found[0]} has shape {list(found[1])} in the weights but config.json makes it {list(found[2])}"
            if found
            else "a weight's shape differs from what config.json describes"
        )
        raise InvalidInput(f"base {base_dir}: config.json does not match its weights: {detail}") from None
    model.eval()
    return model


def attach_loaded(model: Any, loaded: Any) -> Any:
    """Attach a :class:`~adapterhub.files.checkpoint.LoadedAdapter` to ``model`` and load its tensors;
    returns the effective config."""
    effective = loaded.method.attach(model, loaded.config)
    loaded.method.load_state_dict(model, loaded.tensors)
    model.eval()
    return effective if effective is not None else loaded.config
