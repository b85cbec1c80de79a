"""Bottleneck-adapter and Compacter configs (the placement table they use is the toolkit's,
:mod:`adapterhub.tuning.placements`). This module does not import torch.

Names and defaults follow the ``adapters`` library (``SeqBnConfig`` / ``DoubleSeqBnConfig`` / ``ParBnConfig`` /
``CompacterConfig`` / ``CompacterPlusPlusConfig``) where it has the same knob, so that identical weights give
identical outputs in both libraries:

* ``style="houlsby"`` (``DoubleSeqBnConfig``, Houlsby et al. 2019): one adapter after the attention output
  projection and one after the FFN output projection of every layer, reading the projection's output;
* ``style="pfeiffer"`` (``SeqBnConfig``, Pfeiffer et al. 2020): after the FFN output projection only, reading
  the layer-normed residual stream (``original_ln_before=True``): on a post-LN model (BERT) the block becomes
  ``LN(d + f(LN(d + x)) + x)`` for projection output ``d`` and block input ``x``; on a pre-LN model (Llama,
  GPT-2), which has no LayerNorm there, ``x + d + f(x + d)``.

Compacter (Mahabadi et al. 2021) is the same placement with PHM projections: ``style="houlsby"`` is
``CompacterConfig``, ``style="pfeiffer"`` is ``CompacterPlusPlusConfig``.

Adapters stored before the placement options existed (a manifest config without ``original_ln_before``) read
the projection output in both styles; :func:`legacy_values` maps such a config to that placement, stated
explicitly, so an old Pfeiffer version keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapterhub import tuning as tuners

STYLES = ("houlsby", "pfeiffer")
NON_LINEARITIES = ("relu", "gelu", "gelu_new", "swish", "tanh", "leakyrelu")
#: bottleneck inits; "bert", "mam_adapter" and "houlsby" are the adapters library's, "zero_up" and "mam" ours
INITS = ("zero_up", "mam", "bert", "mam_adapter", "houlsby")
#: compacter inits: "zero_up" ours (the identity at start), "bert" what the adapters library does
COMPACTER_INITS = ("zero_up", "bert")
PHM_C_INITS = ("normal", "uniform")
PHM_W_INITS = ("glorot-uniform", "glorot-normal", "normal")
#: the adapters library's default non-linearity per style (``DoubleSeqBnConfig``: swish, ``SeqBnConfig``: relu)
DEFAULT_NON_LINEARITY = {"houlsby": "swish", "pfeiffer": "relu"}
#: the adapters library's ``original_ln_before`` per style (``DoubleSeqBnConfig``: False, ``SeqBnConfig``: True)
DEFAULT_LN_BEFORE = {"houlsby": False, "pfeiffer": True}
#: what a config stored before the placement options existed meant (adapterhub <= 0.1.0): both styles read the
#: projection output and wrote back before the block's residual add; ``init="bert"`` was today's "zero_up"
LEGACY_PLACEMENT = {
    "original_ln_before": False,
    "original_ln_after": True,
    "residual_before_ln": True,
    "ln_before": False,
    "ln_after": False,
    "adapter_residual_before_ln": False,
    "is_parallel": False,
}
LEGACY_INITS = {"bert": "zero_up"}


def legacy_values(values: dict[str, Any]) -> dict[str, Any]:
    """A stored config (``adapterhub.json``) as the typed config's values: one written before the placement
    options existed (no ``original_ln_before`` key) gets the placement and init name it was trained with."""
    if "original_ln_before" in values:
        return values
    upgraded = {**values, **LEGACY_PLACEMENT}
    if upgraded.get("init") in LEGACY_INITS:
        upgraded["init"] = LEGACY_INITS[upgraded["init"]]
    return upgraded


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
            "(adapters' DoubleSeqBnConfig; Compacter); 'pfeiffer': after the FFN output only, reading the "
            "layer-normed residual stream (SeqBnConfig; Compacter++)"
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
            "help": "activation between down and up projection: relu, gelu (exact erf), gelu_new (tanh "
            "approximation), swish (SiLU), tanh, leakyrelu; empty: the adapters library's default for the style "
            "(houlsby: swish, pfeiffer: relu)"
        },
    )
    residual: bool = field(
        default=True,
        metadata={"help": "add the adapter's residual (adapter(h) = residual + branch(h)); false: the branch alone"},
    )
    scaling: float = field(default=1.0, metadata={"help": "multiplier on the adapter branch (adapters' 'scaling')"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter branch output, in [0, 1)"})
    original_ln_before: Any = field(
        default=None,
        metadata={
            "help": "adapters' original_ln_before: the adapter reads the block's residual sum (projection output "
            "+ block input), layer-normed on post-LN models, instead of the projection output; empty: the "
            "style's default (houlsby: false, pfeiffer: true)"
        },
    )
    original_ln_after: bool = field(
        default=True,
        metadata={
            "help": "adapters' original_ln_after: the block's residual add (and LayerNorm, post-LN) still follows "
            "the adapter; false: the adapter's output is the block's output"
        },
    )
    residual_before_ln: Any = field(
        default=True,
        metadata={
            "help": "adapters' residual_before_ln: the adapter's residual is the projection output (true), what "
            "it reads (false), or the residual sum before the LayerNorm ('post_add'; post-LN models, with "
            "original_ln_before)"
        },
    )
    ln_before: bool = field(
        default=False, metadata={"help": "a new LayerNorm on the adapter's input (adapters' ln_before)"}
    )
    ln_after: bool = field(
        default=False, metadata={"help": "a new LayerNorm on the adapter's output (adapters' ln_after)"}
    )
    adapter_residual_before_ln: bool = field(
        default=False,
        metadata={"help": "with ln_after: add the adapter's residual before that LayerNorm (adapters' option)"},
    )
    is_parallel: bool = field(
        default=False,
        metadata={
            "help": "a parallel adapter (He et al. 2021; adapters' ParBnConfig): it reads the sub-block's input "
            "and its branch is added to the projection output"
        },
    )
    leave_out: list = field(default_factory=list, metadata={"help": "layer indices that get no adapter (e.g. [0, 1])"})
    target_layers: Any = field(
        default=None,
        metadata={
            "help": "override the placement: module paths to put an adapter after, as a list of names (exact "
            "path or suffix '.name') or a regex string that must fullmatch the path (style then only picks the "
            "defaults); empty: the built-in table for the style (the effective config records the resolved regex)"
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
        if self.original_ln_before is None:
            self.original_ln_before = False if self.is_parallel else DEFAULT_LN_BEFORE.get(self.style, False)
        tuners.check_flags(
            self,
            "residual",
            "original_ln_before",
            "original_ln_after",
            "ln_before",
            "ln_after",
            "adapter_residual_before_ln",
            "is_parallel",
        )
        if not (isinstance(self.residual_before_ln, bool) or self.residual_before_ln == "post_add"):
            raise ValueError(f"residual_before_ln must be true, false or 'post_add'; got {self.residual_before_ln!r}")
        if self.residual_before_ln == "post_add" and not self.original_ln_before:
            raise ValueError(
                "residual_before_ln='post_add' needs original_ln_before=true (the residual sum it "
                "takes exists only then)"
            )
        if self.is_parallel and (self.original_ln_before or not self.residual):
            raise ValueError(
                "a parallel adapter (is_parallel) reads the sub-block input and has no residual of its "
                "own: original_ln_before must be false and residual true"
            )
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

    def reads_residual(self) -> bool:
        """Whether the adapter needs the sub-block's input (the residual stream), not only the projection output."""
        return self.original_ln_before or self.is_parallel or not self.original_ln_after


@dataclass
class BottleneckConfig(AdapterConfig):
    """Houlsby / Pfeiffer / parallel bottleneck adapters: ``residual + scaling * W_up f(W_down x + b_down) + b_up``."""

    init: str = field(
        default="zero_up",
        metadata={
            "help": "'zero_up': W_down ~ N(0, 0.01), W_up and biases zero (the adapter starts as the identity; "
            "adapterhub's 'bert' before 0.2); 'mam' / 'mam_adapter': W_down kaiming-uniform, W_up and biases "
            "zero; 'bert' (the adapters library's default): W_down and W_up ~ N(0, 0.02), biases zero (not the "
            "identity at start); 'houlsby': W_down and W_up ~ N(0, 0.01) truncated to +-0.02, biases zero"
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
        metadata={
            "help": "activation between down and up projection: relu, gelu (exact erf), gelu_new, swish "
            "(SiLU), tanh, leakyrelu"
        },
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
            "help": "init of the B_i (or their factors) with init 'zero_up': glorot-uniform, glorot-normal (gain "
            "sqrt 2, as the compacter repository), normal"
        },
    )
    init: str = field(
        default="zero_up",
        metadata={
            "help": "'zero_up': B_i per phm_w_init, the up projection's right factor (or B_i) and the biases zero, "
            "so the adapter starts as the identity; 'bert' (what the adapters library does): every B_i factor "
            "xavier-normal (gain 1), per-layer rules N(0, 0.01) or U(-0.01, 0.01), biases zero"
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
        _choice(self.init, "init", COMPACTER_INITS)
        r = self.phm_init_range
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0:
            raise ValueError(f"phm_init_range must be a positive number, got {r!r}")
        if self.bottleneck_size is not None and self.bottleneck_size % self.phm_dim:
            raise ValueError(f"bottleneck_size {self.bottleneck_size} is not divisible by phm_dim {self.phm_dim}")
