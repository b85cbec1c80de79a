"""Built-in plugin: the ``adapters`` library's adapter directories (AdapterHub's ``save_adapter`` layout).

* **Import**: ``adapterhub push DIR NAME`` on a directory written by ``model.save_adapter(DIR, name)``
  (``adapter_config.json`` with ``config``; ``pytorch_adapter.bin`` needs ``--import-bin``, or
  ``adapter.safetensors``) stores it as a ``bottleneck``, ``compacter``, ``lora`` or ``ia3`` adapter with the
  same outputs; a saved sequence-classification head becomes the ``SEQ_CLS`` head. What has no exact
  equivalent is refused, naming it (:mod:`adapterhub_adapters.imports`).
* **Export**: ``adapterhub export REF --format adapters --out DIR`` writes a directory that
  ``model.load_adapter(DIR, use_safetensors=True)`` loads, for bottleneck, Compacter, LoRA and (IA)³ adapters
  (:mod:`adapterhub_adapters.exports`).

Importing this package does not import torch.
"""

from __future__ import annotations

import os
from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.interfaces import Format

from . import layout

__all__ = ["AdaptersFormat", "register_formats"]


def is_adapters_dir(path: str) -> bool:
    """``adapter_config.json`` written by the adapters library: a ``config`` object, no PEFT ``peft_type``."""
    import json

    p = os.path.join(path, layout.CONFIG)
    if not os.path.isfile(p):
        return False
    try:
        with open(p, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "peft_type" not in cfg and isinstance(cfg.get("config"), dict)


class AdaptersFormat(Format):
    """Import (``convert``) and export of the ``adapters`` library's ``save_adapter`` directories."""

    name = "adapters"

    def detect(self, path: str) -> bool:
        return is_adapters_dir(path)

    def read(self, path: str, plugins: Any) -> dict[str, Any]:
        """A directory is read through :meth:`convert` by ``push``; used directly it is refused."""
        raise InvalidInput(
            f"{path} is an adapters library directory: import it with `adapterhub push {path} NAME` "
            "(add --import-bin for pytorch_adapter.bin), then use the pushed version"
        )

    def convert(self, path: str, files: dict[str, str], out: str, plugins: Any) -> None:
        from .imports import convert

        convert(path, files, out)

    def export(
        self, reg: Any, ref: str, out: str, *, plugins: Any, force: bool = False, **options: Any
    ) -> dict[str, Any]:
        """Write ``ref`` as an adapters library directory (see :mod:`adapterhub_adapters.exports`)."""
        from adapterhub.infra import MERGE_ONLY, atomic_out, check_out, hash_file, open_adapter

        from .exports import export

        given = [k for k in MERGE_ONLY if options.get(k) not in (None, False)]
        if given:
            raise InvalidInput(f"--{given[0].replace('_', '-')} does not apply to --format adapters")
        check_out(out, force)
        with open_adapter(reg, ref, plugins) as (adapter, info):
            base = (adapter.manifest.get("base") or {}).get("name")
            with atomic_out(out, force) as tmp:
                summary = export(adapter, info["ref"], tmp, base)
                files = []
                for n in sorted(os.listdir(tmp)):
                    digest, size = hash_file(os.path.join(tmp, n))
                    files.append({"path": n, "sha256": digest, "size": size})
        return {
            "ref": info["ref"],
            "digest": "sha256:" + info["digest"] if info["digest"] else None,
            "format": "adapters",
            "method": adapter.method.name,
            "out": os.path.abspath(out),
            **summary,
            "files": files,
            "bytes": sum(f["size"] for f in files),
            "load_with": f"model.load_adapter({os.path.abspath(out)!r}, use_safetensors=True)",
        }


@adapterhub.hookimpl
def register_formats(register):
    register(AdaptersFormat())
