"""Built-in plugin: the ``bottleneck`` and ``compacter`` methods (sequential bottleneck adapters).

Importing this package does not import torch (the plugin manager may load it for ``adapterhub plugins``);
the torch-side code lives in :mod:`adapterhub_bottleneck.layer` and :mod:`adapterhub_bottleneck.model` and is
imported on first use.

* ``bottleneck``: Houlsby et al. 2019 / the ``adapters`` library's ``DoubleSeqBnConfig`` (``style="houlsby"``:
  an adapter after the attention output projection and one after the FFN output projection of every layer),
  ``SeqBnConfig`` (``style="pfeiffer"``: after the FFN only, reading the layer-normed residual stream) and, with
  ``is_parallel``, ``ParBnConfig``. Each adapter is ``r + scaling * W_up f(W_down x + b_down) + b_up``, its input
  ``x`` and residual ``r`` chosen by the adapters library's placement options (``original_ln_before``,
  ``original_ln_after``, ``residual_before_ln`` ...; :mod:`adapterhub_bottleneck.config`); the default init
  makes it the identity.
* ``compacter``: Mahabadi et al. 2021 (``CompacterConfig``; ``style="pfeiffer"`` is ``CompacterPlusPlusConfig``):
  the same adapters with PHM projections ``W = sum_i A_i (x) B_i``.

Identical weights give the ``adapters`` library's outputs (tests/test_adapters_oracle.py); the ``adapters``
format plugin imports and exports its directories. Placement comes from a small table keyed by the module
names the model has (BERT-like, Llama-like, GPT-2) or from ``target_layers``. PEFT has no equivalent (``to_peft_config`` is ``None``), and the adapters are
non-linear, so they cannot be merged into base weights. Checkpoint key names are listed in
:mod:`adapterhub_bottleneck.model`.
"""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.tuning import TunerMethod

from .config import BottleneckConfig, CompacterConfig, legacy_values

__all__ = ["BottleneckConfig", "CompacterConfig", "BottleneckMethod", "CompacterMethod", "register_methods"]


class BottleneckMethod(TunerMethod):
    """Sequential bottleneck adapters (Houlsby / Pfeiffer) attached after output projections.

    :meth:`attach` adds the adapters in place (a submodule ``adapter`` + a forward hook on each adapted
    projection) and freezes every other parameter (``modules_to_save`` become trainable copies); the effective
    config has the placement resolved into ``target_layers``, the non-linearity and the SEQ_CLS head."""

    name = "bottleneck"
    config_class: type = BottleneckConfig
    model_module = "adapterhub_bottleneck.model"

    def check_tensors(self, tensors: Any, config: Any, base: Any = None) -> None:
        """Every tensor floating point, every tensor an attach of ``config`` loads present with the shape the
        config implies (and, with ``base``, the adapted module's width), nothing else
        (:func:`adapterhub_bottleneck.checks.check_adapter_tensors`)."""
        super().check_tensors(tensors, config, base)
        from .checks import check_adapter_tensors

        check_adapter_tensors(self.name, self._config(config), tensors, base)

    def config_from_manifest(self, values: dict[str, Any] | None) -> Any:
        """A stored config; one written before the placement options existed keeps its placement
        (:func:`adapterhub_bottleneck.config.legacy_values`)."""
        return self.make_config(legacy_values(dict(values or {})))


class CompacterMethod(BottleneckMethod):
    """Compacter / Compacter++: bottleneck adapters whose projections are PHM (Kronecker-sum) layers."""

    name = "compacter"
    config_class = CompacterConfig


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(BottleneckMethod())
    register(CompacterMethod())
