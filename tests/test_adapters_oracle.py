"""AdapterHub's ``adapters`` library (1.3.0, in its own venv) as the oracle for bottleneck adapters, Compacter,
and its LoRA / IA3, on tiny BERT (seq-cls), Llama and GPT-2 models and the real MiniLM:

(a) identical weights give outputs equal to 1e-6 (fp32) for every style and placement option: each adapter is
    made in ``adapters`` (weights moved off their init), saved with ``save_adapter``, read by our ``adapters``
    format plugin (what ``push`` does) and attached to the same base;
(b) an adapter trained in ``adapters`` goes through the real CLI (``push --import-bin``, ``pull``) and attaches
    with the same outputs;
(c) ours exported with ``export --format adapters`` and loaded by ``load_adapter`` give the same outputs, for the
    adapters read in (a) and for adapters made natively here.

All oracle work is batched: one subprocess makes and trains every adapter, one loads every export.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import adapters_oracle  # noqa: E402
import oracle  # noqa: E402
import tinymodels as tm  # noqa: E402
from conftest import assert_clean_error  # noqa: E402
from oracle import quiet  # noqa: E402,F401

from adapterhub.files.checkpoint import load_adapter_dir, read_adapter_dir, save_adapter  # noqa: E402
from adapterhub.operations.export import export  # noqa: E402
from adapterhub.plugins import Plugins  # noqa: E402
from adapterhub.training.modeling import attach_loaded  # noqa: E402

TOL = 1e-6
HEADS = {"bert": "seq-cls", "llama": "causal-lm", "gpt2": "causal-lm", "minilm": "base"}

# id -> (model, adapters config class, its kwargs); (a) and (c) for each
CASES = {
    "bert-seqbn": ("bert", "SeqBnConfig", {"reduction_factor": 4}),
    "llama-seqbn": ("llama", "SeqBnConfig", {"reduction_factor": 4}),
    "gpt2-seqbn": ("gpt2", "SeqBnConfig", {"reduction_factor": 4}),
    "minilm-seqbn": ("minilm", "SeqBnConfig", {}),
    "bert-doubleseqbn": ("bert", "DoubleSeqBnConfig", {"reduction_factor": 4}),
    "llama-doubleseqbn": ("llama", "DoubleSeqBnConfig", {"reduction_factor": 4}),
    "bert-seqbn-ln-before-off": ("bert", "SeqBnConfig", {"reduction_factor": 4, "original_ln_before": False}),
    "bert-seqbn-residual-after-ln": ("bert", "SeqBnConfig", {"reduction_factor": 4, "residual_before_ln": False}),
    "llama-seqbn-residual-after-ln": ("llama", "SeqBnConfig", {"reduction_factor": 4, "residual_before_ln": False}),
    "bert-seqbn-post-add": ("bert", "SeqBnConfig", {"reduction_factor": 4, "residual_before_ln": "post_add"}),
    "bert-seqbn-ln-after-off": ("bert", "SeqBnConfig", {"reduction_factor": 4, "original_ln_after": False}),
    "llama-seqbn-ln-after-off": ("llama", "SeqBnConfig", {"reduction_factor": 4, "original_ln_after": False}),
    "bert-double-ln-before-only": (
        "bert",
        "DoubleSeqBnConfig",
        {"reduction_factor": 4, "original_ln_before": True, "original_ln_after": False, "residual_before_ln": False},
    ),
    "llama-double-ln-before-only": (
        "llama",
        "DoubleSeqBnConfig",
        {"reduction_factor": 4, "original_ln_before": True, "original_ln_after": False, "residual_before_ln": False},
    ),
    "bert-seqbn-new-norms": ("bert", "SeqBnConfig", {"reduction_factor": 4, "ln_before": True, "ln_after": True}),
    "llama-seqbn-new-norms-residual-first": (
        "llama",
        "SeqBnConfig",
        {"reduction_factor": 4, "ln_before": True, "ln_after": True, "adapter_residual_before_ln": True},
    ),
    "bert-parbn": ("bert", "ParBnConfig", {"reduction_factor": 4}),
    "llama-parbn-ln-after-off": ("llama", "ParBnConfig", {"reduction_factor": 4, "original_ln_after": False}),
    "llama-seqbn-houlsby-init-gelu-leave-out": (
        "llama",
        "SeqBnConfig",
        {"reduction_factor": 4, "init_weights": "houlsby", "scaling": 0.5, "non_linearity": "gelu", "leave_out": [0]},
    ),
    "bert-compacter": ("bert", "CompacterConfig", {"reduction_factor": 4}),
    "llama-compacter-rank2-nobias": (
        "llama",
        "CompacterConfig",
        {"reduction_factor": 4, "phm_rank": 2, "phm_bias": False},
    ),
    "bert-compacter++": ("bert", "CompacterPlusPlusConfig", {"reduction_factor": 4}),
    "llama-compacter++": ("llama", "CompacterPlusPlusConfig", {"reduction_factor": 4}),
    # (adapters saves no shared PHM rule from a headless model: test_headless_shared_rule_is_refused)
    "minilm-compacter++-unshared": ("minilm", "CompacterPlusPlusConfig", {"shared_phm_rule": False}),
    "bert-compacter++-unshared-full": (
        "bert",
        "CompacterPlusPlusConfig",
        {"reduction_factor": 4, "shared_phm_rule": False, "factorized_phm_W": False, "phm_dim": 2},
    ),
    "bert-lora": ("bert", "LoRAConfig", {"r": 4, "alpha": 8}),
    "llama-lora-qkv-intermediate": (
        "llama",
        "LoRAConfig",
        {"r": 4, "alpha": 16, "attn_matrices": ["q", "k", "v"], "intermediate_lora": True},
    ),
    "bert-ia3": ("bert", "IA3Config", {}),
    "llama-ia3": ("llama", "IA3Config", {}),
}
EXPORTED = list(CASES)
# flexible heads (AutoAdapterModel.add_classification_head) read as BertForSequenceClassification's pooler/classifier
FLEX = {
    "bert-seqbn-flex-head": ("bert", "SeqBnConfig", {"reduction_factor": 4}, {"num_labels": 3, "layers": 2}),
    "bert-compacter-flex-pooler-head": (
        "bert",
        "CompacterConfig",
        {"reduction_factor": 4},
        {"num_labels": 3, "layers": 1, "use_pooler": True},
    ),
}
# what adapterhub cannot map: refused at push, naming it
REFUSED = {
    "invertible": ("bert", "SeqBnInvConfig", {"reduction_factor": 4}, ["inv_adapter='nice'", "invertible adapters"]),
    "gated": ("bert", "SeqBnConfig", {"reduction_factor": 4, "use_gating": True}, ["use_gating=True"]),
    "learned-scaling": ("llama", "SeqBnConfig", {"reduction_factor": 4, "scaling": "learned"}, ["scaling='learned'"]),
    "prefix-tuning": (
        "bert",
        "PrefixTuningConfig",
        {"prefix_length": 4, "bottleneck_size": 8},
        ["architecture is prefix tuning", "does not map"],
    ),
    "mam-union": ("bert", "MAMConfig", {}, ["ConfigUnion"]),
    "headless-shared-rule": (
        "minilm",
        "CompacterPlusPlusConfig",
        {},
        ["lacks it", "shared_parameters.oracle.phm_rule"],
    ),
    "flex-head-3-layers": (
        "bert",
        "SeqBnConfig",
        {"reduction_factor": 4, "flex_head": {"num_labels": 3, "layers": 3}},
        ["prediction head", "layers=3"],
    ),
}
# id -> (model, our method, our config): made here, exported, loaded by adapters (c)
NATIVE = {
    "bert-pfeiffer-seqcls": (
        "bert",
        "bottleneck",
        {"style": "pfeiffer", "reduction_factor": 4, "task_type": "SEQ_CLS"},
    ),
    "llama-houlsby-ln-after-residual-first": (
        "llama",
        "bottleneck",
        {"reduction_factor": 4, "ln_after": True, "adapter_residual_before_ln": True, "original_ln_after": False},
    ),
    "gpt2-parallel": ("gpt2", "bottleneck", {"style": "pfeiffer", "is_parallel": True, "bottleneck_size": 8}),
    "llama-compacter++": ("llama", "compacter", {"style": "pfeiffer", "bottleneck_size": 8}),
    "llama-lora-qkv-up": (
        "llama",
        "lora",
        {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "up_proj"]},
    ),
    "bert-ia3-seqcls": (
        "bert",
        "ia3",
        {"target_modules": ["key", "value", "intermediate.dense"], "feedforward_modules": [], "task_type": "SEQ_CLS"},
    ),
    "bert-compacter-unshared-full": (
        "bert",
        "compacter",
        {"bottleneck_size": 8, "shared_phm_rule": False, "factorized_phm_W": False, "phm_dim": 2},
    ),
}
# trained in adapters (b): id -> (model, config class, kwargs)
TRAINED = {
    "bert-seqbn-seqcls": ("bert", "SeqBnConfig", {"reduction_factor": 4}),
    "llama-compacter++": ("llama", "CompacterPlusPlusConfig", {"reduction_factor": 4}),
}


def _inputs(name):
    return tm.inputs_for(name)["input_ids"].tolist()


def _ours(name, loaded):
    model = tm.MODELS[name]()
    attach_loaded(model, loaded)
    with torch.no_grad():
        return tm.logits(model, tm.inputs_for(name))


def _cli(*args, home):
    env = {**os.environ, "ADAPTERHUB_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "adapterhub", *args], capture_output=True, text=True, env=env)


def _catch(fn, *args):
    try:
        return {"value": fn(*args)}
    except Exception as exc:  # reported by the test of this case, not by the fixture
        return {"error": f"{type(exc).__name__}: {exc}"}


def _value(entry):
    if "error" in entry:
        pytest.fail(entry["error"], pytrace=False)
    return entry["value"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Everything both sides computed: two oracle subprocesses in all."""
    work = tmp_path_factory.mktemp("adapters-oracle")
    plugins = Plugins()
    bases = {}
    for name in ("bert", "llama", "gpt2"):
        bases[name] = str(work / f"base-{name}")
        tm.MODELS[name]().save_pretrained(bases[name])
    bases["minilm"] = tm.minilm_path()

    def job(op, name, out, **kw):
        return {
            "op": op,
            "model": bases[name],
            "head": HEADS[name],
            "out": str(work / out),
            "inputs": _inputs(name),
            **kw,
        }

    jobs = [
        job("make", m, f"made/{cid}", config={"class": cls, "kwargs": kw}, seed=i)
        for i, (cid, (m, cls, kw)) in enumerate(CASES.items())
    ]
    jobs += [
        job("train", m, f"trained/{cid}", config={"class": cls, "kwargs": kw}, steps=3, labels=[0, 2])
        for cid, (m, cls, kw) in TRAINED.items()
    ]
    jobs += [
        job("make", m, f"made/{cid}", config={"class": cls, "kwargs": kw}, flex_head=head, seed=1)
        for cid, (m, cls, kw, head) in FLEX.items()
    ]
    jobs += [
        job(
            "make",
            m,
            f"refused/{cid}",
            config={"class": cls, "kwargs": {k: v for k, v in kw.items() if k != "flex_head"}},
            flex_head=kw.get("flex_head"),
        )
        for cid, (m, cls, kw, _) in REFUSED.items()
    ]
    made = adapters_oracle.run(jobs, str(work / "jobs"))
    out = {"made": {}, "ours": {}, "native": {}, "trained": {}}

    def read_in(cid, name):  # what push does with the directory, then attach
        src = read_adapter_dir(str(work / f"made/{cid}/adapter"), plugins, import_bin=True)
        try:
            dest = work / f"imported/{cid}"
            shutil.copytree(os.path.dirname(src.files[0].source), dest)
        finally:
            src.cleanup()
        return str(dest), _ours(name, load_adapter_dir(str(dest), plugins))

    load_jobs = []
    for cid in list(CASES) + list(FLEX):
        name = (CASES.get(cid) or FLEX[cid])[0]
        out["made"][cid] = made[str(work / f"made/{cid}")]
        out["ours"][cid] = _catch(read_in, cid, name)
        if cid in EXPORTED and "value" in out["ours"][cid]:
            res = _catch(export, None, out["ours"][cid]["value"][0], "adapters", str(work / f"exported/{cid}"))
            out["ours"][cid]["export"] = res
            if "value" in res:
                load_jobs.append(job("load", name, f"reloaded/{cid}", adapter=str(work / f"exported/{cid}")))
    for cid, (name, method, cfg) in NATIVE.items():
        out["native"][cid] = _catch(_native, plugins, name, method, cfg, work / f"native/{cid}")
        if "value" in out["native"][cid]:
            load_jobs.append(job("load", name, f"native-reloaded/{cid}", adapter=str(work / f"native/{cid}/export")))
    for cid, (name, _, _) in TRAINED.items():
        out["trained"][cid] = _catch(_through_cli, cid, name, work, plugins)
        if "value" in out["trained"][cid]:
            load_jobs.append(job("load", name, f"trained-reloaded/{cid}", adapter=str(work / f"cli/{cid}/export")))
    out["trained_oracle"] = {cid: made[str(work / f"trained/{cid}")] for cid in TRAINED}
    out["refused"] = {cid: made[str(work / f"refused/{cid}")] for cid in REFUSED}
    out["reloaded"] = adapters_oracle.run(load_jobs, str(work / "jobs")) if load_jobs else {}
    out["work"] = work
    return out


def _native(plugins, name, method_name, cfg, where):
    """An adapter made here (randomised), saved, exported; returns our logits."""
    method = plugins.get("methods", method_name)
    model = tm.MODELS[name]()
    effective = method.attach(model, method.make_config(cfg))
    oracle.perturb_trainable(model, lambda _, p, noise: p.add_(noise * 0.05), seed=7)
    with torch.no_grad():
        logits = tm.logits(model, tm.inputs_for(name))
    import dataclasses

    save_adapter(
        str(where / "dir"),
        {
            "method": method_name,
            "config": json.loads(json.dumps(dataclasses.asdict(effective))),
            "base": {"fingerprint": None, "name": name},
        },
        method.state_dict(model),
    )
    export(None, str(where / "dir"), "adapters", str(where / "export"), plugins=plugins)
    return logits


def _through_cli(cid, name, work, plugins):
    """push --import-bin, pull and export --format adapters with real adapterhub processes."""
    home, d = work / f"cli/{cid}/home", work / f"cli/{cid}"
    ref = f"acme/{cid.replace('+', 'p')}"
    for args in (
        ("push", str(work / f"trained/{cid}/adapter"), ref, "--import-bin"),
        ("pull", f"{ref}:1", "--out", str(d / "pulled")),
        ("export", f"{ref}:1", "--format", "adapters", "--out", str(d / "export")),
    ):
        proc = _cli(*args, home=home)
        assert proc.returncode == 0, f"adapterhub {' '.join(args)}: {proc.stderr}"
    return _ours(name, load_adapter_dir(str(d / "pulled"), plugins))


# -- (a) ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_identical_weights_give_the_same_outputs(results, case):
    theirs = adapters_oracle.logits(results["made"][case])
    _, ours = _value(results["ours"][case])
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= TOL


def test_the_oracle_cases_are_not_trivial(results):
    """Every made adapter changes the base's output: a missing or zero adapter could not pass (a)."""
    for case, (name, _, _) in CASES.items():
        model = tm.MODELS[name]()
        with torch.no_grad():
            base = tm.logits(model, tm.inputs_for(name))
        assert (adapters_oracle.logits(results["made"][case]) - base).abs().max() > 1e-4, case


@pytest.mark.parametrize("case", list(FLEX))
def test_a_flexible_classification_head_is_imported_for_seq_cls(results, case):
    theirs = adapters_oracle.logits(results["made"][case])
    path, ours = _value(results["ours"][case])
    assert (ours - theirs).abs().max().item() <= TOL
    with open(os.path.join(path, "adapterhub.json")) as f:
        manifest = json.load(f)
    assert manifest["task"] == "seq-cls" and manifest["config"]["task_type"] == "SEQ_CLS"


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_has_no_equivalent_is_refused_at_push_naming_it(results, case, cli):
    adapters_oracle.logits(results["refused"][case])  # adapters itself made it
    src = str(results["work"] / f"refused/{case}/adapter")
    r = cli("push", src, "acme/refused", "--import-bin")
    assert_clean_error(r, *REFUSED[case][3])
    assert cli("list", "--json").json() == []


def test_a_pickled_adapter_needs_import_bin(results, cli):
    src = str(results["work"] / "made/bert-seqbn/adapter")
    assert_clean_error(cli("push", src, "acme/x"), "pytorch_adapter.bin is a pickle", "--import-bin")
    r = cli("push", src, "acme/x", "--import-bin", "--json")
    assert r.exit_code == 0, r.output
    shown = cli("show", "acme/x:1", "--json").json()
    assert shown["method"] == "bottleneck"


# -- (b) ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(TRAINED))
def test_trained_in_adapters_pushed_pulled_attached(results, case):
    theirs = adapters_oracle.logits(results["trained_oracle"][case])
    ours = _value(results["trained"][case])
    assert (ours - theirs).abs().max().item() <= TOL
    back = adapters_oracle.logits(results["reloaded"][str(results["work"] / f"trained-reloaded/{case}")])
    assert (back - theirs).abs().max().item() <= TOL  # and exported by the CLI, loaded back in adapters


# -- (c) ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", EXPORTED)
def test_exported_adapters_load_in_adapters_with_the_same_outputs(results, case):
    _value(results["ours"][case]["export"])
    back = adapters_oracle.logits(results["reloaded"][str(results["work"] / f"reloaded/{case}")])
    theirs = adapters_oracle.logits(results["made"][case])
    assert (back - theirs).abs().max().item() <= TOL


@pytest.mark.parametrize("case", list(NATIVE))
def test_native_adapters_exported_load_in_adapters_with_the_same_outputs(results, case):
    ours = _value(results["native"][case])
    back = adapters_oracle.logits(results["reloaded"][str(results["work"] / f"native-reloaded/{case}")])
    assert (back - ours).abs().max().item() <= TOL
