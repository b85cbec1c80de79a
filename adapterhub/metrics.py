"""The contract of a generation metric, and scoring predictions with the metrics plugins register.

A metric is registered by a plugin (``register_metrics``) and scores generated text against reference
text for ``adapterhub eval --generate``. The built-in ones (``exact_match``, ``rouge_l``, ``chrf``) are
registered like any other; an LLM-as-judge metric is just another plugin. This module does not import
torch.

    class Judge:
        name = "judge"
        higher_is_better = True

        def compute(self, predictions, references):
            return sum(ask_a_judge(p, r) for p, r in zip(predictions, references)) / len(predictions)
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence, runtime_checkable

from .errors import PluginError

#: what ``eval --generate`` computes when no ``--metric`` is given, and which of them the gate compares
DEFAULT_METRICS = ("exact_match", "rouge_l", "chrf")
DEFAULT_PRIMARY = "rouge_l"


@runtime_checkable
class Metric(Protocol):
    """A generation metric: one number for a whole set of (prediction, reference) pairs.

    ``name``: what users pass to ``--metric`` (lowercase ``[a-z0-9_]``); ``higher_is_better``: the
    direction the promotion gate compares in; ``compute``: called once per model (base, adapter) with
    equally long lists of stripped strings, returns a finite float."""

    name: str
    higher_is_better: bool

    def compute(self, predictions: Sequence[str], references: Sequence[str]) -> float:
        """One finite number for the whole set of ``(prediction, reference)`` pairs (equally long lists)."""
        ...


def check_metric(obj: Any, plugin: str = "?") -> Metric:
    """``obj`` if it keeps the contract, else a :class:`PluginError` naming the plugin."""
    if not isinstance(obj, Metric) or not callable(getattr(obj, "compute", None)):
        raise PluginError(
            f"plugin '{plugin}' registered metric {getattr(obj, 'name', obj)!r} without "
            "name, higher_is_better and compute(predictions, references)"
        )
    if not isinstance(obj.higher_is_better, bool):
        raise PluginError(f"metric '{obj.name}' (plugin '{plugin}'): higher_is_better must be True or False")
    return obj


def resolve(plugins: Any, names: Sequence[str] | None) -> list[tuple[str, Metric]]:
    """``(plugin name, metric)`` for each requested name (default :data:`DEFAULT_METRICS`), in order,
    duplicates dropped; an unknown name is refused with the list of installed ones."""
    wanted = list(dict.fromkeys(names or DEFAULT_METRICS))
    by_name = {n: (p, o) for n, p, o in plugins.items("metrics")}
    out = []
    for name in wanted:
        if name not in by_name:
            plugins.get("metrics", name)  # raises NotFound naming what is installed
        plugin, obj = by_name[name]
        out.append((plugin, check_metric(obj, plugin)))
    return out


def primary_of(metrics: Sequence[tuple[str, Metric]]) -> Metric:
    """The metric the promotion gate compares: ``rouge_l`` when selected, else the first one."""
    for _, m in metrics:
        if m.name == DEFAULT_PRIMARY:
            return m
    return metrics[0][1]


def score(
    metrics: Sequence[tuple[str, Metric]], predictions: Sequence[str], references: Sequence[str]
) -> dict[str, float]:
    """``{name: value}`` of every metric on the pairs; a metric that returns no finite number is a
    :class:`PluginError` naming its plugin (a NaN would poison the stored evaluation and the gate)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    out = {}
    for plugin, m in metrics:
        value = m.compute(list(predictions), list(references))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PluginError(f"metric '{m.name}' (plugin '{plugin}') returned {value!r}, not a finite number")
        out[m.name] = round(float(value), 6)
    return out
