"""The helpers every blob store shares (the interface itself, :class:`~adapterhub.interfaces.BlobStore`, is
declared with the other plugin contracts).

A blob is addressed by the lowercase hex sha256 of its bytes. Stores are plugins
(``register_stores``) keyed by URL scheme; the local one is ``adapterhub_file``.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from ..errors import IntegrityError, InvalidInput
from ..interfaces import BlobStore, Progress  # noqa: F401  (declared there; the registry imports them from here)

CHUNK = 1 << 20  # bytes per read: memory stays bounded whatever the blob size


def check_digest(digest: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidInput(f"invalid blob digest '{digest}'")
    return digest


def hash_file(path: str, progress: Progress | None = None) -> tuple[str, int]:
    """``(sha256 hex, size)`` of a file, streamed in bounded memory."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
            if progress:
                progress(n)
    return h.hexdigest(), size


def copy_stream_verified(
    src: BinaryIO, dst: BinaryIO, digest: str, what: str, size: int | None = None, progress: Progress | None = None
) -> int:
    """Copy ``src`` to ``dst`` hashing as it goes; raise :class:`IntegrityError` naming ``what`` if the
    bytes do not hash to ``digest`` or the size differs. Returns the number of bytes copied."""
    h = hashlib.sha256()
    total = 0
    # with a declared size, read at most one byte more: a longer stream is refused there, not at its end
    while chunk := src.read(CHUNK if size is None else min(CHUNK, size + 1 - total)):
        total += len(chunk)
        if size is not None and total > size:
            raise IntegrityError(
                f"{what} is corrupt: it is longer than its declared {size} bytes (stopped after {total})"
            )
        h.update(chunk)
        dst.write(chunk)
        if progress:
            progress(len(chunk))
    if h.hexdigest() != digest or (size is not None and total != size):
        raise IntegrityError(
            f"{what} is corrupt: expected sha256:{digest} ({size if size is not None else '?'} bytes), "
            f"got sha256:{h.hexdigest()} ({total} bytes)"
        )
    return total


def copy_verified(
    store: BlobStore,
    digest: str,
    dest: str,
    size: int | None = None,
    progress: Progress | None = None,
    what: str | None = None,
) -> None:
    """Write blob ``digest`` to the path ``dest``, verified by sha256 while it is read."""
    with store.open(digest, None if size is None else size + 1) as src, open(dest, "wb") as dst:
        copy_stream_verified(src, dst, digest, what or f"blob sha256:{digest}", size, progress)
        dst.flush()
        os.fsync(dst.fileno())


def verify_blob(store: BlobStore, digest: str) -> str | None:
    """Re-hash one stored blob: ``None`` if intact, else a reason (``missing`` / ``corrupt ...``)."""
    if not store.has(digest):
        return "missing"
    try:
        with store.open(digest) as src:
            h = hashlib.sha256()
            while chunk := src.read(CHUNK):
                h.update(chunk)
    except IntegrityError:
        return "missing"
    got = h.hexdigest()
    return None if got == digest else f"corrupt (content hashes to sha256:{got})"
