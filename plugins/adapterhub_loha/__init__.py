"""Built-in plugin: the ``loha`` method (LoHa: low-rank Hadamard product), peft's ``LoHaConfig`` on Linear layers.

Written only against the public toolkit (:mod:`adapterhub.tuning`), like a third-party plugin. Importing this
package does not import torch; :mod:`adapterhub_loha.model` is imported on first use.
"""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.tuning import PEFT_PREFIX, TunerMethod

from .config import LoHaConfig, from_peft_dict, to_peft_dict

__all__ = ["LoHaConfig", "LoHaMethod", "register_methods"]
_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class LoHaMethod(TunerMethod):
    """LoHa: ``ΔW = (w1_a w1_b) ⊙ (w2_a w2_b) · alpha / r`` added to each targeted Linear layer; mergeable."""

    name = "loha"
    config_class = LoHaConfig
    peft_type = "LOHA"
    model_module = "adapterhub_loha.model"

    def to_peft_config(self, config: Any, base_model_name_or_path: str | None = None) -> dict[str, Any]:
        return to_peft_dict(self._config(config), base_model_name_or_path)

    def from_peft_config(self, peft_config: dict[str, Any]) -> LoHaConfig:
        return from_peft_dict(peft_config)

    def check_tensors(self, tensors: Any, config: Any, base: Any = None) -> None:
        """Each layer's four factors present, 2-d and of one rank ``r``: (out, r), (r, in), (out, r), (r, in);
        with ``base``, ``out``/``in`` are the base layer's."""
        super().check_tensors(tensors, config, base)
        config = self._config(config)
        layers = {k[len(PEFT_PREFIX) :].rsplit(".", 1)[0] for k in tensors if k.rsplit(".", 1)[-1] in _FACTORS}
        for path in sorted(layers):
            shapes = {
                f: tuple(tensors[f"{PEFT_PREFIX}{path}.{f}"].shape) if f"{PEFT_PREFIX}{path}.{f}" in tensors else None
                for f in _FACTORS
            }
            missing = [f for f, s in shapes.items() if s is None]
            if missing:
                raise InvalidInput(f"loha adapter for '{path}' lacks {', '.join(missing)}")
            w = None if base is None else base.get(path + ".weight")
            out_f, in_f = (
                tuple(w.shape)
                if w is not None and len(w.shape) == 2
                else (shapes["hada_w1_a"][0], shapes["hada_w1_b"][-1])
            )
            r = config.r
            want = {"hada_w1_a": (out_f, r), "hada_w1_b": (r, in_f), "hada_w2_a": (out_f, r), "hada_w2_b": (r, in_f)}
            for f, shape in shapes.items():
                if shape != want[f]:
                    raise InvalidInput(
                        f"adapter tensor '{PEFT_PREFIX}{path}.{f}' has shape {shape}, expected "
                        f"{want[f]} (r={r}, layer {out_f}x{in_f})"
                    )
            if base is not None and w is None:
                raise InvalidInput(f"loha adapter targets '{path}', but the base has no '{path}.weight'")

    def merge_tensor(
        self, name: str, base_tensor: Any, adapter_tensors: dict[str, Any], config: Any, *, inplace: bool = False
    ) -> Any:
        return self._model().merge_tensor(name, base_tensor, adapter_tensors, self._config(config))


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(LoHaMethod())
