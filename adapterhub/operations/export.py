"""Getting adapters out of the registry: as a merged transformers model (cached) or as a PEFT directory.

    from adapterhub import export
    export.merge_ref(reg, "acme/bot@production", "./base", "./model", dtype="bf16")  # pull --merged
    export.export(reg, "acme/bot:3", "peft", "./peft-dir")                          # any registered format

``merge_ref`` checks the base fingerprint, then looks in the merged-model cache (:mod:`.merged_cache`:
read-only hard links under the home, keyed by a digest of (adapter digest, base fingerprint, dtype, shard
size), checked before they are served), so a second ``pull --merged`` of the same thing costs a few
``stat`` calls. An entry that cannot be trusted is left alone and the merge recomputed (``cache_problem``).

Formats are plugins (``register_formats``); ``export`` calls the format's ``export(reg, ref, out, ...)``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import AdapterhubError, InvalidInput
from ..files.checkpoint import WEIGHTS, LoadedAdapter, method_and_config, write_json
from ..files.hub import peft_base_fields
from ..files.output_dir import EXPORT_PREFIX, check_out, check_out_base
from ..merge.plan import (
    _TORCH_NAMES,
    LazyTensors,
    base_config,
    merge_adapter,
    open_adapter_dir,
    parse_dtype,
    parse_shard_size,
    plan_merge,
)
from ..plugins import Plugins, get_plugins


@contextmanager
def open_adapter(reg: Any, ref: str, plugins: Plugins | None = None) -> Iterator[tuple[LoadedAdapter, dict]]:
    """``(LoadedAdapter, info)`` for a registry ref, or for an adapter directory when ``ref`` is one.
    ``info`` has ``ref``, ``digest`` (None for a directory) and the manifest the registry holds."""
    plugins = plugins or get_plugins()
    if os.path.isdir(ref):
        loaded = open_adapter_dir(ref, plugins)
        try:
            yield loaded, {"ref": os.path.abspath(ref), "digest": None, "manifest": loaded.manifest}
        finally:
            loaded.tensors.close()
        return
    from ..files.safetensors_header import read_header
    from ..registry.blobs import copy_verified

    info = reg.show(ref)
    weights = [f for f in info.files if f.path == WEIGHTS]
    if not weights:
        raise InvalidInput(f"{info.ref} has no {WEIGHTS} (kind {info.kind}); only adapters can be exported")
    f = weights[0]
    what = f"blob {f.digest} ({info.ref} {WEIGHTS})"
    local = reg.store.local_path(f.digest[7:])
    tmp = None
    if local:  # read in place (no copy to leave behind), verified first
        from ..errors import IntegrityError
        from ..registry.blobs import hash_file

        path = local
        digest, size = hash_file(path)
        if digest != f.digest[7:] or size != f.size:
            raise IntegrityError(
                f"{what} is corrupt: expected {f.digest} ({f.size} bytes), got sha256:{digest} ({size} bytes)"
            )
    else:  # downloaded to a temp dir; a killed run's is removed by the next one and by gc
        from ..files.output_dir import sweep, temp_tag

        sweep(tempfile.gettempdir(), EXPORT_PREFIX)
        tmp = os.path.join(tempfile.gettempdir(), EXPORT_PREFIX + temp_tag())
        os.mkdir(tmp, 0o700)
    try:
        if tmp:
            path = os.path.join(tmp, WEIGHTS)
            copy_verified(reg.store, f.digest[7:], path, f.size, what=what)
        read_header(path)
        method, config = method_and_config(info.manifest, plugins)
        tensors = LazyTensors(path)
        try:
            method.check_tensors(tensors.header.tensors, config)  # (versions stored before push checked them)
            yield (
                LoadedAdapter(method, config, tensors, info.manifest),
                {"ref": info.ref, "digest": info.digest.removeprefix("sha256:"), "manifest": info.manifest},
            )
        finally:
            tensors.close()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def merge_ref(
    reg: Any,
    ref: str,
    base_dir: str,
    out: str,
    *,
    dtype: str | None = None,
    shard_size: str | int | None = None,
    allow_base_mismatch: bool = False,
    force: bool = False,
    use_cache: bool | str = True,
    home: str | None = None,
    plugins: Plugins | None = None,
    progress: Any = None,
    on_plan: Any = None,
    onto: str = "dequantized",
) -> dict[str, Any]:
    """Merge version ``ref`` (or an adapter directory) into ``base_dir`` and write a transformers model
    directory to ``out``; from the cache when this exact merge was done before (``"cached": true``).
    ``use_cache``: False never, ``"unless-auto"`` read it, but fill it only when ADAPTERHUB_MERGE_CACHE asks (a deployment).
    ``onto``: an adapter trained on a quantized base merges onto the dequantized (default) or original base."""
    from ..api import check_base, fingerprint
    from ..config import home_dir
    from . import merged_cache

    base_config(base_dir)  # a transformers model directory, before any work (nothing hashed, nothing cached)
    check_out_base(out, base_dir)
    check_out(out, force)
    target = parse_dtype(dtype)
    shard_bytes = parse_shard_size(shard_size)
    with merged_cache.Journal(home_dir(home), out), open_adapter(reg, ref, plugins) as (adapter, info):
        from ..merge.plan import _check_mergeable

        _check_mergeable(adapter, info["ref"] if info["digest"] else ref)
        base_meta = adapter.manifest.get("base") or {}
        cache = use_cache is not False and bool(info["digest"]) and merged_cache.mode(home_dir(home), out) == "link"
        fill = cache and (use_cache is True or merged_cache.mode(home_dir(home), out, auto="off") == "link")
        fp = None  # only hashed when needed: to check the base, or as part of the cache key
        if cache or base_meta.get("fingerprint"):  # (reported with --allow-base-mismatch too)
            fp = fingerprint(base_dir, home).digest
        if not allow_base_mismatch and fp:
            check_base(base_meta.get("fingerprint"), fp, base_dir, base_meta.get("name"))
        key = (info["digest"], fp, _TORCH_NAMES[target] if target else "auto", shard_bytes)
        if base_meta.get("quantization") and onto == "dequantized":  # another output than onto the original
            key = (key[0], key[1], key[2] + "@dq", key[3])
        problem = None
        if cache:
            plan_merge(adapter, base_dir, target)  # refuses what the merge would refuse (e.g. tensors matching
            # nothing in the base), also for merges cached before that was checked; headers only
            hit, problem = merged_cache.restore(home_dir(home), key, out, force)
            if hit is not None:
                return {"ref": info["ref"], "digest": "sha256:" + info["digest"], "base_fingerprint": fp, **hit}
        result = merge_adapter(
            adapter,
            base_dir,
            out,
            dtype=dtype,
            shard_size=shard_bytes,
            force=force,
            ref=info["ref"] if info["digest"] else ref,
            progress=progress,
            on_plan=on_plan,
            hash_files=False,
            onto=onto,
            plugins=plugins,
        )
    result = {
        "ref": info["ref"],
        "digest": "sha256:" + info["digest"] if info["digest"] else None,
        "base_fingerprint": fp,
        **result,
    }
    if problem:
        result["cache_problem"] = problem
    if fill:
        error = merged_cache.store(home_dir(home), key, result)
        if error:  # the merge itself succeeded: report, do not fail
            result["cache_error"] = error
    return result


# -- formats ----------------------------------------------------------------------------------------------
def export(reg: Any, ref: str, fmt: str, out: str, *, plugins: Plugins | None = None, **options: Any) -> dict[str, Any]:
    """Export ``ref`` with the format plugin ``fmt`` (``peft``, ``merged`` ...)."""
    plugins = plugins or get_plugins()
    return plugins.get("formats", fmt).export(reg, ref, out, plugins=plugins, **options)  # refuses if it only imports


#: options of ``export --format merged`` that a PEFT export has no use for (refused, never silently ignored)
MERGE_ONLY = ("base", "dtype", "shard_size", "allow_base_mismatch", "onto")


def export_peft(
    reg: Any, ref: str, out: str, *, force: bool = False, plugins: Plugins | None = None, **options: Any
) -> dict[str, Any]:
    """Write a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) that
    ``PeftModel.from_pretrained`` loads: the adapter's tensors as they are. Refuses the merge options
    (``base``, ``dtype`` ...) rather than ignore them."""
    from safetensors.torch import save_file

    from ..files.output_dir import atomic_out
    from ..registry.blobs import hash_file

    given = [k for k in MERGE_ONLY if options.get(k) not in (None, False)]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise InvalidInput(
            f"{flags} {'does' if len(given) == 1 else 'do'} not apply to --format peft (the adapter "
            "is written as it is; they go with --format merged)"
        )
    check_out(out, force)
    with open_adapter(reg, ref, plugins) as (adapter, info):
        base = peft_base_fields((adapter.manifest.get("base") or {}).get("name"))  # a Hub base: id and commit
        peft_cfg = adapter.method.to_peft_config(
            adapter.config, base_model_name_or_path=base.get("base_model_name_or_path")
        )
        if peft_cfg is None:
            raise AdapterhubError(
                f"method '{adapter.method.name}' has no PEFT equivalent, so it cannot be "
                f"exported as a PEFT adapter; use `adapterhub pull {ref} --out DIR`"
            )
        peft_cfg.update(base)
        with atomic_out(out, force) as tmp:
            save_file(
                {k: adapter.tensors[k].contiguous() for k in adapter.tensors},
                os.path.join(tmp, WEIGHTS),
                metadata={"format": "pt"},
            )
            write_json(os.path.join(tmp, "adapter_config.json"), peft_cfg)
            files = []
            for n in sorted(os.listdir(tmp)):
                digest, size = hash_file(os.path.join(tmp, n))
                files.append({"path": n, "sha256": digest, "size": size})
    return {
        "ref": info["ref"],
        "digest": "sha256:" + info["digest"] if info["digest"] else None,
        "format": "peft",
        "method": adapter.method.name,
        "out": os.path.abspath(out),
        "files": files,
        "bytes": sum(f["size"] for f in files),
    }
