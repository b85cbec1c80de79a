"""Promotion gates: a protected alias (``production``) moves only to an evaluated version that scores at
least as well as the current holder on the same eval data and was not trained on dirty data, unless
``--force --reason``, which the alias history records. Other aliases move freely."""

import json
import os

import pytest
from conftest import assert_clean_error, make_lora_dir

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def version(home, tmp_path, name, seed, task="seq-cls", data_check=None):
    """Push a small LoRA version with an adapterhub.json (task, optional data_check); returns its ref."""
    from adapterhub import api

    src = make_lora_dir(tmp_path / f"v{seed}", seed=seed)
    with open(os.path.join(src, "adapter_config.json")) as f:
        cfg = json.load(f)
    manifest = {"method": "lora", "config": cfg, "task": task}
    if data_check:
        manifest["data_check"] = data_check
    with open(os.path.join(src, "adapterhub.json"), "w") as f:
        json.dump(manifest, f)
    return api.push(api.open_registry(str(home)), src, name).ref


def evaluate(home, ref, digest, **metrics):
    from adapterhub import api

    task = "seq-cls" if "accuracy" in metrics else "causal-lm"
    api.open_registry(str(home)).add_evaluation(ref, digest, metrics, {"task": task, "rows": 10})


def test_gate_refusals_and_force(cli, home, tmp_path):
    v1 = version(home, tmp_path, "acme/clf", 1)
    v2 = version(home, tmp_path, "acme/clf", 2)
    v3 = version(home, tmp_path, "acme/clf", 3)

    # no evaluation: refused, nothing moves
    assert_clean_error(
        cli("alias", "set", "acme/clf", "production", "1"), "acme/clf:1 has no evaluation", "--force --reason"
    )
    assert cli("show", "acme/clf:1", "--json").json()["aliases"] == []
    # other aliases move freely
    assert cli("alias", "set", "acme/clf", "staging", "1").exit_code == 0

    evaluate(home, v1, DIGEST_A, accuracy=0.9)
    r = cli("alias", "set", "acme/clf", "production", "1", "--json")
    assert r.exit_code == 0 and r.json()["gated"] and not r.json()["forced"]

    # worse on the same eval data: refused with the numbers
    evaluate(home, v2, DIGEST_A, accuracy=0.7)
    err = cli("alias", "set", "acme/clf", "production", "2")
    assert_clean_error(err, "scores worse than the current production acme/clf:1", "accuracy 0.7 vs 0.9")
    assert cli("show", "acme/clf@production", "--json").json()["version"] == 1

    # evaluated only on other data: not comparable, refused
    evaluate(home, v3, DIGEST_B, accuracy=0.99)
    assert_clean_error(cli("alias", "set", "acme/clf", "production", "3"), "never evaluated on the same data")
    # the latest evaluation per digest counts: re-evaluated v2 now beats v1
    evaluate(home, v3, DIGEST_A, accuracy=0.9)  # a tie is not worse
    assert cli("alias", "set", "acme/clf", "production", "3").exit_code == 0

    # --force needs --reason; with it the move is recorded with what it overrode
    assert_clean_error(cli("alias", "set", "acme/clf", "production", "2", "--force"), "--force needs --reason")
    r = cli("alias", "set", "acme/clf", "production", "2", "--force", "--reason", "hotfix for ticket 42", "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["forced"] and "scores worse" in r.json()["overridden"][0]
    hist = cli("alias", "history", "acme/clf", "production", "--json").json()
    assert [(h["from"], h["to"]) for h in hist] == [(None, 1), (1, 3), (3, 2)]
    assert hist[-1]["reason"].startswith("hotfix for ticket 42")
    assert "forced past the promotion gate" in hist[-1]["reason"] and "accuracy 0.7 vs 0.9" in hist[-1]["reason"]
    assert "hotfix for ticket 42" in cli("alias", "history", "acme/clf", "production").stdout


def test_gate_causal_lm_loss_lower_is_better(cli, home, tmp_path):
    v1 = version(home, tmp_path, "acme/lm", 1, task="causal-lm")
    v2 = version(home, tmp_path, "acme/lm", 2, task="causal-lm")
    v3 = version(home, tmp_path, "acme/lm", 3, task="causal-lm")
    evaluate(home, v1, DIGEST_A, loss=2.0, perplexity=7.39)
    evaluate(home, v2, DIGEST_A, loss=2.5, perplexity=12.2)
    evaluate(home, v3, DIGEST_A, loss=1.5, perplexity=4.48)
    assert cli("alias", "set", "acme/lm", "production", "1").exit_code == 0
    assert_clean_error(cli("alias", "set", "acme/lm", "production", "2"), "loss 2.5 vs 2", "lower is better")
    assert cli("alias", "set", "acme/lm", "production", "3").exit_code == 0


def test_gate_dirty_training_data(cli, home, tmp_path):
    check = {"status": "failed", "reasons": ["2 input(s) with conflicting labels"], "allowed_dirty": True}
    v1 = version(home, tmp_path, "acme/dirty", 1, data_check=check)
    evaluate(home, v1, DIGEST_A, accuracy=1.0)
    assert_clean_error(
        cli("alias", "set", "acme/dirty", "production", "1"),
        "trained on data that failed its quality check",
        "conflicting labels",
    )
    v2 = version(home, tmp_path, "acme/dirty", 2, data_check={"status": "passed", "reasons": []})
    evaluate(home, v2, DIGEST_A, accuracy=0.8)
    assert cli("alias", "set", "acme/dirty", "production", "2").exit_code == 0


def test_protected_aliases_are_configurable(cli, home, tmp_path, monkeypatch):
    version(home, tmp_path, "acme/cfg", 1)
    monkeypatch.setenv("ADAPTERHUB_PROTECTED_ALIASES", "prod, canary")
    assert cli("alias", "set", "acme/cfg", "production", "1").exit_code == 0  # not protected now
    assert_clean_error(cli("alias", "set", "acme/cfg", "canary", "1"), "has no evaluation")
    # --gate applies the gate to any alias
    assert_clean_error(cli("alias", "set", "acme/cfg", "staging", "1", "--gate"), "has no evaluation")
    monkeypatch.setenv("ADAPTERHUB_PROTECTED_ALIASES", "")
    assert cli("alias", "set", "acme/cfg", "canary", "1").exit_code == 0


def test_gate_bad_input(cli, home, tmp_path):
    version(home, tmp_path, "acme/bad", 1)
    assert_clean_error(cli("alias", "set", "acme/nope", "production", "1"), "no adapter named 'acme/nope'")
    assert_clean_error(cli("alias", "set", "acme/bad", "production", "9"), "no version 9")
    assert_clean_error(cli("alias", "set", "acme/bad", "production", "9", "--force", "--reason", "x"), "no version 9")
    assert_clean_error(cli("alias", "set", "acme/bad", "Bad Alias", "1"), "invalid alias")


def test_publish_alias_guard(home, tmp_path):
    """``push --alias production`` goes through the same gate via ``publish(alias_guard=...)``."""
    from adapterhub import api
    from adapterhub.files.checkpoint import read_adapter_dir
    from adapterhub.plugins import get_plugins
    from adapterhub.registry.gates import GateRefused, alias_guard

    reg = api.open_registry(str(home))
    src = read_adapter_dir(make_lora_dir(tmp_path / "p"), get_plugins())
    with pytest.raises(GateRefused, match="has no evaluation"):
        reg.publish("acme/pub", src.manifest, src.files, aliases=["production"], alias_guard=alias_guard())
    pub = reg.publish("acme/pub", src.manifest, src.files, aliases=["staging"], alias_guard=alias_guard())
    assert reg.show(pub.ref).aliases == ("staging",)


# -- the real thing: MiniLM trained on clean vs noisy labels ------------------------------------

SPORT = "football basketball tennis golf hockey baseball boxing cricket rugby volleyball".split()
FOOD = "pasta sushi curry soup salad pizza tacos bread rice noodles".split()
TRAIN_TEMPLATES = ["we talked about {} all evening", "my favourite thing is {}", "she wrote an article on {}"]
EVAL_TEMPLATES = ["he is really into {}", "the news today was about {}"]
# 6 of the 20 topics (30% of the rows) get the wrong label in the noisy set; flipping whole topics makes
# the noise learnable, so the drop on clean eval data is large and deterministic
FLIPPED = {"tennis", "golf", "boxing", "sushi", "curry", "tacos"}


def topic_rows(templates, noisy=False):
    rows = []
    for t in templates:
        for w in SPORT + FOOD:
            label = "sport" if w in SPORT else "food"
            if noisy and w in FLIPPED:
                label = "food" if label == "sport" else "sport"
            rows.append({"text": t.format(w), "label": label})
    return rows


@pytest.mark.slow
def test_noisy_labels_drop_accuracy_and_the_gate_refuses(cli, home, tmp_path):
    from test_evaluate import make_adapter, push, write_jsonl
    from tinymodels import minilm_path

    from adapterhub.training.quality import check_data, gate_data, summary

    base = minilm_path()
    labels = ["food", "sport"]
    clean = topic_rows(TRAIN_TEMPLATES)
    noisy = topic_rows(TRAIN_TEMPLATES, noisy=True)
    assert sum(a["label"] != b["label"] for a, b in zip(clean, noisy)) == 0.3 * len(clean)
    ev = write_jsonl(tmp_path / "eval.jsonl", topic_rows(EVAL_TEMPLATES))
    refs = {}
    for kind, rows in (("clean", clean), ("noisy", noisy)):
        path = write_jsonl(tmp_path / f"{kind}.jsonl", rows)
        report = check_data(path, ev, task="seq-cls")
        assert report["problems"] == [], report[
            "problems"
        ]  # without --base, label noise is invisible to the data check
        reasons = gate_data(report)
        extra = {
            "data": [
                {"role": "train", "path": f"{kind}.jsonl", "digest": report["train"]["digest"], "rows": len(rows)}
            ],
            "data_check": {
                "status": "failed" if reasons else "passed",
                "reasons": reasons,
                "allowed_dirty": False,
                "summary": summary(report),
            },
        }
        src = make_adapter(
            base,
            tmp_path / kind,
            "seq-cls",
            labels=labels,
            rows=rows,
            steps=4,
            lr=5e-3,
            config={"r": 8, "lora_alpha": 16},
            manifest_extra=extra,
            max_length=32,
        )
        refs[kind] = push(home, src, "acme/topics", base)
    assert refs == {"clean": "acme/topics:1", "noisy": "acme/topics:2"}

    results = {}
    for kind, ref in refs.items():
        r = cli("eval", ref, "--base", base, "--data", ev, "--batch-size", "20", "--json")
        assert r.exit_code == 0, r.output
        results[kind] = r.json()
    c, n = results["clean"], results["noisy"]
    assert c["adapter"]["accuracy"] >= 0.95, c["adapter"]
    assert n["adapter"]["accuracy"] <= c["adapter"]["accuracy"] - 0.2, (n["adapter"], c["adapter"])
    assert c["gain"]["accuracy"] > 0.3  # over the seeded random head of the bare base
    assert c["base"] == n["base"]  # the same base, the same seeded head
    assert c["data_digest"] == n["data_digest"]

    assert cli("alias", "set", "acme/topics", "production", "1").exit_code == 0
    refused = cli("alias", "set", "acme/topics", "production", "2")
    assert_clean_error(refused, "acme/topics:2 scores worse than the current production acme/topics:1", "accuracy")
    assert cli("show", "acme/topics@production", "--json").json()["version"] == 1

    forced = cli("alias", "set", "acme/topics", "production", "2", "--force", "--reason", "A/B test of noisy labels")
    assert forced.exit_code == 0 and "forced past the promotion gate" in forced.stdout
    hist = cli("alias", "history", "acme/topics", "production", "--json").json()
    assert hist[-1]["from"] == 1 and hist[-1]["to"] == 2
    assert "A/B test of noisy labels" in hist[-1]["reason"]

    cmp = cli("compare", "acme/topics:1", "acme/topics:2", "--json").json()
    (train_row,) = [d for d in cmp["data"] if d["role"] == "train"]
    assert not train_row["same"]
    (e,) = cmp["evaluations"]
    acc = {m["key"]: m for m in e["metrics"]}["accuracy"]
    assert acc["delta"] == pytest.approx(n["adapter"]["accuracy"] - c["adapter"]["accuracy"], abs=1e-6)
