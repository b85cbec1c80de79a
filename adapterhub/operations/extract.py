"""Extracting a LoRA from a full fine-tune: ``ΔW = W_ft − W_base``, truncated SVD, one module at a time.

    from adapterhub import extract
    extract.extract_lora(reg, "./finetuned", "./base", rank=16, name="acme/bot-extracted")

For each target weight (out, in) — Conv1D weights (in, out) are transposed first — ``ΔW = U S Vᵀ`` and
the rank-``r`` LoRA is ``B = U_r · S_r`` (out, r), ``A = V_rᵀ`` (r, in) with ``lora_alpha = r`` (scaling 1),
so ``B A`` is the best rank-``r`` approximation of ``ΔW`` (Eckart–Young). Each module reports the energy
it keeps, ``Σ_{i≤r} σ_i² / Σ σ_i²`` (1.0 when the fine-tune's update had rank ≤ r). A module smaller
than the rank gets ``r = min(rank, in, out)`` (exact); the config keeps the scaling 1 there through
``rank_pattern`` and ``alpha_pattern`` (:func:`adapterhub.tuning.combine.unit_scaling_ranks`, shared with combine).

The result is a PEFT-layout LoRA directory (``checkpoint.save_adapter``) pushed with the base fingerprint
and an ``extracted_from`` lineage edge whose parent is external: the fine-tune, known by its fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterable, Iterator

from ..errors import InvalidInput
from ..files.fingerprint import find_weight_files
from ..files.hub import base_name as hub_base_name
from ..files.output_dir import atomic_out
from ..files.safetensors_header import FLOAT_DTYPES, read_header
from ..merge.plan import PEFT_PREFIX, _BaseReader

#: module names never extracted by default (embeddings and output heads are not Linear layers LoRA wraps)
_DEFAULT_EXCLUDE = re.compile(
    r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|position_embeddings|"
    r"token_type_embeddings|shared|lm_head|embed_out|classifier|score)(\.|$)"
)


def _tensors(model_dir: str) -> dict[str, tuple[str, Any]]:
    out = {}
    for path in find_weight_files(model_dir):
        for t in read_header(path).tensors.values():
            out[t.name] = (path, t)
    return out


def _layer_kinds(base_dir: str) -> dict[str, str]:
    """``{module path: "linear" | "conv1d"}`` from the base architecture built on the meta device (no
    memory); empty when the architecture is unknown (every 2-D weight is then treated as Linear)."""
    try:
        import torch
        import transformers
        from torch import nn

        cfg = transformers.AutoConfig.from_pretrained(base_dir, local_files_only=True)
        cls = getattr(transformers, (cfg.architectures or [""])[0], None)
        if cls is None:
            return {}
        with torch.device("meta"):
            model = cls(cfg)
        conv1d = getattr(transformers.pytorch_utils, "Conv1D", ())
        kinds = {}
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear):
                kinds[name] = "linear"
            elif conv1d and isinstance(m, conv1d):
                kinds[name] = "conv1d"
        return kinds
    except Exception:
        return {}


def _selected(path: str, targets: list[str] | None) -> bool:
    if targets:
        return any(path == t or path.endswith("." + t) for t in targets)
    return not _DEFAULT_EXCLUDE.search(path)


def extract_lora(
    reg: Any,
    model_dir: str,
    base_dir: str,
    rank: int,
    name: str,
    *,
    targets: Iterable[str] | None = None,
    out: str | None = None,
    aliases: Iterable[str] = (),
    home: str | None = None,
    plugins: Any = None,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Extract a rank-``rank`` LoRA of ``model_dir`` relative to ``base_dir`` and push it as ``name``."""
    import torch

    from ..api import fingerprint, push
    from ..files.checkpoint import save_adapter
    from ..plugins import get_plugins
    from ..registry.refs import validate_alias, validate_name
    from ..registry.registry import ParentSpec
    from ..tuning.combine import unit_scaling_ranks
    from .stored import check_name_kind

    validate_name(name)
    aliases = [validate_alias(a) for a in aliases]  # before any work, so a bad alias costs nothing
    if rank < 1:
        raise InvalidInput(f"--rank must be at least 1, got {rank}")
    targets = list(targets) if targets else None
    plugins = plugins or get_plugins()
    for what, d in (("--model", model_dir), ("--base", base_dir)):
        if not os.path.isdir(d):
            raise InvalidInput(f"{what} {d}: no such directory")
    if os.path.abspath(model_dir) == os.path.abspath(base_dir):
        raise InvalidInput("--model and --base are the same directory")
    if out and os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise InvalidInput(f"{os.path.abspath(out)} exists and is not empty")
    check_name_kind(reg, name, "adapter")
    ft, base = _tensors(model_dir), _tensors(base_dir)
    kinds = _layer_kinds(base_dir)
    plan = []
    for tname in sorted(base):
        path, info = base[tname]
        if not tname.endswith(".weight") or len(info.shape) != 2 or info.dtype not in FLOAT_DTYPES:
            continue
        module = tname[: -len(".weight")]
        if tname not in ft or not _selected(module, targets) or (kinds and module not in kinds):
            continue
        fpath, finfo = ft[tname]
        if tuple(finfo.shape) != tuple(info.shape):
            raise InvalidInput(
                f"'{tname}' has shape {tuple(finfo.shape)} in {model_dir} but {tuple(info.shape)} in the base"
            )
        plan.append((module, path, info, fpath, finfo))
    if targets:
        found = {t for t in targets for m, *_ in plan if m == t or m.endswith("." + t)}
        missing = [t for t in targets if t not in found]
        if missing:
            raise InvalidInput(f"--targets {', '.join(missing)} matched no Linear weight of the base")
    kinds_used = {kinds.get(m, "linear") for m, *_ in plan}
    if len(kinds_used) > 1:
        raise InvalidInput(
            "the targets mix Linear and Conv1D layers, which one LoRA cannot hold; choose --targets of one kind"
        )
    fan_in_fan_out = kinds_used == {"conv1d"}
    if on_plan:
        on_plan(len(plan))

    reader = _BaseReader()
    tensors: dict[str, Any] = {}
    energy: dict[str, float] = {}
    ranks: dict[str, int] = {}  # module -> its rank: min(rank, in, out)
    try:
        for module, path, info, fpath, finfo in plan:
            w_base = reader.read(path, info).float()
            delta = reader.read(fpath, finfo).float() - w_base  # (out, in), or (in, out) for Conv1D
            del w_base
            if fan_in_fan_out:
                delta = delta.T
            if not torch.any(delta):
                if progress:
                    progress(1)
                continue
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # (out, k), (k,), (k, in)
            r = min(rank, s.shape[0])
            total = float((s.double() ** 2).sum())
            energy[module] = float((s[:r].double() ** 2).sum()) / total if total else 1.0
            tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = (u[:, :r] * s[:r]).contiguous()
            tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = vh[:r].contiguous()
            ranks[module] = r
            del delta, u, s, vh
            if progress:
                progress(1)
    finally:
        reader.close()
    if not energy:
        raise InvalidInput(f"no target weight differs between {model_dir} and the base: nothing to extract")
    lora = plugins.get("methods", "lora")
    # scaling 1 in every module, also where the module is smaller than --rank (rank and alpha patterns)
    config = lora.make_config(
        {**unit_scaling_ranks(ranks), "target_modules": sorted(energy), "fan_in_fan_out": fan_in_fan_out}
    )
    base_fp = fingerprint(base_dir, home)
    ft_fp = fingerprint(model_dir, home)
    base_name = hub_base_name(base_dir)
    manifest = {
        "method": "lora",
        "config": dataclasses.asdict(config),
        "base": {"fingerprint": base_fp.digest, "name": base_name},
        "extracted": {"rank": rank, "energy": energy, "from": ft_fp.digest},
    }
    parent = ParentSpec(
        "extracted_from",
        digest=ft_fp.digest.removeprefix("sha256:"),
        details={"fingerprint": ft_fp.digest, "model": os.path.basename(os.path.abspath(model_dir)), "rank": rank},
    )
    # written beside --out and renamed into place only once the push (and its alias gate) succeeded:
    # a failure leaves neither a half-written --out nor a registry version
    with atomic_out(out) if out else _scratch_dir() as target_dir:
        save_adapter(target_dir, manifest, tensors, peft_config=lora.to_peft_config(config, base_name))
        pub = push(reg, target_dir, name, base=base_dir, aliases=aliases, parents=[parent], home=home, plugins=plugins)
    values = list(energy.values())
    changed_other = sorted(
        n for n in base if n in ft and n not in {f"{m}.weight" for m in energy} and _differs(base[n], ft[n])
    )
    return {
        **pub.to_dict(),
        "rank": rank,
        "modules": len(energy),
        "energy": energy,
        "energy_min": min(values),
        "energy_mean": sum(values) / len(values),
        "fine_tune_fingerprint": ft_fp.digest,
        "not_extracted_changed": changed_other,
        "out": os.path.abspath(out) if out else None,
    }


@contextlib.contextmanager
def _scratch_dir() -> Iterator[str]:
    tmp = tempfile.mkdtemp(prefix="adapterhub-extract-")
    try:
        yield os.path.join(tmp, "adapter")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _differs(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Whether two stored tensors differ (byte comparison, chunked)."""
    (pa, ia), (pb, ib) = a, b
    if ia.dtype != ib.dtype or tuple(ia.shape) != tuple(ib.shape):
        return True
    chunk = 1 << 20
    with open(pa, "rb") as fa, open(pb, "rb") as fb:
        for off in range(0, ia.nbytes, chunk):
            n = min(chunk, ia.nbytes - off)
            fa.seek(ia.start + off)
            fb.seek(ib.start + off)
            if fa.read(n) != fb.read(n):
                return True
    return False
