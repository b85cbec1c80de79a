"""The built-in generation metrics: exact match, ROUGE-L (``rouge-score``) and chrF (``sacrebleu``).

They ride on the ``file`` plugin (the default blob store, loaded by every installation) so they need no
entry point of their own; they are registered through ``register_metrics`` like a third party's.
The libraries are imported when a metric is computed, not when the plugin loads.
"""

from __future__ import annotations

from typing import Sequence

from adapterhub.errors import AdapterhubError


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AdapterhubError(f"this metric needs the '{package}' package (pip install {package})") from None


class ExactMatch:
    """The share of predictions equal to their reference (whitespace runs count as one space)."""

    name = "exact_match"
    higher_is_better = True

    def compute(self, predictions: Sequence[str], references: Sequence[str]) -> float:
        if not predictions:
            return 0.0
        same = sum(" ".join(p.split()) == " ".join(r.split()) for p, r in zip(predictions, references))
        return same / len(predictions)


class RougeL:
    """The mean ROUGE-L F-measure (longest common subsequence of words), 0..1, as ``rouge-score``
    computes it (lowercased, punctuation dropped, no stemming)."""

    name = "rouge_l"
    higher_is_better = True

    def compute(self, predictions: Sequence[str], references: Sequence[str]) -> float:
        if not predictions:
            return 0.0
        scorer = _need("rouge_score.rouge_scorer", "rouge-score").RougeScorer(["rougeL"], use_stemmer=False)
        # rouge-score's argument order is (target, prediction)
        return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)


class ChrF:
    """Corpus-level chrF (character n-gram F-score), 0..100, as ``sacrebleu`` computes it."""

    name = "chrf"
    higher_is_better = True

    def compute(self, predictions: Sequence[str], references: Sequence[str]) -> float:
        if not predictions:
            return 0.0
        return float(_need("sacrebleu", "sacrebleu").corpus_chrf(list(predictions), [list(references)]).score)


BUILTIN = (ExactMatch, RougeL, ChrF)
