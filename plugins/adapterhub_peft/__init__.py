"""Built-in plugin: the PEFT adapter directory format (``adapter_config.json`` +
``adapter_model.safetensors``), so ``adapterhub push`` accepts directories written by peft and
``adapterhub export --format peft`` writes them."""

from __future__ import annotations

import os
from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.interfaces import Format

#: PEFT types we know the name of even when no plugin for the method is installed
_FALLBACK = {
    "LORA": "lora",
    "IA3": "ia3",
    "PROMPT_TUNING": "prompt_tuning",
    "PREFIX_TUNING": "prefix_tuning",
    "P_TUNING": "p_tuning",
    "LOHA": "loha",
    "LOKR": "lokr",
    "ADALORA": "adalora",
    "BOFT": "boft",
    "OFT": "oft",
    "VERA": "vera",
}


class PeftFormat(Format):
    """Import: a directory with ``adapter_config.json``. Export: ``adapterhub export REF --format peft``."""

    name = "peft"

    def export(self, reg: Any, ref: str, out: str, *, plugins: Any, **options: Any) -> dict[str, Any]:
        """Write ``ref`` as a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)."""
        from adapterhub.infra import export_peft

        return export_peft(reg, ref, out, plugins=plugins, **options)

    def detect(self, path: str) -> bool:
        return os.path.isfile(os.path.join(path, "adapter_config.json"))

    def read(self, path: str, plugins: Any) -> dict[str, Any]:
        from adapterhub.infra import load_json

        cfg = load_json(os.path.join(path, "adapter_config.json"))
        if not isinstance(cfg, dict) or not isinstance(cfg.get("peft_type"), str):
            if isinstance(cfg, dict) and isinstance(cfg.get("config"), dict):  # not PEFT's: AdapterHub's adapters
                raise InvalidInput(
                    f"adapter_config.json in {path} was written by the adapters library; its format "
                    "plugin (adapterhub_adapters, format 'adapters') imports it, and it is not loaded"
                )
            raise InvalidInput(f"adapter_config.json in {path} has no peft_type")
        weights = [
            n for n in ("adapter_model.safetensors", "adapter_model.bin") if os.path.isfile(os.path.join(path, n))
        ]
        if not weights:
            raise InvalidInput(f"{path} has adapter_config.json but no adapter_model.safetensors")
        method = None
        for name, _plugin, m in plugins.items("methods"):
            if m.matches_peft_config(cfg):
                method = name
                break
        if method is None:
            if cfg["peft_type"] not in _FALLBACK:
                raise InvalidInput(
                    f"unknown PEFT method peft_type={cfg['peft_type']!r} in adapter_config.json of "
                    f"{path}; installed PEFT methods: {installed(plugins)}"
                )
            method = _FALLBACK[cfg["peft_type"]]
            if method == "lora" and cfg.get("use_dora"):
                method = "dora"
        task = cfg.get("task_type")
        return {
            "method": method,
            "config": cfg,
            "base": {"fingerprint": None, "name": cfg.get("base_model_name_or_path")},
            "task": task,
            "format": "peft",
        }


def installed(plugins: Any) -> str:
    """``"IA3 (ia3), LORA (lora, dora, qlora), ..."``: the PEFT types the installed methods read and write."""
    by_type: dict[str, list[str]] = {}
    for name, _plugin, m in plugins.items("methods"):
        if m.peft_type:
            by_type.setdefault(m.peft_type, []).append(name)
    return ", ".join(f"{t} ({', '.join(names)})" for t, names in sorted(by_type.items())) or "none"


@adapterhub.hookimpl
def register_formats(register):
    register(PeftFormat())
