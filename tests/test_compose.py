"""Stacks and per-row routing (``adapterhub.operations.compose``) on tiny Llama-GQA, against each row run alone and against
the real ``peft`` (mixed-batch ``adapter_names=`` and several active adapters), plus compositions in the registry
(``compose`` CLI, ``composed_of`` lineage, ``load_stack``) and every bad input."""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch as torch
from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import tinymodels as tm  # noqa: E402
from adapterhub_lora import DoraMethod, LoraMethod  # noqa: E402
from conftest import assert_clean_error, make_base_dir, make_lora_dir  # noqa: E402

from adapterhub.errors import AdapterhubError, InvalidInput  # noqa: E402
from adapterhub.files.checkpoint import LoadedAdapter, save_adapter  # noqa: E402
from adapterhub.method import Method  # noqa: E402
from adapterhub.operations import compose  # noqa: E402

LORA, DORA = LoraMethod(), DoraMethod()
TOL = 1e-5


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _adapter(method, seed, fingerprint="sha256:base", **opts) -> LoadedAdapter:
    """A LoadedAdapter for tiny Llama with random non-zero factors (and perturbed DoRA magnitudes)."""
    model = tm.tiny_llama()
    eff = method.attach(model, method.make_config(dict(init_lora_weights=False, **opts)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                noise = torch.randn(p.shape, generator=g)
                p.mul_(1 + 0.1 * noise) if "magnitude" in name else p.add_(0.1 * noise)
    tensors = {k: v.clone() for k, v in method.state_dict(model).items()}
    return LoadedAdapter(method, eff, tensors, {"method": method.name, "base": {"fingerprint": fingerprint}})


@pytest.fixture(scope="module")
def adapters():
    """Three LoRA adapters of different ranks and targets (one rsLoRA with patterns) and a DoRA adapter."""
    return {
        "support": _adapter(LORA, 1, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
        "sales": _adapter(
            LORA,
            2,
            r=8,
            lora_alpha=8,
            target_modules=["k_proj", "o_proj", "down_proj"],
            use_rslora=True,
            rank_pattern={"down_proj": 4},
        ),
        "legal": _adapter(LORA, 3, r=4, lora_alpha=16, target_modules="all-linear"),
        "dora": _adapter(DORA, 4, r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]),
    }


def _inputs(rows, seq=7):
    return tm.inputs_for("llama", batch=rows, seq=seq)


def _alone(adapter, inputs, row):
    model = tm.tiny_llama()
    if adapter is not None:
        adapter.method.attach(model, adapter.config)
        adapter.method.load_state_dict(model, adapter.tensors)
    with torch.no_grad():
        return tm.logits(model, {k: v[row : row + 1] for k, v in inputs.items()})


def _expected(adapters, names, inputs):
    return torch.cat([_alone(adapters.get(n), inputs, i) for i, n in enumerate(names)])


# -- routing -----------------------------------------------------------------------------------------------
MIXED = ["support", "__base__", "sales", "legal", "support", "dora", "__base__", "legal"]
GROUPED = ["__base__", "__base__", "support", "support", "sales", "legal", "legal", "dora"]


@pytest.mark.parametrize("path", ["dense", "grouped", "in-place"])
@pytest.mark.parametrize("names", [MIXED, GROUPED], ids=["shuffled", "sorted"])
def test_routed_rows_equal_each_row_alone(adapters, names, path, monkeypatch):
    """Each of the three exact paths (dense masks; rows gathered by adapter; runs of rows updated where
    they lie, used for long rows in layers without DoRA) gives every row what it gets alone."""
    from adapterhub_lora.multi import RoutedLoraLinear

    monkeypatch.setattr(RoutedLoraLinear, "dense_budget", 10**18 if path == "dense" else 0)
    monkeypatch.setattr(RoutedLoraLinear, "in_place_tokens", 1 if path == "in-place" else 10**9)
    inputs = _inputs(len(names))
    expect = _expected(adapters, names, inputs)
    base = tm.tiny_llama()
    with torch.no_grad():
        base_out = tm.logits(base, inputs)
    router = compose.attach_routed(base, adapters)
    with torch.no_grad():
        got = tm.logits(base, {**inputs, "adapter_names": names})
        with router.route(names):
            got_ctx = tm.logits(base, inputs)
    assert (got - expect).abs().max() <= TOL
    assert torch.equal(got, got_ctx)
    for i, n in enumerate(names):  # every adapter really changes its rows; base rows stay base
        diff = (got[i] - base_out[i]).abs().max()
        assert (diff > 1e-3) if n != "__base__" else (diff <= TOL), n
    router.detach()
    with torch.no_grad():
        assert torch.equal(tm.logits(base, inputs), base_out)
    assert "forward" not in base.__dict__ and all(p.requires_grad for p in base.parameters())


class _SharedInput(torch.nn.Module):
    """Two projections on one input tensor, as q/k/v share theirs, but the input is written in place between
    them (``x *= 2``) and then again before a third: a routed layer must not reuse rows cached from before."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.q_proj, self.k_proj, self.o_proj = (torch.nn.Linear(6, 5) for _ in range(3))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        a = self.q_proj(x)
        b = self.q_proj(x)  # the same input twice: the cached grouping is reused
        x.mul_(2)
        c = self.k_proj(x)
        x.add_(1)
        return torch.cat([a, b, c, self.o_proj(x)], dim=-1)


@pytest.mark.parametrize(
    "names", [["a", "b", "__base__", "a", "b", "b"], ["__base__", "a", "a", "b", "b", "b"]], ids=["shuffled", "sorted"]
)
def test_routed_input_written_in_place_between_layers(names, monkeypatch):
    from adapterhub_lora.multi import RoutedLoraLinear

    monkeypatch.setattr(RoutedLoraLinear, "dense_budget", 0)  # the grouped path, which caches per input
    adapters = {}
    for seed, n in enumerate(["a", "b"]):
        model = _SharedInput()
        eff = LORA.attach(
            model,
            LORA.make_config(
                dict(init_lora_weights=False, r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "o_proj"])
            ),
        )
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in (p for p in model.parameters() if p.requires_grad):
                p.add_(torch.randn(p.shape, generator=g))
        adapters[n] = LoadedAdapter(
            LORA,
            eff,
            {k: v.clone() for k, v in LORA.state_dict(model).items()},
            {"method": "lora", "base": {"fingerprint": "sha256:x"}},
        )
    x = torch.randn(len(names), 3, 6, generator=torch.Generator().manual_seed(9))
    expect = []
    for i, n in enumerate(names):
        alone = _SharedInput()
        if n != "__base__":
            LORA.attach(alone, adapters[n].config)
            LORA.load_state_dict(alone, adapters[n].tensors)
        with torch.no_grad():
            expect.append(alone(x[i : i + 1].clone()))
    routed = _SharedInput()
    router = compose.attach_routed(routed, adapters)
    with torch.no_grad(), router.route(names):
        got = routed(x.clone())
    assert (got - torch.cat(expect)).abs().max() <= TOL


def test_routed_matches_peft_mixed_batch(adapters, tmp_path):
    import peft as peft

    lora_names = ["support", "sales", "legal"]
    for n in lora_names:
        a = adapters[n]
        save_adapter(str(tmp_path / n), {"method": "lora"}, a.tensors, peft_config=LORA.to_peft_config(a.config))
    pm = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path / "support"), adapter_name="support")
    for n in lora_names[1:]:
        pm.load_adapter(str(tmp_path / n), adapter_name=n)
    names = ["legal", "support", "__base__", "sales", "sales", "legal"]
    inputs = _inputs(len(names), seq=5)
    ours = tm.tiny_llama()
    compose.attach_routed(ours, {n: adapters[n] for n in lora_names})
    with torch.no_grad():
        theirs = tm.logits(pm, {**inputs, "adapter_names": names})
        got = tm.logits(ours, {**inputs, "adapter_names": names})
    assert (got - theirs).abs().max() <= TOL


def test_routed_bad_calls(adapters):
    model = tm.tiny_llama()
    router = compose.attach_routed(model, {"support": adapters["support"], "sales": adapters["sales"]})
    inputs = _inputs(2)
    with pytest.raises(InvalidInput, match="unknown adapter name"):
        model(**inputs, adapter_names=["support", "nope"])
    with pytest.raises(InvalidInput, match="3 adapter name"):
        model(**inputs, adapter_names=["support", "sales", "support"])
    with pytest.raises(InvalidInput, match="adapter_names"):
        model(**inputs)
    with pytest.raises(InvalidInput, match="a list"):
        with router.route("support"):
            pass
    with pytest.raises(InvalidInput, match="already attached"):
        compose.attach_routed(model, {"legal": adapters["legal"]})
    router.detach()
    with pytest.raises(InvalidInput, match="detached"):  # else it would run the base model silently
        with router.route(["support", "sales"]):
            pass
    with pytest.raises(InvalidInput, match="reserved"):
        compose.attach_routed(model, {"__base__": adapters["support"]})
    with pytest.raises(InvalidInput, match=r"takes \{name: LoadedAdapter\}, not a list"):
        compose.attach_routed(model, [adapters["support"]])
    with pytest.raises(InvalidInput, match="of type int") as err:
        compose.attach_routed(model, {3: adapters["support"]})
    assert len(str(err.value)) < 200
    with pytest.raises(InvalidInput, match="not a dict"):
        compose.attach_stack(model, {"a": adapters["support"]})
    with pytest.raises(InvalidInput, match="expected LoadedAdapter"):
        compose.attach_stack(model, ["support"])
    other = _adapter(LORA, 5, fingerprint="sha256:other", r=2, target_modules=["q_proj"])
    with pytest.raises(InvalidInput, match="different base models"):
        compose.attach_routed(model, {"a": adapters["support"], "b": other})
    mts = _adapter(LORA, 6, r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(InvalidInput, match="modules_to_save"):
        compose.attach_routed(model, {"a": mts})
    assert "forward" not in model.__dict__  # failed attaches leave the model as it was
    with torch.no_grad():
        assert torch.equal(tm.logits(model, inputs), tm.logits(tm.tiny_llama(), inputs))


class _NoMultiMethod(Method):
    """A method with only the required interface (no stacking, no routing)."""

    name = "plain"

    def attach(self, model, config):
        model.__dict__["_plain"] = True
        return config

    def load_state_dict(self, model, tensors):
        pass

    def detach(self, model):
        model.__dict__.pop("_plain")


def test_methods_without_capabilities_give_clear_errors(adapters):
    plain = LoadedAdapter(_NoMultiMethod(), None, {}, {})
    model = tm.tiny_llama()
    with pytest.raises(AdapterhubError, match="method 'plain' does not support per-row routing"):
        compose.attach_routed(model, {"lora": adapters["support"], "p": plain})
    assert "_adapterhub_lora_multi" not in model.__dict__  # the LoRA part was undone
    with pytest.raises(AdapterhubError, match="method 'plain' cannot stack several adapters"):
        compose.attach_stack(model, [adapters["support"], plain, plain])
    assert "_adapterhub_lora" not in model.__dict__ and "_plain" not in model.__dict__
    stack = compose.attach_stack(model, [adapters["support"], plain])  # one of it: plain attach
    assert "_plain" in model.__dict__
    stack.detach()
    assert "_plain" not in model.__dict__


# -- stacks ------------------------------------------------------------------------------------------------
def test_stack_matches_peft_with_several_active_adapters(adapters, tmp_path):
    import peft as peft

    order = ["support", "dora", "legal", "sales"]
    for n in order:
        a = adapters[n]
        save_adapter(
            str(tmp_path / n), {"method": a.method.name}, a.tensors, peft_config=a.method.to_peft_config(a.config)
        )
    pm = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path / order[0]), adapter_name=order[0])
    for n in order[1:]:
        pm.load_adapter(str(tmp_path / n), adapter_name=n)
    pm.base_model.set_adapter(order)
    inputs = _inputs(3)
    model = tm.tiny_llama()
    stack = compose.attach_stack(model, [adapters[n] for n in order])
    assert [c.r for c in stack.configs] == [2, 4, 4, 8]
    with torch.no_grad():
        theirs, ours = tm.logits(pm, inputs), tm.logits(model, inputs)
        single = _alone(adapters["support"], inputs, 0)
    assert (ours[:1] - single).abs().max() > 1e-3
    assert (ours - theirs).abs().max() <= TOL
    stack.detach()
    with torch.no_grad():
        assert torch.equal(tm.logits(model, inputs), tm.logits(tm.tiny_llama(), inputs))


def test_lora_stack_equals_cat_combination(adapters):
    members = [adapters["support"], adapters["sales"], adapters["legal"]]
    config, tensors = LORA.combine([(a.config, a.tensors) for a in members], [1.0, 1.0, 1.0], "cat")
    inputs = _inputs(2)
    stacked, combined = tm.tiny_llama(), tm.tiny_llama()
    compose.attach_stack(stacked, members)
    LORA.attach(combined, config)
    LORA.load_state_dict(combined, tensors)
    with torch.no_grad():
        assert (tm.logits(stacked, inputs) - tm.logits(combined, inputs)).abs().max() <= TOL


def test_stack_refuses_bad_tensors(adapters):
    a = adapters["support"]
    broken = LoadedAdapter(LORA, a.config, {k: v for k, v in list(a.tensors.items())[1:]}, a.manifest)
    model = tm.tiny_llama()
    with pytest.raises(InvalidInput, match="adapter 2: lora tensors do not fit"):
        compose.attach_stack(model, [adapters["legal"], broken])
    with pytest.raises(InvalidInput, match="at least one"):
        compose.attach_stack(model, [])
    assert "_adapterhub_lora_multi" not in model.__dict__


# -- compositions in the registry --------------------------------------------------------------------------
@pytest.fixture
def pushed(cli, tmp_path):
    base = make_base_dir(tmp_path / "base")
    for i, n in enumerate(("a", "b", "c")):
        assert cli("push", make_lora_dir(tmp_path / n, seed=i, r=2 + i), f"acme/{n}", "--base", base).exit_code == 0
    return tmp_path


def test_cli_compose_lineage_and_load_stack(cli, pushed, home):
    r = cli("compose", "acme/b", "acme/a:1", "acme/c", "--name", "acme/stack", "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["ref"] == "acme/stack:1" and [s["ref"] for s in r.json()["stack"]] == [
        "acme/b:1",
        "acme/a:1",
        "acme/c:1",
    ]
    show = cli("show", "acme/stack", "--json").json()
    assert show["kind"] == "composition" and show["method"] == "lora"
    assert [(p["ref"], p["relation"], p["details"]) for p in show["parents"]] == [
        ("acme/b:1", "composed_of", {"position": 0}),
        ("acme/a:1", "composed_of", {"position": 1}),
        ("acme/c:1", "composed_of", {"position": 2}),
    ]
    assert show["base_fingerprint"] == cli("show", "acme/a", "--json").json()["base_fingerprint"]
    again = cli("compose", "acme/b", "acme/a", "acme/c", "--name", "acme/stack", "--json").json()
    assert again["version"] == 1 and not again["created"]  # same stack: same digest, idempotent
    # nested compositions flatten, in order
    assert cli("compose", "acme/stack", "acme/a", "--name", "acme/outer").exit_code == 0
    from adapterhub.api import open_registry

    reg = open_registry(str(home))
    loaded = compose.load_stack(reg, "acme/outer")
    assert [a.config.r for a in loaded] == [3, 2, 4, 2]
    expect = load_file(str(pushed / "b" / "adapter_model.safetensors"))
    assert all(torch.equal(loaded[0].tensors[k], v) for k, v in expect.items())
    assert [a.config.r for a in compose.load_stack(reg, "acme/c")] == [4]
    pulled = cli("pull", "acme/stack", "--out", pushed / "s")
    assert pulled.exit_code == 0 and os.listdir(pushed / "s") == ["adapterhub.json"]


def test_cli_compose_bad_inputs(cli, pushed):
    other = make_base_dir(pushed / "other", seed=5)
    assert cli("push", make_lora_dir(pushed / "o", seed=9), "acme/other", "--base", other).exit_code == 0
    n = len(cli("list", "--json").json())
    assert_clean_error(cli("compose", "acme/a", "acme/other", "--name", "acme/s"), "different base models")
    assert_clean_error(cli("compose", "acme/a", "acme/nope", "--name", "acme/s"), "no adapter named 'acme/nope'")
    assert_clean_error(cli("compose", "acme/a", "acme/b:7", "--name", "acme/s"), "acme/b has no version 7")
    assert_clean_error(cli("compose", "acme/a", "--name", "NOT OK"), "NOT OK")
    assert_clean_error(cli("compose", "--name", "acme/s"), "REFS")
    assert len(cli("list", "--json").json()) == n


def test_composition_from_the_registry_runs_as_stack_and_routed(cli, adapters, tmp_path, home):
    from adapterhub.api import open_registry

    order = ["legal", "dora", "support"]
    for n in order:
        a = adapters[n]
        path = save_adapter(
            str(tmp_path / n),
            {"method": a.method.name, "config": {**a.config.__dict__}},
            a.tensors,
            peft_config=a.method.to_peft_config(a.config),
        )
        assert cli("push", path, f"acme/{n}").exit_code == 0
    assert cli("compose", *[f"acme/{n}" for n in order], "--name", "acme/tenants").exit_code == 0
    loaded = compose.load_stack(open_registry(str(home)), "acme/tenants")
    assert [a.method.name for a in loaded] == ["lora", "dora", "lora"]
    inputs = _inputs(3)
    from_registry, in_memory = tm.tiny_llama(), tm.tiny_llama()
    compose.attach_stack(from_registry, loaded)
    compose.attach_stack(in_memory, [adapters[n] for n in order])
    with torch.no_grad():
        assert torch.equal(tm.logits(from_registry, inputs), tm.logits(in_memory, inputs))
    routed = tm.tiny_llama()
    compose.attach_routed(routed, dict(zip(order, loaded)))
    names = ["support", "legal", "dora"]
    with torch.no_grad():
        got = tm.logits(routed, {**inputs, "adapter_names": names})
    assert (got - _expected(adapters, names, inputs)).abs().max() <= TOL
