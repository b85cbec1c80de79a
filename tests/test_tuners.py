"""Unit tests for :mod:`adapterhub.tuning`, the building blocks the method plugins share.

The plugins' own tests (tests/plugins/) check the same code end to end against PEFT; these pin each helper's
contract on tiny hand-built torch models.
"""

from __future__ import annotations

import subprocess
import sys
import types
import warnings
from dataclasses import dataclass

import pytest
import torch as torch

from adapterhub import tuning as tuners
from adapterhub.errors import InvalidInput

nn = torch.nn


# -- tiny models ---------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(4, 4)
        self.v_proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


class Tiny(nn.Module):
    """``embed`` -> two blocks -> ``lm_head`` (the output embedding); ``classifier`` as a SEQ_CLS head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.classifier = nn.Linear(4, 2)
        self.config = types.SimpleNamespace(model_type="tiny")

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.layers:
            h = block.norm(block.q_proj(h) + block.v_proj(h))
        return self.lm_head(h)


class Wrapper(nn.Module):
    """A minimal module wrapper: ``base_layer(x) * scale`` with a trainable ``scale``."""

    def __init__(self, base_layer: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.scale = nn.Parameter(torch.full((1,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self.scale


LINEAR = (nn.Linear,)
SLOT = "_adapterhub_test"


def _paths(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


# -- import cost ---------------------------------------------------------------------------------------------
def test_importing_tuners_does_not_import_torch():
    code = "import sys, adapterhub.tuning; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- config validation ---------------------------------------------------------------------------------------
def test_check_module_names_normalises_and_refuses():
    assert tuners.check_module_names(None, "target_modules") is None
    assert tuners.check_module_names(("v", "q"), "target_modules") == ["q", "v"]
    assert tuners.check_module_names({"k"}, "target_modules") == ["k"]
    assert tuners.check_module_names("all-linear", "target_modules") == "all-linear"
    assert tuners.check_module_names(r".*\.q_proj", "target_modules") == r".*\.q_proj"
    with pytest.raises(ValueError, match="target_modules must be a list of names or a regex string, got int"):
        tuners.check_module_names(3, "target_modules")
    with pytest.raises(ValueError, match="layers must be non-empty strings"):
        tuners.check_module_names(["q", ""], "layers")
    with pytest.raises(ValueError, match="must not be an empty string"):
        tuners.check_module_names("", "target_modules")
    with pytest.raises(ValueError, match=r"target_modules: '\(' is not a valid regular expression"):
        tuners.check_module_names("(", "target_modules")


def test_check_modules_to_save_task_type_flags_and_ints():
    assert tuners.check_modules_to_save(None) == []
    assert tuners.check_modules_to_save(("classifier",)) == ["classifier"]
    for bad in ("classifier", [""], [3]):
        with pytest.raises(ValueError, match="modules_to_save must be a list of module names"):
            tuners.check_modules_to_save(bad)

    tuners.check_task_type(None)
    tuners.check_task_type("SEQ_CLS")
    with pytest.raises(ValueError, match=r"task_type must be one of A, B or empty, got 'C' \(why\)"):
        tuners.check_task_type("C", ("A", "B"), note=" (why)")

    cfg = types.SimpleNamespace(a=True, b="yes")
    tuners.check_flags(cfg, "a")
    with pytest.raises(ValueError, match="b must be true or false, got 'yes'"):
        tuners.check_flags(cfg, "a", "b")

    tuners.check_positive_int(3, "r")
    tuners.check_positive_int(None, "size", optional=True)
    for bad in (0, -1, True, 2.0, None):
        with pytest.raises(ValueError, match="r must be a positive integer"):
            tuners.check_positive_int(bad, "r")


def test_field_factories_carry_defaults_and_help():
    @dataclass
    class Cfg:
        target_modules: object = tuners.target_modules_field()
        modules_to_save: list = tuners.modules_to_save_field()
        fan_in_fan_out: bool = tuners.fan_in_fan_out_field()
        task_type: object = tuners.task_type_field(help="custom")

    a, b = Cfg(), Cfg()
    assert (a.target_modules, a.modules_to_save, a.fan_in_fan_out, a.task_type) == (None, [], False, None)
    assert a.modules_to_save is not b.modules_to_save  # a fresh list each time
    helps = {f.name: f.metadata["help"] for f in Cfg.__dataclass_fields__.values()}
    assert helps["target_modules"] == tuners.TARGET_MODULES_HELP and helps["task_type"] == "custom"


# -- PEFT adapter_config.json --------------------------------------------------------------------------------
@dataclass
class PeftCfg:
    r: int = 4
    modules_to_save: list = tuners.modules_to_save_field()
    task_type: object = None

    def __post_init__(self) -> None:
        tuners.check_positive_int(self.r, "r")


def test_peft_values_reads_known_keys_and_refuses_meaningful_unknown_ones():
    peft = {"peft_type": "FOO", "r": 2, "task_type": "CAUSAL_LM", "revision": "main", "layers_pattern": None}
    values = tuners.peft_values(peft, PeftCfg, peft_type="FOO", label="Foo")
    assert values == {"r": 2, "task_type": "CAUSAL_LM"}
    assert tuners.peft_config(PeftCfg, values, "Foo") == PeftCfg(r=2, task_type="CAUSAL_LM")
    assert tuners.peft_values(
        {"peft_type": "FOO", "extra": "none"}, PeftCfg, peft_type="FOO", neutral=tuners.NEUTRAL_VALUES + ("none",)
    ) == {"task_type": None}

    with pytest.raises(InvalidInput, match=r"not a PEFT Foo config \(peft_type='BAR'\)"):
        tuners.peft_values({"peft_type": "BAR"}, PeftCfg, peft_type="FOO", label="Foo")
    with pytest.raises(InvalidInput, match="PEFT FOO option layers_pattern='h' is not supported by adapterhub"):
        tuners.peft_values({"peft_type": "FOO", "layers_pattern": "h"}, PeftCfg, peft_type="FOO")
    with pytest.raises(InvalidInput, match="invalid PEFT Foo config: r must be a positive integer"):
        tuners.peft_config(PeftCfg, {"r": 0}, "Foo")


# -- TunerMethod ---------------------------------------------------------------------------------------------
@pytest.fixture
def fake_model_module(monkeypatch):
    """A stand-in torch side recording how :class:`TunerMethod` calls it."""
    calls = []
    mod = types.ModuleType("fake_tuner_model")
    mod.attach = lambda model, config, method: calls.append(("attach", config, method)) or config
    mod.attached = lambda model, method: types.SimpleNamespace(config=("effective", method))
    mod.state_dict = lambda model, method: {"k": method}
    mod.load_state_dict = lambda model, tensors, method: calls.append(("load", tensors, method))
    mod.detach = lambda model, method: calls.append(("detach", method))
    monkeypatch.setitem(sys.modules, "fake_tuner_model", mod)
    return calls


class FooMethod(tuners.TunerMethod):
    name = "foo"
    config_class = PeftCfg
    model_module = "fake_tuner_model"


@dataclass
class IdeaCfg:
    x: int = 1


class IdeaMethod(FooMethod):
    name = "idea"
    config_class = IdeaCfg


def test_tuner_method_coerces_configs_and_delegates_with_its_name(fake_model_module):
    method, model = FooMethod(), object()
    assert method.attach(model, {"r": 2}) == PeftCfg(r=2)
    assert method.effective_config(model) == ("effective", "foo")
    assert method.state_dict(model) == {"k": "foo"}
    method.load_state_dict(model, {"t": 1})
    method.detach(model)
    assert fake_model_module == [("attach", PeftCfg(r=2), "foo"), ("load", {"t": 1}, "foo"), ("detach", "foo")]

    cfg = PeftCfg(r=3)
    assert method._config(cfg) is cfg
    with pytest.raises(InvalidInput, match="unknown foo option"):
        method._config({"rank": 3})
    with pytest.raises(InvalidInput, match="foo expects a PeftCfg or a dict, got IdeaCfg"):
        method._config(IdeaCfg())
    with pytest.raises(InvalidInput, match="idea expects an IdeaCfg or a dict, got list"):
        IdeaMethod()._config([])


# -- selecting modules ---------------------------------------------------------------------------------------
def test_matching_rules_follow_peft():
    assert tuners.matches_target(["q_proj"], "layers.0.q_proj")
    assert tuners.matches_target(["layers.0.q_proj"], "layers.0.q_proj")
    assert not tuners.matches_target(["proj"], "layers.0.q_proj")  # a suffix must start at a dot
    assert tuners.matches_target(r".*\.0\.q_proj", "layers.0.q_proj")
    assert not tuners.matches_target(r"q_proj", "layers.0.q_proj")  # a regex must fullmatch

    assert tuners.excluded_by_modules_to_save(["classifier"], "classifier")
    assert tuners.excluded_by_modules_to_save(["classifier"], "model.classifier.dense")
    assert not tuners.excluded_by_modules_to_save(["classifier"], "model.classifier2")
    assert tuners.excluded_by_modules_to_save(["a.b"], "aXb")  # PEFT reads the names as regexes
    assert not tuners.excluded_by_modules_to_save(["a.b"], "aXb", literal=True)


def test_candidates_all_linear_and_select_targets():
    model = Tiny()
    assert tuners.candidate_names(model, LINEAR) == ["classifier", "lm_head", "q_proj", "v_proj"]
    assert "lm_head" not in tuners.all_linear(model, LINEAR, None)  # the output embedding is left out
    assert tuners.all_linear(model, LINEAR, None)[-1] == "classifier"

    headless = Tiny()
    headless.get_output_embeddings = lambda: None
    assert "classifier" not in tuners.all_linear(headless, LINEAR, "SEQ_CLS")  # SEQ_CLS: the head is left out
    assert "classifier" in tuners.all_linear(headless, LINEAR, "CAUSAL_LM")

    kw = dict(types=LINEAR, method="foo", task_type=None)
    assert tuners.select_targets(model, ["q_proj"], exclude=[], **kw) == ["layers.0.q_proj", "layers.1.q_proj"]
    assert "classifier" not in tuners.select_targets(model, "all-linear", exclude=["classifier"], **kw)
    with pytest.raises(
        InvalidInput,
        match=r"target_modules \['nope'\] matched no module of the model; "
        r"candidates: classifier, lm_head, q_proj, v_proj",
    ):
        tuners.select_targets(model, ["nope"], exclude=[], **kw)
    with pytest.raises(
        InvalidInput,
        match=r"matched 'layers.0.norm', a LayerNorm; foo wraps only Linear layers "
        r"\(candidates: classifier",
    ):
        tuners.select_targets(model, ["norm"], exclude=[], **kw)
    with pytest.raises(InvalidInput, match="target_modules 'all-linear' matched no module of the model; cand"):
        tuners.select_targets(nn.Sequential(nn.ReLU()), "all-linear", exclude=[], **kw)
    # one string is a regex over the full path (peft's rule): 'q_proj' alone matches nothing, and says why
    with pytest.raises(
        InvalidInput,
        match=r"target_modules 'q_proj' matched no module of the model \(one string "
        r"is a regular expression over the full module path.*'\.\*q_proj'\)",
    ):
        tuners.select_targets(model, "q_proj", exclude=[], **kw)


def test_select_targets_says_what_the_method_wraps_from_its_types_or_wraps():
    model = Tiny()
    kw = dict(method="foo", exclude=[], task_type=None)
    with pytest.raises(InvalidInput, match=r"a LayerNorm; foo wraps only Linear and Conv1D layers \(cand"):
        tuners.select_targets(model, ["norm"], types=tuners.linear_types(), **kw)
    with pytest.raises(InvalidInput, match=r"a LayerNorm; foo wraps only Linear, Conv1D and Embedding layers"):
        tuners.select_targets(model, ["norm"], types=tuners.linear_types() + (nn.Embedding,), **kw)
    with pytest.raises(InvalidInput, match=r"a LayerNorm; foo adapts attention projections \(candidates: "):
        tuners.select_targets(model, ["norm"], types=LINEAR, wraps="foo adapts attention projections", **kw)
    assert tuners.layer_kinds((nn.Linear,)) == "Linear layers"


def test_match_modules_names_the_field_and_what_the_method_adapts():
    model = Tiny()
    got = tuners.match_modules(
        model,
        r".*\.v_proj",
        types=LINEAR,
        field="target_layers",
        wraps="bar goes after Linear layers",
        candidates=lambda: ["x"],
        exclude=["layers.1"],
    )
    assert got == ["layers.0.v_proj"]
    with pytest.raises(
        InvalidInput,
        match=r"target_layers matched 'embed', a Embedding; bar goes after Linear "
        r"layers \(candidates: x\)",
    ):
        tuners.match_modules(
            model,
            ["embed"],
            types=LINEAR,
            field="target_layers",
            wraps="bar goes after Linear layers",
            candidates=lambda: ["x"],
        )


def test_peft_default_and_seq_cls_heads_record_their_changes():
    model, changes = Tiny(), []
    got = tuners.peft_default(
        model, {"tiny": ["q_proj"]}, field="target_modules", method="foo", changes=changes, hint="unused"
    )
    assert got == ["q_proj"] and changes == ["target_modules = ['q_proj'] (PEFT's default for tiny)"]
    with pytest.raises(InvalidInput, match=r"no default foo ff for model type 'tiny'; set ff \(a hint\)"):
        tuners.peft_default(model, {}, field="ff", method="foo", changes=[], hint=lambda: "a hint")

    changes = []
    assert tuners.with_seq_cls_heads(["x", "x"], None, changes) == ["x"] and changes == []
    assert tuners.with_seq_cls_heads(["score"], "SEQ_CLS", changes) == ["score", "classifier", "pre_classifier"]
    assert changes == [
        "modules_to_save += ['classifier', 'pre_classifier'] (task_type SEQ_CLS trains the head, as PEFT does)"
    ]
    assert tuners.with_seq_cls_heads([], "SEQ_CLS") == ["classifier", "score", "pre_classifier"]  # no record asked for


def test_modules_to_save_paths():
    model = Tiny()
    assert tuners.modules_to_save_paths(model, ["classifier", "score", "pre_classifier"]) == [
        "classifier"
    ]  # heads may be absent
    assert tuners.modules_to_save_paths(model, ["layers.0", "q_proj"]) == ["layers.0", "layers.1.q_proj"]
    assert tuners.modules_to_save_paths(model, ["norm"]) == ["layers.0.norm", "layers.1.norm"]
    with pytest.raises(InvalidInput, match=r"modules_to_save \['pooler'\] matched no module of the model"):
        tuners.modules_to_save_paths(model, ["classifier", "pooler"])


def test_fan_in_fan_out_follows_the_layer_type():
    from transformers.pytorch_utils import Conv1D

    model = nn.Sequential(nn.Linear(2, 2), Conv1D(2, 2), Conv1D(2, 2))
    assert tuners.linear_types() == (nn.Linear, Conv1D)
    assert tuners.is_conv1d(model[1]) and not tuners.is_conv1d(model[0])
    changes = []
    assert tuners.fan_in_fan_out(model, ["1", "2"], False, method="foo", changes=changes) is True
    assert changes == ["fan_in_fan_out = True (the targeted layers are Conv1D, as PEFT sets it)"]
    changes = []
    assert tuners.fan_in_fan_out(model, ["0"], False, method="foo", changes=changes) is False and changes == []
    with pytest.raises(InvalidInput, match="foo cannot target Linear and Conv1D layers in the same adapter"):
        tuners.fan_in_fan_out(model, ["0", "1"], False, method="foo", changes=[])


def test_warn_changes_points_past_the_plugin_at_its_caller_and_is_silent_without_changes():
    plugin: dict = {"__name__": "adapterhub_fake.model", "tuners": tuners}  # a plugin's resolve / attach
    exec(
        "def resolve(changes):\n    tuners.warn_changes('foo', changes)\ndef attach(changes):\n    resolve(changes)\n",
        plugin,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugin["attach"]([])
        plugin["attach"](["a = 1", "b = 2"])
    assert [str(w.message) for w in caught] == ["foo effective config differs from the one given: a = 1; b = 2"]
    assert caught[0].filename == __file__


# -- attach bookkeeping --------------------------------------------------------------------------------------
def test_state_slot_messages():
    model = Tiny()
    tuners.check_free(model, SLOT)
    with pytest.raises(InvalidInput, match="no foo adapter is attached to this model$"):
        tuners.attached(model, SLOT, family="foo")
    model.__dict__[SLOT] = tuners.Attached("ia3", None, {}, {})
    assert tuners.attached(model, SLOT, "ia3", family="foo").method == "ia3"
    assert tuners.attached(model, SLOT, family="foo").method == "ia3"
    with pytest.raises(InvalidInput, match=r"no bar adapter is attached to this model \(a ia3 adapter is\)"):
        tuners.attached(model, SLOT, "bar", family="foo")
    with pytest.raises(InvalidInput, match="an ia3 adapter is already attached to this model; detach it first"):
        tuners.check_free(model, SLOT)


def test_freeze_train_copies_and_release_restore_the_model():
    model = Tiny()
    model.embed.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    original = model.classifier

    flags = tuners.freeze(model)
    assert flags == before and not any(p.requires_grad for p in model.parameters())
    saved = tuners.train_copies(model, ["classifier"])
    assert saved == {"classifier": original} and model.classifier is not original
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert not any(p.requires_grad for p in original.parameters())  # the original stays frozen
    model.__dict__[SLOT] = tuners.Attached("foo", None, saved, flags)

    tuners.release(model, SLOT, tuners.attached(model, SLOT, family="foo"))
    assert model.classifier is original and SLOT not in model.__dict__
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_attach_wrappers_and_detach_wrappers_round_trip():
    model = Tiny().eval()
    x = torch.tensor([[1, 2, 3]])
    reference = model(x)
    resolve = lambda m: ("effective", ["layers.0.q_proj", "layers.1.v_proj"], ["classifier"])  # noqa: E731

    got = tuners.attach_wrappers(model, SLOT, "foo", resolve, lambda cfg, path, base: Wrapper(base))
    assert got == "effective"
    state = tuners.attached(model, SLOT, "foo", family="foo")
    assert state.targets == ["layers.0.q_proj", "layers.1.v_proj"] and list(state.saved) == ["classifier"]
    assert isinstance(model.layers[0].q_proj, Wrapper) and not model.layers[0].q_proj.training  # follows eval()
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["classifier.bias", "classifier.weight", "layers.0.q_proj.scale", "layers.1.v_proj.scale"]
    assert torch.equal(model(x), reference)
    with pytest.raises(InvalidInput, match="a foo adapter is already attached"):
        tuners.attach_wrappers(model, SLOT, "foo", resolve, lambda cfg, path, base: Wrapper(base))

    tuners.detach_wrappers(model, SLOT, "foo", family="foo")
    assert isinstance(model.layers[0].q_proj, nn.Linear) and SLOT not in model.__dict__
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(InvalidInput, match="no foo adapter is attached"):
        tuners.detach_wrappers(model, SLOT, None, family="foo")


# -- state dicts ---------------------------------------------------------------------------------------------
def test_saved_tensors_share_storage_and_load_strict_copies_into_them():
    model = Tiny()
    expected = tuners.saved_tensors(model, ["classifier"])
    assert sorted(expected) == ["base_model.model.classifier.bias", "base_model.model.classifier.weight"]
    assert tuners.saved_tensors(model, ["classifier"], prefix="base_model.").keys() == {
        "base_model.classifier.bias",
        "base_model.classifier.weight",
    }
    new = {k: torch.randn_like(v) for k, v in expected.items()}
    tuners.load_strict("foo", expected, new)
    assert torch.equal(model.classifier.weight, new["base_model.model.classifier.weight"])
    assert not model.classifier.weight.requires_grad or model.classifier.weight.grad is None


def test_check_fit_refuses_what_does_not_fit():
    shapes = {"a": (2, 3), "b": (4,)}
    tuners.check_fit("foo", shapes, {"a": torch.zeros(2, 3), "b": torch.zeros(4)})
    with pytest.raises(
        InvalidInput,
        match=r"foo tensors do not fit the attached adapter: 1 missing key\(s\), "
        r"e.g. b; 1 unexpected key\(s\), e.g. c",
    ):
        tuners.check_fit("foo", shapes, {"a": torch.zeros(2, 3), "c": torch.zeros(4)})
    with pytest.raises(
        InvalidInput,
        match=r"foo tensor 'a' has shape \(3, 2\) but the attached adapter expects "
        r"\(2, 3\) \(transposed\?\)$",
    ):
        tuners.check_fit(
            "foo",
            shapes,
            {"a": torch.zeros(3, 2), "b": torch.zeros(4)},
            hint=lambda key, got, want: " (transposed?)" if got == want[::-1] else "",
        )
    with pytest.raises(InvalidInput, match=r"foo tensor 'b' has shape list but the attached adapter expects \(4,\)"):
        tuners.check_fit("foo", shapes, {"a": torch.zeros(2, 3), "b": [0, 0, 0, 0]})


def test_saved_copy_for_the_streaming_merge():
    base = torch.zeros(2, 3, dtype=torch.bfloat16)
    tensors = {"base_model.model.head.weight": torch.ones(2, 3)}
    got = tuners.saved_copy("head.weight", base, tensors)
    assert got.dtype == torch.bfloat16 and torch.equal(got, torch.ones(2, 3, dtype=torch.bfloat16))
    assert got.data_ptr() != tensors["base_model.model.head.weight"].data_ptr()  # a copy
    assert tuners.saved_copy("other.weight", base, tensors) is None
    with pytest.raises(
        InvalidInput,
        match=r"'base_model.model.head.weight' has shape \(2, 3\), base 'head.weight' "
        r"has \(3, 2\)",
    ):
        tuners.saved_copy("head.weight", torch.zeros(3, 2), tensors)


# -- peft's tables, pattern rule and adapter dtype -----------------------------------------------------------
def test_default_target_tables_are_peft_s():
    from peft.utils import constants as pc

    for ours, theirs in (
        (tuners.LORA_TARGETS, pc.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING),
        (tuners.LORA_TARGETS, pc.TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING),
        (tuners.LORA_TARGETS, pc.TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING),
        (tuners.VERA_TARGETS, pc.TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING),
        (tuners.IA3_TARGETS, pc.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING),
        (tuners.IA3_FEEDFORWARD, pc.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING),
    ):
        assert ours and all(theirs[kind] == names for kind, names in ours.items())
    assert tuners.VERA_TARGETS["phi"] != tuners.LORA_TARGETS["phi"]


def test_pattern_value_is_peft_s_get_pattern_key_and_exact_keys_match_one_module():
    from peft.utils.other import get_pattern_key

    pattern = {"q_proj": 4, r"layers\.1\.v_proj": 2, "v_proj": 6}
    for path in ("layers.0.q_proj", "layers.1.v_proj", "layers.0.v_proj", "layers.0.k_proj", "xq_proj"):
        assert tuners.pattern_key(pattern, path) == get_pattern_key(pattern.keys(), path)
        assert tuners.pattern_value(pattern, path, 8) == pattern.get(get_pattern_key(pattern.keys(), path), 8)
    assert tuners.pattern_value(pattern, "layers.1.v_proj", 8) == 2 and tuners.pattern_value({}, "a", 8) == 8
    key = tuners.exact_pattern_key("layers.1.q_proj")
    assert tuners.pattern_value({key: 3}, "layers.1.q_proj", 8) == 3
    assert tuners.pattern_value({key: 3}, "layers.1xq_proj", 8) == 8  # the dots are literal


@pytest.mark.parametrize(
    "pattern,integer,message",
    [
        ([("a", 1)], True, "rank_pattern must be a mapping {regex: value}, got list"),
        ({"a": 0}, True, "rank_pattern['a'] must be a positive integer, got 0"),
        ({"a": 1.5}, True, "rank_pattern['a'] must be a positive integer, got 1.5"),
        ({"a": True}, False, "rank_pattern['a'] must be a positive number, got True"),
        ({"(a": 1}, False, "rank_pattern: '(a' is not a valid regular expression"),
        ({"(a+)*": 1}, True, "rank_pattern: '(a+)*' repeats a group"),
    ],
)
def test_check_pattern_refuses_bad_keys_and_values_in_one_line(pattern, integer, message):
    with pytest.raises(ValueError) as err:
        tuners.check_pattern(pattern, "rank_pattern", integer=integer)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_check_pattern_keeps_a_good_pattern_and_reads_none_as_empty():
    assert tuners.check_pattern({"q_proj": 2.5}, "alpha_pattern") == {"q_proj": 2.5}
    assert tuners.check_pattern(None, "alpha_pattern") == {}


def test_adapter_dtype_is_peft_s_autocast_rule():
    assert [
        tuners.adapter_dtype(d) for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8)
    ] == [torch.float32, torch.float32, torch.float32, torch.float64, torch.float32]
    assert tuners.adapter_dtype() == torch.float32
    assert tuners.upcast_adapter(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert tuners.upcast_adapter(torch.ones(2, dtype=torch.float64)).dtype == torch.float64
