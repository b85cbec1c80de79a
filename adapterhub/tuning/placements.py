"""Where residual (bottleneck) adapters go in the architectures we know, and the width their tensors imply.

The bottleneck method places its adapters with this table, and the ``adapters`` library's format maps that
library's layout onto it, so both read it from the toolkit. No torch here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Site:
    """Where one adapter reads and writes, relative to its numbered layer (``<...>.<layer index>.``).

    ``projection`` is the sub-block's output projection: the adapter is applied to its output, before the
    block's dropout / residual add / LayerNorm (where the adapters library inserts it). The placement options
    that read the residual stream need the sub-block's input ``x``: the ``residual_arg``-th positional argument
    (or keyword ``residual_kwarg``) of module ``residual_from``. A post-LN block (BERT) also names its
    ``layer_norm`` and the ``block`` that returns ``LN(projection output + x)``; a pre-LN one (Llama) has none."""

    projection: str  # e.g. "attention.output.dense"
    residual_from: str  # e.g. "attention.output" (post-LN block) or "input_layernorm" (pre-LN)
    residual_arg: int
    residual_kwarg: str
    layer_norm: str | None = None  # post-LN only, e.g. "attention.output.LayerNorm"
    block: str | None = None  # post-LN only, e.g. "attention.output"


@dataclass(frozen=True)
class Placement:
    """Where the adapters go in one family of architectures: the attention and the feed-forward sub-block's
    :class:`Site`. ``unsupported`` names layer submodules whose presence means the family's residual reading
    does not hold (Gemma 2/3 normalise the sub-block output before the residual add)."""

    family: str  # human name, for messages
    attention: Site
    ffn: Site
    unsupported: tuple[str, ...] = ()
    conv1d: bool = False  # the projections are transformers Conv1D (weight (in, out))

    def pattern(self, style: str) -> str:
        """One regex (fullmatch on module paths) selecting this style's modules; the effective ``target_layers``."""
        sites = [self.attention, self.ffn] if style == "houlsby" else [self.ffn]
        return self.regex([s.projection for s in sites])

    @staticmethod
    def regex(names: list[str]) -> str:
        """``<anything>.<layer index>.<one of names>``, e.g. ``(?:.*\\.)?\\d+\\.(?:mlp\\.down_proj)``."""
        return r"(?:.*\.)?\d+\.(?:" + "|".join(re.escape(n) for n in names) + ")"


def _post_ln(projection: str, block: str) -> Site:
    return Site(projection, block, 1, "input_tensor", layer_norm=f"{block}.LayerNorm", block=block)


def _pre_ln(projection: str, norm: str) -> Site:
    return Site(projection, norm, 0, "hidden_states")


#: Looked up by *what the model has* (the first family with an FFN projection, and for houlsby an attention
#: projection, in a numbered layer wins), never by ``model_type``; other architectures need ``target_layers``.
PLACEMENTS: tuple[Placement, ...] = (
    # BERT, RoBERTa, XLM-R, ELECTRA, MiniLM: post-LN, BertSelfOutput/BertOutput.forward(hidden_states, input_tensor)
    Placement("bert", _post_ln("attention.output.dense", "attention.output"), _post_ln("output.dense", "output")),
    # Llama, Mistral, Qwen2/3, Gemma: pre-LN; the sub-block input is what its input norm reads
    Placement(
        "llama",
        _pre_ln("self_attn.o_proj", "input_layernorm"),
        _pre_ln("mlp.down_proj", "post_attention_layernorm"),
        unsupported=("pre_feedforward_layernorm", "post_feedforward_layernorm"),
    ),
    Placement("gpt2", _pre_ln("attn.c_proj", "ln_1"), _pre_ln("mlp.c_proj", "ln_2"), conv1d=True),  # GPT-2
)


def adapter_width(params: Mapping[str, Any], phm_dim: int = 1) -> int | None:
    """The hidden width ``d`` an adapter's tensors imply (``params``: its tensors or header entries by their names
    inside the adapter, ``up.weight`` ...), from its up projection's output; a PHM (Compacter) up projection
    holds ``d / phm_dim`` per block. ``None`` when they do not say."""
    for name, axis in (("up.weight", 0), ("up.bias", 0), ("up.W_right", 2), ("up.W", 2)):
        if name in params and len(params[name].shape) > axis:
            d = params[name].shape[axis]
            return d * phm_dim if name in ("up.W_right", "up.W") else d
    return None
