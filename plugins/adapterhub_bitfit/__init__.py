"""Built-in plugin: the ``bitfit`` method (BitFit, Ben Zaken et al. 2021): train only bias terms.

Importing this package does not import torch (the plugin manager may load it for ``adapterhub plugins``);
the torch-side code lives in :mod:`adapterhub_bitfit.model` and is imported on first use.

All biases are trained by default, or those whose name ``bias_pattern`` finds; with ``task_type="SEQ_CLS"``
the classification head (``classifier`` / ``score``) is trained in full and saved, like PEFT's
``modules_to_save``. PEFT has no BitFit, so an adapter directory is not a PEFT directory
(:meth:`BitFitMethod.to_peft_config` returns ``None``). The tensors are the trained biases' *full values*
under ``base_model.model.<parameter path>``; merging replaces those base tensors.
"""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.method import Method

from .config import BitFitConfig

__all__ = ["BitFitConfig", "BitFitMethod", "register_methods"]


class BitFitMethod(Method):
    """BitFit: the base model with (some of) its biases and the SEQ_CLS head trained."""

    name = "bitfit"
    config_class = BitFitConfig
    peft_type = None

    def _config(self, config: Any) -> BitFitConfig:
        if isinstance(config, BitFitConfig):
            return config
        if isinstance(config, dict):
            return self.make_config(config)
        raise InvalidInput(f"{self.name} expects a BitFitConfig or a dict, got {type(config).__name__}")

    def to_peft_config(self, config: Any, base_model_name_or_path: str | None = None) -> None:
        return None  # PEFT does not implement BitFit

    # -- model -----------------------------------------------------------------------------------------
    def attach(self, model: Any, config: Any) -> BitFitConfig:
        """Freeze every parameter but the chosen biases (unfrozen in place, values unchanged) and make the
        ``modules_to_save`` trainable copies; outputs do not change. Returns the effective config."""
        from . import model as _model

        return _model.attach(model, self._config(config))

    def effective_config(self, model: Any) -> BitFitConfig:
        """The config actually applied by :meth:`attach` (save this one in the manifest)."""
        from . import model as _model

        return _model.attached(model).config

    def state_dict(self, model: Any) -> dict[str, Any]:
        from . import model as _model

        return _model.state_dict(model)

    def load_state_dict(self, model: Any, tensors: dict[str, Any]) -> None:
        from . import model as _model

        _model.load_state_dict(model, tensors)

    def detach(self, model: Any) -> None:
        """Restore the original bias values, head modules and ``requires_grad`` flags."""
        from . import model as _model

        _model.detach(model)

    def merge_tensor(self, name: str, base_tensor: Any, adapter_tensors: dict[str, Any], config: Any) -> Any:
        """The adapter's value for ``name`` (a trained bias or head tensor) in the base dtype; ``None`` if the
        adapter does not hold it."""
        from . import model as _model

        return _model.merge_tensor(name, base_tensor, adapter_tensors)


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(BitFitMethod())
