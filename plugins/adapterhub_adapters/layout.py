"""The ``adapters`` library's directory layout and config keys, and how they map onto ours. No torch here.

A directory written by ``model.save_adapter(dir, name)`` holds ``adapter_config.json`` (``config``: the method
config; ``model_class``, ``model_type``, ``hidden_size``, ``name``, ``version``), the weights as
``pytorch_adapter.bin`` (a pickle: ``push --import-bin``) or ``adapter.safetensors``, and the prediction head
(``head_config.json`` + ``pytorch_model_head.bin`` / ``model_head.safetensors``). Weight names are the model's
own state-dict names::

    <layer>.attention.output.adapters.<name>.adapter_down.0.weight     BERT-like: the bottleneck layer is the block
    <layer>.output_adapters.adapters.<name>.adapter_up.W_left         Llama / GPT-2: a layer attribute
    <base>.shared_parameters.<name>.phm_rule                          Compacter's shared rule
    <module>.loras.<name>.lora_A / lora_B                             LoRA (and IA3: composition_mode "scale")
    heads.<head>.<i>.weight, or the static head's own names           the prediction head
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapterhub.tuning import PLACEMENTS, Placement

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter.safetensors", "pytorch_adapter.safetensors")  # the second: pytorch_adapter.bin converted
HEAD_CONFIG = "head_config.json"
HEAD_WEIGHTS = ("model_head.safetensors", "pytorch_model_head.safetensors")
#: what exports write (and what ``load_adapter(dir, use_safetensors=True)`` reads)
SAFE_WEIGHTS, SAFE_HEAD = "adapter.safetensors", "model_head.safetensors"
#: the library version whose layout this plugin writes (``version`` in ``adapter_config.json``)
LIBRARY_VERSION = "1.3.0"


@dataclass(frozen=True)
class Family:
    """One family of architectures as both libraries see it: ours (:class:`Placement`) and ``adapters``'
    bottleneck-layer names (relative to a numbered layer) for the attention and the FFN sub-block."""

    placement: Placement
    container: str  # the layer list under the base model: "encoder.layer", "layers", "h"
    attention_layer: str  # adapters' bottleneck layer for the attention sub-block
    ffn_layer: str
    lora_modules: dict  # adapters' LoRA locations -> the module (relative to the layer): q, k, v, intermediate, output

    def locations(self) -> dict[str, str]:
        """adapters' bottleneck layer -> our projection (both relative to the numbered layer)."""
        return {
            self.attention_layer: self.placement.attention.projection,
            self.ffn_layer: self.placement.ffn.projection,
        }


_BY_NAME = {p.family: p for p in PLACEMENTS}
FAMILIES = {
    "bert": Family(
        _BY_NAME["bert"],
        "encoder.layer",
        "attention.output",
        "output",
        {
            "q": "attention.self.query",
            "k": "attention.self.key",
            "v": "attention.self.value",
            "intermediate": "intermediate.dense",
            "output": "output.dense",
        },
    ),
    "llama": Family(
        _BY_NAME["llama"],
        "layers",
        "attention_adapters",
        "output_adapters",
        {
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "intermediate": "mlp.down_proj",
            "output": "mlp.up_proj",
        },
    ),  # (adapters' names for Llama, sic)
    "gpt2": Family(_BY_NAME["gpt2"], "h", "attention_adapters", "output_adapters", {}),  # merged c_attn: not mapped
}
#: adapters' ``model_type`` -> family (the architectures both libraries implement the same way)
MODEL_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "electra": "bert",
    "llama": "llama",
    "mistral": "llama",
    "gpt2": "gpt2",
}

#: BnConfig keys we model, and the ones we accept only at the value that leaves the numbers as ours
BOTTLENECK_NEUTRAL = {
    "use_gating": False,
    "inv_adapter": None,
    "cross_adapter": False,
    "shared_W_phm": False,
    "factorized_phm_rule": False,
    "learn_phm": True,
    "stochastic_depth": 0.0,
}
BOTTLENECK_WHY = {
    "use_gating": "gated adapters (UniPELT)",
    "inv_adapter": "invertible adapters",
    "cross_adapter": "cross-attention adapters",
    "shared_W_phm": "a PHM weight shared across layers",
    "factorized_phm_rule": "a factorised PHM rule",
    "learn_phm": "a frozen PHM rule",
    "stochastic_depth": "stochastic depth",
}
#: keys that do not change what identical weights compute (initialisation only)
IGNORED = {"init_weights_seed", "inv_adapter_reduction_factor", "architecture"}
PLACEMENT_KEYS = (
    "original_ln_before",
    "original_ln_after",
    "residual_before_ln",
    "ln_before",
    "ln_after",
    "adapter_residual_before_ln",
    "is_parallel",
)
PHM_KEYS = ("phm_dim", "shared_phm_rule", "factorized_phm_W", "phm_rank", "phm_bias", "phm_c_init", "phm_init_range")
NON_LINEARITY = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "swish": "swish",
    "silu": "swish",
    "tanh": "tanh",
    "leakyrelu": "leakyrelu",
}
ARCHITECTURES = {
    None: "bottleneck adapters",
    "lora": "LoRA / IA3",
    "prefix_tuning": "prefix tuning",
    "prompt_tuning": "prompt tuning",
    "union": "a ConfigUnion (e.g. MAM, UniPELT)",
    "reft": "ReFT",
    "mtl_lora": "MTL-LoRA",
}


def family_of(model_type: str | None) -> Family | None:
    name = MODEL_TYPES.get(model_type or "")
    return FAMILIES[name] if name else None


def bottleneck_key(family: Family, name: str) -> re.Pattern:
    """``<layer>.<location>.adapters.<name>.<param>`` for the family's two bottleneck locations."""
    locs = sorted(family.locations(), key=len, reverse=True)
    return re.compile(
        r"(?P<layer>(?:.*\.)?\d+)\.(?P<loc>"
        + "|".join(re.escape(x) for x in locs)
        + r")\.adapters\."
        + re.escape(name)
        + r"\.(?P<param>.+)"
    )


#: adapters' names inside one bottleneck adapter -> ours (ln_before shifts the Sequential by one)
def adapter_param(param: str, ln_before: bool) -> str | None:
    first = 1 if ln_before else 0
    m = re.fullmatch(r"adapter_down\.(\d+)\.(.+)", param)
    if m:
        if int(m.group(1)) != first:
            return None if ln_before and m.group(1) == "0" else "?"  # the norm again, under the Sequential's name
        return "down." + _phm(m.group(2))
    m = re.fullmatch(r"adapter_up\.(.+)", param)
    if m:
        return "up." + _phm(m.group(1))
    m = re.fullmatch(r"adapter_norm_(before|after)\.(weight|bias)", param)
    if m:
        return f"norm_{m.group(1)}.{m.group(2)}"
    return "?"


def _phm(name: str) -> str:
    return "bias" if name == "b" else name


def ours_to_adapters_param(param: str, ln_before: bool, phm: bool) -> str:
    """Inverse of :func:`adapter_param` (our ``down.W_left`` -> ``adapter_down.0.W_left``; a PHM bias is ``b``)."""
    part, _, rest = param.partition(".")
    if phm and rest == "bias" and part in ("down", "up"):
        rest = "b"
    if part == "down":
        return f"adapter_down.{1 if ln_before else 0}.{rest}"
    if part == "up":
        return f"adapter_up.{rest}"
    return f"adapter_{part}.{rest}"  # norm_before.weight -> adapter_norm_before.weight
