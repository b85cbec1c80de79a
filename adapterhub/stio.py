"""Streaming safetensors I/O for tensor-by-tensor rewrites (the merge): positioned reads of one tensor at a
time (read pages never count towards RSS the way mmapped ones do), a header written before the data, and a
background writer thread that overlaps file writes and hashing with the next tensor's work."""

from __future__ import annotations

import json
import os
from typing import Any

from .errors import InvalidInput
from .stheader import DTYPE_SIZES, TensorInfo

_TORCH_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def torch_dtype(st_dtype: str):
    import torch

    try:
        return getattr(torch, _TORCH_NAMES[st_dtype])
    except KeyError:
        raise InvalidInput(f"tensors of dtype {st_dtype} are not supported by merge") from None


def st_dtype(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    for k, v in _TORCH_NAMES.items():
        if v == name:
            return k
    raise InvalidInput(f"cannot write tensors of dtype {name}")


def _header(entries: list[Any]) -> bytes:
    """A safetensors header for ``entries`` (objects with name, dtype, shape, nbytes), in order."""
    doc: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for e in entries:
        doc[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [pos, pos + e.nbytes]}
        pos += e.nbytes
    raw = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data region 8-byte aligned, as safetensors does
    return len(raw).to_bytes(8, "little") + raw


class _BaseReader:
    """Reads one base tensor at a time with positioned reads (files opened once)."""

    def __init__(self):
        self.files: dict[str, Any] = {}

    def read(self, path: str, info: Any):
        import torch

        f = self.files.get(path)
        if f is None:
            f = self.files[path] = open(path, "rb", buffering=0)
        buf = torch.empty(info.nbytes, dtype=torch.uint8)
        view, done = memoryview(buf.numpy()), 0
        while done < info.nbytes:
            n = os.preadv(f.fileno(), [view[done:]], info.start + done)
            if not n:
                raise InvalidInput(f"{os.path.basename(path)}: truncated while reading '{info.name}'")
            done += n
        return buf.view(torch_dtype(info.dtype)).reshape(info.shape)

    def chunks(self, path: str, info: Any, want: Any):
        """The tensor's bytes in pieces of about COPY_CHUNK, cast to ``want`` piece by piece if needed."""
        import torch

        src = torch_dtype(info.dtype)
        elem = DTYPE_SIZES[info.dtype]
        step = max(1, COPY_CHUNK // elem) * elem
        for off in range(0, info.nbytes, step):
            n = min(step, info.nbytes - off)
            part = TensorInfo(info.name, info.dtype, (n // elem,), info.start + off, info.start + off + n)
            t = self.read(path, part)
            if src != want:
                t = t.to(want)
            yield memoryview(t.view(torch.uint8).numpy())

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class _Writer:
    """Appends byte buffers to the open shard in a background thread (file writes and sha256 release the
    GIL, so they overlap the next tensor's merge); at most ``depth`` buffers wait, bounding memory."""

    def __init__(self, depth: int = 1):
        import queue
        import threading

        self.q: Any = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="merge-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            f, h, data = item
            if self.error is None:
                try:
                    f.write(data)
                    if h is not None:
                        h.update(data)
                except BaseException as exc:  # reported by the next put / close
                    self.error = exc

    def put(self, f: Any, h: Any, data: Any) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((f, h, data))

    def close(self, raise_error: bool = True) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None and raise_error:
            raise self.error


COPY_CHUNK = 16 << 20


def _fixed_mmap_threshold() -> None:
    """Serve allocations of 1 MiB and up with mmap, returned to the OS on free. glibc otherwise raises its
    mmap threshold after the first large free (up to 32 MiB), and per-tensor buffers of a few MiB then
    fragment the heap and keep RSS high. A no-op off glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
