"""The LoRA / DoRA config: one dataclass with defaults, help text and validation.

Field names and meanings follow ``peft.LoraConfig`` so that a config converts to and from a PEFT
``adapter_config.json`` one to one (see :func:`to_peft_dict` and :func:`from_peft_dict`).
This module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapterhub import tuning as tuners
from adapterhub.errors import InvalidInput

INIT_CHOICES = (True, False, "gaussian")


@dataclass
class LoraConfig:
    """LoRA (and DoRA) hyper-parameters; field names and semantics are PEFT's."""

    r: int = field(default=8, metadata={"help": "rank of the update B·A (A: r×in, B: out×r)"})
    lora_alpha: float = field(
        default=8, metadata={"help": "scaling numerator: scaling = lora_alpha / r (or / sqrt(r) with use_rslora)"}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input, in [0, 1)"})
    target_modules: Any = tuners.target_modules_field()
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA: scaling = lora_alpha / sqrt(r)"})
    use_dora: bool = field(
        default=False, metadata={"help": "DoRA: learn a per-output magnitude vector on top of the LoRA direction"}
    )
    rank_pattern: dict = field(
        default_factory=dict,
        metadata={"help": "per-module rank: {regex matching the end of the module path: r}, first match wins"},
    )
    alpha_pattern: dict = field(
        default_factory=dict,
        metadata={"help": "per-module alpha: {regex matching the end of the module path: alpha}, first match wins"},
    )
    modules_to_save: list = tuners.modules_to_save_field()
    fan_in_fan_out: bool = tuners.fan_in_fan_out_field()
    bias: str = field(default="none", metadata={"help": "which biases to train; only 'none' is supported"})
    init_lora_weights: Any = field(
        default=True,
        metadata={
            "help": "True: A kaiming-uniform, B zero (outputs unchanged); 'gaussian': A ~ N(0, 1/r), B zero; "
            "False: both random (for tests)"
        },
    )
    task_type: Any = tuners.task_type_field()

    def __post_init__(self) -> None:
        tuners.check_positive_int(self.r, "r")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not isinstance(self.lora_dropout, (int, float)) or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        self.target_modules = tuners.check_module_names(self.target_modules, "target_modules")
        tuners.check_flags(self, "use_rslora", "use_dora", "fan_in_fan_out")
        self.rank_pattern = tuners.check_pattern(self.rank_pattern, "rank_pattern", integer=True)
        self.alpha_pattern = tuners.check_pattern(self.alpha_pattern, "alpha_pattern")
        self.modules_to_save = tuners.check_modules_to_save(self.modules_to_save)
        if self.bias != "none":
            raise ValueError(f"bias={self.bias!r} is not supported; only 'none' (biases stay frozen)")
        if not isinstance(self.init_lora_weights, (bool, str)) or self.init_lora_weights not in INIT_CHOICES:
            raise ValueError(
                f"init_lora_weights must be one of true, false, 'gaussian'; got {self.init_lora_weights!r}"
            )
        tuners.check_task_type(self.task_type)

    # -- per-module values (PEFT's rank_pattern / alpha_pattern semantics) -----------------------------
    def rank_for(self, module_path: str) -> int:
        return tuners.pattern_value(self.rank_pattern, module_path, self.r)

    def alpha_for(self, module_path: str) -> float:
        return tuners.pattern_value(self.alpha_pattern, module_path, self.lora_alpha)

    def scaling_for(self, module_path: str) -> float:
        """``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA), computed exactly as PEFT does."""
        import math

        r, alpha = self.rank_for(module_path), self.alpha_for(module_path)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


# -- PEFT adapter_config.json ------------------------------------------------------------------------
#: PEFT keys that carry no meaning for the adapter's numbers (bookkeeping); ignored on import
_PEFT_BOOKKEEPING = tuners.PEFT_BOOKKEEPING | {"megatron_core", "qalora_group_size"}


def to_peft_dict(config: LoraConfig, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` PEFT writes for the same adapter (``LoraConfig.from_pretrained`` reads it)."""
    tm = config.target_modules
    return {
        "peft_type": "LORA",
        "task_type": config.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(tm) if isinstance(tm, list) else tm,
        "use_rslora": config.use_rslora,
        "use_dora": config.use_dora,
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": dict(config.alpha_pattern),
        "modules_to_save": list(config.modules_to_save) or None,
        "fan_in_fan_out": config.fan_in_fan_out,
        "bias": config.bias,
        "init_lora_weights": config.init_lora_weights,
        "lora_bias": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "exclude_modules": None,
    }


def from_peft_dict(peft: dict[str, Any], *, force_dora: bool = False) -> LoraConfig:
    """Our config from a PEFT ``adapter_config.json``. Keys we do not model are accepted only at values that
    leave the numbers unchanged (null, false, empty); any other value is refused, never silently dropped."""
    values = tuners.peft_values(
        peft,
        LoraConfig,
        peft_type="LORA",
        label="LoRA",
        bookkeeping=_PEFT_BOOKKEEPING,
        neutral=tuners.NEUTRAL_VALUES + ("none",),
    )
    if force_dora:
        values["use_dora"] = True
    return tuners.peft_config(LoraConfig, values, "LoRA")


# -- checking tensors against the config (and a base) ------------------------------------------------------
_A, _B, _M = ".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"


def _is_float(dtype: Any) -> bool:
    """A safetensors dtype string (``"F32"``) or a torch dtype that is floating point."""
    return dtype in ("F16", "BF16", "F32", "F64") or getattr(dtype, "is_floating_point", False) is True


def factor_paths(keys: Any) -> list[str]:
    """The module paths that have LoRA factors (``lora_A`` / ``lora_B`` / DoRA magnitude) among ``keys``."""
    paths = set()
    for key in keys:
        if key.startswith(tuners.PEFT_PREFIX):
            for suffix in (_A, _B, _M):
                if key.endswith(suffix):
                    paths.add(key[len(tuners.PEFT_PREFIX) : -len(suffix)])
    return sorted(paths)


def check_factors(config: LoraConfig, path: str, tensors: Any, base: Any = None, method: str = "lora") -> None:
    """Refuse LoRA factors of module ``path`` that do not fit each other, ``config`` or (when given) the base.

    ``tensors`` maps keys to objects with ``.shape`` and ``.dtype`` (safetensors header entries or tensors);
    ``base`` maps base tensor names, in the adapter's model naming, to header entries. Checks: ``lora_A``
    (r, in) and ``lora_B`` (out, r) both present, 2-d, floating point, of the rank the config gives
    (``rank_for``: ``r`` / ``rank_pattern``); the DoRA magnitude (out,) present exactly when ``use_dora``;
    the module selected by ``target_modules``; and with ``base``, ``<path>.weight`` present with matching
    in/out features (stored (in, out) when ``fan_in_fan_out``)."""
    pre = tuners.PEFT_PREFIX + path
    key_a, key_b, key_m = pre + _A, pre + _B, pre + _M
    for have, need in ((key_a, key_b), (key_b, key_a), (key_m, key_a)):
        if have in tensors and need not in tensors:
            raise InvalidInput(f"adapter has '{have}' but no '{need}'")
    if key_a not in tensors:
        return
    tm = config.target_modules
    if tm and not (isinstance(tm, str) and tm.lower() == tuners.ALL_LINEAR) and not tuners.matches_target(tm, path):
        raise InvalidInput(
            f"adapter tensor '{key_a}' is for module '{path}', which target_modules {tm!r} does not select"
        )
    a, b = tensors[key_a], tensors[key_b]
    for key, t in ((key_a, a), (key_b, b)) + (((key_m, tensors[key_m]),) if key_m in tensors else ()):
        if not _is_float(t.dtype):
            raise InvalidInput(
                f"adapter tensor '{key}' has dtype {_dtype_name(t.dtype)}: adapter tensors must be floating point"
            )
    sa, sb = tuple(a.shape), tuple(b.shape)
    for key, shape in ((key_a, sa), (key_b, sb)):
        if len(shape) != 2:
            raise InvalidInput(
                f"adapter tensor '{key}' has shape {shape} but LoRA factors are 2-d (lora_A: (r, in), lora_B: (out, r))"
            )
    r, ra, rb = config.rank_for(path), sa[0], sb[1]
    if not ra == rb == r:
        given = "r" if r == config.r else "rank_pattern"
        if ra == rb:
            msg = f"'{key_a}' {sa} and '{key_b}' {sb} have rank {ra} but the config gives rank {r} ({given})"
        elif ra == r:
            msg = (
                f"'{key_b}' has shape {sb}, rank {rb}, but '{key_a}' {sa} and the config give rank {r}: "
                f"expected {(sb[0], r)}"
            )
        elif rb == r:
            msg = (
                f"'{key_a}' has shape {sa}, rank {ra}, but '{key_b}' {sb} and the config give rank {r}: "
                f"expected {(r, sa[1])}"
            )
        else:
            msg = f"'{key_a}' {sa} has rank {ra}, '{key_b}' {sb} has rank {rb}, and the config gives rank {r} ({given})"
        raise InvalidInput(f"{method} adapter for '{path}': {msg}")
    if key_m in tensors and not config.use_dora:
        raise InvalidInput(f"adapter has the DoRA magnitude '{key_m}' but the config has use_dora=false")
    if config.use_dora:
        if key_m not in tensors:
            raise InvalidInput(f"DoRA adapter has no '{key_m}'")
        sm = tuple(tensors[key_m].shape)
        if sm != (sb[0],):
            raise InvalidInput(f"adapter tensor '{key_m}' has shape {sm} but '{key_b}' {sb} gives {(sb[0],)}")
    if base is not None:
        _check_base_fit(config, path, key_a, key_b, sa, sb, base)


def _check_base_fit(config: LoraConfig, path: str, key_a: str, key_b: str, sa: tuple, sb: tuple, base: Any) -> None:
    name = path + ".weight"
    w = base.get(name)
    if w is None:
        raise InvalidInput(f"adapter tensor '{key_a}' targets module '{path}', but the base has no '{name}'")
    shape = tuple(w.shape)
    if not _is_float(w.dtype):  # a packed (quantized) base weight: its shape says nothing of in/out
        return
    if len(shape) != 2:
        raise InvalidInput(
            f"adapter tensor '{key_a}' targets '{path}', but base '{name}' has shape {shape}, "
            "not a Linear/Conv1D weight"
        )
    ffo = config.fan_in_fan_out
    d_in, d_out = (shape[0], shape[1]) if ffo else (shape[1], shape[0])
    r = sa[0]
    for key, got, want in ((key_a, sa, (r, d_in)), (key_b, sb, (d_out, r))):
        if got != want:
            hint = ""
            if (sb[0], sa[1]) == ((d_in, d_out)):
                hint = (
                    f"; the base weight is stored {'(out, in)' if ffo else '(in, out)'}: "
                    f"fan_in_fan_out should be {str(not ffo).lower()}"
                )
            raise InvalidInput(f"adapter tensor '{key}' has shape {got} but base '{name}' {shape} needs {want}{hint}")


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")
