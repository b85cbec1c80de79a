"""Generation metrics (``register_metrics``) and ``adapterhub eval --generate`` on a tiny Llama whose
adapter was trained to answer known prompts."""

import math

import adapterhub_file
import pytest

import adapterhub
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

    assert m["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(["the cat is on the mat", "dog"], [["the cat sat on the mat", "a dog"]]).score, abs=1e-5
    )
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
    with pytest.raises(PluginError, match="'rouge_l' is registered by both plugin '(file|mine)' and plugin '(fi|mi)"):
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


# -- eval --generate on a tiny Llama --------------------------------------------------------------

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402
from conftest import assert_clean_error  # noqa: E402
from test_evaluate import push, write_jsonl  # noqa: E402

QA = [("what color sky", "blue"), ("the cat sat on the", "mat"), ("the dog ran to the", "park"), ("hello", "world")]


def train_qa_adapter(base_dir, out, rows, steps=30, lr=3e-2):
    """LoRA trained on prompt/completion ``rows`` exactly as ``train`` tokenizes them (completion + eos, loss on
    the completion), saved like ``train`` saves it: greedy decoding then writes each completion and stops."""
    from adapterhub import api
    from adapterhub.files.checkpoint import save_adapter
    from adapterhub.plugins import get_plugins
    from adapterhub.training import data as D
    from adapterhub.training.evaluate import load_base
    from adapterhub.training.modeling import load_tokenizer

    m = get_plugins().get("methods", "lora")
    cfg = m.make_config({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"})
    model = load_base(base_dir, "causal-lm", None)
    torch.manual_seed(0)
    effective = m.attach(model, cfg) or cfg
    path = write_jsonl(os.path.join(os.path.dirname(str(out)), "qa_train.jsonl"), rows)
    batch = D.collate(0)(D.causal_lm_examples(D.read_jsonl(path), load_tokenizer(base_dir), 64))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    manifest = {
        "method": "lora",
        "config": json.loads(json.dumps(dataclasses.asdict(effective), default=str)),
        "base": {"fingerprint": api.fingerprint(base_dir).digest, "name": "tiny-llama"},
        "task": "causal-lm",
        "data": [],
        "metrics": {},
        "training": {"max_length": 64},
    }
    return save_adapter(str(out), manifest, m.state_dict(model), peft_config=m.to_peft_config(effective))


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    from tinymodels import save_tiny_llama_base

    d = tmp_path_factory.mktemp("qa")
    base = save_tiny_llama_base(d / "base")
    adapter = train_qa_adapter(base, d / "adapter", [{"prompt": p, "completion": " " + c} for p, c in QA])
    # the last reference says more than the adapter learned: exact match 0, ROUGE-L F = 2PR/(P+R) with P = 1, R = 1/3
    refs = [c for _, c in QA[:2]] + ["park is good", QA[3][1]]
    rows = [{"prompt": p, "completion": r} for (p, _), r in zip(QA, refs)]
    return {"base": base, "adapter": adapter, "eval": write_jsonl(d / "eval.jsonl", rows), "dir": d}


def _greedy_one_by_one(base_dir, prompts, max_new_tokens):
    """transformers' own greedy decoding, one prompt at a time (no padding): what the batched, left-padded
    generation must reproduce."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, return_tensors="pt")["input_ids"]
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )[0, ids.shape[1] :].tolist()
            gen = gen[: gen.index(tok.eos_token_id)] if tok.eos_token_id in gen else gen
            out.append(tok.decode(gen, skip_special_tokens=True).strip())
    return out


def _version_page(home, ref):
    """The web UI's version page of ``ref`` as the server renders it."""
    from adapterhub.api import local_registry
    from adapterhub.registry.tokens import Principal
    from adapterhub.server.web import templates, version_context

    reg = local_registry(str(home))
    try:
        who = Principal("x", "read")
        return (
            templates()
            .get_template("version.html")
            .render(who=who, csrf="c", path="/", **version_context(reg, who, reg.show(ref)))
        )
    finally:
        reg.close()


def test_eval_generate_scores_known_outputs(cli, home, qa):
    import sacrebleu

    ref = push(home, qa["adapter"], "acme/qa", qa["base"])
    r = cli(
        "eval",
        ref,
        "--base",
        qa["base"],
        "--data",
        qa["eval"],
        "--generate",
        "--max-new-tokens",
        "6",
        "--samples",
        "10",
        "--batch-size",
        "3",
        "--json",
    )
    assert r.exit_code == 0, r.output
    d = r.json()
    refs = ["blue", "mat", "park is good", "world"]
    assert [s["reference"] for s in d["samples"]] == refs and [s["line"] for s in d["samples"]] == [1, 2, 3, 4]
    assert [s["adapter"] for s in d["samples"]] == ["blue", "mat", "park", "world"]  # what it was trained to write
    assert d["adapter"]["exact_match"] == 0.75
    assert d["adapter"]["rouge_l"] == pytest.approx((3 + 0.5) / 4, abs=1e-6)  # row 3: P = 1, R = 1/3 -> F = 1/2
    assert d["adapter"]["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(["blue", "mat", "park", "world"], [refs]).score, abs=1e-5
    )
    base_out = _greedy_one_by_one(qa["base"], [p for p, _ in QA], 6)
    assert [s["base"] for s in d["samples"]] == base_out  # batched + left padded == one by one
    assert d["base"] == score(resolve(_builtin(), None), base_out, refs)
    assert d["gain"] == {k: pytest.approx(d["adapter"][k] - d["base"][k], abs=1e-6) for k in DEFAULT_METRICS}
    assert d["stored"] and d["primary_metric"] == "rouge_l" and d["generation"]["max_new_tokens"] == 6

    info = cli("show", ref, "--json").json()
    (ev,) = info["evaluations"]
    assert ev["metrics"]["rouge_l"] == d["adapter"]["rouge_l"] and ev["metrics"]["base_chrf"] == d["base"]["chrf"]
    assert ev["details"]["kind"] == "generation" and ev["details"]["primary_metric"] == "rouge_l"
    assert ev["details"]["samples"] == d["samples"]
    text = cli("show", ref).stdout
    assert "(4 rows, generation) exact_match=0.75" in text and "samples (4 of 4 rows):" in text, text
    assert "line 3: the dog ran to the" in text and "reference: park is good" in text and "adapter:   park" in text
    html = _version_page(home, ref)
    table = html[html.index('<table id="generation-samples">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr><td>") == 4 and '<td class="small">park is good</td><td class="small">' in table
    assert "rouge_l" in html[html.index('<table id="evaluations">') :]  # the web UI's key metric

    t = cli(
        "eval",
        ref,
        "--base",
        qa["base"],
        "--data",
        qa["eval"],
        "--generate",
        "--max-new-tokens",
        "6",
        "--metric",
        "exact_match",
        "--samples",
        "1",
        "--no-store",
        "--max-length",
        "9",
    )
    assert t.exit_code == 0, t.output
    assert "exact_match" in t.stdout and "rouge_l" not in t.stdout and "samples (1 of 4 rows)" in t.stdout
    assert "2 prompts cut to their last 3 tokens" in t.stdout  # 9 - 6 new tokens; prompts of 3, 5, 5, 1 words
    assert "primary metric (for the promotion gate): exact_match" in t.stdout and "not stored" in t.stdout
    assert len(cli("show", ref, "--json").json()["evaluations"]) == 1


def test_generation_rows_formats(tmp_path):
    from tinymodels import word_tokenizer

    from adapterhub.training.data import read_jsonl
    from adapterhub.training.generation import generation_rows

    tok = word_tokenizer()
    chat = [{"role": "user", "content": "what color sky"}, {"role": "assistant", "content": " blue "}]
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [{"prompt": "hello", "completion": " world"}, {"prompt": "hi", "reference": "there"}, {"messages": chat}],
    )
    rows = generation_rows(read_jsonl(path), tok)
    assert [(r["line"], r["reference"]) for r in rows] == [(1, "world"), (2, "there"), (3, "blue")]
    assert rows[2]["prompt"] == tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert rows[2]["prompt"] == "<user> what color sky </s> <assistant> "


def test_gate_compares_generation_evaluations_on_their_primary_metric(cli, home, qa):
    untrained = train_qa_adapter(qa["base"], qa["dir"] / "untrained", [{"prompt": "x", "completion": " y"}], steps=0)
    push(home, untrained, "acme/qa", qa["base"])  # LoRA B = 0: writes what the base writes
    push(home, qa["adapter"], "acme/qa", qa["base"])
    gen = ("--base", qa["base"], "--data", qa["eval"], "--generate", "--max-new-tokens", "6", "--samples", "0")
    for v in ("1", "2"):
        assert cli("eval", f"acme/qa:{v}", *gen).exit_code == 0
    # a later loss evaluation of the same file (as `eval` without --generate stores it) is kept apart: it
    # hides neither kind from the gate
    from adapterhub import api

    reg = api.open_registry(str(home))
    digest = cli("show", "acme/qa:1", "--json").json()["evaluations"][0]["data_digest"]
    reg.add_evaluation(
        "acme/qa:1",
        digest,
        {"loss": 0.1, "base_loss": 3.0},
        {"task": "causal-lm", "primary_metric": "loss", "higher_is_better": False, "rows": 4},
    )
    # compare keeps the two kinds of the same file apart too
    d = cli("compare", "acme/qa:1", "acme/qa:2", "--json").json()
    by_kind = {e["kind"]: e for e in d["evaluations"]}
    assert set(by_kind) == {"generation", "loss"} and by_kind["generation"]["shared"] and not by_kind["loss"]["shared"]
    rouge = next(m for m in by_kind["generation"]["metrics"] if m["key"] == "rouge_l")
    assert rouge["delta"] == pytest.approx(rouge["b"] - rouge["a"]) and rouge["b"] == 0.875
    assert "(generation)" in cli("compare", "acme/qa:1", "acme/qa:2").stdout
    assert cli("alias", "set", "acme/qa", "production", "1").exit_code == 0
    r = cli("alias", "set", "acme/qa", "production", "2", "--json")
    assert r.exit_code == 0 and r.json()["gated"], r.output  # higher rouge_l passes
    assert_clean_error(
        cli("alias", "set", "acme/qa", "production", "1"),
        "acme/qa:1 scores worse than the current production acme/qa:2 on sha256:",
        "(generation): rouge_l",
    )
    # both sides must name the same primary metric (as `eval --generate --metric chrf` stores it)
    reg.add_evaluation(
        "acme/qa:1",
        digest,
        {"chrf": 99.0},
        {"task": "causal-lm", "kind": "generation", "primary_metric": "chrf", "higher_is_better": True},
    )
    assert_clean_error(
        cli("alias", "set", "acme/qa", "production", "1"),
        "compare different metrics (chrf vs rouge_l); evaluate acme/qa:1 with --metric rouge_l first",
    )


def test_eval_generate_bad_input(cli, home, qa, tmp_path):
    import shutil

    ref = push(home, qa["adapter"], "acme/qa", qa["base"])
    e = ("--base", qa["base"], "--generate")

    def data(*rows):
        return write_jsonl(tmp_path / "bad.jsonl", rows)

    assert_clean_error(
        cli("eval", ref, *e, "--data", data({"text": "hello world"})),
        "bad.jsonl:1: --generate needs 'prompt' and 'completion' (or 'reference')",
    )
    assert_clean_error(
        cli(
            "eval",
            ref,
            *e,
            "--data",
            data({"prompt": "hello", "completion": "world"}, {"prompt": "hello", "reference": "  "}),
        ),
        "bad.jsonl:2: the reference completion is empty",
    )
    assert_clean_error(
        cli("eval", ref, *e, "--data", data({"prompt": "hello", "completion": 3})),
        "bad.jsonl:1: field 'completion' must be a string",
    )
    assert_clean_error(
        cli("eval", ref, *e, "--data", data({"messages": [{"role": "user", "content": "hello"}]})),
        "bad.jsonl:1: 'messages' must end with an assistant message",
    )
    assert_clean_error(
        cli("eval", ref, *e, "--data", qa["eval"], "--metric", "bleu"),
        "unknown metric 'bleu' (available: chrf, exact_match, rouge_l)",
    )
    assert_clean_error(
        cli("eval", ref, *e, "--data", qa["eval"], "--max-new-tokens", "0"), "--max-new-tokens must be positive"
    )
    assert_clean_error(
        cli("eval", ref, *e, "--data", qa["eval"], "--max-new-tokens", "64"),
        "--max-new-tokens 64 leaves no room for the prompt within 64 tokens",
    )
    assert_clean_error(cli("eval", ref, *e, "--data", qa["eval"], "--probe", qa["eval"]), "--probe measures forgetting")
    assert_clean_error(
        cli("eval", ref, "--base", qa["base"], "--data", qa["eval"], "--metric", "chrf"), "--metric needs --generate"
    )
    seq = tmp_path / "seq"
    shutil.copytree(qa["adapter"], seq)
    manifest = json.loads((seq / "adapterhub.json").read_text())
    (seq / "adapterhub.json").write_text(json.dumps({**manifest, "task": "seq-cls", "labels": ["a", "b"]}))
    seq_ref = push(home, str(seq), "acme/clf", qa["base"])
    assert_clean_error(
        cli("eval", seq_ref, *e, "--data", qa["eval"]), f"--generate is for causal-lm adapters; {seq_ref} is seq-cls"
    )
    assert cli("show", ref, "--json").json()["evaluations"] == []
