"""PEFT's key layout: the ``base_model.model.`` prefix of an adapter's tensor names, and how a base model's own
tensor names map onto the adapter's module paths. Reading adapter directories, the streaming merge and the
method toolkit (which re-exports ``PEFT_PREFIX`` to plugins) all use this one home."""

from __future__ import annotations

from typing import Iterable

#: the key prefix of PEFT's checkpoints for ``LoraModel``-style tuners (``base_model.model.<module path>...``)
PEFT_PREFIX = "base_model.model."


def is_tuner_wide(key: str) -> bool:
    """Whether ``key`` is state a PEFT tuner holds once for all its layers rather than per module (``base_model.``
    but not ``base_model.model.``: VeRA's shared projections ``base_model.vera_A`` / ``vera_B``)."""
    return key.startswith("base_model.") and not key.startswith(PEFT_PREFIX)


def module_prefixes(names: Iterable[str]) -> set[str]:
    """Every dotted prefix of every name ("a.b.c" -> "a", "a.b")."""
    out = set()
    for n in names:
        parts = n.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return out


def parent_paths(path: str) -> list[str]:
    """The module paths above ``path``, nearest first ("a.b.c" -> "a.b", "a")."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def base_prefix(base_names: list[str], paths: list[str]) -> str:
    """The prefix that maps the base's tensor names onto the adapter's model paths: "" when they already
    match, "bert." for a headless encoder under a BertForSequenceClassification adapter ..."""
    candidates = [""] + sorted({p.split(".", 1)[0] + "." for p in paths if "." in p})
    best, best_score = "", -1
    for cand in candidates:
        mapped = {cand + n for n in base_names}
        mods = module_prefixes(mapped) | mapped
        score = sum(1 for p in paths if p in mapped or any(m in mods for m in parent_paths(p)))
        if score > best_score:
            best, best_score = cand, score
    return best
