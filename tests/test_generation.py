"""Generation metrics (``register_metrics``) and ``adapterhub eval --generate`` on a tiny Llama whose
adapter was trained to answer known prompts."""

import math

import pytest

import adapterhub
import adapterhub_file
from adapterhub.errors import NotFound, PluginError
from adapterhub.metrics import DEFAULT_METRICS, resolve, score
from adapterhub.plugins import Plugins


def _builtin():
    return Plugins(load_entrypoints=False, plugins={"file": adapterhub_file})


# -- metrics ------------------------------------------------------------------------------------


def test_builtin_metrics_known_values():
    metrics = resolve(_builtin(), None)
    assert [m.name for _, m in metrics] == list(DEFAULT_METRICS) and all(p == "file" for p, _ in metrics)
    same = score(metrics, ["the cat sat on the mat"], ["the  cat sat on the mat "])
    assert same == {"exact_match": 1.0, "rouge_l": 1.0, "chrf": 100.0}
    disjoint = score(metrics, ["xyz"], ["abc"])
    assert disjoint == {"exact_match": 0.0, "rouge_l": 0.0, "chrf": 0.0}
    # LCS("the cat is on the mat", "the cat sat on the mat") = "the cat on the mat": 5 of 6 words each side
    # -> P = R = F = 5/6; row 2: LCS 1 word, P = 1/1, R = 1/2 -> F = 2/3; mean (5/6 + 2/3) / 2 = 0.75
    m = score(metrics, ["the cat is on the mat", "dog"], ["the cat sat on the mat", "a dog"])
    assert m["exact_match"] == 0.0 and m["rouge_l"] == pytest.approx(0.75, abs=1e-6)
    assert 0 < m["chrf"] < 100
    import sacrebleu

    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(["the cat is on the mat", "dog"],
                                                            [["the cat sat on the mat", "a dog"]]).score, abs=1e-5)
    assert score(metrics, ["a", "b", "c", "d"], ["a", "x", "c", "y"])["exact_match"] == 0.5


class LengthJudge:
    """An LLM-as-judge-shaped toy: asks a 'judge' (here: a length rule) for a 1-5 grade per pair."""

    name = "judge"
    higher_is_better = True

    def __init__(self):
        self.calls = []

    def compute(self, predictions, references):
        self.calls.append((list(predictions), list(references)))
        grades = [5 if p == r else max(1, 5 - abs(len(p) - len(r))) for p, r in zip(predictions, references)]
        return sum(grades) / len(grades)


def _metric_plugin(*objs):
    class P:
        @staticmethod
        @adapterhub.hookimpl
        def register_metrics(register):
            for o in objs:
                register(o)

    return P


def test_third_party_metric_on_a_fresh_plugin_manager():
    judge = LengthJudge()
    pl = Plugins(load_entrypoints=False, plugins={"file": adapterhub_file, "judge_plugin": _metric_plugin(judge)})
    assert pl.names("metrics") == ["chrf", "exact_match", "judge", "rouge_l"]
    metrics = resolve(pl, ["judge", "exact_match", "judge"])
    assert [(p, m.name) for p, m in metrics] == [("judge_plugin", "judge"), ("file", "exact_match")]
    assert score(metrics, ["yes", "no"], ["yes", "nope"]) == {"judge": 4.0, "exact_match": 0.5}
    assert judge.calls == [(["yes", "no"], ["yes", "nope"])]
    row = {p["name"]: p for p in pl.describe()}
    assert row["judge_plugin"]["metrics"] == ["judge"] and row["file"]["metrics"] == list(sorted(DEFAULT_METRICS))
    with pytest.raises(NotFound, match="unknown metric 'bleu'.*judge"):
        resolve(pl, ["bleu"])


def test_metric_plugins_are_checked():
    class Imposter:
        name = "rouge_l"
        higher_is_better = True

        def compute(self, predictions, references):
            return 1.0

    dup = Plugins(load_entrypoints=False, plugins={"file": adapterhub_file, "mine": _metric_plugin(Imposter())})
    with pytest.raises(PluginError, match="'rouge_l' is registered by both plugin '(file|mine)' and plugin '(file|mine)'"):
        resolve(dup, None)

    class NoDirection:
        name = "vague"

        def compute(self, predictions, references):
            return 1.0

    class Nan(Imposter):
        name = "nan"
        higher_is_better = "yes"

    pl = Plugins(load_entrypoints=False, plugins={"p": _metric_plugin(NoDirection(), Nan())})
    with pytest.raises(PluginError, match="'p' registered metric 'vague' without name, higher_is_better"):
        resolve(pl, ["vague"])
    with pytest.raises(PluginError, match="higher_is_better must be True or False"):
        resolve(pl, ["nan"])
    Nan.higher_is_better = True
    Nan.compute = lambda self, p, r: math.nan
    with pytest.raises(PluginError, match="metric 'nan' \\(plugin 'p'\\) returned nan, not a finite number"):
        score(resolve(pl, ["nan"]), ["a"], ["a"])
