"""Built-in plugin: the ``merged`` export format, a plain transformers model directory with the adapter
merged into the base weights (``adapterhub export REF --format merged --base DIR --out DIR``, the same as
``adapterhub pull REF --merged``). Export only: a merged model is not an adapter, so ``detect`` is False."""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput


class MergedFormat:
    name = "merged"

    def detect(self, path: str) -> bool:
        return False

    def read(self, path: str, plugins: Any) -> dict[str, Any]:
        raise InvalidInput(f"{path}: a merged model cannot be imported as an adapter")

    def export(self, reg: Any, ref: str, out: str, *, base: str | None = None, **options: Any) -> dict[str, Any]:
        """Merge ``ref`` into ``base`` (see :func:`adapterhub.operations.export.merge_ref` for ``options``)."""
        from adapterhub.operations.export import merge_ref

        if not base:
            raise InvalidInput("--format merged needs --base DIR (the base model to merge into)")
        return merge_ref(reg, ref, base, out, **options)


@adapterhub.hookimpl
def register_formats(register) -> None:
    register(MergedFormat())
