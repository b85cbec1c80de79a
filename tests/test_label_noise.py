"""Likely mislabeled rows: labels flipped at random (seeded) in the demo sentiment data are found by
confident learning on the real MiniLM's embeddings; the report's fields, the --fail-on-noise gate and
the "skipped without --base" contract."""

import json
import os
import random

import pytest

from conftest import assert_clean_error
from tinymodels import minilm_path

DEMO = os.path.join(os.path.dirname(__file__), "..", "adapterhub", "demo", "sentiment_train.jsonl")
OTHER = {"positive": "negative", "negative": "positive"}


def noisy_demo(tmp_path, rate=0.15, seed=0):
    """The demo training data with ``rate`` of its labels flipped; returns (path, {line: true label})."""
    rows = [json.loads(line) for line in open(DEMO, encoding="utf-8")]
    flipped = set(random.Random(seed).sample(range(len(rows)), int(rate * len(rows))))
    path = tmp_path / "noisy.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({**r, "label": OTHER[r["label"]]} if i in flipped else r) + "\n")
    return str(path), {i + 1: rows[i]["label"] for i in flipped}


@pytest.fixture(scope="module")
def embed():
    from adapterhub.training.embed import embedder

    return embedder(minilm_path())


def test_flipped_labels_are_found_with_their_true_label(tmp_path, embed):
    from adapterhub.training.quality import check_data, summary

    path, truth = noisy_demo(tmp_path)
    r = check_data(path, task="seq-cls", embed=embed)
    li = r["label_issues"]
    flagged = {row["line"]: row for row in li["rows"]}
    hits = set(flagged) & set(truth)
    precision, recall = len(hits) / len(flagged), len(hits) / len(truth)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    assert 0.08 <= li["estimated_noise_rate"] <= 0.25 and li["count"] == len(li["rows"]) and li["checked"] == 240
    assert all(flagged[n]["suggested"] == truth[n] for n in hits)  # the suggestion is the label before the flip
    lines = open(path, encoding="utf-8").read().splitlines()
    for row in li["rows"]:  # lines are 1-based and point at the row named
        obj = json.loads(lines[row["line"] - 1])
        assert (obj["text"][:120], obj["label"]) == (row["text"], row["label"]) and 0 <= row["score"] <= 1
    assert [row["score"] for row in li["rows"]] == sorted(row["score"] for row in li["rows"])  # worst first
    assert f"{li['count']} likely mislabeled row(s)" in r["problems"][0]
    assert summary(r)["label_issues"] == {"estimated_noise_rate": li["estimated_noise_rate"], "count": li["count"]}

    clean = check_data(DEMO, task="seq-cls", embed=embed)["label_issues"]
    assert clean["estimated_noise_rate"] <= 0.03 and clean["count"] <= 5, clean


def test_skipped_without_base_or_labels(tmp_path, embed):
    from adapterhub.training.quality import check_data, render

    r = check_data(DEMO)
    assert r["label_issues"] == {"skipped": "without --base"}
    assert "likely mislabeled rows: not checked (without --base)" in render(r)
    lm = tmp_path / "lm.jsonl"
    lm.write_text('{"text": "hello there"}\n{"text": "general kenobi"}\n')
    assert check_data(str(lm), embed=embed)["label_issues"] == {"skipped": "causal-lm rows have no labels"}
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n{"text": "c", "label": "y"}\n')
    li = check_data(str(one), embed=embed)["label_issues"]
    assert li["skipped"] == "label(s) with a single row: y"


def test_cli_report_and_gate(cli, tmp_path):
    path, truth = noisy_demo(tmp_path)
    r = cli("data", "check", path, "--base", minilm_path(), "--json")
    assert r.exit_code == 0, r.output
    li = r.json()["label_issues"]
    assert {"line", "text", "label", "suggested", "score"} <= set(li["rows"][0]) and li["estimated_noise_rate"] > 0.05

    gated = cli("data", "check", path, "--base", minilm_path(), "--fail-on-noise", "0.05")
    assert gated.exit_code == 1 and "Traceback" not in gated.output
    assert "data check failed: estimated label noise" in gated.stderr and "above --fail-on-noise 0.05" in gated.stderr
    assert "likely mislabeled rows:" in gated.stdout
    assert cli("data", "check", path, "--base", minilm_path(), "--fail-on-noise", "0.5").exit_code == 0

    assert_clean_error(cli("data", "check", path, "--fail-on-noise", "0.05"), "--fail-on-noise needs --base")
    assert_clean_error(cli("data", "check", path, "--base", minilm_path(), "--fail-on-noise", "2"), "between 0 and 1")
