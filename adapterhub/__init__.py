"""adapterhub: train, version, merge, stack, quantize and ship PEFT adapters.

Importing this package is cheap: no torch, no SQLAlchemy, no plugin loading.
"""

import pluggy

__version__ = "0.1.0"

#: decorate plugin functions with this (``@adapterhub.hookimpl``)
hookimpl = pluggy.HookimplMarker("adapterhub")

from .errors import AdapterhubError  # noqa: E402

__all__ = ["hookimpl", "AdapterhubError", "__version__"]
