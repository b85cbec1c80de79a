"""`adapterhub train` end to end: causal-lm and seq-cls, PEFT interop, resume, lineage, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import assert_clean_error
from tinymodels import minilm_path, save_tiny_llama_base, word_tokenizer

DEMO = os.path.join(os.path.dirname(__file__), "..", "adapterhub", "demo")


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory):
    return save_tiny_llama_base(tmp_path_factory.mktemp("base") / "tiny-llama")


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def causal_rows(n=24):
    rows = []
    for i in range(n):
        if i % 3 == 0:
            rows.append({"text": "the cat sat on the mat and it was very happy"})
        elif i % 3 == 1:
            rows.append({"prompt": "question what color is the sky answer", "completion": "blue"})
        else:
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": "hello world"},
                        {"role": "assistant", "content": "hello the dog ran to the park"},
                    ]
                }
            )
    return rows


def test_prompt_tokens_are_masked():
    from adapterhub.training.data import IGNORE, Rows, causal_lm_examples

    tok = word_tokenizer()
    rows = Rows(
        "x.jsonl",
        "sha256:0",
        [
            (1, {"prompt": "what color", "completion": "blue"}),
            (2, {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes"}]}),
        ],
    )
    ex = causal_lm_examples(rows, tok, 64)
    p = tok("what color")["input_ids"]
    assert ex[0]["labels"][: len(p)] == [IGNORE] * len(p)
    assert ex[0]["labels"][len(p) :] == ex[0]["input_ids"][len(p) :] and len(ex[0]["labels"]) > len(p)
    # chat: only the assistant's answer is learned
    learned = [t for t, lab in zip(ex[1]["input_ids"], ex[1]["labels"]) if lab != IGNORE]
    assert tok.decode(learned).split() == ["yes", "</s>"]


def test_causal_lm_training_lowers_loss_and_loads_in_peft(cli, tmp_path, llama_base):
    data = write_jsonl(tmp_path / "train.jsonl", causal_rows())
    ev = write_jsonl(
        tmp_path / "eval.jsonl",
        [
            {"text": "the dog sat on the mat and it was very happy"},
            {"prompt": "question what color is the park answer", "completion": "green"},
            {"text": "the cat ran to the park"},
        ],
    )
    r = cli(
        "train",
        "--base",
        llama_base,
        "--method",
        "lora",
        "--task",
        "causal-lm",
        "--data",
        data,
        "--eval",
        ev,
        "--out",
        tmp_path / "adapter",
        "--set",
        "r=4",
        "--set",
        "target_modules=q_proj,v_proj",
        "--max-steps",
        "30",
        "--lr",
        "2e-2",
        "--batch-size",
        "4",
        "--push",
        "acme/tiny",
        "--json",
    )
    assert r.exit_code == 0, r.output
    d = r.json()
    for key in ("out", "method", "trainable_params", "total_params", "metrics", "ref"):
        assert key in d
    assert {"train_loss", "eval_loss"} <= set(d["metrics"]) and d["ref"] == "acme/tiny:1"
    assert d["trainable_params"] == 2 * 2 * 4 * (32 + 32) - 2 * 4 * 16  # q: 4x32+32x4, v: 4x32+16x4, 2 layers
    # the loss on the training data went down against the untrained adapter (B = 0: the base model),
    # and peft loads the directory as a PEFT adapter giving the same losses as our trainer measured
    from peft import PeftModel

    from adapterhub.training.data import causal_lm_examples, collate, read_jsonl
    from adapterhub.training.modeling import load_base_model, load_tokenizer

    tok = load_tokenizer(llama_base)
    train_batch = collate(tok.pad_token_id)(causal_lm_examples(read_jsonl(data), tok, 256))
    eval_batch = collate(tok.pad_token_id)(causal_lm_examples(read_jsonl(ev), tok, 256))
    base = load_base_model(llama_base, "causal-lm")
    peft_model = PeftModel.from_pretrained(load_base_model(llama_base, "causal-lm"), d["out"]).eval()
    with torch.no_grad():
        base_loss, tuned_loss = base(**train_batch).loss.item(), peft_model(**train_batch).loss.item()
        assert abs(peft_model(**eval_batch).loss.item() - d["metrics"]["eval_loss"]) < 1e-4
    assert tuned_loss < 0.7 * base_loss
    manifest = json.load(open(os.path.join(d["out"], "adapterhub.json")))
    assert manifest["base"]["fingerprint"] == d["base_fingerprint"]
    assert manifest["data"][0]["digest"].startswith("sha256:") and manifest["data"][0]["rows"] == 24
    assert manifest["config"]["r"] == 4 and manifest["metrics"]["train_loss"] == d["metrics"]["train_loss"]
    # the loss at each logging step (every 3rd of 30), for the web UI's chart; it went down
    history = manifest["training"]["loss_history"]
    train = [p for p in history if "loss" in p]
    assert [p["step"] for p in train] == list(range(3, 31, 3)) and train[-1]["loss"] < 0.7 * train[0]["loss"]
    evals = [p for p in history if "eval_loss" in p]  # every epoch (6 steps of 4 rows)
    assert [p["step"] for p in evals] == [6, 12, 18, 24, 30] and evals[-1]["eval_loss"] == pytest.approx(
        d["metrics"]["eval_loss"], abs=1e-5
    )
    assert set(os.listdir(d["out"])) == {"adapterhub.json", "adapter_config.json", "adapter_model.safetensors"}
    assert not os.path.exists(d["out"] + ".checkpoints")  # only the delta checkpoint is left


@pytest.mark.slow
def test_seq_cls_on_real_minilm_loads_in_peft_as_trained(cli, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from adapterhub.files.checkpoint import load_adapter_dir
    from adapterhub.plugins import get_plugins
    from adapterhub.training.modeling import attach_loaded, load_base_model, load_tokenizer

    r = cli(
        "train",
        "--base",
        minilm_path(),
        "--method",
        "lora",
        "--task",
        "seq-cls",
        "--data",
        os.path.join(DEMO, "sentiment_train.jsonl"),
        "--eval",
        os.path.join(DEMO, "sentiment_eval.jsonl"),
        "--out",
        tmp_path / "a",
        "--set",
        "target_modules=query,value",
        "--set",
        "lora_alpha=16",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--batch-size",
        "16",
        "--max-length",
        "32",
        "--json",
    )
    assert r.exit_code == 0, r.output
    d = r.json()
    assert d["metrics"]["eval_accuracy"] >= 0.9
    manifest = json.load(open(tmp_path / "a" / "adapterhub.json"))
    assert manifest["labels"] == ["negative", "positive"]
    tok = load_tokenizer(minilm_path())
    batch = tok(["What a wonderful trip!", "The hotel was dreadful."], return_tensors="pt", padding=True)
    ours = load_base_model(minilm_path(), "seq-cls", manifest["labels"])
    attach_loaded(ours, load_adapter_dir(str(tmp_path / "a"), get_plugins()))
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2, local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
    with torch.no_grad():
        a, b = ours(**batch).logits, peft_model(**batch).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert a.argmax(-1).tolist() == [1, 0]


def test_resume_skips_a_checkpoint_killed_while_saving(tmp_path):
    """A kill during the Trainer's save leaves the newest checkpoint without (or with a truncated)
    trainer_state.json: resuming must take the newest complete one."""
    from adapterhub.training.train import CHECKPOINT_TENSORS, resume_point

    ckpt = tmp_path / "a.checkpoints"
    assert resume_point(str(ckpt)) is None
    for step, state in ((5, "{}"), (10, "{}"), (15, None), (20, '{"global_st')):
        d = ckpt / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / CHECKPOINT_TENSORS).write_bytes(b"x")
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    (ckpt / "checkpoint-30").mkdir()  # tensors not written yet
    (ckpt / "checkpoint-30" / "trainer_state.json").write_text("{}")
    assert resume_point(str(ckpt)) == str(ckpt / "checkpoint-10")


def test_loss_history_is_thinned_to_a_bounded_curve_keeping_the_last_step():
    from adapterhub.training.trainer import loss_history

    log = [{"step": i, "loss": 10.0 / i, "learning_rate": 1e-3} for i in range(1, 2502)]
    log += [{"step": 2501, "eval_loss": 1.0}, {"step": 2501, "train_loss": 0.1}, {"step": 7, "loss": float("nan")}]
    points = loss_history(log, limit=1000)
    assert points[-1] == {"step": 2501, "eval_loss": 1.0}
    points = points[:-1]
    assert 500 < len(points) <= 1000 and points[0] == {"step": 1, "loss": 10.0} and points[-1]["step"] == 2501
    steps = [p["step"] for p in points]
    assert steps == sorted(set(steps)) and max(b - a for a, b in zip(steps, steps[1:])) <= 3
    assert loss_history(log[:5]) == [{"step": i, "loss": round(10.0 / i, 6)} for i in range(1, 6)]


@pytest.mark.slow
def test_resume_after_interruption(tmp_path, llama_base, home):
    data = write_jsonl(tmp_path / "train.jsonl", causal_rows(40))
    out = tmp_path / "adapter"
    args = [
        sys.executable,
        "-m",
        "adapterhub",
        "train",
        "--base",
        llama_base,
        "--method",
        "lora",
        "--task",
        "causal-lm",
        "--data",
        data,
        "--out",
        str(out),
        "--max-steps",
        "400",
        "--eval-steps",
        "5",
        "--batch-size",
        "2",
        "--set",
        "target_modules=q_proj,v_proj",
        "--json",
    ]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = str(out) + ".checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        os.path.isdir(ckpt)
        and any(os.path.isfile(os.path.join(ckpt, c, "adapter_state.safetensors")) for c in os.listdir(ckpt))
    ):
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not out.exists()  # nothing half-written at OUT
    steps = sorted(int(c.split("-")[1]) for c in os.listdir(ckpt) if c.startswith("checkpoint-"))
    assert steps and steps[-1] < 400
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["metrics"]["resumed_from_step"] >= steps[0] and d["metrics"]["steps"] == 400
    # the checkpoints held only adapter tensors, never the base
    assert not os.path.exists(ckpt)


def test_init_from_records_trained_from(cli, tmp_path, llama_base):
    data = write_jsonl(tmp_path / "train.jsonl", causal_rows(8))
    common = [
        "--base",
        llama_base,
        "--method",
        "lora",
        "--task",
        "causal-lm",
        "--data",
        data,
        "--max-steps",
        "2",
        "--set",
        "target_modules=q_proj,v_proj",
        "--batch-size",
        "4",
    ]
    assert cli("train", *common, "--out", tmp_path / "a", "--push", "acme/first").exit_code == 0
    r = cli("train", *common, "--out", tmp_path / "b", "--push", "acme/second", "--init-from", "acme/first", "--json")
    assert r.exit_code == 0, r.output
    show = cli("show", "acme/second", "--json").json()
    assert [(p["ref"], p["relation"]) for p in show["parents"]] == [("acme/first:1", "trained_from")]


def test_methods_listing(cli):
    r = cli("methods", "--json")
    rows = {m["name"]: m for m in r.json()}
    assert {"lora", "dora"} <= set(rows)
    lora = rows["lora"]
    assert lora["peft_type"] == "LORA" and "merge" in lora["capabilities"]
    fields = {f["name"]: f for f in lora["fields"]}
    assert fields["r"]["default"] == 8 and fields["r"]["help"]
    assert "lora" in cli("methods").stdout


def test_bad_input(cli, tmp_path, llama_base):
    good = write_jsonl(tmp_path / "good.jsonl", causal_rows(4))
    base = ["--base", llama_base, "--task", "causal-lm", "--out", tmp_path / "o", "--max-steps", "1"]
    assert_clean_error(cli("train", *base, "--method", "nope", "--data", good), "unknown method 'nope'", "lora")
    assert_clean_error(
        cli("train", *base, "--method", "lora", "--data", good, "--set", "rank=4"),
        "unknown lora option(s) rank",
        "lora_alpha",
    )
    assert_clean_error(
        cli("train", *base, "--method", "lora", "--data", good, "--set", "target_modules=nothing_here"),
        "matched no module",
        "q_proj",
    )
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello"}, "{not json", {"text": "world"}])
    assert_clean_error(cli("train", *base, "--method", "lora", "--data", bad), "bad.jsonl:2")
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    assert_clean_error(cli("train", *base, "--method", "lora", "--data", empty), "empty")
    assert_clean_error(
        cli(
            "train",
            "--base",
            tmp_path,
            "--task",
            "causal-lm",
            "--out",
            tmp_path / "o",
            "--method",
            "lora",
            "--data",
            good,
        ),
        "not a transformers model",
    )
    cls = write_jsonl(tmp_path / "cls.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    cls_eval = write_jsonl(tmp_path / "cls_eval.jsonl", [{"text": "happy", "label": "meh"}])
    assert_clean_error(
        cli(
            "train",
            "--base",
            llama_base,
            "--task",
            "seq-cls",
            "--out",
            tmp_path / "o",
            "--method",
            "lora",
            "--data",
            cls,
            "--eval",
            cls_eval,
        ),
        "label 'meh'",
        "not in the label map",
    )
    assert_clean_error(
        cli("train", *base, "--method", "lora", "--data", good, "--mixed-precision", "fp16")
        if not torch.cuda.is_available()
        else cli("train", "--help"),
        "CUDA",
    )
    assert not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    assert_clean_error(
        cli(
            "train",
            "--base",
            llama_base,
            "--task",
            "causal-lm",
            "--out",
            tmp_path / "full",
            "--method",
            "lora",
            "--data",
            good,
        ),
        "not empty",
    )
