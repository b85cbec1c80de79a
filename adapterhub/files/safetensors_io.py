"""Streaming safetensors I/O for tensor-by-tensor rewrites (the merge): positioned reads of one tensor at a
time into a reused buffer (read pages never count towards RSS the way mmapped ones do), positioned writes so
that several threads fill one preallocated file in any order, in-kernel copies of unchanged tensors, and a
hasher that follows each file's written prefix."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from ..errors import InvalidInput
from .safetensors_header import DTYPE_SIZES, TensorInfo

_TORCH_NAMES = {
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


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
    """Reads one base tensor at a time with positioned reads (files opened once; safe to share between
    threads: positioned reads have no file offset to race on)."""

    def __init__(self):
        import threading

        self.files: dict[str, Any] = {}
        self._lock = threading.Lock()

    def fd(self, path: str) -> int:
        f = self.files.get(path)
        if f is None:
            with self._lock:
                f = self.files.get(path)
                if f is None:
                    f = self.files[path] = open(path, "rb", buffering=0)
        return f.fileno()

    def read(self, path: str, info: Any, buf: Any = None):
        """The tensor ``info`` of the file ``path``, read into ``buf`` (a uint8 torch tensor of at least
        ``info.nbytes`` bytes, reused by the caller) or into a new buffer."""
        import torch

        if buf is None:
            buf = torch.empty(info.nbytes, dtype=torch.uint8)
        buf = buf[: info.nbytes]
        self.read_into(path, memoryview(buf.numpy()), info.start, info.name)
        return buf.view(torch_dtype(info.dtype)).reshape(info.shape)

    def read_into(self, path: str, view: memoryview, offset: int, name: str) -> None:
        """Fill ``view`` with the bytes of ``path`` from ``offset`` (part of the tensor ``name``)."""
        fd, done, n = self.fd(path), 0, len(view)
        while done < n:
            got = os.preadv(fd, [view[done:]], offset + done)
            if not got:
                raise InvalidInput(f"{os.path.basename(path)}: truncated while reading '{name}'")
            done += got

    def copy_span(self, path: str, start: int, end: int, dst_fd: int, dst_offset: int) -> None:
        """Copy bytes ``start:end`` of ``path`` unchanged to ``dst_fd`` at ``dst_offset``, inside the kernel
        where it can (``copy_file_range``: no user-space buffer, no torch); else through one buffer."""
        copy_range(self.fd(path), start, dst_fd, dst_offset, end - start, f"{os.path.basename(path)}: truncated")

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


COPY_CHUNK = 16 << 20
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF}


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """Write all of ``data`` (a bytes-like object) at ``offset``."""
    view, done = memoryview(data).cast("B"), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, n: int, truncated: str) -> None:
    """Copy ``n`` bytes between two files at the given offsets: ``os.copy_file_range`` (in the kernel, the
    GIL released), falling back to reads and writes through one buffer where the kernel or the filesystem
    cannot (other platforms, some filesystem pairs). ``truncated``: the error when the source ends early."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < n:
                got = os.copy_file_range(src_fd, dst_fd, min(n - done, 1 << 30), src_offset + done, dst_offset + done)
                if not got:
                    raise InvalidInput(truncated)
                done += got
            return
        except OSError as exc:
            if exc.errno not in _NO_COPY_FILE_RANGE:
                raise
    buf = bytearray(min(COPY_CHUNK, max(1, n - done)))
    view = memoryview(buf)
    while done < n:
        got = os.preadv(src_fd, [view[: min(len(buf), n - done)]], src_offset + done)
        if not got:
            raise InvalidInput(truncated)
        pwrite_all(dst_fd, view[:got], dst_offset + done)
        done += got


def preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes for the file (a full disk fails here, before any work), or at least set its
    size where the filesystem cannot reserve space."""
    try:
        os.posix_fallocate(fd, 0, size)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise
        os.ftruncate(fd, size)


class RegionHasher:
    """sha256 of files written out of order (regions at known offsets, by several threads): a thread
    follows each file's contiguous written prefix, reading it back (from the page cache) as it grows, so
    hashing overlaps the writing. ``done(fd, start, end)`` marks a region written; :meth:`result` waits."""

    def __init__(self, files: list[tuple[int, int]]):
        import threading

        self.files = files  # (fd, size) in hashing order
        self.regions: dict[int, dict[int, int]] = {fd: {} for fd, _ in files}
        self.cond = threading.Condition()
        self.failed = False
        self.digests: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="merge-hasher", daemon=True)
        self.thread.start()

    def done(self, fd: int, start: int, end: int) -> None:
        with self.cond:
            self.regions[fd][start] = end
            self.cond.notify_all()

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()

    def _run(self) -> None:
        import hashlib

        buf = bytearray(32 << 20)  # large reads: fewer trips for the GIL
        view = memoryview(buf)
        try:
            for fd, size in self.files:
                h, pos = hashlib.sha256(), 0
                while pos < size:
                    with self.cond:
                        while pos not in self.regions[fd] and not self.failed:
                            self.cond.wait()
                        if self.failed:
                            return
                        end = self.regions[fd].pop(pos)
                    while pos < end:
                        got = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
                        if not got:
                            raise OSError(errno.EIO, "short read while hashing the merged output")
                        h.update(view[:got])
                        pos += got
                self.digests.append(h.hexdigest())
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self) -> list[str]:
        """The files' hex digests, in order (after every region was marked done)."""
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.digests


def _fixed_mmap_threshold() -> None:
    """Serve allocations of 4 MiB and up with mmap, returned to the OS on free. glibc otherwise raises its
    mmap threshold after the first large free (up to 32 MiB), and per-tensor buffers of a few MiB then
    fragment the heap and keep RSS high. Below it, the per-tensor work buffers of row-block merges (about
    1 MiB) are reused from the heap instead of being mapped and page-faulted afresh each time.

    And keep up to 16 MiB free at the top of each heap (M_TRIM_THRESHOLD; glibc's default is 128 KiB once
    the mmap threshold is fixed): MKL allocates and frees its ~1 MiB GEMM packing buffers on every call, and
    each free gave the pages back (``madvise``) to fault them in again on the next block: 1.5 GB of page
    faults, ~0.5 CPU-s, in a 1B merge. A no-op off glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 16 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass
