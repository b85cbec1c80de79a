"""Built-in plugin: the ``bottleneck`` and ``compacter`` methods (sequential bottleneck adapters).

Importing this package does not import torch (the plugin manager may load it for ``adapterhub plugins``);
the torch-side code lives in :mod:`adapterhub_bottleneck.layer` and :mod:`adapterhub_bottleneck.model` and is
imported on first use.

* ``bottleneck``: Houlsby et al. 2019 / the ``adapters`` library's ``DoubleSeqBnConfig`` (``style="houlsby"``:
  an adapter after the attention output projection and one after the FFN output projection of every layer)
  and ``SeqBnConfig`` (``style="pfeiffer"``: after the FFN only). Each adapter is
  ``h + scaling * W_up f(W_down h + b_down) + b_up``; the default init makes it the identity.
* ``compacter``: Mahabadi et al. 2021 (``CompacterConfig``; ``style="pfeiffer"`` is ``CompacterPlusPlusConfig``):
  the same adapters with PHM projections ``W = sum_i A_i (x) B_i``.

Placement comes from a small table keyed by the module names the model has (BERT-like, Llama-like, GPT-2) or
from ``target_layers``. PEFT has no equivalent (``to_peft_config`` is ``None``), and the adapters are
non-linear, so they cannot be merged into base weights. Checkpoint key names are listed in
:mod:`adapterhub_bottleneck.model`.
"""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.method import Method

from .config import AdapterConfig, BottleneckConfig, CompacterConfig

__all__ = ["BottleneckConfig", "CompacterConfig", "BottleneckMethod", "CompacterMethod", "register_methods"]


class BottleneckMethod(Method):
    """Sequential bottleneck adapters (Houlsby / Pfeiffer) attached after output projections."""

    name = "bottleneck"
    config_class: type = BottleneckConfig

    def _config(self, config: Any) -> AdapterConfig:
        if isinstance(config, self.config_class):
            return config
        if isinstance(config, dict):
            return self.make_config(config)
        raise InvalidInput(
            f"{self.name} expects a {self.config_class.__name__} or a dict, got {type(config).__name__}"
        )

    def attach(self, model: Any, config: Any) -> AdapterConfig:
        """Add the adapters in place (a submodule ``adapter`` + a forward hook on each adapted projection) and
        freeze every other parameter (``modules_to_save`` become trainable copies). Returns the effective
        config (placement resolved into ``target_layers``, the non-linearity, the SEQ_CLS head)."""
        from . import model as _model

        return _model.attach(model, self._config(config), self.name)

    def effective_config(self, model: Any) -> AdapterConfig:
        """The config actually applied by :meth:`attach` (save this one in the manifest)."""
        from . import model as _model

        return _model.attached(model, self.name).config

    def state_dict(self, model: Any) -> dict[str, Any]:
        from . import model as _model

        return _model.state_dict(model, self.name)

    def load_state_dict(self, model: Any, tensors: dict[str, Any]) -> None:
        from . import model as _model

        _model.load_state_dict(model, tensors, self.name)

    def detach(self, model: Any) -> None:
        from . import model as _model

        _model.detach(model, self.name)


class CompacterMethod(BottleneckMethod):
    """Compacter / Compacter++: bottleneck adapters whose projections are PHM (Kronecker-sum) layers."""

    name = "compacter"
    config_class = CompacterConfig


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(BottleneckMethod())
    register(CompacterMethod())
