"""Data-quality checks: planted duplicates, conflicts, leakage, malformed, empty and over-length rows
are counted exactly and named by line; the CLI reports them (exit 0, or 1 with --strict)."""

import json

import pytest
from conftest import assert_clean_error


def write_lines(path, lines):
    """Write raw lines (dicts become JSON); returns the path as a string."""
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((json.dumps(line) if not isinstance(line, str) else line) + "\n")
    return str(path)


def planted_seq_cls(tmp_path):
    """A labelled train/eval pair with known problems. Returns (train, eval, expected line numbers)."""
    lines = [{"text": f"sentence number {i} about the topic", "label": "a" if i % 3 else "b"} for i in range(1, 11)]
    # lines 1..10 are clean and unique; 10 labels: b for i in (3, 6, 9) -> a=7, b=3
    lines += [
        dict(lines[0]),
        dict(lines[1]),
        dict(lines[2]),  # 11-13: exact duplicates of 1-3
        {"label": lines[3]["label"], "text": "SENTENCE number 4,   about the topic!!"},  # 14: normalized dup of 4
        {"text": "Sentence number 5 about the... topic", "label": lines[4]["label"]},  # 15: normalized dup of 5
        {"text": "sentence number 6 about the topic", "label": "a"},  # 16: conflicts with 6 (b)
        {"text": "Sentence Number 7 about the topic.", "label": "b"},  # 17: conflicts with 7 (a)
        "this is not json",  # 18: malformed
        "[1, 2, 3]",  # 19: not an object
        {"text": 5, "label": "a"},  # 20: text not a string
        "",  # 21: blank (ignored)
        {"text": "a row without a label"},  # 22: missing label
        {"text": "   ", "label": "a"},  # 23: empty text
    ]
    train = write_lines(tmp_path / "train.jsonl", lines)
    ev = write_lines(
        tmp_path / "eval.jsonl",
        [
            {"text": "sentence number 8 about the topic", "label": "a"},  # 1: exact leak of train line 8
            {
                "text": "sentence number 9 about the topic",
                "label": "a",
            },  # 2: exact leak of 9 (other label: still a leak)
            {"text": "SENTENCE NUMBER 10 ABOUT THE TOPIC", "label": "a"},  # 3: normalized leak of 10
            {"text": "a fresh sentence", "label": "a"},
            {"text": "another fresh sentence", "label": "b"},
            "{broken",  # 6: malformed
        ],
    )
    return train, ev


def test_planted_problems_exact_counts(tmp_path):
    from adapterhub.training.quality import check_data, gate_data, summary

    train, ev = planted_seq_cls(tmp_path)
    r = check_data(train, ev)
    assert r["task"] == "seq-cls" and r["task_inferred"]
    # 23 lines - 1 blank - 4 malformed = 18 usable rows
    assert r["rows"] == 18
    assert r["train"]["lines"] == 22
    assert (r["duplicates"]["exact"], r["duplicates"]["normalized"], r["duplicates"]["total"]) == (3, 2, 5)
    dup_lines = {(e["line"], e["duplicate_of"], e["kind"]) for e in r["duplicates"]["examples"]}
    assert dup_lines == {
        (11, 1, "exact"),
        (12, 2, "exact"),
        (13, 3, "exact"),
        (14, 4, "normalized"),
        (15, 5, "normalized"),
    }
    assert r["conflicts"]["count"] == 2 and r["conflicts"]["rows"] == 4
    assert [e["lines"] for e in r["conflicts"]["examples"]] == [[6, 16], [7, 17]]
    assert r["conflicts"]["examples"][0]["targets"] == ["a", "b"]
    assert (r["leakage"]["exact"], r["leakage"]["normalized"]) == (2, 1)
    assert {(e["eval_line"], e["train_line"], e["kind"]) for e in r["leakage"]["examples"]} == {
        (1, 8, "exact"),
        (2, 9, "exact"),
        (3, 10, "normalized"),
    }
    assert r["malformed"]["count"] == 5
    assert [(e["file"], e["line"]) for e in r["malformed"]["examples"]] == [
        ("train.jsonl", 18),
        ("train.jsonl", 19),
        ("train.jsonl", 20),
        ("train.jsonl", 22),
        ("eval.jsonl", 6),
    ]
    assert "invalid JSON" in r["malformed"]["examples"][0]["error"]
    assert "expected a JSON object" in r["malformed"]["examples"][1]["error"]
    assert "missing 'label'" in r["malformed"]["examples"][3]["error"]
    assert r["empty"]["count"] == 1 and r["empty"]["examples"][0]["line"] == 23
    # labels over the 18 usable rows: 1-10 (a=7, b=3), 11-13 copy 1-3 (a, a, b), 14-15 (a, a), 16 a, 17 b, 23 a
    assert r["labels"]["distribution"] == {"a": 13, "b": 5}
    assert r["labels"]["imbalance_ratio"] == pytest.approx(13 / 5)
    assert r["labels"]["eval_distribution"] == {"a": 4, "b": 1}
    assert r["lengths"]["unit"] == "whitespace tokens" and not r["lengths"]["over_length"]["checked"]
    assert r["status"] == "problems" and len(r["problems"]) >= 5

    reasons = gate_data(r)
    assert any("conflicting labels" in x for x in reasons)
    assert any("also in the training data" in x and "eval line 1 = train line 8" in x for x in reasons)
    assert any("malformed" in x and "train.jsonl:18" in x for x in reasons)
    relaxed = gate_data(r, max_conflicts=2, max_leakage=3)
    assert not any("conflicting" in x or "training data" in x for x in relaxed)
    s = summary(r)
    assert s["conflicts"] == 2 and s["leakage"] == {"exact": 2, "normalized": 1} and s["malformed"] == 5
    json.dumps(r), json.dumps(s)  # JSON-able


def test_clean_data_passes_the_gate(tmp_path):
    from adapterhub.training.quality import check_data, gate_data

    train = write_lines(tmp_path / "t.jsonl", [{"text": f"row {i}", "label": i % 2} for i in range(10)])
    ev = write_lines(tmp_path / "e.jsonl", [{"text": f"other {i}", "label": i % 2} for i in range(4)])
    r = check_data(train, ev, task="seq-cls")
    assert r["problems"] == [] and r["status"] == "ok" and gate_data(r) == []
    assert r["labels"]["distribution"] == {"0": 5, "1": 5} and r["labels"]["imbalance_ratio"] == 1.0


def test_causal_lm_rows(tmp_path):
    from adapterhub.training.quality import check_data

    train = write_lines(
        tmp_path / "t.jsonl",
        [
            {"prompt": "Q: capital of France?", "completion": " Paris"},  # 1
            {"prompt": "Q: capital of France?", "completion": " Paris"},  # 2: exact dup
            {"prompt": "q: Capital of France", "completion": " paris."},  # 3: normalized dup
            {"prompt": "Q: capital of Italy?", "completion": " Rome"},  # 4
            {"prompt": "Q: capital of Italy?", "completion": " Milan"},  # 5: conflicts with 4
            {"text": "just some free text with seven words"},  # 6
            {"text": "just some free text with seven words"},  # 7: exact dup (no conflict)
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},  # 8
            {
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]
            },  # 9: conflict
            {"prompt": "Q: empty?", "completion": ""},  # 10: empty completion
            {"prompt": "Q", "completion": " " + "word " * 30},  # 11: over-length
            {"prompt": 3, "completion": "x"},  # 12: malformed
            {"messages": "nope"},  # 13: malformed
            {"unknown": 1},  # 14: malformed
        ],
    )
    ev = write_lines(
        tmp_path / "e.jsonl",
        [
            {"prompt": "Q: capital of Italy?", "completion": " Rome"},  # exact leak of 4
            {"prompt": "Q: capital of Italy?", "completion": " Naples"},  # same prompt, new completion: no leak
            {"prompt": "Q: CAPITAL of Italy", "completion": " rome"},  # normalized leak
        ],
    )
    r = check_data(train, ev, max_length=20)
    assert r["task"] == "causal-lm" and r["labels"]["distribution"] == {}
    assert r["rows"] == 11
    assert (r["duplicates"]["exact"], r["duplicates"]["normalized"]) == (2, 1)
    assert r["conflicts"]["count"] == 2 and [e["lines"] for e in r["conflicts"]["examples"]] == [[4, 5], [8, 9]]
    assert (r["leakage"]["exact"], r["leakage"]["normalized"]) == (1, 1)
    assert [e["line"] for e in r["malformed"]["examples"]] == [12, 13, 14]
    assert r["empty"]["examples"] == [{"file": "t.jsonl", "line": 10, "what": "empty completion"}]
    assert r["lengths"]["unit"] == "whitespace tokens"
    assert [e["line"] for e in r["lengths"]["over_length"]["examples"]] == [11]


def test_over_length_by_tokenizer(tmp_path):
    from tinymodels import minilm_path

    from adapterhub.training.modeling import load_tokenizer
    from adapterhub.training.quality import check_data

    tok = load_tokenizer(minilm_path())
    # 3 words, but "antidisestablishmentarianism" is many word pieces
    train = write_lines(
        tmp_path / "t.jsonl",
        [{"text": "antidisestablishmentarianism " * 3, "label": "a"}, {"text": "short one", "label": "b"}],
    )
    by_words = check_data(train, max_length=5)
    assert by_words["lengths"]["over_length"]["count"] == 0
    by_tokens = check_data(train, tokenizer=tok, max_length=5)
    assert by_tokens["lengths"]["unit"] == "tokens"
    assert [e["line"] for e in by_tokens["lengths"]["over_length"]["examples"]] == [1]
    assert by_tokens["lengths"]["over_length"]["examples"][0]["length"] > 5


def test_cli_data_check(cli, tmp_path):
    train, ev = planted_seq_cls(tmp_path)
    r = cli("data", "check", train, "--eval", ev, "--json")
    assert r.exit_code == 0, r.output
    d = r.json()
    for key in ("rows", "duplicates", "conflicts", "leakage", "labels", "malformed"):
        assert key in d
    assert d["duplicates"]["exact"] == 3 and d["conflicts"]["count"] == 2 and d["leakage"]["total"] == 3
    text = cli("data", "check", train, "--eval", ev, "--max-length", "4")
    assert text.exit_code == 0
    assert "duplicates: 3 exact, 2 normalized" in text.stdout
    assert "train.jsonl:18: invalid JSON" in text.stdout
    assert "eval.jsonl:1 = train.jsonl:8 (exact)" in text.stdout
    assert "over-length rows: 20 (> 4 whitespace tokens" in text.stdout  # 17 train + 3 eval rows
    strict = cli("data", "check", train, "--eval", ev, "--strict")
    assert strict.exit_code == 1 and "--strict" in strict.stderr and "Traceback" not in strict.output
    clean = write_lines(tmp_path / "clean.jsonl", [{"text": f"row {i}", "label": "x"} for i in range(3)])
    assert cli("data", "check", clean, "--strict").exit_code == 0


def test_cli_data_check_with_base_tokenizer(cli, tmp_path):
    from tinymodels import minilm_path

    train = write_lines(tmp_path / "t.jsonl", [{"text": "antidisestablishmentarianism", "label": "a"}])
    d = cli("data", "check", train, "--base", minilm_path(), "--max-length", "4", "--json").json()
    assert d["lengths"]["unit"] == "tokens" and d["lengths"]["over_length"]["count"] == 1


def test_cli_data_check_bad_input(cli, tmp_path):
    assert_clean_error(cli("data", "check", tmp_path / "nope.jsonl"), "does not exist")
    assert_clean_error(cli("data", "check", tmp_path), "is a directory")
    ok = write_lines(tmp_path / "t.jsonl", [{"text": "x", "label": "a"}])
    assert_clean_error(
        cli("data", "check", ok, "--eval", tmp_path / "missing.jsonl"), "missing.jsonl", "does not exist"
    )
    assert_clean_error(cli("data", "check", ok, "--task", "nope"), "nope")
    assert_clean_error(cli("data", "check", ok, "--base", tmp_path / "nobase"), "does not exist")
    assert_clean_error(cli("data", "check", ok, "--max-length", "0"), "--max-length")
    # a file of nothing but garbage is a report, not a crash
    junk = write_lines(tmp_path / "junk.jsonl", ["garbage", "{", "[]"])
    r = cli("data", "check", junk, "--json")
    assert r.exit_code == 0 and r.json()["rows"] == 0 and r.json()["malformed"]["count"] == 3
    assert "no usable training rows" in r.json()["problems"]
