"""``adapterhub eval``, ``bench-latency`` and ``compare`` on real (tiny) transformers models.

The causal-lm base is a tiny Llama with MiniLM's tokenizer (so it is a loadable model directory with a
tokenizer and no download); seq-cls uses the real MiniLM. Adapters are made with the Method API and
saved in the layout ``adapterhub train`` writes.
"""

import dataclasses
import json
import math
import os

import pytest
import torch
from conftest import assert_clean_error

# -- builders (also used by test_gates.py) ------------------------------------------------------


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((json.dumps(r) if not isinstance(r, str) else r) + "\n")
    return str(path)


def tiny_causal_base(path, seed=0):
    """A tiny Llama (hidden 32, 2 layers) with MiniLM's WordPiece tokenizer saved next to it."""
    from tinymodels import minilm_path
    from transformers import LlamaConfig, LlamaForCausalLM

    from adapterhub.training.modeling import load_tokenizer

    if os.path.isdir(path):
        return str(path)
    tok = load_tokenizer(minilm_path())
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def make_adapter(
    base_dir,
    out,
    task,
    *,
    labels=None,
    rows=None,
    steps=0,
    lr=1e-2,
    method="lora",
    config=None,
    manifest_extra=None,
    seed=0,
    max_length=64,
):
    """Attach ``method`` to the base, optionally train ``steps`` epochs on ``rows`` (plain torch loop),
    and save an adapter directory like ``adapterhub train`` does. Returns ``out``."""
    from adapterhub import api
    from adapterhub.files.checkpoint import save_adapter
    from adapterhub.plugins import get_plugins
    from adapterhub.training.data import IGNORE
    from adapterhub.training.evaluate import load_base
    from adapterhub.training.modeling import load_tokenizer

    m = get_plugins().get("methods", method)
    values = dict(config or {})
    if "task_type" in {f.name for f in dataclasses.fields(m.config_class)}:
        values.setdefault("task_type", "SEQ_CLS" if task == "seq-cls" else "CAUSAL_LM")
    model = load_base(base_dir, task, labels)
    torch.manual_seed(seed)
    effective = m.attach(model, m.make_config(values)) or m.make_config(values)
    tok = load_tokenizer(base_dir)
    if rows and steps:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            order = torch.randperm(len(rows), generator=g).tolist()
            for i in range(0, len(order), 16):
                batch = [rows[j] for j in order[i : i + 16]]
                enc = tok(
                    [r["text"] for r in batch],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                if task == "seq-cls":
                    y = torch.tensor([labels.index(str(r["label"])) for r in batch])
                else:
                    y = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE)
                loss = model(**enc, labels=y).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
        model.eval()
    fp = api.fingerprint(base_dir)
    manifest = {
        "method": m.name,
        "config": json.loads(json.dumps(dataclasses.asdict(effective), default=str)),
        "base": {"fingerprint": fp.digest, "name": os.path.basename(base_dir)},
        "task": task,
        "data": [],
        "metrics": {},
        "training": {"max_length": max_length},
    }
    if labels:
        manifest["labels"] = labels
    manifest.update(manifest_extra or {})
    return save_adapter(str(out), manifest, m.state_dict(model), peft_config=m.to_peft_config(effective))


def push(home, src, name, base):
    from adapterhub import api

    return api.push(api.open_registry(str(home)), src, name, base=base).ref


TEXTS = [
    "the cat sat on the mat",
    "the dog sat on the rug",
    "a cat and a dog sat together",
    "the bird sat on the branch",
    "the cat slept on the mat",
    "the dog slept on the rug",
]


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    """A tiny causal base, an adapter trained on TEXTS, and eval/probe files."""
    d = tmp_path_factory.mktemp("causal")
    base = tiny_causal_base(d / "base")
    rows = [{"text": t} for t in TEXTS]
    adapter = make_adapter(base, d / "adapter", "causal-lm", rows=rows, steps=25, config={"r": 4, "lora_alpha": 8})
    untrained = make_adapter(base, d / "adapter2", "causal-lm", config={"r": 8, "init_lora_weights": False})
    return {
        "base": base,
        "adapter": adapter,
        "untrained": untrained,
        "eval": write_jsonl(
            d / "eval.jsonl", [{"prompt": t.rsplit(" ", 1)[0], "completion": " " + t.rsplit(" ", 1)[1]} for t in TEXTS]
        ),
        "probe": write_jsonl(
            d / "probe.jsonl",
            [{"text": "stocks fell sharply on monday"}, {"text": "the committee approved the budget"}],
        ),
        "dir": d,
    }


# -- metrics ------------------------------------------------------------------------------------


def test_classification_metrics_known_numbers():
    from adapterhub.training.evaluate import classification_metrics

    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    # a: p=1 r=2/3 f1=0.8; b: p=1/2 r=1/2 f1=0.5; c: p=1/2 r=1 f1=2/3
    assert m["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3, abs=1e-6),
        "f1": pytest.approx(0.8, abs=1e-6),
        "support": 3,
    }
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)


# -- causal-lm eval -----------------------------------------------------------------------------


def test_eval_causal_lm(cli, home, causal):
    ref = push(home, causal["adapter"], "acme/lm", causal["base"])
    r = cli(
        "eval",
        ref,
        "--base",
        causal["base"],
        "--data",
        causal["eval"],
        "--probe",
        causal["probe"],
        "--batch-size",
        "4",
        "--json",
    )
    assert r.exit_code == 0, r.output
    d = r.json()
    assert d["task"] == "causal-lm" and d["rows"] == len(TEXTS) and d["stored"]
    a, b = d["adapter"], d["base"]
    assert a["loss"] < b["loss"], (a, b)  # trained on these sentences
    assert d["gain"]["loss"] == pytest.approx(a["loss"] - b["loss"], abs=1e-5) and d["gain"]["loss"] < 0
    assert a["perplexity"] == pytest.approx(math.exp(a["loss"]), rel=1e-5)
    assert a["tokens"] == len(TEXTS)  # one completion word-piece per row (the BERT tokenizer has no eos)
    p = d["probe"]
    assert p["forgetting"] == pytest.approx(p["adapter_loss"] - p["base_loss"], abs=1e-5)

    # the base loss matches transformers' own loss (one row at a time, token-weighted)
    from transformers import AutoModelForCausalLM

    from adapterhub.training import data as D
    from adapterhub.training.modeling import load_tokenizer

    tok = load_tokenizer(causal["base"])
    model = AutoModelForCausalLM.from_pretrained(causal["base"]).eval()
    total = n = 0
    with torch.no_grad():
        for ex in D.causal_lm_examples(D.read_jsonl(causal["eval"]), tok, 64):
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor([ex["labels"]])
            k = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * k
            n += k
    assert b["loss"] == pytest.approx(total / n, rel=1e-4)

    info = cli("show", ref, "--json").json()
    (ev,) = info["evaluations"]
    assert ev["data_digest"] == d["data_digest"]
    assert ev["metrics"]["loss"] == a["loss"] and ev["metrics"]["base_loss"] == b["loss"]
    assert ev["details"]["task"] == "causal-lm" and ev["details"]["rows"] == len(TEXTS)
    assert ev["details"]["base_fingerprint"] == info["base_fingerprint"]
    assert ev["details"]["probe_digest"].startswith("sha256:") and ev["details"]["primary_metric"] == "loss"
    text = cli("show", ref)
    assert "eval:" in text.stdout and "loss=" in text.stdout
    t = cli("eval", ref, "--base", causal["base"], "--data", causal["eval"], "--no-store")
    assert t.exit_code == 0 and "gain" in t.stdout and "not stored" in t.stdout
    assert len(cli("show", ref, "--json").json()["evaluations"]) == 1


def test_bench_latency(cli, home, causal):
    ref = push(home, causal["untrained"], "acme/lat", causal["base"])
    r = cli(
        "bench-latency",
        ref,
        "--base",
        causal["base"],
        "--runs",
        "3",
        "--warmup",
        "1",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--json",
    )
    assert r.exit_code == 0, r.output
    d = r.json()
    for k in ("base", "adapter", "merged"):
        assert d[k].get("p50_ms", 0) > 0 and d[k]["p95_ms"] >= d[k]["p50_ms"] and d[k]["tokens_per_s"] > 0
    assert d["merged"]["status"] == "ok"
    assert d["merged"]["max_abs_diff_vs_adapter"] < 1e-4  # merged model == adapter attached (non-zero B)
    assert d["seq_len"] == 16 and d["batch_size"] == 2 and d["device"] == "cpu"
    text = cli("bench-latency", ref, "--base", causal["base"], "--runs", "2", "--warmup", "0", "--seq-len", "8")
    assert text.exit_code == 0 and "merged" in text.stdout and "p50 ms" in text.stdout


def test_bench_latency_method_that_cannot_merge(cli, home, causal):
    src = make_adapter(
        causal["base"], causal["dir"] / "bottleneck", "causal-lm", method="bottleneck", config={"bottleneck_size": 4}
    )
    ref = push(home, src, "acme/bn", causal["base"])
    d = cli(
        "bench-latency", ref, "--base", causal["base"], "--runs", "2", "--warmup", "0", "--seq-len", "8", "--json"
    ).json()
    assert d["merged"]["status"] == "n/a" and "cannot merge" in d["merged"]["reason"]
    assert d["adapter"]["p50_ms"] > 0


# -- seq-cls eval (real MiniLM) -----------------------------------------------------------------


def test_eval_seq_cls_structure_and_fixed_base_head(cli, home, tmp_path):
    from tinymodels import minilm_path

    base = minilm_path()
    labels = ["neg", "pos"]
    src = make_adapter(base, tmp_path / "a", "seq-cls", labels=labels, config={"r": 4, "init_lora_weights": False})
    ref = push(home, src, "acme/clf", base)
    ev = write_jsonl(
        tmp_path / "eval.jsonl",
        [
            {"text": f"review {i} was {'great' if i % 2 else 'awful'}", "label": "pos" if i % 2 else "neg"}
            for i in range(12)
        ],
    )
    probe = write_jsonl(
        tmp_path / "probe.jsonl", [{"text": "the weather is mild today"}, {"text": "parliament met on tuesday"}]
    )
    r1 = cli("eval", ref, "--base", base, "--data", ev, "--probe", probe, "--json").json()
    r2 = cli("eval", ref, "--base", base, "--data", ev, "--json", "--no-store").json()
    assert r1["base"] == r2["base"] and r1["adapter"] == r2["adapter"]  # the base head is seeded
    assert "seed 0" in r1["base_head"]
    assert set(r1["adapter"]["per_class"]) <= {"neg", "pos"}
    assert r1["gain"]["accuracy"] == pytest.approx(r1["adapter"]["accuracy"] - r1["base"]["accuracy"], abs=1e-6)
    p = r1["probe"]
    assert p["rows"] == 2 and 0 <= p["agreement"] <= 1 and -1 <= p["hidden_cosine"] <= 1
    assert p["hidden_cosine"] < 0.9999  # random non-zero LoRA moves the encoder
    assert p["adapter_accuracy"] is None  # unlabelled probe
    (stored,) = cli("show", ref, "--json").json()["evaluations"]
    assert stored["metrics"]["accuracy"] == r1["adapter"]["accuracy"]
    assert stored["details"]["labels"] == labels and stored["details"]["primary_metric"] == "accuracy"
    labelled = write_jsonl(
        tmp_path / "probe2.jsonl", [{"text": "fine", "label": "pos"}, {"text": "bad", "label": "neg"}]
    )
    text = cli("eval", ref, "--base", base, "--data", ev, "--probe", labelled, "--no-store")
    assert "base head: none in the base" in text.stdout and "class pos" in text.stdout
    assert "probe (2 rows): agreement with base" in text.stdout and "accuracy" in text.stdout.split("probe")[1]


# -- compare ------------------------------------------------------------------------------------


def test_compare(cli, home, causal):
    reg_ref_a = push(home, causal["adapter"], "acme/cmp", causal["base"])
    reg_ref_b = push(home, causal["untrained"], "acme/cmp", causal["base"])
    for ref in (reg_ref_a, reg_ref_b):
        assert cli("eval", ref, "--base", causal["base"], "--data", causal["eval"], "--json").exit_code == 0
    d = cli("compare", reg_ref_a, reg_ref_b, "--json").json()
    assert (d["a"], d["b"]) == ("acme/cmp:1", "acme/cmp:2")
    cfg = {c["key"]: c for c in d["config"]}
    assert (cfg["r"]["a"], cfg["r"]["b"], cfg["r"]["same"]) == (4, 8, False)
    assert cfg["lora_dropout"]["same"]
    (e,) = d["evaluations"]
    assert e["shared"]
    loss = {m["key"]: m for m in e["metrics"]}["loss"]
    assert loss["delta"] == pytest.approx(loss["b"] - loss["a"], abs=1e-6)
    text = cli("compare", reg_ref_a, reg_ref_b)
    assert text.exit_code == 0 and "CONFIG" in text.stdout and "\nr  " in text.stdout and "EVAL sha256:" in text.stdout
    assert_clean_error(cli("compare", reg_ref_a, "acme/cmp:9"), "no version 9")


# -- bad input ----------------------------------------------------------------------------------


def test_eval_bad_input(cli, home, causal, tmp_path):
    ref = push(home, causal["untrained"], "acme/bad", causal["base"])
    base, ev = causal["base"], causal["eval"]
    assert_clean_error(cli("eval", "acme/nope", "--base", base, "--data", ev), "no adapter named 'acme/nope'")
    assert_clean_error(cli("eval", "acme/bad:7", "--base", base, "--data", ev), "no version 7")
    assert_clean_error(cli("eval", ref, "--base", base, "--data", tmp_path / "missing.jsonl"), "does not exist")
    assert_clean_error(cli("eval", ref, "--base", tmp_path / "nobase", "--data", ev), "does not exist")
    assert_clean_error(cli("eval", ref, "--data", ev), "--base", code=2)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, "{not json"])
    assert_clean_error(cli("eval", ref, "--base", base, "--data", bad), "bad.jsonl:2", "invalid JSON")
    other = tiny_causal_base(tmp_path / "other-base", seed=1)
    r = cli("eval", ref, "--base", other, "--data", ev)
    assert_clean_error(r, "base mismatch", "sha256:")
    assert_clean_error(cli("bench-latency", ref, "--base", other), "base mismatch")
    assert_clean_error(cli("eval", ref, "--base", base, "--data", ev, "--batch-size", "0"), "--batch-size")
    ok = cli("eval", ref, "--base", other, "--data", ev, "--allow-base-mismatch", "--json")
    assert ok.exit_code == 0 and ok.json()["base_mismatch"] and not ok.json()["stored"]
    assert cli("show", ref, "--json").json()["evaluations"] == []


def test_eval_seq_cls_label_not_in_map(cli, home, tmp_path):
    from tinymodels import minilm_path

    base = minilm_path()
    src = make_adapter(base, tmp_path / "a", "seq-cls", labels=["neg", "pos"], config={"r": 2})
    ref = push(home, src, "acme/lbl", base)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"text": "ok", "label": "pos"}, {"text": "hm", "label": "meh"}])
    assert_clean_error(cli("eval", ref, "--base", base, "--data", ev), "e.jsonl:2", "'meh'")
