"""adapterhub: train, version, merge, stack, quantize and ship PEFT adapters.

Importing this package is cheap: no torch, no SQLAlchemy, no plugin loading.
"""

from typing import Any

import pluggy

__version__ = "0.1.0"

#: decorate plugin functions with this (``@adapterhub.hookimpl``)
hookimpl = pluggy.HookimplMarker("adapterhub")

from .errors import AdapterhubError  # noqa: E402

#: the user API, loaded on first use: ``adapterhub.attach(model, "acme/chat@production")``,
#: ``adapterhub.open_registry()`` (see :mod:`adapterhub.api`)
_API = ("attach", "open_registry", "push", "pull", "copy", "fingerprint")

__all__ = ["hookimpl", "AdapterhubError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'adapterhub' has no attribute {name!r}")
