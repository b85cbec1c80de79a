"""Built-in plugin: the ``lokr`` method (LoKr: Kronecker-product adapters), peft's ``LoKrConfig`` on Linear layers.

Written only against the public toolkit (:mod:`adapterhub.tuning`), like a third-party plugin. Importing this
package does not import torch; :mod:`adapterhub_lokr.model` is imported on first use.
"""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.tuning import PEFT_PREFIX, TunerMethod

from .config import LoKrConfig, factor_shapes, from_peft_dict, to_peft_dict

__all__ = ["LoKrConfig", "LoKrMethod", "register_methods"]
_FACTORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


class LoKrMethod(TunerMethod):
    """LoKr: ``ΔW = (w1 ⊗ w2) · alpha / r`` added to each targeted Linear layer; mergeable."""

    name = "lokr"
    config_class = LoKrConfig
    peft_type = "LOKR"
    model_module = "adapterhub_lokr.model"

    def to_peft_config(self, config: Any, base_model_name_or_path: str | None = None) -> dict[str, Any]:
        return to_peft_dict(self._config(config), base_model_name_or_path)

    def from_peft_config(self, peft_config: dict[str, Any]) -> LoKrConfig:
        return from_peft_dict(peft_config)

    def check_tensors(self, tensors: Any, config: Any, base: Any = None) -> None:
        """Each layer holds exactly the factors peft's shape rule gives for its size (from the base's weight with
        ``base``; else from the left factors' shapes, which fix the right ones)."""
        super().check_tensors(tensors, config, base)
        config = self._config(config)
        layers: dict[str, dict[str, tuple]] = {}
        for key in tensors:
            path, _, f = key[len(PEFT_PREFIX) :].rpartition(".")
            if f in _FACTORS:
                layers.setdefault(path, {})[f] = tuple(tensors[key].shape)
        for path, got in sorted(layers.items()):
            w = None if base is None else base.get(path + ".weight")
            if base is not None and w is None:
                raise InvalidInput(f"lokr adapter targets '{path}', but the base has no '{path}.weight'")
            if w is not None:
                out_dim, in_dim = tuple(w.shape)
            else:
                left = got.get("lokr_w1") or (got.get("lokr_w1_a", (0,))[0], got.get("lokr_w1_b", (0, 0))[-1])
                right = got.get("lokr_w2") or (got.get("lokr_w2_a", (0,))[0], got.get("lokr_w2_b", (0, 0))[-1])
                out_dim, in_dim = left[0] * right[0], left[-1] * right[-1]
            want = factor_shapes(config, out_dim, in_dim)
            if got != want:
                raise InvalidInput(
                    f"lokr adapter for '{path}' has {sorted(got.items())}, but a {out_dim}x{in_dim} "
                    f"layer with r={config.r} needs {sorted(want.items())}"
                )

    def merge_tensor(
        self, name: str, base_tensor: Any, adapter_tensors: dict[str, Any], config: Any, *, inplace: bool = False
    ) -> Any:
        return self._model().merge_tensor(name, base_tensor, adapter_tensors, self._config(config))


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(LoKrMethod())
