"""The VeRA config: field names and meanings follow ``peft.VeraConfig`` (Linear and Conv1D layers), so a config
converts to and from a PEFT ``adapter_config.json`` one to one. This module does not import torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapterhub import tuning as tuners

#: the range ``torch.Generator.manual_seed`` accepts
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1


@dataclass
class VeraConfig:
    """VeRA (Kopiczko et al. 2024): ``ΔW = diag(lambda_b) B diag(lambda_d) A``, with ``A`` (r, in) and ``B``
    (out, r) frozen random projections shared by every adapted layer (sliced to each layer's size) and only the
    vectors ``lambda_b`` (out) and ``lambda_d`` (r) trained."""

    r: int = field(
        default=256,
        metadata={
            "help": "rank of the shared projections (peft's default 256: VeRA trains only r + out values per layer, "
            "so it uses higher ranks than LoRA)"
        },
    )
    target_modules: Any = tuners.target_modules_field(
        "Linear/Conv1D layers to adapt: a list of names (exact path or suffix), a regex over the full path, or "
        "'all-linear'; unset: peft's default for the model type"
    )
    projection_prng_key: int = field(
        default=0,
        metadata={
            "help": "seed of the generator that draws the shared projections A and B (kaiming-uniform, on the CPU)"
        },
    )
    save_projection: bool = field(
        default=True,
        metadata={
            "help": "save A and B with the adapter (base_model.vera_A / vera_B, as peft); false: they are drawn again "
            "from projection_prng_key when loaded (smaller, but merge then refuses the adapter)"
        },
    )
    vera_dropout: float = field(default=0.0, metadata={"help": "dropout on the VeRA branch input, in [0, 1)"})
    d_initial: float = field(default=0.1, metadata={"help": "initial value of every lambda_d entry"})
    fan_in_fan_out: bool = tuners.fan_in_fan_out_field()
    modules_to_save: list = tuners.modules_to_save_field()
    task_type: Any = tuners.task_type_field()
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "true: lambda_b zero and lambda_d = d_initial, so the model is unchanged at init (peft's default); "
            "false: lambda_b ones and lambda_d random normal"
        },
    )

    def __post_init__(self) -> None:
        tuners.check_positive_int(self.r, "r")
        key = self.projection_prng_key
        if isinstance(key, bool) or not isinstance(key, int) or not _SEED_MIN <= key <= _SEED_MAX:
            raise ValueError(f"projection_prng_key must be an integer seed (a 64-bit value), got {key!r}")
        if (
            isinstance(self.vera_dropout, bool)
            or not isinstance(self.vera_dropout, (int, float))
            or not 0 <= self.vera_dropout < 1
        ):
            raise ValueError(f"vera_dropout must be a number in [0, 1), got {self.vera_dropout!r}")
        if isinstance(self.d_initial, bool) or not isinstance(self.d_initial, (int, float)):
            raise ValueError(f"d_initial must be a number, got {self.d_initial!r}")
        self.target_modules = tuners.check_module_names(self.target_modules, "target_modules")
        self.modules_to_save = tuners.check_modules_to_save(self.modules_to_save)
        tuners.check_task_type(self.task_type)
        tuners.check_flags(self, "save_projection", "fan_in_fan_out", "init_weights")


def to_peft_dict(config: VeraConfig, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` peft writes for the same adapter."""
    return {
        "peft_type": "VERA",
        "task_type": config.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": config.r,
        "target_modules": list(config.target_modules)
        if isinstance(config.target_modules, list)
        else config.target_modules,
        "projection_prng_key": config.projection_prng_key,
        "save_projection": config.save_projection,
        "vera_dropout": config.vera_dropout,
        "d_initial": config.d_initial,
        "fan_in_fan_out": config.fan_in_fan_out,
        "bias": "none",
        "modules_to_save": list(config.modules_to_save) or None,
        "init_weights": config.init_weights,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def from_peft_dict(peft: dict[str, Any]) -> VeraConfig:
    """Our config from a PEFT ``adapter_config.json``; options we do not model are accepted only at values that
    leave the numbers unchanged (no trained biases, every layer), any other is refused."""
    values = tuners.peft_values(
        peft, VeraConfig, peft_type="VERA", label="VeRA", neutral=tuners.NEUTRAL_VALUES + ("none",)
    )
    return tuners.peft_config(VeraConfig, values, "VeRA")
