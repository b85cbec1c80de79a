"""The torch / bitsandbytes side: loading a base quantized, writing a quantized model directory, and the
exact quantize→dequantize round trip used by merges. (LoRA on these layers is the lora plugin's, QLoRA.)

Shapes: a ``Linear4bit`` weight is packed (``(out * in / 2, 1)`` uint8, two 4-bit codes per byte) with a
``QuantState`` holding one absmax per ``blocksize`` weights (itself 8-bit quantized in blocks of 256 with
double quantization). A ``Linear8bitLt`` weight is ``(out, in)`` int8 with one absmax per output row
(``SCB``). transformers' ``BitsAndBytesConfig`` quantizes each weight as it is read from the checkpoint,
so the full-precision model is never in memory.

bitsandbytes runs on the CPU (slowly: 4-bit matmuls dequantize, it saves memory, not time). On CPUs with
AVX512-BF16 its eval-mode no-grad forward repacks 4-bit weights for a fused (bf16) kernel; that kernel needs
``out % 32 == 0`` and ``in % blocksize == 0`` (layers that do not fit keep the plain path, :func:`cpu_safe`)
and has no backward, so a model with an adapter attached never uses it (:func:`adapterhub.tuning.no_cpu_packing`).
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import torch

from adapterhub.errors import AdapterhubError, InvalidInput
from adapterhub.interfaces import BaseTransform
from adapterhub.tuning import bitsandbytes, from_conv1d, quantized_layer_types

#: config.json key of a directory written by ``quantize`` (the record; transformers ignores it)
CONFIG_KEY = "adapterhub_quantization"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_compute_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return _DTYPES[name]


def pattern(module_path: str) -> str:
    """``model.layers.3.mlp.up_proj`` -> ``model.layers.*.mlp.up_proj`` (layer stacks share one entry)."""
    return _INDEX.sub("*", module_path)


def bnb_config(quantizer: Any, opts: dict[str, Any]):
    from transformers import BitsAndBytesConfig

    if quantizer.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=opts["threshold"])
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantizer.quant_type,
        bnb_4bit_use_double_quant=opts["double_quant"],
        bnb_4bit_compute_dtype=resolve_compute_dtype(opts["compute_dtype"]),
        bnb_4bit_quant_storage=torch.uint8,
    )


def quantized_modules(model: torch.nn.Module) -> dict[str, Any]:
    kinds = quantized_layer_types()
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


# -- loading ---------------------------------------------------------------------------------------------
def _model_class(config: Any, task: str | None):
    import transformers

    if task == "seq-cls":
        return transformers.AutoModelForSequenceClassification
    if task == "causal-lm":
        return transformers.AutoModelForCausalLM
    for arch in getattr(config, "architectures", None) or []:  # quantize: keep the checkpoint's own class
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def load_quantized(
    quantizer: Any, base_dir: str, task: str | None, labels: list[str] | None, opts: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Load ``base_dir`` for ``task`` (None: the checkpoint's own class) quantized as it loads."""
    from transformers import AutoConfig

    from adapterhub.infra import check_base_dir, quiet_transformers

    bitsandbytes()
    quiet_transformers()
    check_base_dir(base_dir)
    try:
        config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    except Exception as exc:
        raise InvalidInput(f"base {base_dir} is not a transformers model: {str(exc).splitlines()[0][:200]}") from None
    if getattr(config, "quantization_config", None):
        raise InvalidInput(
            f"base {base_dir} is already quantized; quantize the original (full-precision) model directory instead"
        )
    if task == "seq-cls":
        labels = labels or ["0", "1"]
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = getattr(config, "eos_token_id", None) or 0
    check_shapes(
        base_dir,
        config,
        _model_class(config, task),
        f"config.json with {len(labels)} labels" if task == "seq-cls" else "config.json",
    )
    _fixed_mmap_threshold()
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "dtype": "auto",
        "config": config,
        "quantization_config": bnb_config(quantizer, opts),
    }
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = _model_class(config, task).from_pretrained(base_dir, **kwargs)
    except (ValueError, RuntimeError, ImportError) as exc:
        raise InvalidInput(
            f"cannot load {base_dir} quantized with {quantizer.name}: {str(exc).splitlines()[0][:200]}"
        ) from None
    mods = quantized_modules(model)
    if not mods:
        raise InvalidInput(f"{quantizer.name}: {base_dir} has no Linear layers bitsandbytes can quantize")
    if quantizer.bits == 4 and opts["blocksize"] != 64:
        _requantize(base_dir, mods, opts["blocksize"])
    cpu_safe(model)
    model.eval()
    return model, describe(quantizer, model, opts, mods)


def check_shapes(base_dir: str, config: Any, cls: Any, what: str = "config.json") -> None:
    """Refuse a base whose ``config.json`` does not describe its weights
    (:func:`adapterhub.infra.weight_shape_mismatch`): transformers does not check the weights it quantizes as they
    load, and would write layers whose shape is not their weight's."""
    from adapterhub.infra import weight_shape_mismatch

    try:
        found = weight_shape_mismatch(base_dir, config, cls)
    except Exception as exc:
        raise InvalidInput(
            f"base {base_dir}: cannot build the model its config.json describes: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
        ) from None
    if found is not None:
        name, have, want, fname = found
        raise InvalidInput(
            f"base {base_dir}: {what} does not match the weights: '{name}' is "
            f"{'x'.join(map(str, have))} in {fname} but the config makes it {'x'.join(map(str, want))}"
            + ("; fix config.json or use the matching weights" if what == "config.json" else "")
        )


def _fixed_mmap_threshold() -> None:
    """Serve allocations of 1 MiB and up with mmap (returned to the OS on free): quantizing tensor by tensor
    otherwise fragments glibc's heap (its mmap threshold rises after the first large free) and RSS stays
    up to ~2x the quantized model. A no-op off glibc (as in :mod:`adapterhub.merge.plan`)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _requantize(base_dir: str, mods: dict[str, Any], blocksize: int) -> None:
    """transformers quantizes with bitsandbytes' default blocksize (64): quantize each 4-bit weight again
    from the checkpoint's tensor with ``blocksize`` (one tensor in memory at a time)."""
    from safetensors import safe_open

    from adapterhub.infra import find_weight_files

    b = bitsandbytes()
    where: dict[str, str] = {}
    for path in find_weight_files(base_dir):
        with safe_open(path, framework="pt") as f:
            where.update({k: path for k in f.keys()})
    for name, m in mods.items():
        key = name + ".weight"
        if key not in where:
            cands = [k for k in where if k.endswith("." + key) or key.endswith("." + k)]
            if len(cands) != 1:
                raise AdapterhubError(
                    f"cannot find '{key}' in the checkpoint of {base_dir} to quantize it with blocksize {blocksize}"
                )
            key = cands[0]
        with safe_open(where[key], framework="pt") as f:
            w = f.get_tensor(key)
        if from_conv1d(m):
            w = w.T
        old = m.weight
        dev = old.device
        w = w.to(dtype=old.quant_state.dtype)
        m.weight = b.nn.Params4bit(
            w.contiguous(),
            requires_grad=False,
            blocksize=blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
            module=m,
        )._quantize(dev)
        m.quant_state = m.weight.quant_state
        del w, old


def cpu_safe(model: torch.nn.Module) -> None:
    """Keep 4-bit layers whose shape does not fit bitsandbytes' packed CPU kernel on the plain path."""
    b = bitsandbytes()
    for m in model.modules():
        if isinstance(m, b.nn.Linear4bit) and getattr(m, "support_avx512bf16_for_cpu", False):
            bs = m.weight.blocksize
            if m.out_features % 32 or m.in_features % bs or m.in_features % 2:
                m.support_avx512bf16_for_cpu = False


def describe(quantizer: Any, model: Any, opts: dict[str, Any], mods: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of how ``model``'s base was quantized (JSON-able)."""
    b = bitsandbytes()
    mods = quantized_modules(model) if mods is None else mods
    first = next(iter(mods.values()))
    weight_dtype = dtype_name(first.weight.quant_state.dtype) if quantizer.bits == 4 else "float16"
    skipped = sorted(
        n
        for n, m in model.named_modules()
        if type(m) is torch.nn.Linear and n and not n.endswith((".lora_A", ".lora_B"))
    )
    rec: dict[str, Any] = {
        "quantizer": quantizer.name,
        "backend": "bitsandbytes",
        "backend_version": b.__version__,
        "quant_type": quantizer.quant_type,
        "bits": quantizer.bits,
    }
    if quantizer.bits == 4:
        rec.update(
            double_quant=bool(first.weight.quant_state.nested),
            blocksize=int(first.weight.blocksize),
            compute_dtype=dtype_name(first.compute_dtype or torch.float32),
            quant_storage="uint8",
        )
    else:
        rec.update(threshold=float(opts["threshold"]))
    rec.update(
        weight_dtype=weight_dtype,
        modules=sorted({pattern(n) for n in mods}),
        quantized_layers=len(mods),
        transposed=sorted({pattern(n) for n, m in mods.items() if from_conv1d(m)}),
        skipped=skipped,
    )
    return rec


# -- the merge-side round trip ----------------------------------------------------------------------------
class RoundTrip(BaseTransform):
    """``(name, tensor) -> tensor``: the weight as the quantized base held it during training (quantized
    with the recorded quant type / blocksize / double quant from the recorded weight dtype, then
    dequantized; float32). ``applies(name)`` says which base tensors training quantized."""

    def __init__(self, quantizer: Any, record: dict[str, Any]):
        self.quantizer, self.record = quantizer, record
        self.modules = set(record.get("modules") or [])
        self.transposed = set(record.get("transposed") or [])
        if not self.modules:
            raise InvalidInput("the adapter's quantization record lists no quantized modules")
        self.weight_dtype = _DTYPES.get(record.get("weight_dtype", "float32"), torch.float32)
        self.seen = 0

    def _module(self, name: str) -> str | None:
        if not name.endswith(".weight"):
            return None
        return pattern(name[: -len(".weight")])

    def applies(self, name: str) -> bool:
        return self._module(name) in self.modules

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        F = bitsandbytes().functional
        r = self.record
        transposed = self._module(name) in self.transposed
        w = tensor.T if transposed else tensor
        if r["bits"] == 4:
            w = w.to(self.weight_dtype).contiguous()
            q, state = F.quantize_4bit(
                w,
                blocksize=r["blocksize"],
                compress_statistics=r["double_quant"],
                quant_type=r["quant_type"],
                quant_storage=torch.uint8,
            )
            out = F.dequantize_4bit(q, state).float()
        else:  # LLM.int8(): fp16 weights, one absmax per row, w ≈ CB * SCB / 127
            cb, scb, _ = F.int8_vectorwise_quant(w.to(torch.float16).contiguous())
            out = F.int8_vectorwise_dequant(cb, scb).float()
        self.seen += 1
        return out.T.contiguous() if transposed else out


# -- writing a quantized model directory -----------------------------------------------------------------
_SIDE_SKIP = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".pkl", ".pickle")


def quantize_dir(
    quantizer: Any, model_dir: str, out_dir: str, opts: dict[str, Any], *, force: bool = False, home: str | None = None
) -> dict[str, Any]:
    """``model_dir`` -> ``out_dir`` quantized (written beside it, renamed into place at the end)."""
    from adapterhub import api
    from adapterhub.infra import atomic_out, check_base_dir, check_out_base, hash_file

    check_base_dir(model_dir)
    check_out_base(out_dir, model_dir)  # is or contains the base: refused even with --force
    with atomic_out(out_dir, force) as tmp:
        fp = api.fingerprint(model_dir, home)
        model, record = load_quantized(quantizer, model_dir, None, None, opts)
        record["source_fingerprint"] = fp.digest
        record["source_name"] = os.path.basename(os.path.abspath(model_dir))
        setattr(model.config, CONFIG_KEY, record)
        model.save_pretrained(tmp)
        for n in sorted(os.listdir(model_dir)):  # tokenizer, generation config ... (weights are rewritten)
            src = os.path.join(model_dir, n)
            if (
                os.path.isfile(src)
                and not n.startswith(".")
                and not n.lower().endswith(_SIDE_SKIP)
                and not os.path.exists(os.path.join(tmp, n))
                and n not in ("adapterhub.json",)
                and not n.endswith(".index.json")
            ):
                shutil.copyfile(src, os.path.join(tmp, n))
        files = []
        for n in sorted(os.listdir(tmp)):
            digest, size = hash_file(os.path.join(tmp, n))
            files.append({"path": n, "sha256": digest, "size": size})
    return {
        "out": os.path.abspath(out_dir),
        "quantization": record,
        "files": files,
        "bytes": sum(f["size"] for f in files),
        "source_bytes": fp.bytes,
    }
