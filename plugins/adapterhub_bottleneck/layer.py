"""The adapter modules: a sequential bottleneck adapter and Compacter's PHM projection.

Shapes (``d`` the width of the adapted hidden state, ``b`` the bottleneck, ``n`` phm_dim, ``k`` phm_rank)::

    bottleneck   down.weight (b, d)  down.bias (b,)   up.weight (d, b)  up.bias (d,)       nn.Linear layout
    PHM (in->out) phm_rule (n, n, n)                  A_i = phm_rule[i]
                 W (n, in/n, out/n)                   B_i = W[i]                  (factorized_phm_W=False)
                 W_left (n, in/n, k)  W_right (n, k, out/n)   B_i = W_left[i] @ W_right[i]   (factorized)
                 bias (out,)
                 weight H (in, out) = sum_i kron(A_i, B_i);   y = x @ H + bias
    norms        norm_before.{weight,bias} (d,)   norm_after.{weight,bias} (d,)   (ln_before / ln_after)

Adapter (the adapters library's ``Adapter.forward``), for input ``x`` and residual ``r`` (``r = x`` unless the
placement says otherwise)::

    branch(x) = scaling * dropout(up(f(down(norm_before(x)))))
    y = r + branch(x)                       y = norm_after(branch(x)) + r        (ln_after)
    y = norm_after(branch(x) + r)           (ln_after, adapter_residual_before_ln)
    y = branch(x)                           (residual=False)

The adapter parameters are float32 whatever the base dtype; the branch is computed in float32 and cast back
to the hidden state's dtype before the residual add.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub import tuning as tuners

#: adapter parameter dtype (as PEFT's default ``autocast_adapter_dtype`` does for LoRA)
ADAPTER_DTYPE = tuners.adapter_dtype()

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "swish": F.silu,
    "tanh": torch.tanh,
    "leakyrelu": F.leaky_relu,
}


class BottleneckAdapter(nn.Module):
    """``(x, r) -> r + scaling * dropout(up(f(down(x))))`` on the last dimension (see the module docstring)."""

    def __init__(
        self,
        down: nn.Module,
        up: nn.Module,
        non_linearity: str,
        residual: bool = True,
        scaling: float = 1.0,
        dropout: float = 0.0,
        ln_before: bool = False,
        ln_after: bool = False,
        adapter_residual_before_ln: bool = False,
    ):
        super().__init__()
        size = up.out_features
        kw = dict(device=next(up.parameters()).device, dtype=ADAPTER_DTYPE)
        self.norm_before = nn.LayerNorm(size, **kw) if ln_before else None
        self.down = down  # d -> b
        self.up = up  # b -> d
        self.norm_after = nn.LayerNorm(size, **kw) if ln_after else None
        self.non_linearity = non_linearity
        self.residual = residual
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout)
        self.residual_before_norm = adapter_residual_before_ln

    def extra_repr(self) -> str:
        return f"non_linearity={self.non_linearity}, residual={self.residual}, scaling={self.scaling}"

    def branch(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d), float32
        x = x.to(ADAPTER_DTYPE)
        if self.norm_before is not None:
            x = self.norm_before(x)
        branch = self.dropout(self.up(ACTIVATIONS[self.non_linearity](self.down(x))))
        return branch * self.scaling if self.scaling != 1.0 else branch

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:  # (..., d) -> (..., d)
        r = x if residual is None else residual
        branch = self.branch(x)
        if self.norm_after is None:
            branch = branch.to(x.dtype)
            return r + branch if self.residual else branch
        if self.residual and self.residual_before_norm:
            return self.norm_after(branch + r.to(ADAPTER_DTYPE)).to(x.dtype)
        out = self.norm_after(branch).to(x.dtype)
        return out + r if self.residual else out

    def parallel(self, x: torch.Tensor) -> torch.Tensor:
        """A parallel adapter's contribution (adapters' ``ParallelAdapter.forward``): the branch, then ln_after."""
        branch = self.branch(x)
        if self.norm_after is not None:
            branch = self.norm_after(branch)
        return branch.to(x.dtype)


def linear_bottleneck(size: int, bottleneck: int, init: str, device=None, **kwargs) -> BottleneckAdapter:
    """A plain bottleneck adapter, initialised by ``init`` (see ``BottleneckConfig.init``)."""
    down = nn.Linear(size, bottleneck, device=device, dtype=ADAPTER_DTYPE)
    up = nn.Linear(bottleneck, size, device=device, dtype=ADAPTER_DTYPE)
    with torch.no_grad():
        if init == "zero_up":
            down.weight.normal_(mean=0.0, std=1e-2)
            up.weight.zero_()
        elif init == "bert":  # adapters' Adapter.init_bert_weights
            down.weight.normal_(mean=0.0, std=0.02)
            up.weight.normal_(mean=0.0, std=0.02)
        elif init == "houlsby":
            nn.init.trunc_normal_(down.weight, mean=0, std=1e-2, a=-2e-2, b=2e-2)
            nn.init.trunc_normal_(up.weight, mean=0, std=1e-2, a=-2e-2, b=2e-2)
        else:  # "mam" / "mam_adapter": nn.Linear's default kaiming-uniform (a=sqrt(5)) down, zero up
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
            up.weight.zero_()
        down.bias.zero_()
        up.bias.zero_()
    return BottleneckAdapter(down, up, **kwargs)


# -- Compacter ------------------------------------------------------------------------------------------
def kron_sum(rule: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_i kron(rule[i], w[i])``: rule (n, n, n), w (n, p, q) -> (n*p, n*q), without n separate krons; the
    products summed over ``i`` last, in the adapters library's order (its ``kronecker_product(...).sum(0)``), so
    that both give the same float32 weight."""
    n, p, q = w.shape
    return (rule[:, :, None, :, None] * w[:, None, :, None, :]).reshape(n, n * p, n * q).sum(0)


def init_phm_rule(rule: torch.Tensor, how: str, std: float, bound: float = 1.0) -> None:
    """``N(0, std)`` or ``U(-bound, bound)`` (adapters: a shared rule ``N(0, phm_init_range)`` / ``U(-1, 1)``,
    a per-layer rule ``N(0, 0.01)`` / ``U(-0.01, 0.01)``)."""
    with torch.no_grad():
        if how == "normal":
            rule.normal_(mean=0.0, std=std)
        else:
            rule.uniform_(-bound, bound)


def _init_w(w: torch.Tensor, how: str, std: float) -> None:
    """The compacter repository's inits, one Kronecker term at a time (glorot with gain sqrt(2)); ``how="bert"``
    is what the adapters library does whatever its ``hypercomplex_nonlinearity`` says (xavier-normal, gain 1)."""
    with torch.no_grad():
        for i in range(w.shape[0]):
            if how == "bert":
                nn.init.xavier_normal_(w[i])
            elif how == "glorot-uniform":
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
        init: str = "zero_up",
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
            if init == "bert":
                init_phm_rule(self.phm_rule, c_init, 0.01, bound=0.01)
            else:
                init_phm_rule(self.phm_rule, c_init, init_range)
        if init == "bert":
            w_init = "bert"
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
        if zero and init == "zero_up":  # the up projection: the adapter starts as the identity (like LoRA's B = 0)
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
    """A Compacter adapter: PHM down (size -> bottleneck) and PHM up (bottleneck -> size; zero-initialised with
    init "zero_up")."""
    common = dict(
        shared_rule=shared_rule,
        factorized=config.factorized_phm_W,
        rank=config.phm_rank,
        bias=config.phm_bias,
        c_init=config.phm_c_init,
        w_init=config.phm_w_init,
        init_range=config.phm_init_range,
        init=config.init,
        device=device,
    )
    down = PHMLinear(size, bottleneck, config.phm_dim, **common)
    up = PHMLinear(bottleneck, size, config.phm_dim, zero=True, **common)
    return BottleneckAdapter(down, up, **kwargs)
