"""Config fields, their validation and PEFT's ``adapter_config.json``: the parts of the toolkit a method's config
module uses (no torch). Re-exported by :mod:`adapterhub.tuning`, which is what plugins import."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from typing import Any, Iterable, Mapping

from ..errors import InvalidInput

#: ``target_modules`` shorthand for every Linear/Conv1D layer except the output head (PEFT's)
ALL_LINEAR = "all-linear"
#: PEFT adds these heads to ``modules_to_save`` for ``task_type="SEQ_CLS"`` (``PeftModelForSequenceClassification``;
#: ``CLASSIFIER_MODULE_NAMES`` since peft 0.22, which added DistilBERT's randomly initialised ``pre_classifier`` — a
#: name ``classifier`` already matched as a suffix; peft 0.21 and before wrote only the first two). Any may be absent.
SEQ_CLS_HEADS = ["classifier", "score", "pre_classifier"]
#: PEFT's task types
TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")


# -- config fields -----------------------------------------------------------------------------------------
TARGET_MODULES_HELP = (
    "modules to adapt: a list of names (exact path or suffix '.name'), a regex string that must fullmatch the "
    "module path, or 'all-linear' (all Linear/Conv1D but the output head); empty: PEFT's default for the model type"
)
MODULES_TO_SAVE_HELP = "modules trained in full and saved with the adapter (matched by name suffix, like PEFT)"
TASK_TYPE_HELP = "PEFT task type (CAUSAL_LM, SEQ_CLS ...); SEQ_CLS also trains the classifier head"
FAN_IN_FAN_OUT_HELP = (
    "the layer stores its weight as (in, out); set automatically for transformers Conv1D (GPT-2) and reported in "
    "the effective config"
)


def target_modules_field(help: str = TARGET_MODULES_HELP) -> Any:
    """A ``target_modules``-style dataclass field (default ``None``: the method's default targets)."""
    return field(default=None, metadata={"help": help})


def modules_to_save_field(help: str = MODULES_TO_SAVE_HELP) -> Any:
    """The ``modules_to_save`` dataclass field (default ``[]``); validate it with :func:`check_modules_to_save`."""
    return field(default_factory=list, metadata={"help": help})


def fan_in_fan_out_field(help: str = FAN_IN_FAN_OUT_HELP) -> Any:
    """The ``fan_in_fan_out`` dataclass field (default false); :func:`fan_in_fan_out` resolves it."""
    return field(default=False, metadata={"help": help})


def task_type_field(help: str = TASK_TYPE_HELP) -> Any:
    """The ``task_type`` dataclass field (default ``None``); validate it with :func:`check_task_type`."""
    return field(default=None, metadata={"help": help})


# -- config validation (raise ValueError; Method.make_config turns it into InvalidInput) -------------------
#: the longest regex a config may hold, and the most unbounded repeats (``*``, ``+``, ``{2,}``) in one
MAX_REGEX_LENGTH = 256
MAX_REGEX_REPEATS = 4


def check_regex(pattern: str, what: str) -> None:
    """Refuse a regex that is invalid, or whose matching cost is not bounded: configs come from registries
    and are matched against every module path (``([a-z_.0-9]+)*z`` took 1.1 s on a 24-character path, doubling
    per character). Python's engine backtracks, so a repeat inside a repeat (or over alternatives) is
    exponential, and k repeats in a row cost n**k: both are refused, and the length is capped."""
    if not isinstance(pattern, str) or len(pattern) > MAX_REGEX_LENGTH:
        raise ValueError(
            f"{what}: a regular expression of at most {MAX_REGEX_LENGTH} characters is expected, "
            f"got {str(pattern)[:40]!r}{'...' if len(str(pattern)) > 40 else ''}"
        )
    try:
        from re import _parser  # type: ignore[attr-defined]  # (the parser re itself uses)

        parsed = _parser.parse(pattern)
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{what}: {pattern!r} is not a valid regular expression ({exc})") from None
    repeats = _unbounded_repeats(list(parsed), False)
    if repeats < 0:
        raise ValueError(
            f"{what}: {pattern!r} repeats a group that itself repeats or has alternatives (like "
            "(a+)* or (a|ab)*); matching it can take exponential time: write it without the nesting"
        )
    if repeats > MAX_REGEX_REPEATS:
        raise ValueError(
            f"{what}: {pattern!r} has {repeats} unbounded repeats (at most {MAX_REGEX_REPEATS}): "
            "matching it can take polynomial time of that degree"
        )


def _unbounded_repeats(items: list, inside: bool) -> int:
    """How many repeats of more than one item ``items`` (a parsed regex) holds; -1 for one nested in a
    repeat (``inside``), or alternatives inside one."""
    from re import _constants as c  # type: ignore[attr-defined]

    total = 0
    for op, av in items:
        subs: list = []
        here = inside
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", c.MAX_REPEAT)):
            if av[1] > 1:
                if inside:
                    return -1
                total, here = total + 1, True
            subs = [av[2]]
        elif op == c.SUBPATTERN:
            subs = [av[-1]]
        elif op == c.BRANCH:
            if inside:
                return -1
            subs = av[1]
        elif op in (c.ASSERT, c.ASSERT_NOT):
            subs = [av[1]]
        elif op == c.GROUPREF_EXISTS:
            subs = [s for s in av[1:] if s is not None]
        for sub in subs:
            n = _unbounded_repeats(list(sub), here)
            if n < 0:
                return -1
            total += n
    return total


def check_module_names(value: Any, name: str) -> Any:
    """A ``target_modules``-style value: ``None``, a list of non-empty names (a set or tuple becomes a sorted
    list) or a regex string (``all-linear`` included). Returns the normalised value."""
    if isinstance(value, (set, tuple)):
        value = sorted(value)
    if value is not None and not isinstance(value, (str, list)):
        raise ValueError(f"{name} must be a list of names or a regex string, got {type(value).__name__}")
    if isinstance(value, list) and not all(isinstance(t, str) and t for t in value):
        raise ValueError(f"{name} must be non-empty strings, got {value!r}")
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{name} must not be an empty string")
        if value.lower() != ALL_LINEAR:
            check_regex(value, name)
    return value


def check_modules_to_save(value: Any) -> list[str]:
    """``modules_to_save`` as a list of non-empty names (``None`` is ``[]``)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, str) and m for m in value):
        raise ValueError(f"modules_to_save must be a list of module names, got {value!r}")
    return list(value)


def check_task_type(value: Any, choices: tuple[str, ...] = TASK_TYPES, note: str = "") -> None:
    if value is not None and value not in choices:
        raise ValueError(f"task_type must be one of {', '.join(choices)} or empty, got {value!r}{note}")


def check_flags(config: Any, *names: str) -> None:
    """Each named attribute of ``config`` is a bool."""
    for name in names:
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be true or false, got {getattr(config, name)!r}")


def check_positive_int(value: Any, name: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# -- PEFT adapter_config.json ------------------------------------------------------------------------------
#: PEFT keys that carry no meaning for the adapter's numbers (bookkeeping); ignored on import
PEFT_BOOKKEEPING = frozenset(
    {"peft_type", "peft_version", "auto_mapping", "base_model_name_or_path", "revision", "inference_mode", "task_type"}
)
#: values of a PEFT option we do not model that leave the numbers unchanged
NEUTRAL_VALUES: tuple = (None, False, {}, [], "")


def peft_values(
    peft: Mapping[str, Any],
    config_class: type,
    *,
    peft_type: str,
    label: str | None = None,
    bookkeeping: Iterable[str] = PEFT_BOOKKEEPING,
    neutral: tuple = NEUTRAL_VALUES,
) -> dict[str, Any]:
    """The keyword arguments for ``config_class`` read from a PEFT ``adapter_config.json`` of ``peft_type``
    (``label`` names it in messages). Keys the config does not model are accepted only at ``neutral`` values
    (those that leave the numbers unchanged); any other value is refused, never silently dropped."""
    label = label or peft_type
    if peft.get("peft_type") != peft_type:
        raise InvalidInput(f"not a PEFT {label} config (peft_type={peft.get('peft_type')!r})")
    ours = {f.name for f in dataclasses.fields(config_class)}
    skip = set(bookkeeping)
    values: dict[str, Any] = {}
    for key, value in peft.items():
        if key in ours:
            values[key] = value
        elif key in skip:
            continue
        elif value not in neutral:
            raise InvalidInput(
                f"PEFT {label} option {key}={value!r} is not supported by adapterhub (only its default value is)"
            )
    values["task_type"] = peft.get("task_type")
    return values


def peft_config(config_class: type, values: dict[str, Any], label: str) -> Any:
    """``config_class(**values)``, its validation errors as :class:`InvalidInput` naming the PEFT config."""
    try:
        return config_class(**values)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"invalid PEFT {label} config: {exc}") from None
