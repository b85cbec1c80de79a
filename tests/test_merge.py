"""The streaming merge (``merge``, ``pull --merged``) against the real peft library (the oracle).

Every adapter is made by peft itself with non-zero lora_B (so no test passes trivially); merged tensors
must be ``torch.equal`` to ``PeftModel.from_pretrained(base, adapter).merge_and_unload()`` in the same
dtype, and the merged directory must load with transformers and give the peft-attached model's logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import peft as peft
import pytest
import torch as torch
import transformers as transformers

sys.path.insert(0, os.path.dirname(__file__))
import oracle  # noqa: E402
import tinymodels as tm  # noqa: E402
from conftest import assert_clean_error  # noqa: E402

from adapterhub.files.checkpoint import load_adapter_dir  # noqa: E402
from adapterhub.merge.plan import merge_adapter  # noqa: E402
from adapterhub.plugins import Plugins  # noqa: E402

TOL = 1e-5
#: the plugins these tests need (others may be work in progress); "merged" is registered directly until
#: its entry point is installed
PLUGINS = "file,peft,lora,prompt,bottleneck,merged"
CASES = {
    "llama-lora": ("llama", dict(r=4, lora_alpha=8, target_modules="all-linear")),
    "llama-lora-s1": ("llama", dict(r=4, lora_alpha=4, target_modules=["q_proj", "gate_proj"])),  # scaling 1
    "llama-rslora": ("llama", dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["k_proj", "o_proj"])),  # 3
    "llama-dora": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True)),
    "gpt2-conv1d": ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"])),
    "gpt2-dora": ("gpt2", dict(r=2, lora_alpha=4, target_modules=["c_attn"], use_dora=True)),
    "bert-seqcls": ("bert", dict(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")),
}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        yield


def merge_plugins():
    """A fresh plugin manager with what merge/export need (``PLUGINS``, the merged format included)."""
    return Plugins()


def plugins_fixture(names: str):
    """An autouse fixture: only the plugins ``names`` load (ADAPTERHUB_LOAD_PLUGINS)."""

    @pytest.fixture(autouse=True)
    def _plugins(home, monkeypatch):
        import adapterhub.plugins as ap

        monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", names)
        ap._default = merge_plugins()
        yield
        ap.reset_plugins()

    return _plugins


_plugins = plugins_fixture(PLUGINS)


randomise, out_of = oracle.randomise_lora, oracle.out


def save_base(model, path):
    model.save_pretrained(str(path))
    return str(path)


def peft_adapter(model, opts, path, seed=0):
    """Attach with peft, randomise, save; returns (dir, the attached model)."""
    pm = peft.get_peft_model(model, peft.LoraConfig(**opts))
    randomise(pm, seed)
    pm.save_pretrained(str(path))
    return str(path), pm.eval()


def load_merged(path, dtype=torch.float32, seq_cls=False):
    auto = transformers.AutoModelForSequenceClassification if seq_cls else transformers.AutoModelForCausalLM
    return auto.from_pretrained(str(path), dtype=dtype, local_files_only=True).eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Per case: (base dir, adapter dir, logits of the peft-attached fp32 model)."""
    cache = {}

    def get(case):
        if case not in cache:
            name, opts = CASES[case]
            root = tmp_path_factory.mktemp(case)
            base = save_base(tm.MODELS[name](), root / "base")
            ad, pm = peft_adapter(tm.MODELS[name](), opts, root / "adapter")
            cache[case] = (base, ad, out_of(pm, name))
        return cache[case]

    return get


# -- parity with peft ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [None, "bf16"], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_merged_tensors_equal_peft_merge_and_unload(case, dtype, built, tmp_path):
    name, _ = CASES[case]
    base, ad, _ = built(case)
    out = tmp_path / "merged"
    r = merge_adapter(load_adapter_dir(ad, merge_plugins()), base, str(out), dtype=dtype)
    tdtype = torch.bfloat16 if dtype else torch.float32
    expected = peft.PeftModel.from_pretrained(tm.MODELS[name](dtype=tdtype), ad).merge_and_unload().state_dict()
    got = load_merged(out, tdtype, seq_cls=name == "bert").state_dict()
    assert set(got) == set(expected)
    bad = [k for k in expected if got[k].dtype != tdtype or not torch.equal(got[k], expected[k])]
    assert not bad, bad[:5]
    assert r["tensors_merged"] >= 2 and r["tensors_untouched"] > 0 and not r["untied"]


@pytest.mark.parametrize(
    "schedule", ["mergers-first", "stager-first", "no-copy_file_range", "one-thread", "row-blocks", "short-row-blocks"]
)
def test_any_thread_schedule_gives_the_same_bits(schedule, built, tmp_path, monkeypatch):
    """The writer's threads (the stager copying untouched and to-be-merged base bytes, the merging threads
    writing merged values over them) meet in any order; force the extremes and the fallbacks and compare
    with peft bit for bit (the tiny Llama interleaves untouched norms with merged projections)."""
    import threading

    import adapterhub.merge.writer as mw

    _, ad, _ = built("llama-lora")
    # no casts: bytes copied. fp32 for short blocks: a sum rounded another way shows in fp32, rarely in bf16
    dtype = torch.float32 if schedule == "short-row-blocks" else torch.bfloat16
    base = save_base(tm.MODELS["llama"](dtype=dtype), tmp_path / "base")
    stage, merge = mw._Run.stage, mw._Run.merge
    staged = threading.Event()
    if schedule == "mergers-first":  # every tensor to merge is taken before the stager starts

        def late_stage(self):
            while self.next_merge < len(self.merges) and self.error is None:
                threading.Event().wait(0.001)
            stage(self)

        monkeypatch.setattr(mw._Run, "stage", late_stage)
    elif schedule == "stager-first":  # the stager has copied everything before any merge

        def early_stage(self):
            stage(self)
            staged.set()

        def late_merge(self):
            staged.wait()
            merge(self)

        monkeypatch.setattr(mw._Run, "stage", early_stage)
        monkeypatch.setattr(mw._Run, "merge", late_merge)
    elif schedule == "no-copy_file_range":  # e.g. another filesystem: reads and writes through a buffer

        def refuse(*a):
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    elif schedule == "row-blocks":  # weights in several blocks of uneven sizes (20 and 24 rows of 64)
        monkeypatch.setattr(mw, "ROW_BLOCK", 20 * 32)
    elif schedule == "short-row-blocks":  # 31 + 31 + 2 rows: a 2-row GEMM is not exact on MKL: whole tensor
        monkeypatch.setattr(mw, "ROW_BLOCK", 31 * 32)
        monkeypatch.setattr(mw, "MIN_BLOCK_ROWS", 1)
    else:
        monkeypatch.setenv("ADAPTERHUB_MERGE_THREADS", "1")
    r = merge_adapter(load_adapter_dir(ad, merge_plugins()), base, str(tmp_path / "m"))
    base_model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=dtype, local_files_only=True)
    expected = peft.PeftModel.from_pretrained(base_model, ad).merge_and_unload()
    got = load_merged(tmp_path / "m", dtype).state_dict()
    bad = [k for k, v in expected.state_dict().items() if not torch.equal(got[k], v)]
    assert not bad, bad[:5]
    assert r["tensors_merged"] >= 2 and r["tensors_untouched"] > 0


def test_merge_command_process_prints_all_and_exits_cleanly(built, tmp_path):
    """The real ``adapterhub merge`` process ends without tearing down the interpreter once the merge is
    written: its JSON must still be complete, its exit code right, and the model whole."""
    base, ad, _ = built("llama-lora")
    env = {**os.environ, "ADAPTERHUB_HOME": str(tmp_path / "home"), "ADAPTERHUB_LOAD_PLUGINS": PLUGINS}
    out = tmp_path / "m"
    p = subprocess.run(
        [sys.executable, "-m", "adapterhub", "merge", ad, "--base", base, "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["tensors_merged"] >= 2 and doc["out"] == str(out)
    assert load_merged(out) is not None
    again = subprocess.run(
        [sys.executable, "-m", "adapterhub", "merge", ad, "--base", base, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 1 and again.stderr.startswith("Error:") and "not empty" in again.stderr


def test_bf16_base_without_dtype_stays_bf16(tmp_path):
    base = save_base(tm.tiny_llama(torch.bfloat16), tmp_path / "base")
    ad, _ = peft_adapter(tm.tiny_llama(torch.bfloat16), CASES["llama-dora"][1], tmp_path / "ad")
    merge_adapter(load_adapter_dir(ad, merge_plugins()), base, str(tmp_path / "m"))
    expected = peft.PeftModel.from_pretrained(tm.tiny_llama(torch.bfloat16), ad).merge_and_unload().state_dict()
    got = load_merged(tmp_path / "m", torch.bfloat16).state_dict()
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], expected[k]) for k in expected)


def test_cli_merge_loads_and_logits_match_attached_model(cli, built, tmp_path):
    base, ad, ref_logits = built("llama-lora")
    assert cli("push", ad, "acme/llama", "--base", base).exit_code == 0
    r = cli("merge", "acme/llama", "--base", base, "--out", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    d = r.json()
    assert d["cached"] is False and d["tensors_merged"] > 0 and d["dtype"] == "auto" and d["seconds"] >= 0
    assert {f["path"] for f in d["files"]} == {"config.json", "generation_config.json", "model.safetensors"}
    assert d["bytes"] == sum(os.path.getsize(tmp_path / "m" / f["path"]) for f in d["files"])
    got = out_of(load_merged(tmp_path / "m"), "llama")
    assert torch.allclose(got, ref_logits, atol=TOL, rtol=0)
    text = cli("merge", "acme/llama", "--base", base, "--out", tmp_path / "m2", "--no-cache")
    assert text.exit_code == 0 and "merged" in text.output and "m2" in text.output


def test_sharding_writes_an_index_that_loads(cli, built, tmp_path):
    base, ad, ref_logits = built("gpt2-conv1d")
    r = cli("merge", ad, "--base", base, "--out", tmp_path / "m", "--shard-size", "40KB", "--json")
    assert r.exit_code == 0, r.output
    names = sorted(f["path"] for f in r.json()["files"])
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) > 2 and "model.safetensors.index.json" in names
    assert all(os.path.getsize(tmp_path / "m" / s) < 40_000 + 70_000 for s in shards)  # one tensor may exceed
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert torch.allclose(out_of(load_merged(tmp_path / "m"), "gpt2"), ref_logits, atol=TOL, rtol=0)
    assert_clean_error(cli("merge", ad, "--base", base, "--out", tmp_path / "x", "--shard-size", "lots"), "shard size")


def test_headless_minilm_seq_cls_gets_head_labels_and_prefix(cli, tmp_path):
    """The real MiniLM (a headless BertModel: keys without 'bert.') + a SEQ_CLS adapter whose keys are
    'base_model.model.bert.…' plus the classifier (modules_to_save); labels come from the manifest."""
    from dataclasses import asdict

    from adapterhub_lora import LoraMethod

    from adapterhub.files.checkpoint import save_adapter

    model = transformers.AutoModelForSequenceClassification.from_pretrained(tm.minilm_path(), num_labels=3).eval()
    ad, pm = peft_adapter(
        model, dict(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"), tmp_path / "peft"
    )
    ref_logits = out_of(pm, "minilm")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert "base_model.model.classifier.weight" in tensors
    lora = LoraMethod()
    native = save_adapter(
        str(tmp_path / "native"),
        {
            "method": "lora",
            "config": asdict(lora.from_peft_config(cfg)),
            "task": "SEQ_CLS",
            "labels": ["negative", "neutral", "positive"],
        },
        tensors,
        peft_config=cfg,
    )
    assert cli("push", native, "acme/cls", "--base", tm.minilm_path()).exit_code == 0
    r = cli("pull", "acme/cls", "--merged", "--base", tm.minilm_path(), "--out", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    d = r.json()
    assert d["architectures"] == ["BertForSequenceClassification"] and d["tensors_added"] == 2
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["label2id"]["positive"] == 2
    assert (tmp_path / "m" / "tokenizer.json").exists() and (tmp_path / "m" / "vocab.txt").exists()
    merged = load_merged(tmp_path / "m", seq_cls=True)
    assert merged.config.num_labels == 3
    assert torch.allclose(out_of(merged, "minilm"), ref_logits, atol=TOL, rtol=0)
    expected = (
        peft.PeftModel.from_pretrained(
            transformers.AutoModelForSequenceClassification.from_pretrained(tm.minilm_path(), num_labels=3), ad
        )
        .merge_and_unload()
        .state_dict()
    )
    got = merged.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # no labels in the manifest: LABEL_i from the head's size
    r = cli("merge", ad, "--base", tm.minilm_path(), "--out", tmp_path / "m2", "--json")
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "m2" / "config.json").read_text())
    assert config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}


def _tied_llama():
    cfg = tm.tiny_llama().config
    cfg.tie_word_embeddings = True
    torch.manual_seed(5)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("kind", ["lora-on-lm_head", "gpt2-saved-wte"])
def test_tied_embeddings_are_untied_when_the_adapter_changes_one(kind, cli, tmp_path):
    if kind == "lora-on-lm_head":
        make, name, opts = _tied_llama, "llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"])
        pair = ["model.embed_tokens.weight", "lm_head.weight"]
    else:
        make, name, opts = (
            tm.tiny_gpt2,
            "gpt2",
            dict(r=4, lora_alpha=8, target_modules=["c_attn"], modules_to_save=["wte"]),
        )
        pair = ["transformer.wte.weight", "lm_head.weight"]
    base = save_base(make(), tmp_path / "base")
    assert json.loads((tmp_path / "base" / "config.json").read_text())["tie_word_embeddings"] is True
    ad, pm = peft_adapter(make(), opts, tmp_path / "ad")
    r = cli("merge", ad, "--base", base, "--out", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["untied"] == pair
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tie_word_embeddings"] is False
    merged = load_merged(tmp_path / "m")
    a, b = (merged.get_parameter(p) for p in pair)
    assert not torch.equal(a, b)
    assert torch.allclose(out_of(merged, name), out_of(pm, name), atol=TOL, rtol=0)
    text = cli("merge", ad, "--base", base, "--out", tmp_path / "m2")
    assert "untied" in text.output and "tie_word_embeddings=false" in text.output


def test_untouched_tied_embeddings_stay_tied(tmp_path):
    base = save_base(tm.tiny_gpt2(), tmp_path / "base")
    ad, _ = peft_adapter(tm.tiny_gpt2(), CASES["gpt2-conv1d"][1], tmp_path / "ad")
    r = merge_adapter(load_adapter_dir(ad, merge_plugins()), base, str(tmp_path / "m"))
    assert r["untied"] == [] and json.loads((tmp_path / "m" / "config.json").read_text())["tie_word_embeddings"]


def test_resized_vocabulary_takes_the_adapters_embeddings(cli, tmp_path):
    base = save_base(tm.tiny_llama(), tmp_path / "base")
    model = tm.tiny_llama()
    model.resize_token_embeddings(tm.VOCAB + 8)
    ad, pm = peft_adapter(
        model,
        dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"]),
        tmp_path / "ad",
    )
    r = cli("merge", ad, "--base", base, "--out", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    assert any("vocab_size" in n for n in r.json()["notes"])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["vocab_size"] == tm.VOCAB + 8
    merged = load_merged(tmp_path / "m")
    assert merged.get_input_embeddings().weight.shape[0] == tm.VOCAB + 8
    ids = {"input_ids": torch.tensor([[1, 2, tm.VOCAB + 3, tm.VOCAB + 7]])}
    with torch.no_grad():
        assert torch.allclose(merged(**ids).logits, pm(**ids).logits, atol=TOL, rtol=0)


# -- the cache (more in test_merged_cache.py) ------------------------------------------------------------
def test_second_pull_merged_is_a_checked_cached_link(cli, home, built, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_MERGE_CACHE", "link")  # (as root, where the tests run, auto is off)
    base, ad, ref_logits = built("llama-dora")
    assert cli("push", ad, "acme/dora", "--base", base, "--alias", "stable").exit_code == 0
    args = ("--merged", "--base", base, "--dtype", "bf16", "--json")
    first = cli("pull", "acme/dora@stable", "--out", tmp_path / "a", *args)
    assert first.exit_code == 0, first.output
    assert first.json()["cached"] is False
    second = cli("pull", "acme/dora@stable", "--out", tmp_path / "b", *args)
    assert second.exit_code == 0 and second.json()["cached"] is True
    assert second.json()["tensors_merged"] == first.json()["tensors_merged"]
    assert {(f["path"], f["size"]) for f in first.json()["files"]} == {
        (f["path"], f["size"]) for f in second.json()["files"]
    }
    for f in first.json()["files"]:
        assert (tmp_path / "a" / f["path"]).read_bytes() == (tmp_path / "b" / f["path"]).read_bytes()
    assert cli("gc", "--grace", "0", "--json").json()["removed_blobs"] == 0
    assert cli("pull", "acme/dora@stable", "--out", tmp_path / "b2", *args).json()["cached"] is True
    # another dtype or shard size is another cache entry
    third = cli("pull", "acme/dora", "--out", tmp_path / "c", "--merged", "--base", base, "--json")
    assert third.json()["cached"] is False and third.json()["dtype"] == "auto"

    # corrupt the cached weights through a link (as root may): detected before it is served, recomputed
    good = (tmp_path / "a" / "model.safetensors").read_bytes()
    weights = tmp_path / "b" / "model.safetensors"
    os.chmod(weights, 0o644)
    with open(weights, "r+b") as fh:
        fh.seek(200)
        fh.write(b"\xff\xff\xff\xff")
    fourth = cli("pull", "acme/dora@stable", "--out", tmp_path / "d", *args)
    assert fourth.exit_code == 0, fourth.output
    d = fourth.json()
    assert d["cached"] is False and "model.safetensors changed" in d["cache_problem"]
    assert (tmp_path / "d" / "model.safetensors").read_bytes() == good
    assert cli("pull", "acme/dora@stable", "--out", tmp_path / "e", *args).json()["cached"] is True
    got = out_of(load_merged(tmp_path / "e", torch.bfloat16), "llama").float()
    assert torch.allclose(got, ref_logits, atol=0.1)  # bf16: the exact check is the tensor parity test


# -- bad input: one clear line, exit 1/2, nothing written ----------------------------------------------------
def test_base_mismatch_is_refused_naming_both_fingerprints(cli, built, tmp_path):
    base, ad, _ = built("llama-lora")
    other = save_base(tm.tiny_llama(), tmp_path / "other")
    from safetensors.torch import load_file, save_file

    sd = load_file(os.path.join(other, "model.safetensors"))
    sd["model.norm.weight"] = sd["model.norm.weight"] + 1
    save_file(sd, os.path.join(other, "model.safetensors"), metadata={"format": "pt"})
    assert cli("push", ad, "acme/llama", "--base", base).exit_code == 0
    fp_base = cli("fingerprint", base).stdout.strip()
    fp_other = cli("fingerprint", other).stdout.strip()
    r = cli("pull", "acme/llama", "--merged", "--base", other, "--out", tmp_path / "m")
    assert_clean_error(r, "base mismatch", fp_base, fp_other)
    assert not (tmp_path / "m").exists()
    r = cli("merge", "acme/llama", "--base", other, "--out", tmp_path / "m", "--allow-base-mismatch", "--json")
    assert r.exit_code == 0 and r.json()["base_fingerprint"] == fp_other


def test_out_dir_not_empty_is_refused_unless_force(cli, built, tmp_path):
    base, ad, _ = built("llama-lora")
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_error(cli("merge", ad, "--base", base, "--out", out), "not empty", "--force")
    assert os.listdir(out) == ["keep.txt"]
    assert cli("merge", ad, "--base", base, "--out", out, "--force").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_missing_base_dir_and_bad_options(cli, built, tmp_path):
    _, ad, _ = built("llama-lora")
    assert_clean_error(cli("merge", ad, "--base", tmp_path / "nope", "--out", tmp_path / "m"), "no such directory")
    assert_clean_error(cli("pull", "acme/x", "--merged", "--out", tmp_path / "m"), "--base")
    assert_clean_error(cli("merge", "acme/missing", "--base", tmp_path, "--out", tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_method_that_cannot_merge_names_the_alternative(cli, tmp_path):
    base = save_base(tm.tiny_llama(), tmp_path / "base")
    pm = peft.get_peft_model(tm.tiny_llama(), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    pm.save_pretrained(str(tmp_path / "prompt"))
    assert cli("push", tmp_path / "prompt", "acme/prompt", "--base", base).exit_code == 0
    for args in (("merge", "acme/prompt"), ("pull", "acme/prompt", "--merged")):
        r = cli(*args, "--base", base, "--out", tmp_path / "m")
        assert_clean_error(r, "cannot be merged", "adapterhub export acme/prompt:1 --format peft")
        assert not (tmp_path / "m").exists()


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def test_disk_full_leaves_nothing_behind(built, tmp_path):
    """A real full disk (a 64 KB tmpfs as root) and, always, a file-size limit hit mid-write."""
    base, ad, _ = built("llama-lora")
    env = {**os.environ, "ADAPTERHUB_HOME": str(tmp_path / "home")}
    small = tmp_path / "small"
    if _mount_tmpfs(small, "64k"):
        try:
            p = subprocess.run(
                [sys.executable, "-m", "adapterhub", "merge", ad, "--base", base, "--out", small / "m"],
                capture_output=True,
                text=True,
                env=env,
            )
            assert p.returncode == 1 and "Traceback" not in p.stderr and "space" in p.stderr, p.stderr
            assert os.listdir(small) == []
        finally:
            subprocess.run(["umount", "-l", str(small)], capture_output=True)
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))\n"
        "from adapterhub.cli import main\nmain(sys.argv[1:])\n"
    )
    out_parent = tmp_path / "limited"
    out_parent.mkdir()
    p = subprocess.run(
        [sys.executable, "-c", code, "merge", ad, "--base", base, "--out", out_parent / "m", "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert [line for line in p.stderr.splitlines() if line.startswith("Error:")], p.stderr
    assert os.listdir(out_parent) == []
