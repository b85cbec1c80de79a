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


def test_data_clean_removes_or_relabels_and_names_both_digests(cli, tmp_path):
    import hashlib

    path, truth = noisy_demo(tmp_path)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "clean.jsonl"
    r = cli("data", "clean", path, "--base", minilm_path(), "--out", out, "--json")
    assert r.exit_code == 0, r.output
    d = r.json()
    assert os.listdir(tmp_path / "out") == ["clean.jsonl"]  # nothing else written, no temporary left
    raw = out.read_bytes()
    assert d["output"]["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert d["input"]["digest"] == "sha256:" + hashlib.sha256(open(path, "rb").read()).hexdigest()
    removed = {row["line"] for row in d["rows"]}
    kept = [line for n, line in enumerate(open(path, encoding="utf-8").read().splitlines(), 1) if n not in removed]
    assert raw.decode().splitlines() == kept and d["output"]["rows"] == 240 - d["count"]  # the rest byte for byte
    assert len(removed & set(truth)) >= 0.8 * len(truth)

    relabelled = tmp_path / "relabelled.jsonl"
    text = cli("data", "clean", path, "--base", minilm_path(), "--out", relabelled, "--relabel")
    assert text.exit_code == 0, text.output
    assert (
        f"relabelled {d['count']} likely mislabeled row(s) of 240" in text.stdout
        and d["output"]["digest"] not in text.stdout
    )
    rows = [json.loads(line) for line in relabelled.read_text().splitlines()]
    assert len(rows) == 240
    fixed = sum(rows[n - 1]["label"] == true for n, true in truth.items())
    assert fixed >= 0.8 * len(truth)

    # integer labels stay integers
    ints = tmp_path / "ints.jsonl"
    ints.write_text(
        "".join(
            json.dumps({"text": json.loads(line)["text"], "label": int(json.loads(line)["label"] == "positive")}) + "\n"
            for line in open(path, encoding="utf-8")
        )
    )
    out_ints = tmp_path / "ints-clean.jsonl"
    assert cli("data", "clean", ints, "--base", minilm_path(), "--out", out_ints, "--relabel").exit_code == 0
    assert {type(json.loads(line)["label"]) for line in out_ints.read_text().splitlines()} == {int}


def test_data_clean_refuses_with_one_line(cli, tmp_path):
    path, _ = noisy_demo(tmp_path)
    base = minilm_path()
    assert_clean_error(cli("data", "clean", path, "--base", base, "--out", path), "is the input file")
    existing = tmp_path / "exists.jsonl"
    existing.write_text("keep me\n")
    assert_clean_error(cli("data", "clean", path, "--base", base, "--out", existing), "exists", "--force")
    assert existing.read_text() == "keep me\n"
    assert_clean_error(cli("data", "clean", path, "--base", base, "--out", tmp_path), "is a directory")
    assert_clean_error(
        cli("data", "clean", path, "--base", base, "--out", tmp_path / "no" / "x.jsonl"), "does not exist"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(open(path, encoding="utf-8").read() + "{not json\n")
    assert_clean_error(
        cli("data", "clean", bad, "--base", base, "--out", tmp_path / "c.jsonl"), "bad.jsonl:241", "malformed"
    )
    assert not (tmp_path / "c.jsonl").exists()
    assert_clean_error(
        cli("data", "clean", path, "--base", tmp_path / "nobase", "--out", tmp_path / "c.jsonl"), "does not exist"
    )


def test_train_fail_on_noise_refuses_before_training(cli, tmp_path):
    path, _ = noisy_demo(tmp_path)
    out = tmp_path / "adapter"
    args = (
        "train",
        "--base",
        minilm_path(),
        "--method",
        "lora",
        "--task",
        "seq-cls",
        "--data",
        path,
        "--out",
        out,
        "--max-steps",
        "1",
        "--batch-size",
        "4",
    )
    r = cli(*args, "--fail-on-noise", "0.05")
    assert_clean_error(
        r, "data check failed for noisy.jsonl: estimated label noise", "above --fail-on-noise 0.05", "data clean"
    )
    assert not out.exists()
    assert_clean_error(cli(*args[:6], "causal-lm", *args[7:], "--fail-on-noise", "0.05"), "needs --task seq-cls")

    # lineage: a version trained on the cleaned data records the cleaned file's digest and its label check
    clean = tmp_path / "clean.jsonl"
    cleaned = cli("data", "clean", path, "--base", minilm_path(), "--out", clean, "--json").json()
    ok = cli(*args[:8], clean, *args[9:], "--fail-on-noise", "0.1", "--json")
    assert ok.exit_code == 0, ok.output
    manifest = json.loads((out / "adapterhub.json").read_text())
    assert manifest["data"][0]["digest"] == cleaned["output"]["digest"]
    assert manifest["data_check"]["summary"]["label_issues"]["estimated_noise_rate"] <= 0.1
    assert manifest["data_check"]["fail_on_noise"] == 0.1 and manifest["data_check"]["status"] == "passed"
