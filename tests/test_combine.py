"""``combine``: the maths on tensors against direct implementations of each formula, the LoRA method in ΔW
space (cat/linear exact, svd = best rank-k, TIES/DARE/magnitude_prune on ΔW), PEFT loading the result, and
the CLI end to end with registry lineage and every bad input."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch as torch
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from adapterhub_lora import DoraMethod, LoraMethod  # noqa: E402
from conftest import assert_clean_error, make_base_dir, make_lora_dir  # noqa: E402

from adapterhub.errors import InvalidInput  # noqa: E402
from adapterhub.tuning import combine as cmb  # noqa: E402

LORA = LoraMethod()
P = "base_model.model."


def _tasks(n=3, shape=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


# -- direct implementations of the formulas (numpy, written out) -------------------------------------------
def _trim(t: np.ndarray, density: float) -> np.ndarray:
    """Keep the int(density·n) largest magnitudes."""
    flat = t.reshape(-1)
    k = int(density * flat.size)
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(t.shape)


def _ties_direct(tasks, weights, trimmed):
    trimmed = np.stack(trimmed)
    elected = np.where(trimmed.sum(0) >= 0, 1.0, -1.0)
    agree = np.sign(trimmed) == elected
    w = np.asarray(weights).reshape(-1, 1, 1)
    total = (trimmed * w * agree).sum(0)
    count = agree.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def _bernoulli_masks(shape, density, n, seed, key):
    g = cmb.module_generator(seed, key)
    return [torch.bernoulli(torch.full(shape, density), generator=g).numpy() for _ in range(n)]


def test_ties_is_trim_elect_disjoint_mean():
    tasks, weights = _tasks(), [0.7, 0.2, 0.5]
    ours = cmb.combine_dense(tasks, weights, "ties", density=0.4)
    direct = _ties_direct(None, weights, [_trim(t.numpy(), 0.4) for t in tasks])
    np.testing.assert_allclose(ours.numpy(), direct, rtol=1e-6, atol=1e-7)
    assert (ours == 0).sum() > 0  # trimming really happened


def test_magnitude_prune_is_trim_then_weighted_sum():
    tasks, weights = _tasks(seed=1), [1.0, -0.5, 2.0]
    ours = cmb.combine_dense(tasks, weights, "magnitude_prune", density=0.3)
    direct = sum(w * _trim(t.numpy(), 0.3) for w, t in zip(weights, tasks))
    np.testing.assert_allclose(ours.numpy(), direct, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("how", ["dare_linear", "dare_ties"])
def test_dare_is_seeded_bernoulli_drop_and_rescale(how):
    tasks, weights, density = _tasks(seed=2), [0.6, 0.4, 1.0], 0.5
    ours = cmb.combine_dense(tasks, weights, how, density, cmb.module_generator(7, "m"))
    masks = _bernoulli_masks(tasks[0].shape, density, 3, 7, "m")
    dropped = [t.numpy() * m / density for t, m in zip(tasks, masks)]
    if how == "dare_linear":
        direct = sum(w * d for w, d in zip(weights, dropped))
    else:
        direct = _ties_direct(None, weights, dropped)
    np.testing.assert_allclose(ours.numpy(), direct, rtol=1e-6, atol=1e-7)
    again = cmb.combine_dense(tasks, weights, how, density, cmb.module_generator(7, "m"))
    other = cmb.combine_dense(tasks, weights, how, density, cmb.module_generator(8, "m"))
    assert torch.equal(ours, again) and not torch.equal(ours, other)


def test_density_one_keeps_everything_and_linear_is_weighted_sum():
    tasks, weights = _tasks(seed=3), [0.5, 0.25, 0.25]
    direct = sum(w * t for w, t in zip(weights, tasks))
    assert torch.allclose(cmb.combine_dense(tasks, weights, "linear"), direct, atol=1e-6)
    assert torch.allclose(cmb.combine_dense(tasks, weights, "magnitude_prune", 1.0), direct, atol=1e-6)
    assert torch.allclose(
        cmb.combine_dense(tasks, weights, "dare_linear", 1.0, cmb.module_generator(0, "x")), direct, atol=1e-6
    )


def test_matches_peft_merge_utils_on_deterministic_methods():
    import peft.utils.merge_utils as merge_utils

    tasks, weights = _tasks(seed=4), [0.7, 0.3, 0.5]
    w = torch.tensor(weights)
    assert torch.allclose(cmb.combine_dense(tasks, weights, "ties", 0.5), merge_utils.ties(tasks, w, 0.5), atol=1e-6)
    assert torch.allclose(
        cmb.combine_dense(tasks, weights, "magnitude_prune", 0.5), merge_utils.magnitude_prune(tasks, w, 0.5), atol=1e-6
    )


def test_low_rank_is_best_rank_k_and_factored_is_exact():
    g = torch.Generator().manual_seed(5)
    As = [torch.randn(r, 9, generator=g) for r in (2, 3)]
    Bs = [torch.randn(7, r, generator=g) for r in (2, 3)]
    delta = sum(b @ a for a, b in zip(As, Bs))
    a, b = cmb.low_rank_factored(As, Bs, 5)
    assert a.shape == (5, 9) and b.shape == (7, 5)
    assert torch.allclose(b @ a, delta, atol=1e-5)
    u, s, vh = torch.linalg.svd(delta.double())
    best2 = (u[:, :2] * s[:2]) @ vh[:2]
    for a, b in (cmb.low_rank(delta, 2), cmb.low_rank_factored(As, Bs, 2)):
        assert torch.allclose((b @ a).double(), best2, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(how="nope"), "unknown combination"),
        (dict(how="ties"), "--density is required"),
        (dict(how="ties", density=0.0), "density must be in (0, 1]"),
        (dict(how="dare_ties", density=1.01), "density must be in (0, 1]"),
        (dict(how="linear", density=0.5), "--density applies only"),
        (dict(how="cat", rank=4), "--rank applies only"),
        (dict(how="svd", rank=0), "rank must be a positive integer"),
        (dict(how="svd", seed=3), "--seed applies only"),
        (dict(how="linear", weights=[1.0]), "1 weight(s) given for 2"),
        (dict(how="linear", weights=[1.0, float("nan")]), "finite"),
    ],
)
def test_bad_options(kwargs, needle):
    with pytest.raises(InvalidInput, match=None) as exc:
        cmb.check_options(n=2, **kwargs)
    assert needle in str(exc.value)


# -- the LoRA method: ΔW space ------------------------------------------------------------------------------
def _adapter(seed, r, paths, alpha=None, **cfg):
    """(config, tensors) with random non-zero factors for the given module paths (hidden 8 -> out 6)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for p in paths:
        tensors[f"{P}{p}.lora_A.weight"] = torch.randn(r, 8, generator=g)
        tensors[f"{P}{p}.lora_B.weight"] = torch.randn(6, r, generator=g)
    return LORA.make_config(dict(r=r, lora_alpha=alpha or 2 * r, target_modules=paths, **cfg)), tensors


def _delta(config, tensors, path):
    a, b = tensors.get(f"{P}{path}.lora_A.weight"), tensors.get(f"{P}{path}.lora_B.weight")
    if a is None:
        return torch.zeros(6, 8)
    return config.scaling_for(path) * (b.double() @ a.double()).float()


TWO = [_adapter(1, 2, ["l.0.q", "l.0.v"]), _adapter(2, 4, ["l.0.q", "l.0.k"], use_rslora=True)]
PATHS = ["l.0.q", "l.0.v", "l.0.k"]


@pytest.mark.parametrize("how", ["cat", "linear"])
def test_cat_and_linear_are_exact_in_delta_space_with_different_ranks_and_targets(how):
    weights = [0.7, -0.4]
    config, tensors = LORA.combine(TWO, weights, how)
    for p in PATHS:
        expect = sum(w * _delta(c, t, p) for w, (c, t) in zip(weights, TWO))
        assert torch.allclose(_delta(config, tensors, p), expect, atol=1e-5), p
    # ranks: q gets 2 + 4, v only 2, k only 4; recorded per module, scaling 1 everywhere
    assert {p: tensors[f"{P}{p}.lora_A.weight"].shape[0] for p in PATHS} == {"l.0.q": 6, "l.0.v": 2, "l.0.k": 4}
    assert all(config.rank_for(p) == tensors[f"{P}{p}.lora_A.weight"].shape[0] for p in PATHS)
    assert all(config.scaling_for(p) == 1.0 for p in PATHS)
    assert sorted(config.target_modules) == sorted(PATHS) and not config.use_rslora


def test_linear_is_not_peft_factorwise_linear():
    """Summing A and B separately (PEFT's 'linear') loses the cross terms; ours does not."""
    same = [_adapter(3, 2, ["m"]), _adapter(4, 2, ["m"])]
    config, tensors = LORA.combine(same, [0.5, 0.5], "linear")
    exact = sum(0.5 * _delta(c, t, "m") for c, t in same)
    naive_a = sum(0.5**0.5 * t[f"{P}m.lora_A.weight"] for _, t in same)
    naive_b = sum(0.5**0.5 * t[f"{P}m.lora_B.weight"] for _, t in same)
    assert torch.allclose(_delta(config, tensors, "m"), exact, atol=1e-5)
    assert not torch.allclose(2.0 * naive_b @ naive_a, exact, atol=1e-2)


def test_svd_full_rank_exact_and_lower_rank_is_best_approximation():
    weights = [0.6, 0.9]
    config, tensors = LORA.combine(TWO, weights, "svd", rank=6)
    for p in PATHS:
        expect = sum(w * _delta(c, t, p) for w, (c, t) in zip(weights, TWO))
        assert torch.allclose(_delta(config, tensors, p), expect, atol=1e-5)
    config, tensors = LORA.combine(TWO, weights, "svd")  # default rank: the largest input rank (4)
    assert config.r == 4 and not config.rank_pattern
    for p in PATHS:
        expect = sum(w * _delta(c, t, p) for w, (c, t) in zip(weights, TWO)).double()
        u, s, vh = torch.linalg.svd(expect)
        best = (u[:, :4] * s[:4]) @ vh[:4]
        assert torch.allclose(_delta(config, tensors, p).double(), best, atol=1e-5), p


@pytest.mark.parametrize("how", ["ties", "dare_linear", "dare_ties", "magnitude_prune"])
def test_sparsifying_methods_act_on_delta_w(how):
    """At full rank the result's ΔW is exactly the formula applied to the inputs' ΔW."""
    weights, density = [0.8, 0.5], 0.6
    seed = 11 if how.startswith("dare") else None
    config, tensors = LORA.combine(TWO, weights, how, density=density, rank=6, seed=seed)
    for p in PATHS:
        present = [(w, c, t) for w, (c, t) in zip(weights, TWO) if f"{P}{p}.lora_A.weight" in t]
        deltas = [_delta(c, t, p).numpy() for _, c, t in present]
        ws = [w for w, _, _ in present]
        if how in ("ties", "magnitude_prune"):
            kept = [_trim(d, density) for d in deltas]
        else:
            kept = [
                d * m / density for d, m in zip(deltas, _bernoulli_masks(deltas[0].shape, density, len(deltas), 11, p))
            ]
        direct = _ties_direct(None, ws, kept) if how.endswith("ties") else sum(w * k for w, k in zip(ws, kept))
        np.testing.assert_allclose(_delta(config, tensors, p).numpy(), direct, atol=1e-5)
    if how.startswith("dare"):
        again = LORA.combine(TWO, weights, how, density=density, rank=6, seed=11)[1]
        other = LORA.combine(TWO, weights, how, density=density, rank=6, seed=12)[1]
        assert all(torch.equal(tensors[k], again[k]) for k in tensors)
        assert any(not torch.equal(tensors[k], other[k]) for k in tensors)


def test_patterns_and_rslora_scalings_are_honoured():
    a = _adapter(5, 4, ["x.q", "x.v"], alpha=8, rank_pattern={"v": 2}, alpha_pattern={"q": 3})
    a[1][f"{P}x.v.lora_A.weight"] = a[1][f"{P}x.v.lora_A.weight"][:2]
    a[1][f"{P}x.v.lora_B.weight"] = a[1][f"{P}x.v.lora_B.weight"][:, :2]
    config, tensors = LORA.combine([a], [1.0], "cat")
    for p, s in (("x.q", 3 / 4), ("x.v", 8 / 2)):
        assert torch.allclose(
            _delta(config, tensors, p), s * a[1][f"{P}{p}.lora_B.weight"] @ a[1][f"{P}{p}.lora_A.weight"], atol=1e-5
        )


def test_lora_combine_refusals():
    dora = DoraMethod()
    cfg, t = _adapter(6, 2, ["m"])
    with pytest.raises(InvalidInput, match="DoRA adapters cannot be combined"):
        dora.combine([(dora.make_config(dict(r=2, target_modules=["m"])), t)] * 2, [1, 1], "cat")
    with pytest.raises(InvalidInput, match="not a LoRA factor"):
        LORA.combine([(cfg, {**t, f"{P}score.weight": torch.zeros(2, 2)}), (cfg, t)], [1, 1], "cat")
    bad = {k: (v[:, :5] if k.endswith("A.weight") else v) for k, v in t.items()}
    with pytest.raises(InvalidInput, match="disagree on the shape"):
        LORA.combine([(cfg, t), (cfg, bad)], [1, 1], "linear")
    with pytest.raises(InvalidInput, match="unknown combine option"):
        LORA.combine([(cfg, t)], [1], "linear", foo=1)


# -- a combined adapter runs, in ours and in PEFT -------------------------------------------------------------
def test_combined_adapter_output_equals_merged_sum_and_peft_loads_it(tmp_path):
    import warnings

    import peft as peft
    import tinymodels as tm

    from adapterhub.files.checkpoint import save_adapter

    warnings.simplefilter("ignore")
    ins = []
    for _seed, opts in (
        (1, dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])),
        (2, dict(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj"], use_rslora=True)),
    ):
        m = tm.tiny_llama()
        eff = LORA.attach(m, LORA.make_config(dict(init_lora_weights=False, **opts)))
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.mul_(3)
        ins.append((eff, {k: v.clone() for k, v in LORA.state_dict(m).items()}))
    config, tensors = LORA.combine(ins, [0.6, 0.4], "cat")
    merged = tm.tiny_llama()
    sd = merged.state_dict()
    with torch.no_grad():
        for key in sd:
            if key.endswith(".weight"):
                path = key[: -len(".weight")]
                for w, (c, t) in zip([0.6, 0.4], ins):
                    if f"{P}{path}.lora_A.weight" in t:
                        sd[key] += w * _delta_full(c, t, path)
    merged.load_state_dict(sd)
    ours = tm.tiny_llama()
    LORA.attach(ours, config)
    LORA.load_state_dict(ours, tensors)
    inputs = tm.inputs_for("llama")
    with torch.no_grad():
        expect, got, base = tm.logits(merged, inputs), tm.logits(ours, inputs), tm.logits(tm.tiny_llama(), inputs)
    assert (expect - base).abs().max() > 1e-3
    assert (got - expect).abs().max() <= 1e-5
    save_adapter(str(tmp_path / "c"), {"method": "lora"}, tensors, peft_config=LORA.to_peft_config(config))
    pm = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path / "c"))
    with torch.no_grad():
        assert (tm.logits(pm, inputs) - got).abs().max() <= 1e-5


def _delta_full(config, tensors, path):
    a, b = tensors[f"{P}{path}.lora_A.weight"], tensors[f"{P}{path}.lora_B.weight"]
    return config.scaling_for(path) * (b @ a)


# -- CLI end to end ------------------------------------------------------------------------------------------
@pytest.fixture
def two_pushed(cli, tmp_path):
    base = make_base_dir(tmp_path / "base")
    a = make_lora_dir(tmp_path / "a", seed=1, r=4)
    b = make_lora_dir(tmp_path / "b", seed=2, r=2)
    assert cli("push", a, "acme/a", "--base", base).exit_code == 0
    assert cli("push", b, "acme/b", "--base", base).exit_code == 0
    return tmp_path, base


def _pulled(cli, ref, out):
    assert cli("pull", ref, "--out", out).exit_code == 0
    with open(os.path.join(out, "adapter_config.json")) as f:
        peft_cfg = json.load(f)
    return LORA.from_peft_config(peft_cfg), load_file(os.path.join(out, "adapter_model.safetensors"))


def test_cli_combine_end_to_end_with_lineage(cli, two_pushed):
    tmp, _ = two_pushed
    r = cli(
        "combine",
        "acme/a",
        "acme/b:1",
        "--how",
        "ties",
        "--weights",
        "0.7,0.3",
        "--density",
        "0.5",
        "--rank",
        "8",
        "--name",
        "acme/merged",
        "--json",
    )
    assert r.exit_code == 0, r.output
    out = r.json()
    assert out["ref"] == "acme/merged:1" and out["combine"]["how"] == "ties"
    show = cli("show", "acme/merged", "--json").json()
    assert show["kind"] == "adapter" and show["method"] == "lora"
    assert [(p["ref"], p["relation"], p["details"]) for p in show["parents"]] == [
        ("acme/a:1", "combined_from", {"weight": 0.7, "how": "ties", "density": 0.5, "rank": 8, "seed": None}),
        ("acme/b:1", "combined_from", {"weight": 0.3, "how": "ties", "density": 0.5, "rank": 8, "seed": None}),
    ]
    a_show = cli("show", "acme/a", "--json").json()
    assert show["base_fingerprint"] == a_show["base_fingerprint"] is not None
    assert any(c["ref"] == "acme/merged:1" and c["relation"] == "combined_from" for c in a_show["children"])
    # the manifest records the same
    cfg_m, t_m = _pulled(cli, "acme/merged", str(tmp / "m"))
    with open(tmp / "m" / "adapterhub.json") as f:
        manifest = json.load(f)
    assert manifest["combine"]["weights"] == [0.7, 0.3] and manifest["combine"]["density"] == 0.5
    assert [i["ref"] for i in manifest["combine"]["inputs"]] == ["acme/a:1", "acme/b:1"]
    assert manifest["base"]["fingerprint"] == show["base_fingerprint"]
    # the tensors are TIES on ΔW: at full rank (16 = hidden) exactly the formula
    cfg_a, t_a = _pulled(cli, "acme/a", str(tmp / "pa"))
    cfg_b, t_b = _pulled(cli, "acme/b", str(tmp / "pb"))
    r = cli(
        "combine",
        "acme/a",
        "acme/b",
        "--how",
        "ties",
        "--weights",
        "0.7,0.3",
        "--density",
        "0.5",
        "--rank",
        "16",
        "--name",
        "acme/full",
    )
    assert r.exit_code == 0, r.output
    cfg_f, t_f = _pulled(cli, "acme/full", str(tmp / "f"))
    for key in [k for k in t_a if k.endswith("lora_A.weight")]:
        path = key[len(P) : -len(".lora_A.weight")]
        deltas = [_delta_full(c, t, path).numpy() for c, t in ((cfg_a, t_a), (cfg_b, t_b))]
        direct = _ties_direct(None, [0.7, 0.3], [_trim(d, 0.5) for d in deltas])
        np.testing.assert_allclose(_delta_full(cfg_f, t_f, path).numpy(), direct, atol=1e-5)


def test_cli_combine_dare_records_seed_and_is_deterministic(cli, two_pushed):
    args = ["combine", "acme/a", "acme/b", "--how", "dare_linear", "--density", "0.5", "--seed", "3"]
    r1 = cli(*args, "--name", "acme/d1", "--json")
    r2 = cli(*args, "--name", "acme/d2", "--json")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    s1, s2 = cli("show", "acme/d1", "--json").json(), cli("show", "acme/d2", "--json").json()
    assert s1["parents"][0]["details"]["seed"] == 3 and s1["parents"][0]["details"]["weight"] == 1.0
    assert [f["digest"] for f in s1["files"]] == [f["digest"] for f in s2["files"]]


def test_cli_cat_is_exact(cli, two_pushed):
    tmp, _ = two_pushed
    assert cli("combine", "acme/a", "acme/b", "--how", "cat", "--weights", "2,-1", "--name", "acme/cat").exit_code == 0
    cfg_c, t_c = _pulled(cli, "acme/cat", str(tmp / "c"))
    ins = [_pulled(cli, ref, str(tmp / ref.replace("/", "_"))) for ref in ("acme/a", "acme/b")]
    assert cfg_c.r == 6
    for key in [k for k in t_c if k.endswith("lora_A.weight")]:
        path = key[len(P) : -len(".lora_A.weight")]
        expect = 2 * _delta_full(*ins[0], path) - _delta_full(*ins[1], path)
        assert torch.allclose(_delta_full(cfg_c, t_c, path), expect, atol=1e-5)


def _dora_dir(path, seed=3):
    make_lora_dir(path, seed=seed, r=2, extra_config={"use_dora": True})
    t = load_file(os.path.join(path, "adapter_model.safetensors"))
    for k in list(t):
        if k.endswith("lora_B.weight"):
            t[k.replace("lora_B.weight", "lora_magnitude_vector")] = torch.ones(t[k].shape[0])
    save_file(t, os.path.join(path, "adapter_model.safetensors"))
    return str(path)


def _count(cli):
    return len(cli("list", "--json").json())


def test_cli_combine_bad_inputs(cli, two_pushed):
    tmp, base = two_pushed
    assert cli("push", _dora_dir(tmp / "d"), "acme/dora", "--base", base).exit_code == 0
    other = make_base_dir(tmp / "other", seed=9)
    assert cli("push", make_lora_dir(tmp / "o", seed=4), "acme/other", "--base", other).exit_code == 0
    assert cli("compose", "acme/a", "acme/b", "--name", "acme/stack").exit_code == 0
    n = _count(cli)
    cases = [
        (["acme/a", "acme/dora"], ["different methods", "acme/dora:1 (dora)"]),
        (["acme/a", "acme/other"], ["different base models", "acme/other:1"]),
        (["acme/a", "acme/b", "--weights", "1,2,3"], ["3 weight(s) given for 2"]),
        (["acme/a", "acme/b", "--weights", "1,x"], ["comma-separated numbers"]),
        (["acme/a", "acme/b", "--how", "ties", "--density", "0"], ["density must be in (0, 1]"]),
        (["acme/a", "acme/b", "--how", "dare_ties", "--density", "1.5"], ["density must be in (0, 1]"]),
        (["acme/a", "acme/b", "--how", "magnitude_prune"], ["--density is required"]),
        (["acme/a", "acme/b", "--how", "cat", "--rank", "2"], ["--rank applies only"]),
        (["acme/a", "acme/nope"], ["no adapter named 'acme/nope'"]),
        (["acme/a", "acme/stack"], ["acme/stack:1 is a composition"]),
        (["acme/a", "acme/b", "--how", "nope"], ["nope"]),
    ]
    for args, needles in cases:
        assert_clean_error(cli("combine", *args, "--name", "acme/out"), *needles)
    assert_clean_error(cli("combine", "acme/a", "acme/b", "--name", "Bad Name"), "Bad Name")
    assert_clean_error(
        cli("combine", "acme/dora", "acme/dora", "--name", "acme/out"), "DoRA adapters cannot be combined"
    )
    assert _count(cli) == n  # nothing written
