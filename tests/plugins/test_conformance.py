"""The installed conformance suite (``adapterhub.testing.conformance``) run over built-in method plugins, as a
plugin author runs it over theirs: it is the kit's own test as much as the plugins'."""

from __future__ import annotations

import peft
from adapterhub_bitfit import BitFitMethod
from adapterhub_bottleneck import BottleneckMethod
from adapterhub_ia3 import IA3Method
from adapterhub_loha import LoHaMethod
from adapterhub_lokr import LoKrMethod
from adapterhub_lora import LoraMethod
from adapterhub_prompt import PromptTuningMethod
from adapterhub_vera import VeraMethod

from adapterhub.testing.conformance import CliRoundTrip, MethodConformance, PeftMergeParity, PeftParity


class TestLoraOnLlama(PeftMergeParity):
    method = LoraMethod()
    options = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    peft_config = staticmethod(lambda options: peft.LoraConfig(**options))


class TestIA3OnGpt2(PeftMergeParity):
    method = IA3Method()
    model = "gpt2"
    options = {"target_modules": ["c_attn", "c_fc"], "feedforward_modules": ["c_fc"]}
    peft_config = staticmethod(lambda options: peft.IA3Config(**options))


class TestBitFitOnBert(MethodConformance):  # peft has no BitFit
    method = BitFitMethod()
    model = "bert"
    options = {}


class TestBottleneckOnLlama(MethodConformance):  # peft has no bottleneck adapters (the adapters oracle tests them)
    method = BottleneckMethod()
    options = {}


class TestLoHaOnLlama(PeftMergeParity):  # a plugin written only against the public toolkit
    method = LoHaMethod()
    options = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    peft_config = staticmethod(lambda options: peft.LoHaConfig(**options))


class TestLoKrOnLlama(PeftMergeParity):  # full factors (r large enough for both)
    method = LoKrMethod()
    options = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    peft_config = staticmethod(lambda options: peft.LoKrConfig(**options))


class TestLoKrDecomposedOnBert(PeftMergeParity):  # both factors low-rank
    method = LoKrMethod()
    model = "bert"
    options = {"r": 1, "alpha": 3, "decompose_both": True, "target_modules": ["query", "value"]}
    peft_config = staticmethod(lambda options: peft.LoKrConfig(**options))


class TestVeraOnLlama(PeftMergeParity):  # layers of three shapes share one A and B, sliced per layer
    method = VeraMethod()
    options = {"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    peft_config = staticmethod(lambda options: peft.VeraConfig(**options))


class TestVeraOnGpt2(PeftMergeParity):  # Conv1D (fan_in_fan_out), another PRNG key
    method = VeraMethod()
    model = "gpt2"
    options = {"r": 8, "projection_prng_key": 7, "d_initial": 0.5, "target_modules": ["c_attn", "c_fc"]}
    peft_config = staticmethod(lambda options: peft.VeraConfig(**options))


class TestVeraWithoutProjectionsOnBert(PeftParity):  # save_projection=false: A and B drawn again on load
    method = VeraMethod()
    model = "bert"
    options = {"r": 2, "save_projection": False, "target_modules": ["query", "value", "intermediate.dense"]}
    peft_config = staticmethod(lambda options: peft.VeraConfig(**options))


# -- train -> push -> pull -> merge through the CLI, one class per built-in method that trains a causal LM --
class TestCliLora(CliRoundTrip):
    method = LoraMethod()
    train_settings = {"r": "4", "target_modules": "q_proj,v_proj"}


class TestCliIA3(CliRoundTrip):
    method = IA3Method()


class TestCliLoHa(CliRoundTrip):
    method = LoHaMethod()
    train_settings = {"r": "4"}


class TestCliLoKr(CliRoundTrip):
    method = LoKrMethod()
    train_settings = {"r": "4"}


class TestCliVera(CliRoundTrip):
    method = VeraMethod()
    train_settings = {"r": "4"}


class TestCliBottleneck(CliRoundTrip):
    method = BottleneckMethod()
    train_settings = {"bottleneck_size": "8"}


class TestCliPromptTuning(CliRoundTrip):  # does not merge: the round trip stops at pull
    method = PromptTuningMethod()
    train_settings = {"num_virtual_tokens": "4"}
