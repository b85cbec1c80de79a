"""Merging an adapter into its base model: a plain transformers model directory, tensor by tensor.

    from adapterhub import merge
    merge.merge_ref(reg, "acme/bot@production", "./base", "./model", dtype="bf16")   # cached in the registry
    merge.merge_adapter(loaded, "./base", "./model")                                  # a LoadedAdapter, no cache

How it works (peak memory stays near the largest tensor, never the model size):

1. **Plan** from the safetensors headers alone: every output tensor's name, dtype and shape. Base names are
   mapped onto the adapter's model naming (PEFT keys are ``base_model.model.<path>``): a headless base
   (``BertModel``: ``encoder.…``) under a sequence-classification adapter (``bert.encoder.…`` +
   ``classifier``) gets the ``bert.`` prefix, and the head's tensors (``modules_to_save``) are added. A tied
   output embedding that the adapter changes is untied (both tensors written, ``tie_word_embeddings=false``);
   a saved embedding larger than the base's (a resized vocabulary) replaces it and updates ``vocab_size``.
2. **Write** each shard (:mod:`adapterhub.merge.writer`): the header first (every tensor's offset is known from
   the plan), then the tensors at their offsets, by several threads in any order. Untouched tensors are
   copied inside the kernel; the others are read from the base file (a positioned read into a reused
   buffer: unlike an mmap, read pages never count towards this process' RSS), cast to the target dtype,
   merged by ``method.merge_tensor`` (in place where the method allows) and written back; file digests
   are computed as the files fill.
3. Everything lands in a temp dir beside ``out``, renamed into place at the end; on any error (a full disk
   included) nothing is left behind.

With a target dtype the base tensor is cast *before* merging: the result equals loading the base in that
dtype and calling peft's ``merge_and_unload`` (which is what a user compares against).

An adapter trained on a quantized base (``manifest["base"]["quantization"]``, e.g. QLoRA) is merged by default
onto the *dequantized* base: the quantizer plugin's ``base_transform(record)`` gives each weight exactly the
quantize→dequantize round trip training saw (:func:`base_transform_for`, ``onto="dequantized"``);
``onto="original"`` merges onto the full-precision weights instead.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import AdapterhubError, InvalidInput
from ..files.checkpoint import LoadedAdapter, load_json
from ..files.fingerprint import INDEX, find_weight_files
from ..files.peft_keys import PEFT_PREFIX, base_prefix, is_tuner_wide, module_prefixes, parent_paths
from ..files.safetensors_header import DTYPE_SIZES, FLOAT_DTYPES, read_header
from ..files.safetensors_io import _TORCH_NAMES, _BaseReader, _header, st_dtype  # noqa: F401  (re-exported)

DEFAULT_SHARD_SIZE = 5 * 10**9
DTYPE_CHOICES = {"bf16": "BF16", "bfloat16": "BF16", "fp16": "F16", "float16": "F16", "fp32": "F32", "float32": "F32"}
#: base-directory files never copied to the output (the weights are rewritten; pickles are never copied)
_SKIP_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".pkl", ".pickle")
_SKIP_NAMES = {INDEX, "pytorch_model.bin.index.json", "adapter_config.json", "adapterhub.json"}
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}

Progress = Callable[[int], None]  # called with the number of tensors just written
ONTO = ("dequantized", "original")


def base_transform_for(adapter: LoadedAdapter, plugins: Any = None, onto: str = "dequantized") -> Any:
    """The transform of base tensors for merging ``adapter``: ``None`` for an adapter trained on a
    full-precision base or with ``onto="original"``; else the quantizer's ``base_transform(record)``, a
    callable ``(name, tensor) -> tensor`` with ``applies(name)``."""
    if onto not in ONTO:
        raise InvalidInput(f"invalid --onto {onto!r} (expected one of: {', '.join(ONTO)})")
    record = (adapter.manifest.get("base") or {}).get("quantization")
    if onto == "original" or not record:
        return None
    if plugins is None:
        from ..plugins import get_plugins

        plugins = get_plugins()
    return plugins.get("quantizers", record.get("quantizer", "?")).base_transform(record)


def parse_shard_size(value: str | int | None) -> int:
    """``"5GB"`` (10**9), ``"500MiB"`` (2**20), ``"2000000"`` -> bytes; refuses anything else."""
    if value is None:
        return DEFAULT_SHARD_SIZE
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).upper() not in _UNITS:
            raise InvalidInput(f"invalid shard size {value!r}: use a number with KB/MB/GB or KiB/MiB/GiB (e.g. 5GB)")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise InvalidInput(f"invalid shard size {value!r}: must be positive")
    return n


def parse_dtype(value: str | None) -> str | None:
    """``bf16|fp16|fp32`` (or the torch names) -> the safetensors dtype (``BF16`` ...); None keeps the base's."""
    if value is None or value == "auto":
        return None
    try:
        return DTYPE_CHOICES[value.lower()]
    except KeyError:
        raise InvalidInput(f"invalid dtype {value!r}: use bf16, fp16 or fp32") from None


# -- planning ---------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One output tensor: its name in the merged model, dtype/shape, and where its values come from."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    base_path: str | None = None  # base safetensors file (None: the tensor comes from the adapter)
    base_info: Any = None  # stheader.TensorInfo in that file
    adapter_key: str | None = None  # the adapter tensor that replaces or provides it (head, resized vocab)

    @property
    def nbytes(self) -> int:
        n = DTYPE_SIZES[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass
class Plan:
    entries: list[Entry]
    config: dict[str, Any]  # the output config.json
    prefix: str  # added in front of every base tensor name ("" or e.g. "bert.")
    untied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _seq_cls_arch(cfg: dict[str, Any]) -> str:
    archs = cfg.get("architectures") or []
    if archs and archs[0].endswith("ForSequenceClassification"):
        return archs[0]
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as M
    except ImportError:  # pragma: no cover
        M = {}
    name = M.get(cfg.get("model_type"))
    if not name:
        raise InvalidInput(f"no sequence-classification class for model type {cfg.get('model_type')!r}")
    return name


def _tied_pairs(cfg: dict[str, Any], arch: str | None) -> dict[str, str]:
    """``{output weight: input weight}`` the architecture ties (``tie_word_embeddings``), in model naming."""
    if not cfg.get("tie_word_embeddings", True) or not arch:
        return {}
    try:
        import transformers

        cls = getattr(transformers, arch)
    except Exception:
        return {}
    tied = getattr(cls, "_tied_weights_keys", None) or {}
    return {k: v for k, v in tied.items()} if isinstance(tied, dict) else {}


def base_config(base_dir: str) -> dict[str, Any]:
    """The base's ``config.json``; refuses (before any work) a directory that is not a transformers model
    directory: a merge of it would not load."""
    if not os.path.exists(base_dir):
        raise InvalidInput(f"base {base_dir}: no such directory")
    if not os.path.isdir(base_dir):
        raise InvalidInput(f"base {base_dir}: not a directory")
    path = os.path.join(base_dir, "config.json")
    if not os.path.isfile(path):
        raise InvalidInput(f"base {base_dir} is not a transformers model directory: no config.json")
    try:
        cfg = load_json(path)
    except InvalidInput as exc:
        raise InvalidInput(f"base {base_dir}: {exc}") from None
    if not isinstance(cfg, dict) or not cfg:
        raise InvalidInput(
            f"base {base_dir} is not a transformers model directory: its config.json is "
            f"{'empty' if cfg == {} else 'not a JSON object'}"
        )
    return cfg


def unmatched_tensors(entries: list[Entry], keys) -> list[str]:
    """The adapter tensors (``keys``) a merge into ``entries`` would not use: neither an output tensor itself
    (a saved copy, a head, a resized embedding) nor the method's tensors of a module holding base weights
    (``<module>.lora_A.weight``, ``<module>.ia3_l`` ...: at most two name parts after that module), nor state the
    tuner shares across its layers (VeRA's projections: the writer refuses the merge if the method never read it)."""
    names = {e.name for e in entries}
    provided = {e.adapter_key for e in entries if e.adapter_key}
    modules = {e.name.rsplit(".", 1)[0] for e in entries if e.base_path is not None and "." in e.name}
    out = []
    for k in keys:
        if k in provided or is_tuner_wide(k):
            continue
        if k.startswith(PEFT_PREFIX):
            parts = k[len(PEFT_PREFIX) :].split(".")
            if ".".join(parts) in names:
                continue
            owner = next((i for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in modules), 0)
            if owner and len(parts) - owner <= 2:
                continue
        out.append(k)
    return out


def unmatched_error(keys: list[str], total: int, base_dir: str) -> InvalidInput:
    some = ", ".join(f"'{k}'" for k in keys[:3]) + (", ..." if len(keys) > 3 else "")
    return InvalidInput(
        f"{len(keys)} of {total} adapter tensors match nothing in the base {base_dir} ({some}); "
        "their update would be lost: is this the base (architecture) the adapter was made for, "
        "or were its keys renamed?"
    )


def _shape(tensors: Mapping, key: str) -> tuple[int, ...] | None:
    """The shape of adapter tensor ``key`` (None when absent): from the header when read lazily."""
    header = getattr(tensors, "header", None)
    if header is not None:
        info = header.tensors.get(key)
        return None if info is None else tuple(info.shape)
    t = tensors.get(key)
    return None if t is None else tuple(t.shape)


def _dtype(tensors: Mapping, key: str) -> str:
    header = getattr(tensors, "header", None)
    return header.tensors[key].dtype if header is not None else st_dtype(tensors[key].dtype)


def plan_merge(adapter: LoadedAdapter, base_dir: str, target: str | None) -> Plan:
    """Everything the writer needs, from headers and configs only (no tensor data is read from a lazily read
    adapter, so it is cheap enough to check a cached merge's inputs too). Refuses an
    adapter with tensors that match nothing in the base (their update would be silently lost)."""
    cfg = base_config(base_dir)
    files = find_weight_files(base_dir)
    base: list[tuple[str, str, Any]] = []  # (name, file, info) in file/offset order
    for path in files:
        h = read_header(path)
        base += [(t.name, path, t) for t in sorted(h.tensors.values(), key=lambda t: t.start)]
    names = [b[0] for b in base]
    tensors = adapter.tensors
    paths = [k[len(PEFT_PREFIX) :] for k in tensors if k.startswith(PEFT_PREFIX)]
    prefix = base_prefix(names, paths)
    plan = Plan([], dict(cfg), prefix)

    task = adapter.manifest.get("task") or getattr(adapter.config, "task_type", None)
    arch = (cfg.get("architectures") or [None])[0]
    if task == "SEQ_CLS":
        arch = _seq_cls_arch(cfg)
        plan.config["architectures"] = [arch]

    def out_dtype(src: str) -> str:
        return target if target and src in FLOAT_DTYPES else src

    mapped = {prefix + n: (path, info) for n, path, info in base}
    resized: set[str] = set()
    for name, (path, info) in mapped.items():
        e = Entry(name, out_dtype(info.dtype), tuple(info.shape), path, info)
        full = _shape(tensors, PEFT_PREFIX + name)
        if full is not None and full != e.shape:  # a resized vocabulary (embedding / lm_head)
            if len(full) != len(e.shape) or full[1:] != e.shape[1:]:
                raise InvalidInput(
                    f"adapter tensor '{PEFT_PREFIX + name}' has shape {full}, base '{name}' has {e.shape}"
                )
            e.shape, e.adapter_key = full, PEFT_PREFIX + name
            resized.add(name)
            if e.shape and info.shape[0] == cfg.get("vocab_size") and e.shape[0] != info.shape[0]:
                plan.config["vocab_size"] = e.shape[0]
                plan.notes.append(f"vocab_size {info.shape[0]} -> {e.shape[0]} (resized {name})")
        plan.entries.append(e)

    def touches(name: str) -> bool:
        module = name.rsplit(".", 1)[0]
        return any(k == PEFT_PREFIX + name or k.startswith(PEFT_PREFIX + module + ".") for k in tensors)

    # tied output embeddings: the base stores one tensor; untie when the adapter changes either side
    for out_name, in_name in _tied_pairs(cfg, arch).items():
        if out_name in mapped or in_name not in mapped or not (touches(out_name) or touches(in_name)):
            continue
        full = _shape(tensors, PEFT_PREFIX + out_name)
        if in_name in resized and full is None:
            plan.notes.append(f"kept {out_name} tied to the resized {in_name}")
            continue
        path, info = mapped[in_name]
        e = Entry(out_name, out_dtype(info.dtype), tuple(info.shape), path, info)
        if full is not None and full != e.shape:
            e.shape, e.adapter_key = full, PEFT_PREFIX + out_name
        plan.entries.append(e)
        plan.untied += [in_name, out_name]
        plan.config["tie_word_embeddings"] = False

    # head tensors (modules_to_save) the base does not have: e.g. the classifier of a seq-cls adapter
    mts = [m for m in (getattr(adapter.config, "modules_to_save", None) or []) if isinstance(m, str)]
    mods = module_prefixes(mapped) | set(mapped)
    have = {e.name for e in plan.entries}
    float_dtypes = [e.dtype for e in plan.entries if e.dtype in FLOAT_DTYPES]
    default_float = target or (max(set(float_dtypes), key=float_dtypes.count) if float_dtypes else "F32")
    for p in sorted(paths):
        if p in have or any(m in mods for m in parent_paths(p)):
            continue
        if not any(q.endswith(m) for q in parent_paths(p) for m in mts):
            continue
        src, shape = _dtype(tensors, PEFT_PREFIX + p), _shape(tensors, PEFT_PREFIX + p)
        plan.entries.append(Entry(p, default_float if src in FLOAT_DTYPES else src, shape, adapter_key=PEFT_PREFIX + p))
    if task == "SEQ_CLS":
        _set_labels(plan, adapter, [e for e in plan.entries if e.adapter_key and e.base_path is None])
    lost = unmatched_tensors(plan.entries, tensors)
    if lost:
        raise unmatched_error(lost, len(tensors), base_dir)
    if target:
        plan.config["dtype"] = _TORCH_NAMES[target]
        if "torch_dtype" in plan.config:
            plan.config["torch_dtype"] = _TORCH_NAMES[target]
    return plan


def _set_labels(plan: Plan, adapter: LoadedAdapter, head: list[Entry]) -> None:
    weights = [e for e in head if e.name.endswith(".weight") and len(e.shape) == 2]
    out_proj = [e for e in weights if e.name.endswith("out_proj.weight")]
    n = (out_proj or weights)[-1].shape[0] if weights else None
    labels = adapter.manifest.get("labels")
    if labels:
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise InvalidInput("the adapter manifest's 'labels' must be a list of names")
        if n is not None and len(labels) != n:
            raise InvalidInput(f"the adapter manifest lists {len(labels)} labels but its head has {n} outputs")
    elif n is not None:
        old = plan.config.get("id2label") or {}
        labels = (
            [old.get(str(i), f"LABEL_{i}") for i in range(n)] if len(old) == n else [f"LABEL_{i}" for i in range(n)]
        )
    if labels:
        plan.config["id2label"] = {str(i): x for i, x in enumerate(labels)}
        plan.config["label2id"] = {x: i for i, x in enumerate(labels)}
        plan.config.pop("num_labels", None)


class LazyTensors(Mapping):
    """An adapter's tensors read from its safetensors file on access (one at a time), so a merge never
    holds the whole adapter in memory. Behaves like the ``dict`` ``load_file`` returns."""

    def __init__(self, path: str):
        self.path = path
        self.header = read_header(path)
        self._reader = _BaseReader()

    def __getitem__(self, key: str) -> Any:
        info = self.header.tensors[key]  # KeyError for a missing key, like a dict
        return self._reader.read(self.path, info)

    def __contains__(self, key: object) -> bool:
        return key in self.header.tensors

    def __iter__(self):
        return iter(self.header.tensors)

    def __len__(self) -> int:
        return len(self.header.tensors)

    def close(self) -> None:
        self._reader.close()


def open_adapter_dir(path: str, plugins: Any) -> LoadedAdapter:
    """Like :func:`checkpoint.load_adapter_dir`, with the tensors read lazily (:class:`LazyTensors`)."""
    from ..files.checkpoint import adapter_parts

    manifest, weights, method, config = adapter_parts(path, plugins)
    return LoadedAdapter(method, config, LazyTensors(weights), manifest)


# -- writing (adapterhub.merge.writer) ------------------------------------------------------------------
def _copy_side_files(base_dir: str, out_dir: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    """config.json (updated) plus the base's other top-level files: generation config, tokenizer ..."""
    from ..registry.blobs import hash_file
    from .writer import write_small_json

    files = [write_small_json(out_dir, "config.json", config)]
    for n in sorted(os.listdir(base_dir)):
        src = os.path.join(base_dir, n)
        if (
            n == "config.json"
            or n in _SKIP_NAMES
            or n.startswith(".")
            or n.lower().endswith(_SKIP_FILES)
            or not os.path.isfile(src)
        ):
            continue
        dest = os.path.join(out_dir, n)
        shutil.copyfile(src, dest)
        digest, size = hash_file(dest)
        files.append({"path": n, "sha256": digest, "size": size})
    return files


def _check_mergeable(adapter: LoadedAdapter, ref: str | None) -> None:
    method = adapter.method
    if "merge" in method.capabilities():
        return
    ref = ref or "REF"
    peft = None
    try:
        peft = method.to_peft_config(adapter.config)
    except Exception:
        pass
    how = (
        f"export it with `adapterhub export {ref} --format peft` and load it at run time"
        if peft is not None
        else f"pull it with `adapterhub pull {ref} --out DIR` and attach it at run time"
    )
    raise AdapterhubError(f"method '{method.name}' cannot be merged into the base weights; {how}")


def merge_adapter(
    adapter: LoadedAdapter,
    base_dir: str,
    out: str,
    *,
    dtype: str | None = None,
    shard_size: str | int | None = None,
    force: bool = False,
    ref: str | None = None,
    progress: Progress | None = None,
    on_plan: Callable[[int], None] | None = None,
    hash_files: bool = True,
    onto: str = "dequantized",
    plugins: Any = None,
) -> dict[str, Any]:
    """Merge ``adapter`` into the base model in ``base_dir`` and write a transformers model directory to
    ``out`` (atomically). No fingerprint check here: :func:`merge_ref` does it. ``on_plan(n)`` is called
    with the number of tensors before writing starts (for a progress bar). ``onto``: for an adapter trained
    on a quantized base, merge onto the dequantized (default) or the original weights."""
    from ..files.output_dir import atomic_out, check_out_base
    from .writer import write_model

    start = time.monotonic()
    base_config(base_dir)
    check_out_base(out, base_dir)
    _check_mergeable(adapter, ref)
    transform = base_transform_for(adapter, plugins, onto)
    target = parse_dtype(dtype)
    shard_bytes = parse_shard_size(shard_size)
    plan = plan_merge(adapter, base_dir, target)
    total = sum(e.nbytes for e in plan.entries)
    with atomic_out(out, force) as tmp:
        free = shutil.disk_usage(tmp).free
        if free < total:
            raise OSError(28, f"No space left on device (needs {total} bytes, {free} free)")
        if on_plan:
            on_plan(len(plan.entries))
        written = write_model(
            plan, adapter, tmp, shard_bytes, progress, hash_files=hash_files, base_transform=transform
        )
        if written["unread"]:  # the plan's check is by name; this one is what the method really used
            raise unmatched_error(written["unread"], len(adapter.tensors), base_dir)
        files = written["files"] + _copy_side_files(base_dir, tmp, plan.config)
    counts = written["counts"]
    return {
        "out": os.path.abspath(out),
        "files": sorted(files, key=lambda f: f["path"]),
        "dtype": _TORCH_NAMES[target] if target else "auto",
        "shard_size": shard_bytes,
        "architectures": plan.config.get("architectures"),
        "tensors_merged": counts["merged"],
        "tensors_untouched": counts["untouched"],
        "tensors_added": counts["added"],
        "untied": plan.untied,
        "notes": plan.notes,
        "bytes": sum(f["size"] for f in files),
        "cached": False,
        "seconds": round(time.monotonic() - start, 3),
        **(
            {"onto": onto, "tensors_dequantized": counts["transformed"]}
            if (adapter.manifest.get("base") or {}).get("quantization")
            else {}
        ),
    }
