"""Built-in plugin: the ``vera`` method (VeRA: vector-based random matrix adaptation), peft's ``VeraConfig`` on
Linear and Conv1D layers.

Written only against the public toolkit (:mod:`adapterhub.tuning`), like a third-party plugin. Importing this
package does not import torch; :mod:`adapterhub_vera.model` is imported on first use.
"""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.tuning import PEFT_PREFIX, TunerMethod

from .config import VeraConfig, from_peft_dict, to_peft_dict

__all__ = ["VeraConfig", "VeraMethod", "register_methods"]
#: the trained vectors of each layer: lambda_b (out,), lambda_d (r,)
LAMBDAS = ("vera_lambda_b", "vera_lambda_d")
#: peft's keys of the shared projections, held once by the tuner (outside ``base_model.model.``)
VERA_A, VERA_B = "base_model.vera_A", "base_model.vera_B"


class VeraMethod(TunerMethod):
    """VeRA: ``ΔW = diag(lambda_b) B diag(lambda_d) A`` with A, B frozen random projections shared by all layers.

    Only the vectors are trained; mergeable when the projections are saved with the adapter."""

    name = "vera"
    config_class = VeraConfig
    peft_type = "VERA"
    model_module = "adapterhub_vera.model"

    def to_peft_config(self, config: Any, base_model_name_or_path: str | None = None) -> dict[str, Any]:
        return to_peft_dict(self._config(config), base_model_name_or_path)

    def from_peft_config(self, peft_config: dict[str, Any]) -> VeraConfig:
        return from_peft_dict(peft_config)

    def check_tensors(self, tensors: Any, config: Any, base: Any = None) -> None:
        """Each layer holds ``vera_lambda_b`` (out,) and ``vera_lambda_d`` (r,); A (r, in_max) and B (out_max, r)
        are there exactly when ``save_projection`` is, sized by the largest layer (``in_max`` known only with
        ``base``, whose weights also give each layer's size)."""
        super().check_tensors(tensors, config, base)
        config = self._config(config)
        r = config.r
        layers: dict[str, dict[str, tuple]] = {}
        for key in tensors:
            path, _, leaf = key[len(PEFT_PREFIX) :].rpartition(".")
            if key.startswith(PEFT_PREFIX) and leaf in LAMBDAS:
                layers.setdefault(path, {})[leaf] = tuple(tensors[key].shape)
        outs, ins = [], []
        for path, got in sorted(layers.items()):
            missing = [n for n in LAMBDAS if n not in got]
            if missing:
                raise InvalidInput(f"vera adapter for '{path}' lacks {', '.join(missing)}")
            w = None if base is None else base.get(path + ".weight")
            if base is not None and (w is None or len(w.shape) != 2):
                raise InvalidInput(f"vera adapter targets '{path}', but the base has no 2-d '{path}.weight'")
            if w is not None:
                out_f, in_f = (w.shape[1], w.shape[0]) if config.fan_in_fan_out else (w.shape[0], w.shape[1])
                ins.append(in_f)
            else:
                out_f = got["vera_lambda_b"][0] if len(got["vera_lambda_b"]) == 1 else -1
            want = {"vera_lambda_b": (out_f,), "vera_lambda_d": (r,)}
            if got != want:
                raise InvalidInput(
                    f"vera adapter for '{path}' has {sorted(got.items())}, but a layer with "
                    f"{out_f} outputs and r={r} needs {sorted(want.items())}"
                )
            outs.append(out_f)
        present = [k for k in (VERA_A, VERA_B) if k in tensors]
        if not config.save_projection:
            if present:
                raise InvalidInput(f"the vera adapter holds {present[0]} but its config says save_projection=false")
            return
        if len(present) < 2:
            raise InvalidInput(
                f"the vera adapter lacks {', '.join(k for k in (VERA_A, VERA_B) if k not in present)} "
                "(its config says save_projection=true)"
            )
        got_a, got_b = tuple(tensors[VERA_A].shape), tuple(tensors[VERA_B].shape)
        want_a = (r, max(ins) if ins else (got_a[-1] if len(got_a) == 2 and got_a[-1] > 0 else 1))
        want_b = (max(outs) if outs else (got_b[0] if len(got_b) == 2 and got_b[0] > 0 else 1), r)
        for key, got, want in ((VERA_A, got_a, want_a), (VERA_B, got_b, want_b)):
            if got != want:
                raise InvalidInput(
                    f"adapter tensor '{key}' has shape {got}, expected {want} (r={r}, sized by the "
                    "largest targeted layer)"
                )

    def merge_tensor(
        self, name: str, base_tensor: Any, adapter_tensors: dict[str, Any], config: Any, *, inplace: bool = False
    ) -> Any:
        return self._model().merge_tensor(name, base_tensor, adapter_tensors, self._config(config))


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(VeraMethod())
