"""Built-in plugin: the ``merged`` export format, a plain transformers model directory with the adapter
merged into the base weights (``adapterhub export REF --format merged --base DIR --out DIR``, the same as
``adapterhub pull REF --merged``). Export only: a merged model is not an adapter, so ``detect`` is False."""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.interfaces import Format


class MergedFormat(Format):
    """Export only (``detect`` and ``read`` keep the contract's defaults: a merged model is not an adapter)."""

    name = "merged"

    def export(
        self, reg: Any, ref: str, out: str, *, plugins: Any, base: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """Merge ``ref`` into ``base`` (see :func:`adapterhub.infra.merge_ref` for ``options``)."""
        from adapterhub.infra import merge_ref

        if not base:
            raise InvalidInput("--format merged needs --base DIR (the base model to merge into)")
        return merge_ref(reg, ref, base, out, plugins=plugins, **options)


@adapterhub.hookimpl
def register_formats(register) -> None:
    register(MergedFormat())
