"""PEFT's per-module value patterns (LoRA's ``rank_pattern`` / ``alpha_pattern``): ``{regex: value}`` where a
key matches a module path when ``re.match(rf"(.*\\.)?({key})$", path)`` and the first matching key wins
(peft's ``get_pattern_key``). One home for the rule, so a method that reads patterns, a combine that writes
them and the config that validates them agree. This module does not import torch."""

from __future__ import annotations

import re
from typing import Any, Mapping

from .config import check_regex


def pattern_key(pattern: Mapping[str, Any], path: str) -> str:
    """PEFT's ``get_pattern_key``: the first key of ``pattern`` that matches the end of ``path`` (after a dot),
    else ``path`` itself."""
    for key in pattern:
        if re.match(rf"(.*\.)?({key})$", path):
            return key
    return path


def pattern_value(pattern: Mapping[str, Any], path: str, default: Any) -> Any:
    """The value ``pattern`` gives module ``path`` (its first matching key), else ``default``."""
    return pattern.get(pattern_key(pattern, path), default)


def exact_pattern_key(path: str) -> str:
    """A pattern key that matches exactly the module ``path`` (what a combine or an extract writes per module)."""
    return re.escape(path)


def check_pattern(pattern: Any, name: str, *, integer: bool = False) -> dict[str, Any]:
    """``pattern`` as a ``{regex: value}`` dict (``None``: empty) after refusing, with a one-line ``ValueError``,
    a non-mapping, a key that is not a bounded regex (:func:`~.config.check_regex`) or a value that is not a
    positive integer (``integer``) or number."""
    if pattern is None:
        return {}
    if not isinstance(pattern, dict):
        raise ValueError(f"{name} must be a mapping {{regex: value}}, got {type(pattern).__name__}")
    kind = int if integer else (int, float)
    for key, value in pattern.items():
        check_regex(key, name)
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            raise ValueError(f"{name}[{key!r}] must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return pattern
