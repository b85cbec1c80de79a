"""``adapterhub plugin init``: a ready method-plugin package, written only against the public toolkit.

The method it writes is small but real, so every line of the package is exercised: a learned scale on the
outputs of the targeted Linear layers, ``y = base(x) * (1 + s)`` with ``s`` starting at zero (the model is
unchanged at init), stored under PEFT's key layout and mergeable (``W' = diag(1 + s) W``). Its test module
subclasses the conformance suite (:mod:`adapterhub.testing.conformance`), so ``pytest`` in the new directory
checks the contract before the author changes a line.
"""

from __future__ import annotations

import keyword
import os
import re
from string import Template

from .errors import InvalidInput

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "The $method method for adapterhub"
requires-python = ">=3.10"
dependencies = ["adapterhub"]

# adapterhub finds its plugins through this entry-point group
[project.entry-points.adapterhub]
$method = "$package"

[tool.setuptools]
packages = ["$package"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

_INIT = '''\
"""adapterhub plugin: the ``$method`` method, a learned scale on the outputs of the targeted Linear layers.

Importing this module must stay cheap (``adapterhub --help`` loads plugins): the torch side lives in
:mod:`$package.model`, imported on first use by :class:`~adapterhub.tuning.TunerMethod`.
"""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.tuning import PEFT_PREFIX, TunerMethod

from .config import ${Class}Config

__all__ = ["${Class}Config", "${Class}Method", "register_methods"]


class ${Class}Method(TunerMethod):
    """``y = base(x) * (1 + s)`` on each targeted Linear layer; ``s`` starts at zero."""

    name = "$method"
    config_class = ${Class}Config
    model_module = "$package.model"

    def check_tensors(self, tensors: Any, config: Any, base: Any = None) -> None:
        """Run at push and when a directory is read, on header entries (no data): each scale is a vector,
        and with ``base`` it has one entry per output of the layer it scales."""
        super().check_tensors(tensors, config, base)  # floating point
        for key in sorted(k for k in tensors if k.endswith(".scale")):
            shape = tuple(tensors[key].shape)
            weight = None if base is None else base.get(key[len(PEFT_PREFIX):-len(".scale")] + ".weight")
            if len(shape) != 1 or (weight is not None and shape[0] != tuple(weight.shape)[0]):
                raise InvalidInput(f"adapter tensor '{key}' has shape {shape}; expected one entry per output "
                                   "of the layer it scales")

    def merge_tensor(self, name: str, base_tensor: Any, adapter_tensors: dict[str, Any], config: Any, *,
                     inplace: bool = False) -> Any:
        return self._model().merge_tensor(name, base_tensor, adapter_tensors)


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(${Class}Method())
'''

_CONFIG = '''\
"""The $method config: defaults, help text and validation in one dataclass (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapterhub import tuning as tuners


@dataclass
class ${Class}Config:
    target_modules: Any = tuners.target_modules_field()
    modules_to_save: list = tuners.modules_to_save_field()
    task_type: Any = tuners.task_type_field()

    def __post_init__(self) -> None:
        self.target_modules = tuners.check_module_names(self.target_modules, "target_modules")
        self.modules_to_save = tuners.check_modules_to_save(self.modules_to_save)
        tuners.check_task_type(self.task_type)
'''

_MODEL = '''\
"""The torch side of $method: attach, state dict, detach and the streaming merge.

Keys follow PEFT's layout: ``base_model.model.<module path>.scale`` (one vector per targeted layer).
"""

from __future__ import annotations

import torch
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.tuning import PEFT_PREFIX

from .config import ${Class}Config

_SLOT = "_${package}_state"
_FAMILY = "$method"


class ScaledLinear(nn.Module):
    """A Linear layer whose outputs are scaled by ``1 + scale``; the layer itself stays as ``base_layer``."""

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        w = base_layer.weight
        self.scale = nn.Parameter(torch.zeros(base_layer.out_features, dtype=w.dtype, device=w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * (1 + self.scale)


def attached(model: nn.Module, method: str | None = None) -> tuners.Attached:
    return tuners.attached(model, _SLOT, method, family=_FAMILY)


def attach(model: nn.Module, config: ${Class}Config, method: str = _FAMILY) -> ${Class}Config:
    # target_modules selects Linear layers by peft's rules; modules_to_save become trainable copies
    return tuners.attach_wrappers(model, _SLOT, method,
                                  lambda m: tuners.resolve_targets(m, config, _FAMILY, required=True),
                                  lambda cfg, path, module: ScaledLinear(module))


def detach(model: nn.Module, method: str | None = None) -> None:
    tuners.detach_wrappers(model, _SLOT, method, family=_FAMILY)


def state_dict(model: nn.Module, method: str | None = None) -> dict[str, torch.Tensor]:
    state = attached(model, method)
    out = {f"{PEFT_PREFIX}{path}.scale": model.get_submodule(path).scale.detach() for path in state.targets}
    out.update(tuners.saved_tensors(model, state.saved))
    return out


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], method: str | None = None) -> None:
    tuners.load_strict(attached(model, method).method, state_dict(model, method), tensors)


def merge_tensor(name: str, base: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Base tensor ``name`` with the adapter merged in (computed in float32, cast back), or ``None``."""
    module, _, param = name.rpartition(".")
    scale = tensors.get(f"{PEFT_PREFIX}{module}.scale")
    if scale is None or param not in ("weight", "bias"):
        return tuners.saved_copy(name, base, tensors)
    factor = 1 + scale.to(device=base.device, dtype=torch.float32)
    scaled = base.to(torch.float32) * (factor[:, None] if param == "weight" else factor)
    return scaled.to(base.dtype)
'''

_TEST = '''\
"""The adapterhub conformance suite over $method: attach/detach, round trips, tensor checks."""

from adapterhub.testing.conformance import MethodConformance

from $package import ${Class}Method


class Test${Class}(MethodConformance):
    method = ${Class}Method()
    options = {"target_modules": ["q_proj", "v_proj"]}
    model = "llama"
'''

_README = """\
# $dist

The `$method` method for [adapterhub](https://github.com/adapterhub): a learned scale on the outputs of the
targeted Linear layers (`y = base(x) * (1 + s)`, `s` starting at zero). Replace it with your method in
`$package/config.py` and `$package/model.py`.

```
pip install -e .
adapterhub methods          # lists $method
pytest                      # the conformance suite
adapterhub train --method $method --base BASE --data DATA.jsonl --out OUT
```
"""

_FILES = {
    "pyproject.toml": _PYPROJECT,
    "README.md": _README,
    "{package}/__init__.py": _INIT,
    "{package}/config.py": _CONFIG,
    "{package}/model.py": _MODEL,
    "tests/test_conformance.py": _TEST,
}


def names_for(directory: str, method: str) -> dict[str, str]:
    """The distribution, package and class names a plugin in ``directory`` gets (from its last component)."""
    dist = os.path.basename(os.path.normpath(directory))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", dist or ""):
        raise InvalidInput(
            f"{directory}: the directory's name {dist!r} cannot name a Python distribution "
            "(letters, digits, '.', '_', '-')"
        )
    package = re.sub(r"[^a-z0-9]+", "_", dist.lower()).strip("_")
    if not package.startswith("adapterhub_"):
        package = "adapterhub_" + package
    if not re.fullmatch(r"[a-z][a-z0-9_]*", method or "") or keyword.iskeyword(method):
        raise InvalidInput(
            f"--method {method!r}: a method name is lowercase letters, digits and '_', starting with a letter"
        )
    return {
        "dist": dist,
        "package": package,
        "method": method,
        "Class": "".join(part.capitalize() for part in method.split("_")),
    }


def init_plugin(directory: str, method: str) -> list[str]:
    """Write the plugin package into ``directory`` (new, or empty); returns the paths written."""
    names = names_for(directory, method)
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise InvalidInput(f"{directory} exists and is not an empty directory; choose a new one")
    written = []
    for rel, template in _FILES.items():
        path = os.path.join(directory, rel.format(**names))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:
            f.write(Template(template).substitute(names))
        written.append(path)
    return written
