"""Getting adapters out of the registry: as a merged transformers model (cached) or as a PEFT directory.

    from adapterhub import export
    export.merge_ref(reg, "acme/bot@production", "./base", "./model", dtype="bf16")  # pull --merged
    export.export(reg, "acme/bot:3", "peft", "./peft-dir")                          # any registered format

``merge_ref`` checks the base fingerprint, then looks in the merged-model cache: merged directories are
stored as blobs keyed by (adapter digest, base fingerprint, dtype, shard size) in the ``merged_models``
table, so a second ``pull --merged`` of the same thing is a verified copy (sha256 of every blob on read).
A cached blob found missing or corrupt is dropped from the cache and the merge recomputed (reported as
``cache_problem``).

Formats are plugins (``register_formats``); ``export`` calls the format's ``export(reg, ref, out, ...)``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

from ..files.checkpoint import LoadedAdapter, method_and_config, write_json
from ..errors import AdapterhubError, IntegrityError, InvalidInput
from ..merge.plan import (_TORCH_NAMES, LazyTensors, base_config, merge_adapter, open_adapter_dir, parse_dtype,
                    parse_shard_size, plan_merge)
from ..plugins import Plugins, get_plugins
from ..files.output_dir import check_out, check_out_base

WEIGHTS = "adapter_model.safetensors"


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
    from ..registry.blobs import copy_verified
    from ..files.safetensors_header import read_header

    info = reg.show(ref)
    weights = [f for f in info["files"] if f["path"] == WEIGHTS]
    if not weights:
        raise InvalidInput(f"{info['ref']} has no {WEIGHTS} (kind {info['kind']}); only adapters can be exported")
    tmp = tempfile.mkdtemp(prefix="adapterhub-export-")
    try:
        path = os.path.join(tmp, WEIGHTS)
        f = weights[0]
        copy_verified(reg.store, f["digest"][7:], path, f["size"], what=f"blob {f['digest']} ({info['ref']} {WEIGHTS})")
        read_header(path)
        method, config = method_and_config(info["manifest"], plugins)
        tensors = LazyTensors(path)
        try:
            check = getattr(method, "check_tensors", None)
            if check is not None:  # (versions stored before push checked them)
                check(tensors.header.tensors, config)
            yield (LoadedAdapter(method, config, tensors, info["manifest"]),
                   {"ref": info["ref"], "digest": info["digest"].removeprefix("sha256:"), "manifest": info["manifest"]})
        finally:
            tensors.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def merge_ref(reg: Any, ref: str, base_dir: str, out: str, *, dtype: str | None = None,
              shard_size: str | int | None = None, allow_base_mismatch: bool = False, force: bool = False,
              use_cache: bool = True, home: str | None = None, plugins: Plugins | None = None,
              progress: Any = None, on_plan: Any = None, onto: str = "dequantized") -> dict[str, Any]:
    """Merge version ``ref`` (or an adapter directory) into ``base_dir`` and write a transformers model
    directory to ``out``; from the cache when this exact merge was done before (``"cached": true``).
    ``onto``: an adapter trained on a quantized base merges onto the dequantized (default) or original base."""
    from ..api import check_base, fingerprint

    base_config(base_dir)  # a transformers model directory, before any work (nothing hashed, nothing cached)
    check_out_base(out, base_dir)
    check_out(out, force)
    target = parse_dtype(dtype)
    shard_bytes = parse_shard_size(shard_size)
    with open_adapter(reg, ref, plugins) as (adapter, info):
        from ..merge.plan import _check_mergeable

        _check_mergeable(adapter, info["ref"] if info["digest"] else ref)
        base_meta = adapter.manifest.get("base") or {}
        cache = use_cache and bool(info["digest"])
        fp = None  # only hashed when needed: to check the base, or as part of the cache key
        if cache or (base_meta.get("fingerprint") and not allow_base_mismatch):
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
            hit, problem = _restore(reg, key, out, force)
            if hit is not None:
                return {"ref": info["ref"], "digest": "sha256:" + info["digest"], "base_fingerprint": fp, **hit}
        result = merge_adapter(adapter, base_dir, out, dtype=dtype, shard_size=shard_bytes, force=force,
                               ref=info["ref"] if info["digest"] else ref, progress=progress, on_plan=on_plan,
                               hash_files=cache, onto=onto, plugins=plugins)
    result = {"ref": info["ref"], "digest": "sha256:" + info["digest"] if info["digest"] else None,
              "base_fingerprint": fp, **result}
    if problem:
        result["cache_problem"] = problem
    if cache:
        try:
            _store(reg, key, result)
        except (OSError, AdapterhubError) as exc:  # the merge itself succeeded: report, do not fail
            result["cache_error"] = str(getattr(exc, "strerror", None) or exc)
    return result


# -- the merged-model cache -----------------------------------------------------------------------------
class _Unusable(Exception):
    """A cached merge whose files are intact but unusable (dropped from the cache, recomputed)."""


def _where(t, key):
    digest, fp, dtype, shard = key
    m = t.merged_models.c
    return (m.adapter_digest == digest) & (m.base_fingerprint == fp) & (m.dtype == dtype) & (m.shard_size == shard)


def _restore(reg: Any, key: tuple, out: str, force: bool) -> tuple[dict | None, str | None]:
    """Materialize a cached merge into ``out`` (every blob verified); ``(result, None)`` on a hit,
    ``(None, problem)`` when a cached blob is missing or corrupt (the entry and bad blobs are dropped)."""
    import time

    import sqlalchemy as sa

    from ..registry import schema as t
    from ..registry.blobs import copy_verified, verify_blob
    from ..files.output_dir import atomic_out

    with reg.read() as conn:
        row = conn.execute(sa.select(t.merged_models).where(_where(t, key))).first()
    if row is None:
        return None, None
    start = time.monotonic()
    files = row.files
    try:
        with atomic_out(out, force) as tmp:
            for f in files:
                dest = os.path.join(tmp, *f["path"].split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                copy_verified(reg.store, f["sha256"], dest, f["size"],
                              what=f"cached merged blob sha256:{f['sha256']} ({f['path']})")
            try:  # never serve a merge that would not load (cached before bases without one were refused)
                base_config(tmp)
            except InvalidInput:
                raise _Unusable("the cached merge has no usable config.json") from None
    except _Unusable as exc:
        with reg.write() as conn:
            conn.execute(t.merged_models.delete().where(_where(t, key)))
        return None, f"{exc}; recomputed"
    except IntegrityError as exc:
        for f in files:
            if verify_blob(reg.store, f["sha256"]) not in (None, "missing"):
                reg.store.delete(f["sha256"])  # corrupt bytes under a content address help nobody
        with reg.write() as conn:
            conn.execute(t.merged_models.delete().where(_where(t, key)))
        return None, f"{exc}; recomputed"
    summary = dict(row.summary or {})
    summary.update({"out": os.path.abspath(out), "files": files, "bytes": sum(f["size"] for f in files),
                    "cached": True, "seconds": round(time.monotonic() - start, 3)})
    return summary, None


def _store(reg: Any, key: tuple, result: dict[str, Any]) -> None:
    """Put every output file in the blob store and record the merge in ``merged_models``."""
    from ..registry import schema as t
    from ..registry.registry import _insert_ignore, now

    for f in result["files"]:
        if not reg.store.has(f["sha256"]):
            reg.store.put(f["sha256"], os.path.join(result["out"], *f["path"].split("/")), f["size"])
    summary = {k: result[k] for k in ("dtype", "shard_size", "architectures", "tensors_merged",
                                       "tensors_untouched", "tensors_added", "untied", "notes")}
    digest, fp, dtype, shard = key
    with reg.write() as conn:
        conn.execute(t.merged_models.delete().where(_where(t, key)))
        _insert_ignore(conn, t.merged_models, {
            "adapter_digest": digest, "base_fingerprint": fp, "dtype": dtype, "shard_size": shard,
            "files": result["files"], "summary": summary, "created_at": now()})


# -- formats ----------------------------------------------------------------------------------------------
def export(reg: Any, ref: str, fmt: str, out: str, *, plugins: Plugins | None = None, **options: Any) -> dict[str, Any]:
    """Export ``ref`` with the format plugin ``fmt`` (``peft``, ``merged`` ...)."""
    plugins = plugins or get_plugins()
    formatter = plugins.get("formats", fmt)
    if not callable(getattr(formatter, "export", None)):
        raise InvalidInput(f"format '{fmt}' cannot export (it only imports)")
    return formatter.export(reg, ref, out, plugins=plugins, **options)


#: options of ``export --format merged`` that a PEFT export has no use for (refused, never silently ignored)
MERGE_ONLY = ("base", "dtype", "shard_size", "allow_base_mismatch", "onto")


def export_peft(reg: Any, ref: str, out: str, *, force: bool = False, plugins: Plugins | None = None,
                **options: Any) -> dict[str, Any]:
    """Write a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) that
    ``PeftModel.from_pretrained`` loads: the adapter's tensors as they are. Refuses the merge options
    (``base``, ``dtype`` ...) rather than ignore them."""
    from safetensors.torch import save_file

    from ..registry.blobs import hash_file
    from ..files.output_dir import atomic_out

    given = [k for k in MERGE_ONLY if options.get(k) not in (None, False)]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise InvalidInput(f"{flags} {'does' if len(given) == 1 else 'do'} not apply to --format peft (the adapter "
                           "is written as it is; they go with --format merged)")
    check_out(out, force)
    with open_adapter(reg, ref, plugins) as (adapter, info):
        base = (adapter.manifest.get("base") or {}).get("name")
        peft_cfg = adapter.method.to_peft_config(adapter.config, base_model_name_or_path=base)
        if peft_cfg is None:
            raise AdapterhubError(f"method '{adapter.method.name}' has no PEFT equivalent, so it cannot be "
                                  f"exported as a PEFT adapter; use `adapterhub pull {ref} --out DIR`")
        with atomic_out(out, force) as tmp:
            save_file({k: adapter.tensors[k].contiguous() for k in adapter.tensors}, os.path.join(tmp, WEIGHTS),
                      metadata={"format": "pt"})
            write_json(os.path.join(tmp, "adapter_config.json"), peft_cfg)
            files = []
            for n in sorted(os.listdir(tmp)):
                digest, size = hash_file(os.path.join(tmp, n))
                files.append({"path": n, "sha256": digest, "size": size})
    return {"ref": info["ref"], "digest": "sha256:" + info["digest"] if info["digest"] else None, "format": "peft",
            "method": adapter.method.name, "out": os.path.abspath(out), "files": files,
            "bytes": sum(f["size"] for f in files)}
