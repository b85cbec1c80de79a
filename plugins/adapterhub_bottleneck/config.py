"""Bottleneck-adapter and Compacter configs, and the placement table. This module does not import torch.

Names and defaults follow the ``adapters`` library (``SeqBnConfig`` / ``DoubleSeqBnConfig`` /
``CompacterConfig`` / ``CompacterPlusPlusConfig``) where it has the same knob:

* ``style="houlsby"`` (``DoubleSeqBnConfig``, Houlsby et al. 2019): one adapter after the attention output
  projection and one after the FFN output projection of every layer;
* ``style="pfeiffer"`` (``SeqBnConfig``): after the FFN output projection only.

Compacter (Mahabadi et al. 2021) is the same placement with PHM projections: ``style="houlsby"`` is
Compacter, ``style="pfeiffer"`` is Compacter++.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from adapterhub import tuning as tuners

STYLES = ("houlsby", "pfeiffer")
NON_LINEARITIES = ("relu", "gelu", "swish", "tanh")
INITS = ("bert", "mam")
PHM_C_INITS = ("normal", "uniform")
PHM_W_INITS = ("glorot-uniform", "glorot-normal", "normal")
#: the adapters library's default non-linearity per style (``DoubleSeqBnConfig``: swish, ``SeqBnConfig``: relu)
DEFAULT_NON_LINEARITY = {"houlsby": "swish", "pfeiffer": "relu"}


@dataclass(frozen=True)
class Placement:
    """Where the adapters go in one family of architectures. ``attention`` / ``ffn`` are the dotted names of
    the attention block's and the feed-forward block's output projections *inside a numbered layer*
    (``<...>.<layer index>.<name>``). The adapter is applied to the *output* of the projection, i.e. before
    the block's dropout / residual / LayerNorm (where the adapters library inserts it)."""

    family: str  # human name, for messages
    attention: str  # e.g. "attention.output.dense"
    ffn: str  # e.g. "output.dense"

    def pattern(self, style: str) -> str:
        """One regex (fullmatch on module paths) selecting this style's modules; the effective ``target_layers``."""
        return self.regex([self.attention, self.ffn] if style == "houlsby" else [self.ffn])

    @staticmethod
    def regex(names: list[str]) -> str:
        """``<anything>.<layer index>.<one of names>``, e.g. ``(?:.*\\.)?\\d+\\.(?:mlp\\.down_proj)``."""
        return r"(?:.*\.)?\d+\.(?:" + "|".join(re.escape(n) for n in names) + ")"


#: Looked up by *what the model has* (the first family with an FFN projection, and for houlsby an attention
#: projection, in a numbered layer wins), never by ``model_type``; other architectures need ``target_layers``.
PLACEMENTS: tuple[Placement, ...] = (
    Placement("bert", "attention.output.dense", "output.dense"),  # BERT, RoBERTa, XLM-R, ELECTRA, MiniLM
    Placement("llama", "self_attn.o_proj", "mlp.down_proj"),  # Llama, Mistral, Qwen2/3, Gemma
    Placement("gpt2", "attn.c_proj", "mlp.c_proj"),  # GPT-2 (transformers Conv1D)
)


def _choice(value: Any, name: str, choices: tuple) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass
class AdapterConfig:
    """Fields shared by ``bottleneck`` and ``compacter`` (both are sequential bottleneck adapters)."""

    style: str = field(
        default="houlsby",
        metadata={
            "help": "'houlsby': adapters after the attention output and after the FFN output of every layer "
            "(adapters' DoubleSeqBnConfig; Compacter); 'pfeiffer': after the FFN output only (SeqBnConfig; "
            "Compacter++)"
        },
    )
    reduction_factor: int = field(
        default=16, metadata={"help": "bottleneck size = hidden size // reduction_factor (unless bottleneck_size)"}
    )
    bottleneck_size: Any = field(
        default=None, metadata={"help": "explicit bottleneck size; overrides reduction_factor when set"}
    )
    non_linearity: Any = field(
        default=None,
        metadata={
            "help": "activation between down and up projection: relu, gelu (exact erf), swish (SiLU), tanh; "
            "empty: the adapters library's default for the style (houlsby: swish, pfeiffer: relu)"
        },
    )
    residual: bool = field(
        default=True,
        metadata={"help": "add the adapter's output to its input (h + adapter(h)); false: replace h by it"},
    )
    scaling: float = field(default=1.0, metadata={"help": "multiplier on the adapter branch (adapters' 'scaling')"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter branch output, in [0, 1)"})
    leave_out: list = field(
        default_factory=list, metadata={"help": "layer indices that get no adapter (e.g. [0, 1])"}
    )
    target_layers: Any = field(
        default=None,
        metadata={
            "help": "override the placement: module paths to put an adapter after, as a list of names (exact "
            "path or suffix '.name') or a regex string that must fullmatch the path (style then only picks the "
            "default non_linearity); empty: the built-in table for the style (the effective config records "
            "the resolved regex)"
        },
    )
    modules_to_save: list = tuners.modules_to_save_field()
    task_type: Any = tuners.task_type_field()

    def __post_init__(self) -> None:
        _choice(self.style, "style", STYLES)
        tuners.check_positive_int(self.reduction_factor, "reduction_factor")
        tuners.check_positive_int(self.bottleneck_size, "bottleneck_size", optional=True)
        if self.non_linearity is not None:
            _choice(self.non_linearity, "non_linearity", NON_LINEARITIES)
        tuners.check_flags(self, "residual")
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)):
            raise ValueError(f"scaling must be a number, got {self.scaling!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.leave_out is None:
            self.leave_out = []
        if isinstance(self.leave_out, (set, tuple)):
            self.leave_out = sorted(self.leave_out)
        if not isinstance(self.leave_out, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.leave_out
        ):
            raise ValueError(f"leave_out must be a list of layer indices (integers >= 0), got {self.leave_out!r}")
        self.leave_out = sorted(set(self.leave_out))
        self.target_layers = tuners.check_module_names(self.target_layers, "target_layers") or None
        self.modules_to_save = tuners.check_modules_to_save(self.modules_to_save)
        tuners.check_task_type(self.task_type)

    def bottleneck_for(self, size: int) -> int:
        """The bottleneck width for an adapter on a ``size``-wide hidden state."""
        return self.bottleneck_size if self.bottleneck_size is not None else size // self.reduction_factor


@dataclass
class BottleneckConfig(AdapterConfig):
    """Houlsby / Pfeiffer bottleneck adapters: ``h + scaling * W_up f(W_down h + b_down) + b_up``."""

    init: str = field(
        default="bert",
        metadata={
            "help": "'bert': W_down ~ N(0, 0.01), W_up and biases zero (the adapter starts as the identity); "
            "'mam': W_down kaiming-uniform, W_up and biases zero"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice(self.init, "init", INITS)


@dataclass
class CompacterConfig(AdapterConfig):
    """Compacter: the bottleneck's projections are PHM layers ``W = sum_i A_i (x) B_i`` (Kronecker products)."""

    reduction_factor: int = field(
        default=32, metadata={"help": "bottleneck size = hidden size // reduction_factor (unless bottleneck_size)"}
    )
    non_linearity: Any = field(
        default="gelu",
        metadata={"help": "activation between down and up projection: relu, gelu (exact erf), swish (SiLU), tanh"},
    )
    phm_dim: int = field(
        default=4,
        metadata={"help": "n: number of Kronecker terms; hidden and bottleneck sizes must be divisible by it"},
    )
    shared_phm_rule: bool = field(
        default=True,
        metadata={"help": "one set of A_i (n x n x n) shared by every PHM layer of the model (saved once)"},
    )
    factorized_phm_W: bool = field(
        default=True, metadata={"help": "B_i = s_i t_i^T of rank phm_rank instead of a full (in/n x out/n) matrix"}
    )
    phm_rank: int = field(default=1, metadata={"help": "rank of the factorised B_i"})
    phm_bias: bool = field(default=True, metadata={"help": "a bias on each PHM layer"})
    phm_c_init: str = field(
        default="normal",
        metadata={"help": "init of the A_i: 'normal' (N(0, phm_init_range)) or 'uniform' (U(-1, 1))"},
    )
    phm_init_range: float = field(
        default=0.0001, metadata={"help": "standard deviation for 'normal' inits of A_i (and of B_i)"}
    )
    phm_w_init: str = field(
        default="glorot-uniform",
        metadata={
            "help": "init of the B_i (or their factors): glorot-uniform, glorot-normal, normal; the up "
            "projection's right factor (or B_i) and the biases start at zero, so the adapter starts as identity"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.non_linearity is None:
            self.non_linearity = "gelu"
        tuners.check_positive_int(self.phm_dim, "phm_dim")
        tuners.check_positive_int(self.phm_rank, "phm_rank")
        tuners.check_flags(self, "shared_phm_rule", "factorized_phm_W", "phm_bias")
        _choice(self.phm_c_init, "phm_c_init", PHM_C_INITS)
        _choice(self.phm_w_init, "phm_w_init", PHM_W_INITS)
        r = self.phm_init_range
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0:
            raise ValueError(f"phm_init_range must be a positive number, got {r!r}")
        if self.bottleneck_size is not None and self.bottleneck_size % self.phm_dim:
            raise ValueError(
                f"bottleneck_size {self.bottleneck_size} is not divisible by phm_dim {self.phm_dim}"
            )
