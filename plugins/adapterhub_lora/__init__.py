"""Built-in plugin: the ``lora``, ``dora`` and ``qlora`` methods (LoRA, rsLoRA, DoRA; LoRA on a quantized base),
numerically identical to PEFT.

Importing this package does not import torch (the plugin manager may load it for ``adapterhub plugins``);
the torch-side code lives in :mod:`adapterhub_lora.layer` and :mod:`adapterhub_lora.model` and is imported on
first use.

* ``lora``: PEFT ``peft_type="LORA"``; ``use_dora=True`` is allowed and means DoRA.
* ``dora``: the same config with ``use_dora`` always on; it claims PEFT LoRA configs with ``use_dora``.
* ``qlora``: LoRA trained on a base a quantizer plugin loads quantized (``nf4`` by default; bitsandbytes layers,
  :mod:`adapterhub_lora.bnb`, as PEFT keeps its quantized LoRA layers beside LoRA's). The adapter is a plain LoRA
  adapter; ``train`` records where it was trained (``manifest["base"]["quantization"]``) and a merge lands on the
  dequantized base by default (``adapterhub merge --onto``).

Checkpoints use PEFT's key names (``base_model.model.<path>.lora_A.weight`` ...), so an adapter directory is a
PEFT adapter directory. ``attach`` returns and records the *effective* config (``fan_in_fan_out`` set for
Conv1D layers, PEFT's default targets, the SEQ_CLS head in ``modules_to_save``); save that one.
"""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.tuning import TunerMethod, has_quantized_layers

from .config import LoraConfig, check_factors, factor_paths, from_peft_dict, to_peft_dict

__all__ = ["LoraConfig", "LoraMethod", "DoraMethod", "QLoraMethod", "register_methods"]


class LoraMethod(TunerMethod):
    """LoRA: ``W x + B A x · scaling`` with ``scaling = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).

    :meth:`attach` wraps the targeted Linear/Conv1D layers in place and freezes every other parameter
    (``modules_to_save`` become trainable copies); an effective config that differs from the one given is
    reported with a warning."""

    name = "lora"
    config_class = LoraConfig
    peft_type = "LORA"
    model_module = "adapterhub_lora.model"
    #: methods with the same ``multi_family`` share one stack / routed attach (lora and dora mix freely)
    multi_family = "lora"

    # -- config ----------------------------------------------------------------------------------------
    def matches_peft_config(self, peft_config: dict[str, Any]) -> bool:
        return peft_config.get("peft_type") == "LORA" and not peft_config.get("use_dora", False)

    def to_peft_config(self, config: Any, base_model_name_or_path: str | None = None) -> dict[str, Any]:
        return to_peft_dict(self._config(config), base_model_name_or_path)

    def from_peft_config(self, peft_config: dict[str, Any]) -> LoraConfig:
        return from_peft_dict(peft_config)

    # -- validation ------------------------------------------------------------------------------------
    def check_tensors(self, tensors: Any, config: Any, base: Any = None) -> None:
        """Every tensor floating point; each module's ``lora_A`` / ``lora_B`` (and DoRA magnitude) present,
        2-d, of the config's rank and selected by ``target_modules``; with ``base``, the module exists there
        with the same in/out features (:func:`adapterhub_lora.config.check_factors`)."""
        super().check_tensors(tensors, config, base)
        config = self._config(config)
        for path in factor_paths(tensors):
            check_factors(config, path, tensors, base, self.name)

    def _check_merge(self, name: str, adapter_tensors: Any, config: Any) -> None:
        """The factors for base tensor ``name`` fit each other and the config (header shapes when the tensors
        are read lazily, so nothing extra is read)."""
        if name.endswith(".weight"):
            header = getattr(adapter_tensors, "header", None)
            check_factors(
                config,
                name[: -len(".weight")],
                header.tensors if header is not None else adapter_tensors,
                None,
                self.name,
            )

    # -- model -----------------------------------------------------------------------------------------
    def merge_tensor(
        self, name: str, base_tensor: Any, adapter_tensors: dict[str, Any], config: Any, *, inplace: bool = False
    ) -> Any:
        """Bit-identical to ``PeftModel.merge_and_unload()`` for ``base_tensor``; ``None`` if untouched."""
        self._check_merge(name, adapter_tensors, self._config(config))
        return self._model().merge_tensor(name, base_tensor, adapter_tensors, self._config(config), inplace=inplace)

    def row_merger(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: Any,
        adapter_tensors: dict[str, Any],
        config: Any,
        blocks: list[tuple[int, int]],
    ) -> Any:
        """Row blocks of a LoRA weight merged in place (not DoRA, not ``modules_to_save`` copies)."""
        self._check_merge(name, adapter_tensors, self._config(config))
        return self._model().row_merger(name, tuple(shape), dtype, adapter_tensors, self._config(config), blocks)

    # -- several adapters ------------------------------------------------------------------------------
    def combine(
        self, adapters: list[tuple[Any, dict[str, Any]]], weights: list[float], how: str, **options: Any
    ) -> tuple[LoraConfig, dict[str, Any]]:
        """A new ``(LoraConfig, tensors)`` from several LoRA adapters, combined in ΔW space
        (``how``: linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune; see
        :mod:`adapterhub_lora.combine`). Options: ``density``, ``rank``, ``seed``."""
        from . import combine as _combine

        unknown = sorted(set(options) - {"density", "rank", "seed"})
        if unknown:
            raise InvalidInput(f"unknown combine option(s) for {self.name}: {', '.join(unknown)}")
        return _combine.combine([(self._config(c), t) for c, t in adapters], list(weights), how, **options)

    def attach_stack(self, model: Any, adapters: list[tuple[Any, dict[str, Any]]]) -> list[LoraConfig]:
        """Attach several adapters at once, all active (PEFT's several active adapters: LoRA deltas add,
        a DoRA branch rescales the output so far); inference only. Undo with :meth:`detach_multi`."""
        from . import multi

        return multi.attach_stack(model, [(LoraMethod._config(self, c), t) for c, t in adapters])

    def attach_routed(self, model: Any, adapters: list[tuple[Any, dict[str, Any]]], route: Any) -> list[LoraConfig]:
        """Attach adapters for per-row routing: each forward reads ``route.index`` (LongTensor (rows,), 0 for
        no adapter, ``i + 1`` for ``adapters[i]``); inference only. Undo with :meth:`detach_multi`."""
        from . import multi

        return multi.attach_routed(model, [(LoraMethod._config(self, c), t) for c, t in adapters], route)

    def detach_multi(self, model: Any) -> None:
        """Undo :meth:`attach_stack` / :meth:`attach_routed`."""
        from . import multi

        multi.detach(model)


class DoraMethod(LoraMethod):
    """DoRA: LoRA's direction plus a learned per-output magnitude (``use_dora`` always on)."""

    name = "dora"

    def make_config(self, values: dict[str, Any] | None = None) -> LoraConfig:
        values = dict(values or {})
        if values.get("use_dora", True) is not True:
            raise InvalidInput("method 'dora' always uses DoRA; use method 'lora' for plain LoRA")
        values["use_dora"] = True
        return super().make_config(values)

    def _config(self, config: Any) -> LoraConfig:
        config = super()._config(config)
        if not config.use_dora:
            raise InvalidInput("method 'dora' needs use_dora=True in its config; use method 'lora' for plain LoRA")
        return config

    def matches_peft_config(self, peft_config: dict[str, Any]) -> bool:
        return peft_config.get("peft_type") == "LORA" and bool(peft_config.get("use_dora", False))

    def from_peft_config(self, peft_config: dict[str, Any]) -> LoraConfig:
        return from_peft_dict(peft_config, force_dora=True)


class QLoraMethod(LoraMethod):
    """QLoRA: LoRA on a 4-bit NF4 base (double quantization; paged optimizers on CUDA)."""

    name = "qlora"
    #: train loads the base through this quantizer unless ``--quantize`` names another one
    base_quantizer = "nf4"
    #: this method's attach works on bitsandbytes-quantized layers
    supports_quantized_base = True

    def matches_peft_config(self, peft_config: dict[str, Any]) -> bool:
        return False  # a PEFT LoRA directory is imported as 'lora'; qlora is LoRA + where it was trained

    def attach(self, model: Any, config: Any) -> LoraConfig:
        """LoRA's attach; on a quantized base, each branch sized from the layer's real in/out features (not its
        packed weight) and the 4-bit layers kept off bitsandbytes' packed CPU kernel, which has no backward.
        DoRA and GPT-2 style Conv1D layers on a quantized base are refused."""
        if not has_quantized_layers(model):
            return super().attach(model, config)
        from adapterhub.tuning import no_cpu_packing

        from . import bnb

        if self._config(config).use_dora:
            raise InvalidInput(
                "DoRA cannot train on a quantized base here (its weight norm needs the dequantized "
                "weight at every step); use qlora without use_dora, or dora on the full-precision base"
            )
        effective = super().attach(model, config)
        try:
            bnb.fit_to_quantized(model, effective.init_lora_weights)  # checks; refits where LoRA sized it wrong
            no_cpu_packing(model)
        except Exception:
            super().detach(model)
            raise
        return effective


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(LoraMethod())
    register(DoraMethod())
    register(QLoraMethod())
