"""`adapterhub train` refuses bad input up front: one line, non-zero exit, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import assert_clean_error
from test_train import llama_base, write_jsonl  # noqa: E402,F401  (a fixture and a helper)
from tinymodels import minilm_path


def text_rows(n=8):
    return [{"text": f"the cat sat on the mat {i} and the dog ran to the park"} for i in range(n)]


def common(base, data):
    return [
        "--base",
        base,
        "--method",
        "lora",
        "--task",
        "causal-lm",
        "--data",
        data,
        "--set",
        "target_modules=q_proj,v_proj",
        "--batch-size",
        "2",
    ]


def nothing_left(out):
    return not os.path.exists(out) and not os.path.exists(str(out) + ".checkpoints")


def test_out_that_is_or_contains_the_base_is_refused_even_with_force(cli, tmp_path, llama_base):
    base = tmp_path / "parent" / "b"
    shutil.copytree(llama_base, base)
    data = write_jsonl(tmp_path / "t.jsonl", text_rows())
    before = sorted(os.listdir(base))
    for out in (base, tmp_path / "parent"):
        r = cli("train", *common(base, data), "--max-steps", "1", "--out", out, "--force")
        assert_clean_error(r, "base", "even with --force")
    assert sorted(os.listdir(base)) == before and os.path.isfile(base / "model.safetensors")


@pytest.mark.parametrize(
    "opt",
    [
        ("--epochs", "0"),
        ("--epochs", "-5"),
        ("--batch-size", "0"),
        ("--batch-size", "-2"),
        ("--grad-accum", "0"),
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--eval-steps", "-1"),
        ("--early-stopping", "-1"),
        ("--max-length", "0"),
        ("--max-steps", "-7"),
    ],
)
def test_bad_numbers_are_refused_before_anything_is_written(cli, tmp_path, llama_base, opt):
    data = write_jsonl(tmp_path / "t.jsonl", text_rows())
    out = tmp_path / "o"
    extra = ["--max-steps", "1"] if opt[0] not in ("--epochs", "--max-steps") else []
    ev = write_jsonl(tmp_path / "e.jsonl", [{"text": f"hello world {i}"} for i in range(4)])
    r = cli("train", *common(llama_base, data), *extra, "--eval", ev, "--out", out, *opt)
    assert_clean_error(r, opt[0])
    assert nothing_left(out)


def test_demo_refuses_negative_epochs(cli, home):
    r = cli("demo", "--epochs", "-1")
    assert_clean_error(r, "--epochs")
    assert cli("list", "--json").json() == []


def test_max_length_beyond_the_models_positions_is_clamped(cli, tmp_path):
    long = " ".join(f"w{i}" for i in range(700))
    data = write_jsonl(tmp_path / "long.jsonl", [{"text": long, "label": "a"}, {"text": "short", "label": "b"}] * 2)
    out = tmp_path / "o"
    r = cli(
        "train",
        "--base",
        minilm_path(),
        "--method",
        "lora",
        "--task",
        "seq-cls",
        "--data",
        data,
        "--out",
        out,
        "--max-length",
        "2000",
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--set",
        "target_modules=query,value",
    )
    assert r.exit_code == 0, r.output
    assert "using 512" in r.stderr
    manifest = json.loads((out / "adapterhub.json").read_text())
    assert manifest["training"]["max_length"] == 512
    assert not os.path.exists(str(out) + ".checkpoints")


def test_config_that_does_not_match_the_weights_is_one_line(cli, tmp_path, llama_base):
    base = tmp_path / "bad-shape"
    shutil.copytree(llama_base, base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["intermediate_size"] += 32
    (base / "config.json").write_text(json.dumps(cfg))
    data = write_jsonl(tmp_path / "t.jsonl", text_rows())
    out = tmp_path / "o"
    r = cli("train", *common(base, data), "--max-steps", "1", "--out", out)
    assert_clean_error(r, "config.json does not match its weights", "shape")
    assert nothing_left(out)


def test_seq_cls_with_one_label_is_refused(cli, tmp_path, llama_base):
    data = write_jsonl(tmp_path / "one.jsonl", [{"text": f"a b {i}", "label": "x"} for i in range(4)])
    out = tmp_path / "o"
    r = cli(
        "train",
        "--base",
        llama_base,
        "--method",
        "lora",
        "--task",
        "seq-cls",
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        "1",
        "--batch-size",
        "2",
    )
    assert_clean_error(r, "at least two distinct labels")
    assert nothing_left(out)


def _interrupt(args, ckpt):
    """Run ``adapterhub train ARGS`` in a subprocess and SIGKILL it once a checkpoint is complete."""
    p = subprocess.Popen(
        [sys.executable, "-m", "adapterhub", "train", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    from adapterhub.training.train import resume_point

    while time.time() < deadline and resume_point(ckpt) is None and p.poll() is None:
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert resume_point(ckpt) is not None


def test_resume_refuses_checkpoints_of_another_run(cli, tmp_path, llama_base):
    data = write_jsonl(tmp_path / "t.jsonl", text_rows(40))
    out = tmp_path / "o"
    ckpt = str(out) + ".checkpoints"
    args = [*common(llama_base, data), "--max-steps", "400", "--eval-steps", "2", "--out", out]
    _interrupt(args, ckpt)
    other = tmp_path / "other-base"
    shutil.copytree(llama_base, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5 if cfg.get("rms_norm_eps") != 1e-5 else 1e-6
    (other / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    w = {k: v + 0.01 for k, v in load_file(str(other / "model.safetensors")).items()}
    save_file(w, str(other / "model.safetensors"), metadata={"format": "pt"})
    changed = [a if a != llama_base else str(other) for a in args]
    changed[changed.index("400")] = "6"
    for bad in (changed, [*args[:-2], "--set", "r=4", "--out", out]):
        r = cli("train", *bad)
        assert_clean_error(r, "interrupted run", "--no-resume")
        assert not out.exists() and os.path.isdir(ckpt)
    r = cli("train", *changed, "--no-resume", "--json")
    assert r.exit_code == 0, r.output
    m = r.json()["metrics"]
    assert "resumed_from_step" not in m and m["steps"] == 6
    assert not os.path.exists(ckpt)


def test_init_from_refuses_changed_shape_and_task_and_applies_dropout(cli, tmp_path, llama_base):
    data = write_jsonl(tmp_path / "t.jsonl", text_rows())
    args = [*common(llama_base, data), "--max-steps", "1"]
    assert cli("train", *args, "--out", tmp_path / "a", "--push", "acme/first").exit_code == 0
    out = tmp_path / "b"
    r = cli("train", *args, "--out", out, "--init-from", "acme/first", "--set", "r=16", "--set", "lora_dropout=0.5")
    assert_clean_error(r, "r=16", "--init-from")
    assert nothing_left(out)
    cls = write_jsonl(tmp_path / "cls.jsonl", [{"text": f"a b {i}", "label": "xy"[i % 2]} for i in range(4)])
    r = cli(
        "train",
        "--base",
        llama_base,
        "--method",
        "lora",
        "--task",
        "seq-cls",
        "--data",
        cls,
        "--out",
        out,
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--init-from",
        "acme/first",
    )
    assert_clean_error(r, "causal-lm", "--init-from")
    assert nothing_left(out)
    r = cli("train", *args, "--out", out, "--init-from", "acme/first", "--set", "lora_dropout=0.5")
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "adapterhub.json").read_text())["config"]
    assert cfg["lora_dropout"] == 0.5 and cfg["r"] == 8


def test_push_to_an_unreachable_registry_fails_before_training(cli, tmp_path, llama_base, monkeypatch):
    data = write_jsonl(tmp_path / "t.jsonl", text_rows())
    store = tmp_path / "store"
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_DB", "postgresql+psycopg://u:p@127.0.0.1:1/nothing?connect_timeout=2")
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_STORE", f"file://{store}")
    out = tmp_path / "o"
    r = cli("train", *common(llama_base, data), "--max-steps", "1", "--out", out, "--push", "acme/x")
    assert_clean_error(r)
    assert nothing_left(out)
    assert not any(p.is_file() for p in store.rglob("*")) if store.exists() else True
