"""The blob-store interface and the helpers every store shares.

A blob is addressed by the lowercase hex sha256 of its bytes. Stores are plugins
(``register_stores``) keyed by URL scheme; the local one is ``adapterhub_file``.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO, Callable, ClassVar, Iterator

from ..errors import IntegrityError, InvalidInput

CHUNK = 1 << 20  # bytes per read: memory stays bounded whatever the blob size
Progress = Callable[[int], None]  # called with the number of bytes just moved


class BlobStore:
    """What a blob store provides. Implementations must make ``put`` atomic (a reader never sees a
    partial blob) and must never overwrite an existing blob with other bytes."""

    #: URL scheme (``file``, ``s3``)
    name: ClassVar[str] = ""
    url: str = ""

    @classmethod
    def from_url(cls, url: str) -> "BlobStore":
        raise NotImplementedError

    def has(self, digest: str) -> bool:
        raise NotImplementedError

    def put(self, digest: str, path: str, size: int, progress: Progress | None = None) -> bool:
        """Store the file at ``path`` under ``digest``; verify while copying that its bytes hash to
        ``digest`` (raise :class:`IntegrityError` otherwise). Returns False if the blob already
        existed and nothing was written."""
        raise NotImplementedError

    def open(self, digest: str, limit: int | None = None) -> BinaryIO:
        """A binary stream of the blob's stored bytes (unverified: use :func:`copy_verified`); with ``limit``,
        the store need not fetch more than that many bytes (a row declaring 10 bytes never pulls a 300 MB
        object over the network). Raise :class:`IntegrityError` if the blob is missing."""
        raise NotImplementedError

    def delete(self, digest: str) -> None:
        raise NotImplementedError

    def iter_blobs(self) -> Iterator[tuple[str, float]]:
        """Every stored blob as ``(digest, mtime as a unix time)``."""
        raise NotImplementedError

    def cleanup_temp(self, older_than: float) -> int:
        """Remove temporary leftovers of interrupted writes older than ``older_than`` seconds;
        return how many were removed."""
        return 0

    def size(self, digest: str) -> int | None:
        """The stored blob's size in bytes (``None``: missing); what ``gc`` reports as freed."""
        path = self.local_path(digest)
        try:
            return os.path.getsize(path) if path else None
        except OSError:
            return None

    def describe(self) -> str:
        return self.url

    def local_path(self, digest: str) -> str | None:
        """The path of the blob on this machine's disk, if the store keeps blobs as files (the registry
        server then streams it with HTTP Range support); ``None`` otherwise."""
        return None

    def presigned_url(self, digest: str, expires: int) -> str | None:
        """A URL that serves the blob's bytes for ``expires`` seconds without other credentials (the
        registry server hands it to clients, so bytes go straight from the store to them); ``None`` if
        the store cannot make one."""
        return None


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


def copy_stream_verified(src: BinaryIO, dst: BinaryIO, digest: str, what: str,
                         size: int | None = None, progress: Progress | None = None) -> int:
    """Copy ``src`` to ``dst`` hashing as it goes; raise :class:`IntegrityError` naming ``what`` if the
    bytes do not hash to ``digest`` or the size differs. Returns the number of bytes copied."""
    h = hashlib.sha256()
    total = 0
    # with a declared size, read at most one byte more: a longer stream is refused there, not at its end
    while chunk := src.read(CHUNK if size is None else min(CHUNK, size + 1 - total)):
        total += len(chunk)
        if size is not None and total > size:
            raise IntegrityError(f"{what} is corrupt: it is longer than its declared {size} bytes "
                                 f"(stopped after {total})")
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


def copy_verified(store: BlobStore, digest: str, dest: str, size: int | None = None,
                  progress: Progress | None = None, what: str | None = None) -> None:
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
