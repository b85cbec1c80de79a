"""Built-in plugin: the ``ia3`` method ((IA)³, Liu et al. 2022), numerically identical to PEFT's IA3.

Importing this package does not import torch (the plugin manager may load it for ``adapterhub plugins``);
the torch-side code lives in :mod:`adapterhub_ia3.layer` and :mod:`adapterhub_ia3.model` and is imported on
first use.

Each targeted Linear/Conv1D layer learns one vector: attention-style layers scale their output, the
``feedforward_modules`` scale their input. Checkpoints use PEFT's key names
(``base_model.model.<path>.ia3_l``), so an adapter directory is a PEFT adapter directory. ``attach`` returns
and records the *effective* config (PEFT's default targets and feed-forward modules, ``fan_in_fan_out`` for
Conv1D layers, the SEQ_CLS head in ``modules_to_save``); save that one.
"""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.tuning import PEFT_PREFIX, TunerMethod

from .config import IA3Config, from_peft_dict, to_peft_dict

__all__ = ["IA3Config", "IA3Method", "register_methods"]

#: ``combine`` strategies; PEFT's IA3 ``add_weighted_adapter`` is a plain weighted sum
COMBINE_HOW = ("linear",)


class IA3Method(TunerMethod):
    """(IA)³: ``y = l ⊙ base(x)`` (attention layers) or ``y = base(l ⊙ x)`` (feed-forward layers).

    :meth:`attach` wraps the targeted Linear/Conv1D layers in place and freezes every other parameter
    (``modules_to_save`` become trainable copies); an effective config that differs from the one given is
    reported with a warning."""

    name = "ia3"
    config_class = IA3Config
    peft_type = "IA3"
    model_module = "adapterhub_ia3.model"

    # -- config ----------------------------------------------------------------------------------------
    def to_peft_config(self, config: Any, base_model_name_or_path: str | None = None) -> dict[str, Any]:
        return to_peft_dict(self._config(config), base_model_name_or_path)

    def from_peft_config(self, peft_config: dict[str, Any]) -> IA3Config:
        return from_peft_dict(peft_config)

    # -- validation ------------------------------------------------------------------------------------
    def check_tensors(self, tensors: Any, config: Any, base: Any = None) -> None:
        """Every tensor floating point; each ``ia3_l`` 2-d, (out, 1) for an attention-style layer or (1, in)
        for a ``feedforward_modules`` one; with ``base``, the module exists there with those features."""
        super().check_tensors(tensors, config, base)
        config = self._config(config)
        for key in sorted(k for k in tensors if k.startswith(PEFT_PREFIX) and k.endswith(".ia3_l")):
            path, shape = key[len(PEFT_PREFIX) : -len(".ia3_l")], tuple(tensors[key].shape)
            ff = config.is_feedforward(path) if config.feedforward_modules is not None else None
            kind, want = {
                True: ("feed-forward", "(1, in)"),
                False: ("attention-style", "(out, 1)"),
                None: ("targeted", "(out, 1) or (1, in)"),
            }[ff]
            if len(shape) != 2 or not {True: shape[0] == 1, False: shape[1] == 1, None: 1 in shape}[ff]:
                raise InvalidInput(
                    f"adapter tensor '{key}' has shape {shape} but the (IA)³ vector of a {kind} layer is {want}"
                )
            if base is None:
                continue
            w = base.get(path + ".weight")
            if w is None:
                raise InvalidInput(
                    f"adapter tensor '{key}' targets module '{path}', but the base has no '{path}.weight'"
                )
            if len(w.shape) != 2 or w.dtype not in ("F16", "BF16", "F32", "F64"):
                continue  # not a plain Linear/Conv1D weight (e.g. packed): the merge says more
            out_dim, in_dim = (w.shape[1], w.shape[0]) if config.fan_in_fan_out else (w.shape[0], w.shape[1])
            expected = [(1, in_dim)] if ff else [(out_dim, 1)] if ff is False else [(1, in_dim), (out_dim, 1)]
            if shape not in expected:
                raise InvalidInput(
                    f"adapter tensor '{key}' has shape {shape} but base '{path}.weight' "
                    f"{tuple(w.shape)} needs {' or '.join(map(str, expected))}"
                )

    # -- model -----------------------------------------------------------------------------------------
    def merge_tensor(
        self, name: str, base_tensor: Any, adapter_tensors: dict[str, Any], config: Any, *, inplace: bool = False
    ) -> Any:
        """Bit-identical to ``PeftModel.merge_and_unload()`` for ``base_tensor`` (weights and, for attention
        layers, biases are scaled); ``None`` if untouched. ``config`` must be the effective config."""
        return self._model().merge_tensor(name, base_tensor, adapter_tensors, self._config(config), inplace=inplace)

    def combine(
        self, adapters: list[tuple[Any, dict[str, Any]]], weights: list[float], how: str, **options: Any
    ) -> tuple[Any, dict[str, Any]]:
        """``how="linear"``: each vector becomes ``sum_i weights[i] * l_i`` (PEFT's IA3
        ``add_weighted_adapter``). Returns ``(config, tensors)``."""
        if how not in COMBINE_HOW:
            raise InvalidInput(
                f"ia3 cannot combine with how={how!r}; (IA)³ vectors combine only as a weighted sum: "
                f"how={'|'.join(COMBINE_HOW)}"
            )
        unknown = sorted(set(options) - {"density", "rank", "seed"})
        if unknown:
            raise InvalidInput(f"unknown ia3 combine option(s) {', '.join(unknown)}")
        given = sorted(k for k, v in options.items() if v is not None)  # the core passes them as None
        if given:
            raise InvalidInput(f"ia3 combine ({how}) takes no {'/'.join(given)}: (IA)³ vectors are summed as they are")
        if not adapters:
            raise InvalidInput("ia3 combine needs at least one adapter")
        if weights is None:
            weights = [1.0] * len(adapters)
        if len(weights) != len(adapters):
            raise InvalidInput(f"ia3 combine got {len(adapters)} adapter(s) but {len(weights)} weight(s)")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
            raise InvalidInput(f"ia3 combine weights must be numbers, got {weights!r}")
        return self._model().combine([(self._config(c), t) for c, t in adapters], [float(w) for w in weights])


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(IA3Method())
