"""The conformance suite every method plugin passes, as peft's ``PeftCommonTester`` is for peft's tuners.

Subclass it in a pytest module (the class name must start with ``Test``) and say what to build::

    import peft
    from adapterhub_lora import LoraMethod

    from adapterhub.testing.conformance import PeftMergeParity

    class TestLora(PeftMergeParity):         # MethodConformance alone for a method peft lacks
        method = LoraMethod()
        options = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
        peft_config = staticmethod(lambda options: peft.LoraConfig(**options))

What it checks, on a tiny model of :mod:`adapterhub.testing.models` (``model``, default ``"llama"``):
attaching keeps the outputs bit for bit (with default init) and makes only the adapter trainable; ``detach``
restores the model exactly (modules, tensors, flags, hooks) and leaves it attachable again; the state dict
round-trips exactly, also through an adapter directory on disk; tensor checks (given safetensors header entries
or torch tensors) refuse a wrong shape and a non-floating dtype; and, with ``peft_config`` (:class:`PeftParity`),
peft's own adapter loads into ours with the same outputs (within ``tolerance``) and ``merge_tensor`` reproduces
peft's ``merge_and_unload`` bit for bit in float32 and bfloat16 (:class:`PeftMergeParity`). ``build`` (the
model) and ``output`` may be overridden, e.g. for a model the tiny set lacks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, ClassVar, cast

import pytest
import torch

from ..errors import InvalidInput
from . import models

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def header_entries(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What ``Method.check_tensors`` is given when a directory is read: each tensor's safetensors header
    entry (``dtype`` as ``"F32"``, ``shape`` as a tuple), no data."""
    return {k: SimpleNamespace(dtype=_DTYPES.get(v.dtype, "I32"), shape=tuple(v.shape)) for k, v in tensors.items()}


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int = 1, scale: float = 0.5) -> None:
    """Add seeded noise to every trainable parameter, so that no parity check can pass on zero-init weights."""
    g = torch.Generator().manual_seed(seed)
    for _, p in model.named_parameters():
        if p.requires_grad:
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))


def _hooks(model: torch.nn.Module) -> int:
    """How many forward and forward-pre hooks the model's modules hold (an attach may add some; detach removes them)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class MethodConformance:
    """Base class of a plugin's conformance tests (not collected itself: its name does not start with Test)."""

    #: the method object under test
    method: ClassVar[Any]
    #: options for ``method.make_config`` (and, with ``peft_config``, for peft's config too)
    options: ClassVar[dict[str, Any]] = {}
    #: a key of ``adapterhub.testing.models.MODELS``
    model: ClassVar[str] = "llama"
    #: ``options -> peft config`` (for :class:`PeftParity`)
    peft_config: ClassVar[Callable[[dict[str, Any]], Any] | None] = None
    #: whether a freshly attached adapter (default init) leaves the outputs unchanged
    identity_at_init: ClassVar[bool] = True
    #: largest absolute difference allowed between our outputs and peft's (float32)
    tolerance: ClassVar[float] = 1e-5

    @pytest.fixture(autouse=True)
    def _quiet(self) -> Iterator[None]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield

    def build(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        return models.MODELS[self.model](dtype)

    def output(self, model: torch.nn.Module) -> torch.Tensor:
        """The model's output on a fixed batch (logits, or the last hidden state of a headless encoder)."""
        with torch.no_grad():
            return models.logits(model, models.inputs_for(self.model))

    def attached(self, seed: int | None = 1) -> tuple[torch.nn.Module, Any]:
        """A fresh model with the adapter attached (randomised with ``seed`` unless ``None``)."""
        model = self.build()
        config = self.method.make_config(dict(self.options))
        config = self.method.attach(model, config) or config
        if seed is not None:
            randomise(model, seed)
        return model, config

    # -- attach / detach ---------------------------------------------------------------------------------
    def test_attach_trains_only_the_adapter_and_keeps_outputs_at_init(self) -> None:
        model = self.build()
        before = self.output(model)
        self.method.attach(model, self.method.make_config(dict(self.options)))
        # (that every trainable tensor is saved is what the state-dict round trip proves)
        assert any(p.requires_grad for p in model.parameters()), "attach made nothing trainable"
        if self.identity_at_init:  # the Method contract: the outputs do not change, bit for bit
            assert torch.equal(self.output(model), before), "a freshly attached adapter changed the outputs"

    def test_detach_restores_the_model_exactly(self) -> None:
        model = self.build()
        types = {n: type(m) for n, m in model.named_modules()}
        state = {k: v.clone() for k, v in model.state_dict().items()}
        grads = {n: p.requires_grad for n, p in model.named_parameters()}
        hooks = _hooks(model)
        before = self.output(model)
        self.method.attach(model, self.method.make_config(dict(self.options)))
        randomise(model)
        assert not torch.equal(self.output(model), before), "the randomised adapter does not change the outputs"
        self.method.detach(model)
        assert {n: type(m) for n, m in model.named_modules()} == types
        after = model.state_dict()
        assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)
        assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
        assert _hooks(model) == hooks, "detach left forward hooks behind"
        assert torch.equal(self.output(model), before)
        self.method.attach(model, self.method.make_config(dict(self.options)))  # attachable again

    # -- state dicts ---------------------------------------------------------------------------------------
    def test_state_dict_round_trips_exactly(self) -> None:
        a, _ = self.attached(seed=3)
        b, _ = self.attached(seed=None)
        sd = {k: v.clone() for k, v in self.method.state_dict(a).items()}
        self.method.load_state_dict(b, sd)
        back = self.method.state_dict(b)
        assert set(back) == set(sd) and all(torch.equal(sd[k], back[k]) for k in sd)
        assert torch.equal(self.output(a), self.output(b))

    def test_adapter_directory_round_trips(self, tmp_path: Path) -> None:
        from ..files.checkpoint import LoadedAdapter, save_adapter
        from ..training.modeling import attach_loaded

        model, config = self.attached(seed=4)
        from safetensors.torch import load_file

        manifest = {"method": self.method.name, "config": json.loads(json.dumps(dataclasses.asdict(config)))}
        out = save_adapter(
            str(tmp_path / "adapter"), manifest, self.method.state_dict(model), self.method.to_peft_config(config, None)
        )
        tensors = load_file(os.path.join(out, "adapter_model.safetensors"))
        with open(os.path.join(out, "adapterhub.json"), encoding="utf-8") as f:
            read_back = self.method.config_from_manifest(json.load(f)["config"])
        self.method.check_tensors(header_entries(tensors), read_back)
        fresh = self.build()
        attach_loaded(fresh, LoadedAdapter(self.method, read_back, tensors, manifest))
        assert torch.equal(self.output(fresh), self.output(model))

    def test_load_state_dict_refuses_a_wrong_shape(self) -> None:
        model, _ = self.attached()
        sd = self.method.state_dict(model)
        key = sorted(sd)[0]
        bad = dict(sd, **{key: torch.zeros(*[s + 1 for s in sd[key].shape])})
        with pytest.raises((InvalidInput, RuntimeError, ValueError)):
            self.method.load_state_dict(model, bad)

    def test_check_tensors_refuses_wrong_shapes_and_dtypes(self) -> None:
        """As ``push --base`` checks: with the base's header entries, in the model's own naming."""
        model, config = self.attached()
        sd = self.method.state_dict(model)
        base = header_entries(self.build().state_dict())
        key = sorted(sd)[0]
        self.method.check_tensors(header_entries(sd), config, base)  # what the method wrote is accepted
        wrong_shape = dict(sd, **{key: torch.zeros(*[s + 1 for s in sd[key].shape])})
        with pytest.raises(InvalidInput):
            self.method.check_tensors(header_entries(wrong_shape), config, base)
        with pytest.raises(InvalidInput):
            self.method.check_tensors(header_entries(dict(sd, **{key: sd[key].to(torch.int32)})), config, base)
        # torch tensors are taken as well as header entries (what a script holds after training)
        self.method.check_tensors(dict(sd), config)
        with pytest.raises(InvalidInput, match="floating point"):
            self.method.check_tensors(dict(sd, **{key: sd[key].to(torch.int32)}), config)


class PeftParity(MethodConformance):
    """Add to a method that peft implements: peft's own adapter (its ``adapter_config.json`` and tensors)
    loads into ours with the same outputs. Set ``peft_config``."""

    def _peft_pair(self, dtype: torch.dtype = torch.float32) -> tuple[Any, dict[str, Any], dict[str, torch.Tensor]]:
        """peft's model with a randomised adapter, its config as a dict and its tensors."""
        import peft

        assert type(self).peft_config is not None, "set peft_config to the peft config class of the method"
        # through the class: a plain function set in a subclass body is not bound to self
        theirs = peft.get_peft_model(self.build(dtype), cast(Any, type(self)).peft_config(dict(self.options)))
        randomise(theirs, seed=2)
        cfg = theirs.peft_config["default"].to_dict()
        tensors = peft.get_peft_model_state_dict(theirs)
        return theirs, cfg, tensors

    def test_peft_adapter_loads_with_the_same_outputs(self) -> None:
        theirs, cfg, tensors = self._peft_pair()
        ours = self.build()
        config = self.method.from_peft_config({k: v for k, v in cfg.items() if v is not None})
        self.method.attach(ours, config)
        assert set(self.method.state_dict(ours)) == set(tensors)
        self.method.load_state_dict(ours, tensors)
        expected = self.output(theirs)
        assert not torch.equal(expected, self.output(self.build())), "peft's adapter does not change the outputs"
        torch.testing.assert_close(self.output(ours), expected, rtol=0, atol=self.tolerance)


class PeftMergeParity(PeftParity):
    """Add to a method that merges: ``merge_tensor`` over every base tensor is peft's ``merge_and_unload``,
    bit for bit, in float32 and bfloat16."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
    def test_merge_equals_peft_merge_and_unload(self, dtype: torch.dtype) -> None:
        assert "merge" in self.method.capabilities(), f"method {self.method.name} does not merge"
        theirs, cfg, tensors = self._peft_pair(dtype)
        base = {k: v.clone() for k, v in self.build(dtype).state_dict().items()}
        expected = theirs.merge_and_unload().state_dict()
        config = self.method.from_peft_config({k: v for k, v in cfg.items() if v is not None})
        touched = 0
        for key, tensor in base.items():
            merged = self.method.merge_tensor(key, tensor, tensors, config)
            if merged is None:
                assert torch.equal(tensor, expected[key]), key
                continue
            touched += 1
            assert merged.dtype == tensor.dtype and torch.equal(merged, expected[key]), key
        assert touched, "merge_tensor merged nothing"


class CliRoundTrip:
    """Add to a method that trains on a causal LM: the real CLI, in this process, with a registry under
    ``tmp_path``: ``adapterhub train --push`` for a few steps on a tiny Llama base directory, ``pull`` gives
    back the trained directory file for file, and for a method that merges, ``merge`` writes a model whose
    logits are the base's with the pulled adapter attached. ``train_settings`` are ``--set`` values."""

    #: the method object under test
    method: ClassVar[Any]
    #: ``--set`` values for ``adapterhub train`` (e.g. ``{"r": "4", "target_modules": "q_proj,v_proj"}``)
    train_settings: ClassVar[dict[str, str]] = {}

    def test_cli_train_push_pull_merge(self, tmp_path: Path) -> None:
        import hashlib

        from click.testing import CliRunner
        from transformers import AutoModelForCausalLM

        from ..cli import add_plugin_commands, cli
        from ..files.checkpoint import load_adapter_dir
        from ..plugins import get_plugins
        from ..training.modeling import attach_loaded

        add_plugin_commands()
        base = models.save_tiny_llama_base(tmp_path / "base")
        data = tmp_path / "train.jsonl"
        words = models.WORDS
        data.write_text("".join(json.dumps({"text": " ".join(words[i : i + 6])}) + "\n" for i in range(0, 24, 3)))

        def run(*args: Any) -> str:
            result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), *map(str, args)])
            assert result.exit_code == 0, f"adapterhub {args[0]}: {result.output}"
            return result.stdout

        sets = [a for k, v in self.train_settings.items() for a in ("--set", f"{k}={v}")]
        name = self.method.name
        trained = json.loads(
            run(
                "train",
                "--base",
                base,
                "--method",
                name,
                "--task",
                "causal-lm",
                "--data",
                data,
                "--out",
                tmp_path / "trained",
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--lr",
                "1e-2",
                "--push",
                f"conformance/{name}",
                "--json",
                *sets,
            )
        )
        run("pull", trained["ref"], "--out", tmp_path / "pulled")

        def digests(d: Path) -> dict[str, str]:
            return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir()) if f.is_file()}

        assert digests(tmp_path / "pulled") == digests(Path(trained["out"])), "pull gave other files than train wrote"
        if "merge" not in self.method.capabilities():
            return
        run("merge", trained["ref"], "--base", base, "--out", tmp_path / "merged", "--no-cache")
        inputs = models.inputs_for("llama")
        with torch.no_grad():
            merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
            attached = AutoModelForCausalLM.from_pretrained(base).eval()
            attach_loaded(attached, load_adapter_dir(str(tmp_path / "pulled"), get_plugins()))
            torch.testing.assert_close(
                models.logits(merged, inputs), models.logits(attached, inputs), rtol=0, atol=1e-5
            )
