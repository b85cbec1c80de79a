"""Sentence embeddings from a base model's frozen encoder, for the data checks that need a notion of
meaning (likely mislabeled rows, train/eval shift).

Mean-pooled last hidden states (padding masked out), L2-normalised: what sentence-transformers does for
MiniLM, and a fair cheap representation for any transformers base. Embeddings are cached in memory per
text (and base directory and max length), so the noise and the shift checks, or a cleaned file that is a
subset of one already embedded, pay only for texts not seen before.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

_CACHE: dict[tuple[str, int], dict[str, np.ndarray]] = {}
_CACHE_MAX = 200_000  # texts per base (a 384-wide float32 vector is 1.5 KiB)


def embedder(base_dir: str, batch_size: int = 64, max_length: int = 128) -> Callable[[list[str]], np.ndarray]:
    """A function ``texts -> float32 array [len(texts), hidden]`` over ``base_dir``'s encoder; the model is
    loaded on first use (not at all when every call hits the cache)."""
    cache = _CACHE.setdefault((os.path.abspath(base_dir), max_length), {})
    state: dict[str, Any] = {}

    def embed(texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        if todo:
            if "model" not in state:
                state["tok"], state["model"] = _load(base_dir)
            if len(cache) + len(todo) > _CACHE_MAX:
                cache.clear()
            cache.update(zip(todo, _embed(state["tok"], state["model"], todo, batch_size, max_length)))
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([cache[t] for t in texts])

    return embed


def _load(base_dir: str) -> tuple[Any, Any]:
    import transformers

    from ..errors import InvalidInput
    from .modeling import check_base_dir, load_tokenizer, quiet_transformers

    check_base_dir(base_dir)
    tok = load_tokenizer(base_dir)
    quiet_transformers()
    try:
        model = transformers.AutoModel.from_pretrained(base_dir, local_files_only=True)
    except Exception as exc:
        raise InvalidInput(f"cannot load {base_dir} to embed the rows: {str(exc).splitlines()[0][:200]}") from None
    model.eval()
    return tok, model


def _embed(tok: Any, model: Any, texts: list[str], batch_size: int, max_length: int) -> np.ndarray:
    import torch

    if not texts:
        return np.zeros((0, getattr(model.config, "hidden_size", 1)), dtype=np.float32)
    tok_max = getattr(tok, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < max_length:
        max_length = tok_max
    # sort by length so that each batch pads little; restore the order at the end
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    accepts_types = "token_type_ids" in _forward_args(model)
    chunks = []
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            enc = tok(
                [texts[j] for j in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            if not accepts_types:
                enc.pop("token_type_ids", None)
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    flat = np.concatenate(chunks, axis=0)
    out = np.empty_like(flat)
    out[order] = flat
    return out


def _forward_args(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)
