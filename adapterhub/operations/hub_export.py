"""Exporting a version to the Hugging Face Hub: the PEFT directory ``export --format peft`` writes, plus a
model card (``README.md``) that carries what the Hub would otherwise lose: the version's digest, the base
fingerprint and the lineage. Uploaded as one commit with huggingface_hub (``files.hub.upload_folder``)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from ..files.hub import parse_hf_url, upload_folder
from ..plugins import Plugins
from ..registry.entities import VersionInfo


def export_to_hub(
    reg: Any, ref: str, url: str, *, plugins: Plugins | None = None, private: bool = False
) -> dict[str, Any]:
    """Upload version ``ref`` as a PEFT adapter repo to ``hf://ORG/NAME``; returns the export report with
    ``to`` (``hf://ORG/NAME@<commit>``), ``commit`` and ``commit_url``."""
    from ..registry.maintenance import render_lineage
    from .export import export

    repo = parse_hf_url(url)
    info = reg.show(ref)
    lineage = render_lineage(reg.lineage(info.ref), "text")
    with tempfile.TemporaryDirectory(prefix="adapterhub-hf-export-") as tmp:
        out = os.path.join(tmp, "peft")
        d = export(reg, info.ref, "peft", out, plugins=plugins)
        with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as fh:
            fh.write(model_card(repo, info, lineage))
        commit, commit_url = upload_folder(
            out, url, f"adapterhub export {info.ref} ({info.digest[:19]})", private=private
        )
        files = sorted(os.listdir(out))
    return {**d, "out": None, "files": files, "to": f"hf://{repo}@{commit}", "commit": commit, "commit_url": commit_url}


def model_card(repo: str, info: VersionInfo, lineage: str) -> str:
    """The Hub model card: YAML metadata (``library_name: peft``, ``base_model`` when the base is a Hub id)
    and the version's identity, base fingerprint and lineage."""
    hint = (info.base.name if info.base else None) or ""
    base_id = hint.partition("@")[0] if "/" in hint and not hint.startswith("/") else None
    meta = ["---", "library_name: peft"]
    if base_id:
        meta.append(f"base_model: {json.dumps(base_id)}")
    meta += ["tags:", "- adapterhub", f"- {json.dumps(info.method or 'adapter')}", "---", ""]
    rows = [
        ("version", f"`{info.ref}`"),
        ("digest", f"`{info.digest}`"),
        ("method", info.method),
        ("task", info.task),
        ("base", f"`{hint}`" if hint else None),
        ("base fingerprint", f"`{info.base_fingerprint}`" if info.base_fingerprint else None),
    ]
    body = [
        f"# {repo}",
        "",
        f"A {info.method or ''} adapter exported by adapterhub from `{info.ref}`.",
        "",
        "| | |",
        "| --- | --- |",
    ] + [f"| {k} | {v} |" for k, v in rows if v]
    body += [
        "",
        "The base fingerprint is a digest of the base model's weights: `adapterhub fingerprint BASE` on the "
        "base you load must print it.",
        "",
        "## Lineage",
        "",
        "```",
        lineage,
        "```",
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "",
        f"model = PeftModel.from_pretrained(base_model, {json.dumps(repo)})",
        "```",
        "",
    ]
    return "\n".join(meta + body)
