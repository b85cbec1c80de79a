"""Shift check: a random split of the demo data looks like its other part; an eval set of support tickets
(a changed template, another domain) is flagged, and its farthest rows are the planted ones; production
inputs (--against) are checked the same way; skipped, and said so, without --base or a second set."""

import json
import os
import random

import pytest
from conftest import assert_clean_error
from tinymodels import minilm_path

DEMO = os.path.join(os.path.dirname(__file__), "..", "adapterhub", "demo")
TICKETS = [
    f"[TICKET-{1000 + i}] Customer wrote: the {w} was {v}. Priority: {p}"
    for i, (w, v, p) in enumerate(
        (w, v, p)
        for w in ("router", "invoice", "account", "password", "shipment")
        for v in ("late", "broken", "missing")
        for p in ("low", "high")
    )
]


def write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture(scope="module")
def demo_rows():
    return [json.loads(line) for line in open(os.path.join(DEMO, "sentiment_train.jsonl"), encoding="utf-8")]


def test_same_distribution_passes_and_a_changed_template_is_flagged(tmp_path, demo_rows):
    from adapterhub.training.embed import embedder
    from adapterhub.training.quality import check_data, render, summary

    rows = list(demo_rows)
    random.Random(0).shuffle(rows)
    train = write(tmp_path / "train.jsonl", rows[:180])
    same = write(tmp_path / "same.jsonl", rows[180:])
    embed = embedder(minilm_path())
    r = check_data(train, same, embed=embed)
    sh = r["shift"]
    assert (sh["compared"], sh["file"], sh["rows"], sh["train_rows"]) == ("eval", "same.jsonl", 60, 180)
    assert sh["shifted"] is False and sh["p_value"] >= 0.05, sh
    assert "looks like the training data" in render(r)

    # a quarter of the eval rows come from another template: shifted, and those rows are the farthest
    drifted = rows[180:225] + [{"text": t, "label": "negative"} for t in TICKETS]
    ev = write(tmp_path / "drifted.jsonl", drifted)
    r = check_data(train, ev, embed=embed)
    sh = r["shift"]
    assert sh["shifted"] is True and sh["p_value"] < 0.01, sh
    planted = set(range(46, 46 + len(TICKETS)))  # 1-based lines of the tickets
    assert {f["line"] for f in sh["farthest"]} <= planted and len(sh["farthest"]) == 10
    first = sh["farthest"][0]
    assert (
        first["text"].startswith("[TICKET-") and 0 < first["distance"] <= 2 and 1 <= first["nearest_train_line"] <= 180
    )
    assert any("drifted.jsonl differs from the training data" in p for p in r["problems"])
    assert "drifted.jsonl DIFFERS from the training data" in render(r)
    assert summary(r)["shift"] == {"eval": {"p_value": sh["p_value"], "shifted": True}}


def test_against_production_inputs_and_skips(cli, tmp_path, demo_rows):
    train = write(tmp_path / "train.jsonl", demo_rows[:120])
    prod = write(tmp_path / "prod.jsonl", [{"text": t} for t in TICKETS] + [{"prompt": "hello", "completion": "x"}])
    ev = write(tmp_path / "eval.jsonl", demo_rows[120:160])
    d = cli("data", "check", train, "--eval", ev, "--against", prod, "--base", minilm_path(), "--json").json()
    sh = d["shift"]
    assert sh["compared"] == "eval" and sh["shifted"] is False
    a = sh["against"]
    assert (a["compared"], a["file"], a["rows"], a["shifted"]) == ("against", "prod.jsonl", 31, True)
    assert d["against"]["digest"].startswith("sha256:") and d["against"]["rows"] == 31

    only = cli("data", "check", train, "--against", prod, "--base", minilm_path())
    assert only.exit_code == 0 and "shift: prod.jsonl DIFFERS from the training data" in only.stdout
    assert "prod.jsonl: 31 production rows (--against)" in only.stdout

    plain = cli("data", "check", train, "--eval", ev, "--json").json()
    assert plain["shift"] == {"skipped": "without --base"} and plain["label_issues"] == {"skipped": "without --base"}
    assert cli("data", "check", train, "--base", minilm_path(), "--json").json()["shift"] == {
        "skipped": "without --eval or --against"
    }
    assert_clean_error(
        cli("data", "check", train, "--against", tmp_path / "nope.jsonl"), "nope.jsonl", "does not exist"
    )
