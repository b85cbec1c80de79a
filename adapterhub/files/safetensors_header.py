"""Reading and validating safetensors headers in pure Python (no torch, no full read).

A safetensors file is ``u64 little-endian header length N``, ``N`` bytes of JSON, then the data
region. Every tensor entry has ``dtype``, ``shape`` and ``data_offsets`` ``[begin, end)`` relative to
the data region. We check everything a truncated or forged file could get wrong, so that a bad file is
refused with one clear line before anything is stored.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

from ..errors import InvalidInput

DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
#: the floating-point dtypes: what adapter tensors may have (PEFT computes with them; an integer factor breaks
#: the merge), and what a merge may convert to another dtype
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
#: torch's names of the floating-point dtypes, by their safetensors names' order
_TORCH_FLOATS = {"torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float32": "F32", "torch.float64": "F64"}


def dtype_name(dtype: object) -> str:
    """The safetensors name (``"F32"``) of a header entry's dtype (already one) or of a torch dtype
    (``torch.float32``), so checks take header entries or tensors alike; other torch dtypes keep torch's name."""
    if isinstance(dtype, str):
        return dtype
    text = str(dtype)
    return _TORCH_FLOATS.get(text, text.removeprefix("torch."))


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def read_header(path: str) -> Header:
    """Parse and validate the header of the safetensors file at ``path``.

    Raises :class:`InvalidInput` naming the file if it is truncated, its header is not valid JSON,
    a tensor's byte range does not match its dtype and shape, ranges overlap or leave gaps, or the
    header claims more bytes than the file has.
    """
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise InvalidInput(f"{name}: not a safetensors file (truncated: {size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise InvalidInput(f"{name}: corrupt safetensors header (claims {n} header bytes, file has {size})")
            blob = f.read(n)
    except OSError as exc:
        raise InvalidInput(f"{name}: cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput(f"{name}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{name}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + n
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise InvalidInput(f"{name}: corrupt safetensors header (__metadata__ is not an object)")
    tensors: dict[str, TensorInfo] = {}
    for tname, info in doc.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError
            if not (isinstance(begin, int) and isinstance(end, int)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(f"{name}: corrupt safetensors header (bad entry for tensor '{tname}')") from None
        if dtype not in DTYPE_SIZES:
            raise InvalidInput(f"{name}: tensor '{tname}' has unknown dtype {dtype!r}")
        count = 1
        for d in shape:
            count *= d
        if end < begin or end - begin != count * DTYPE_SIZES[dtype]:
            raise InvalidInput(
                f"{name}: tensor '{tname}' has {end - begin} bytes but {dtype}{list(shape)} needs "
                f"{count * DTYPE_SIZES[dtype]}"
            )
        if data_start + end > size:
            raise InvalidInput(f"{name}: truncated (tensor '{tname}' ends at byte {data_start + end}, file has {size})")
        tensors[tname] = TensorInfo(tname, dtype, shape, data_start + begin, data_start + end)
    # ranges must tile the data region exactly: no overlaps (aliasing) and no gaps
    pos = data_start
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.start != pos:
            raise InvalidInput(f"{name}: corrupt safetensors data layout near tensor '{t.name}'")
        pos = t.end
    if pos != size:
        raise InvalidInput(f"{name}: {size - pos} unexpected trailing bytes after the tensor data")
    return Header(path, tensors, {str(k): str(v) for k, v in meta.items()}, data_start, size)
