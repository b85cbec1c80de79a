"""`adapterhub demo`: the README's first command trains, pushes, evaluates, promotes and shows lineage."""

import pytest


@pytest.mark.slow
def test_demo_end_to_end(cli):
    r = cli("demo", "--json")
    assert r.exit_code == 0, r.output
    d = r.json()
    assert d["ref"] == "demo/sentiment:1" and d["alias"] == "demo/sentiment@production"
    assert d["accuracy"] >= 0.9 and d["accuracy"] > d["base_accuracy"] + 0.2
    show = cli("show", "demo/sentiment@production", "--json").json()
    assert show["digest"] == d["digest"] and show["evaluations"] and show["method"] == "lora"
    assert [x["role"] for x in show["data"]] == ["train", "eval"]
    text = cli("demo", "--name", "demo/again").stdout
    assert "eval accuracy: adapter" in text and "demo/again@production -> demo/again:1" in text
