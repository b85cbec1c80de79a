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
from adapterhub.tuning import PEFT_PREFIX, TunerMethod

from .config import BitFitConfig

__all__ = ["BitFitConfig", "BitFitMethod", "register_methods"]


class BitFitMethod(TunerMethod):
    """BitFit: the base model with (some of) its biases and the SEQ_CLS head trained.

    :meth:`attach` freezes every parameter but the chosen biases (unfrozen in place, values unchanged) and makes
    the ``modules_to_save`` trainable copies; outputs do not change. :meth:`detach` restores the original bias
    values too. PEFT does not implement BitFit (``to_peft_config`` is ``None``)."""

    name = "bitfit"
    config_class = BitFitConfig
    peft_type = None
    model_module = "adapterhub_bitfit.model"

    def check_tensors(self, tensors: Any, config: Any, base: Any = None) -> None:
        """Every tensor floating point, named ``base_model.model.<parameter path>``; with ``base``, each one
        replaces a base tensor of that name and shape (a BitFit tensor is a full value, so the base decides)."""
        super().check_tensors(tensors, config, base)
        for key in sorted(tensors):
            if not key.startswith(PEFT_PREFIX):
                raise InvalidInput(f"adapter tensor '{key}' is not named {PEFT_PREFIX}<parameter path>")
            if base is None:
                continue
            path, shape = key[len(PEFT_PREFIX) :], tuple(tensors[key].shape)
            if path not in base:
                raise InvalidInput(f"adapter tensor '{key}' replaces '{path}', which the base does not have")
            if tuple(base[path].shape) != shape:
                raise InvalidInput(
                    f"adapter tensor '{key}' has shape {shape} but base '{path}' is {tuple(base[path].shape)}"
                )

    def merge_tensor(
        self, name: str, base_tensor: Any, adapter_tensors: dict[str, Any], config: Any, *, inplace: bool = False
    ) -> Any:
        """The adapter's value for ``name`` (a trained bias or head tensor) in the base dtype; ``None`` if the
        adapter does not hold it."""
        return self._model().merge_tensor(name, base_tensor, adapter_tensors)


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(BitFitMethod())
