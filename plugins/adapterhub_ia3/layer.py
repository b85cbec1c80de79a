"""The (IA)³ wrapper module and the merge maths, numerically identical to ``peft.tuners.ia3``.

Shapes (``in``/``out`` are the layer's features)::

    base weight W        nn.Linear: (out, in)      transformers Conv1D (fan_in_fan_out): (in, out)
    ia3_l, attention     (out, 1)                  y = base(x) ⊙ l         (bias scaled too)
    ia3_l, feed-forward  (1, in)                   y = base(x ⊙ l)
    merged W             W ⊙ transpose(l, fan_in_fan_out)  (broadcast), bias ⊙ l for attention layers

The vectors are float32 on a float16/bfloat16 base (PEFT's default ``autocast_adapter_dtype``), else the
base dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.tuning import in_out_features, is_conv1d  # noqa: F401  (re-exported)


# -- merge maths (shared by the module and the streaming merge) -----------------------------------------
def merge_weight(weight: torch.Tensor, ia3_l: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """PEFT's ``Linear.merge``: ``(W * transpose(l, fan_in_fan_out)).to(W.dtype)``.

    weight (out, in) or (in, out); ia3_l (out, 1) or (1, in) -> a new tensor of ``weight``'s shape and dtype.
    """
    scale = ia3_l.T if fan_in_fan_out else ia3_l
    return torch.mul(weight, scale).to(weight.dtype)


def merge_bias(bias: torch.Tensor, ia3_l: torch.Tensor) -> torch.Tensor:
    """PEFT's bias merge for attention-style (output-scaling) layers: ``(b * l.reshape(b.shape)).to(b.dtype)``."""
    return torch.mul(bias, ia3_l.reshape(bias.shape)).to(bias.dtype)


# -- the wrapper module ---------------------------------------------------------------------------------
class IA3Linear(nn.Module):
    """Wraps an ``nn.Linear`` or transformers ``Conv1D`` (kept as ``base_layer``, frozen) with an (IA)³ vector.

    The parameter is ``ia3_l`` (PEFT's checkpoint key, minus the adapter name).
    """

    def __init__(self, base_layer: nn.Module, *, is_feedforward: bool, init_ia3_weights: bool = True) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.is_feedforward = is_feedforward
        self.fan_in_fan_out = is_conv1d(base_layer)  # PEFT forces this per layer type
        self.in_features, self.out_features = in_out_features(base_layer)
        weight = base_layer.weight
        shape = (1, self.in_features) if is_feedforward else (self.out_features, 1)
        value = torch.randn(shape)  # PEFT draws first, then overwrites with ones for the default init
        if init_ia3_weights:
            nn.init.constant_(value, 1.0)
        self.ia3_l = nn.Parameter(value.to(device=weight.device, dtype=tuners.adapter_dtype(weight.dtype)))

    @property
    def weight(self) -> torch.Tensor:  # some model code reads `.weight` of its projections
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def extra_repr(self) -> str:
        kind = "feedforward (scales input)" if self.is_feedforward else "attention (scales output)"
        return f"ia3: {kind}, fan_in_fan_out={self.fan_in_fan_out}"

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        previous_dtype = x.dtype
        scaling = self.ia3_l.flatten()  # (in,) or (out,)
        if self.is_feedforward:
            interm = (x.to(scaling.dtype) * scaling).to(previous_dtype)
            return self.base_layer(interm, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)  # (..., out)
        return (result * scaling).to(result.dtype)

    @torch.no_grad()
    def merged(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight, bias)`` of the base layer with this vector merged in (PEFT's ``merge``)."""
        weight = merge_weight(self.base_layer.weight, self.ia3_l, self.fan_in_fan_out)
        bias = self.base_layer.bias
        if bias is not None and not self.is_feedforward:
            bias = merge_bias(bias, self.ia3_l)
        return weight, bias
