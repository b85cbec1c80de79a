"""The adapter modules: a sequential bottleneck adapter and Compacter's PHM projection.

Shapes (``d`` the width of the adapted hidden state, ``b`` the bottleneck, ``n`` phm_dim, ``k`` phm_rank)::

    bottleneck   down.weight (b, d)  down.bias (b,)   up.weight (d, b)  up.bias (d,)       nn.Linear layout
    PHM (in->out) phm_rule (n, n, n)                  A_i = phm_rule[i]
                 W (n, in/n, out/n)                   B_i = W[i]                  (factorized_phm_W=False)
                 W_left (n, in/n, k)  W_right (n, k, out/n)   B_i = W_left[i] @ W_right[i]   (factorized)
                 bias (out,)
                 weight H (in, out) = sum_i kron(A_i, B_i);   y = x @ H + bias

Adapter:  y = h + scaling * dropout(up(f(down(h))))      (residual=False: y = scaling * dropout(up(...)))

The adapter parameters are float32 whatever the base dtype; the branch is computed in float32 and cast back
to the hidden state's dtype before the residual add.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: adapter parameter dtype (as PEFT's default ``autocast_adapter_dtype`` does for LoRA)
ADAPTER_DTYPE = torch.float32

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu, "tanh": torch.tanh}


class BottleneckAdapter(nn.Module):
    """``h -> h + scaling * dropout(up(f(down(h))))`` on the last dimension of ``h``."""

    def __init__(
        self,
        down: nn.Module,
        up: nn.Module,
        non_linearity: str,
        residual: bool = True,
        scaling: float = 1.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.down = down  # d -> b
        self.up = up  # b -> d
        self.non_linearity = non_linearity
        self.residual = residual
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return f"non_linearity={self.non_linearity}, residual={self.residual}, scaling={self.scaling}"

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        dtype = next(self.up.parameters()).dtype
        branch = self.up(ACTIVATIONS[self.non_linearity](self.down(h.to(dtype))))  # (..., d)
        branch = self.dropout(branch)
        if self.scaling != 1.0:
            branch = branch * self.scaling
        branch = branch.to(h.dtype)
        return h + branch if self.residual else branch


def linear_bottleneck(size: int, bottleneck: int, init: str, device=None, **kwargs) -> BottleneckAdapter:
    """A plain bottleneck adapter; ``init`` 'bert' (N(0, 1e-2) down) or 'mam' (kaiming-uniform down); the up
    projection and both biases start at zero, so the adapter is the identity at start (with residual)."""
    down = nn.Linear(size, bottleneck, device=device, dtype=ADAPTER_DTYPE)
    up = nn.Linear(bottleneck, size, device=device, dtype=ADAPTER_DTYPE)
    with torch.no_grad():
        if init == "bert":
            down.weight.normal_(mean=0.0, std=1e-2)
        else:  # "mam": nn.Linear's default (kaiming-uniform, a=sqrt(5)) is already there
            pass
        down.bias.zero_()
        up.weight.zero_()
        up.bias.zero_()
    return BottleneckAdapter(down, up, **kwargs)


# -- Compacter ------------------------------------------------------------------------------------------
def kron_sum(rule: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_i kron(rule[i], w[i])``: rule (n, n, n), w (n, p, q) -> (n*p, n*q), without n separate krons."""
    n, p, q = w.shape
    return torch.einsum("kab,kij->aibj", rule, w).reshape(n * p, n * q)


def init_phm_rule(rule: torch.Tensor, how: str, std: float) -> None:
    with torch.no_grad():
        if how == "normal":
            rule.normal_(mean=0.0, std=std)
        else:
            rule.uniform_(-1.0, 1.0)


def _init_w(w: torch.Tensor, how: str, std: float) -> None:
    """The compacter repository's inits, one Kronecker term at a time (glorot with gain sqrt(2))."""
    with torch.no_grad():
        for i in range(w.shape[0]):
            if how == "glorot-uniform":
                nn.init.xavier_uniform_(w[i], gain=math.sqrt(2))
            elif how == "glorot-normal":
                nn.init.xavier_normal_(w[i], gain=math.sqrt(2))
            else:
                w[i].normal_(mean=0.0, std=std)


class PHMLinear(nn.Module):
    """A parameterised-hypercomplex-multiplication layer ``y = x @ H + bias``, ``H = sum_i A_i (x) B_i``.

    ``shared_rule``: a parameter (n, n, n) owned elsewhere (shared across layers); it is registered here too
    (the same tensor object), so ``model.parameters()`` yields it once and each layer's forward uses it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        phm_dim: int,
        *,
        shared_rule: nn.Parameter | None = None,
        factorized: bool = True,
        rank: int = 1,
        bias: bool = True,
        c_init: str = "normal",
        w_init: str = "glorot-uniform",
        init_range: float = 1e-4,
        zero: bool = False,
        device=None,
    ):
        super().__init__()
        n = phm_dim
        self.in_features, self.out_features, self.phm_dim = in_features, out_features, n
        p, q = in_features // n, out_features // n
        kw = dict(device=device, dtype=ADAPTER_DTYPE)
        if shared_rule is not None:
            self.phm_rule = shared_rule
        else:
            self.phm_rule = nn.Parameter(torch.empty(n, n, n, **kw))
            init_phm_rule(self.phm_rule, c_init, init_range)
        if factorized:
            self.W_left = nn.Parameter(torch.empty(n, p, rank, **kw))
            self.W_right = nn.Parameter(torch.empty(n, rank, q, **kw))
            _init_w(self.W_left, w_init, init_range)
            _init_w(self.W_right, w_init, init_range)
            zeroed = self.W_right
        else:
            self.W = nn.Parameter(torch.empty(n, p, q, **kw))
            _init_w(self.W, w_init, init_range)
            zeroed = self.W
        if zero:  # the up projection: the adapter starts as the identity (like LoRA's B = 0)
            with torch.no_grad():
                zeroed.zero_()
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, phm_dim={self.phm_dim}"

    def phm_W(self) -> torch.Tensor:
        """The B_i stacked: (n, in/n, out/n)."""
        return self.W_left @ self.W_right if hasattr(self, "W_left") else self.W

    def phm_weight(self) -> torch.Tensor:
        """H = sum_i kron(A_i, B_i): (in, out)."""
        return kron_sum(self.phm_rule, self.phm_W())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = x @ self.phm_weight()
        return y + self.bias if self.bias is not None else y


def phm_bottleneck(size: int, bottleneck: int, config, shared_rule=None, device=None, **kwargs) -> BottleneckAdapter:
    """A Compacter adapter: PHM down (size -> bottleneck) and PHM up (bottleneck -> size, zero-initialised)."""
    common = dict(
        shared_rule=shared_rule,
        factorized=config.factorized_phm_W,
        rank=config.phm_rank,
        bias=config.phm_bias,
        c_init=config.phm_c_init,
        w_init=config.phm_w_init,
        init_range=config.phm_init_range,
        device=device,
    )
    down = PHMLinear(size, bottleneck, config.phm_dim, **common)
    up = PHMLinear(bottleneck, size, config.phm_dim, zero=True, **common)
    return BottleneckAdapter(down, up, **kwargs)
