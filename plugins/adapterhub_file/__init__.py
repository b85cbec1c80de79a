"""Built-in plugin: the local content-addressed blob store (``file://`` URLs, and the default), and the
built-in generation metrics (:mod:`adapterhub_file.metrics`: every installation loads this plugin).

Layout under the root: ``blobs/sha256/ab/cdef...`` (the first two hex digits as a fan-out folder) and
``tmp/`` for writes in flight. A blob is written to ``tmp/``, fsynced, verified and then renamed into
place, so a crash or a full disk never leaves a partial blob under its address.
"""

from __future__ import annotations

import errno
import os
import time
import uuid
from typing import BinaryIO, Iterator
from urllib.parse import unquote, urlparse

import adapterhub
from adapterhub.errors import AdapterhubError, IntegrityError
from adapterhub.infra import check_digest, copy_stream_verified
from adapterhub.interfaces import BlobStore, Progress


class FileStore(BlobStore):
    name = "file"

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root

    @classmethod
    def from_url(cls, url: str) -> "FileStore":
        parsed = urlparse(url)
        return cls(unquote(parsed.path) if parsed.scheme == "file" else url)

    def _path(self, digest: str) -> str:
        check_digest(digest)
        return os.path.join(self.root, "blobs", "sha256", digest[:2], digest[2:])

    def has(self, digest: str) -> bool:
        return os.path.isfile(self._path(digest))

    def put(self, digest: str, path: str, size: int, progress: Progress | None = None) -> bool:
        final = self._path(digest)
        if os.path.isfile(final):
            return False
        tmpdir = os.path.join(self.root, "tmp")
        tmp = os.path.join(tmpdir, f"{digest[:16]}.{uuid.uuid4().hex}.part")
        try:
            os.makedirs(tmpdir, exist_ok=True)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                copy_stream_verified(src, dst, digest, f"source file {path}", size, progress)
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)  # atomic; a concurrent writer of the same digest wrote the same bytes
        except OSError as exc:
            _remove(tmp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise AdapterhubError(
                    f"no space left to store blob sha256:{digest} in {self.root}: {exc.strerror}"
                ) from None
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise AdapterhubError(f"the blob store {self.root} is not writable: {exc.strerror}") from None
            raise
        except BaseException:
            _remove(tmp)
            raise
        return True

    def open(self, digest: str, limit: int | None = None) -> BinaryIO:  # a local file: the reader stops
        try:
            return open(self._path(digest), "rb")
        except FileNotFoundError:
            raise IntegrityError(f"blob sha256:{digest} is missing from {self.url}") from None

    def delete(self, digest: str) -> None:
        _remove(self._path(digest))

    def local_path(self, digest: str) -> str | None:
        path = self._path(digest)
        return path if os.path.isfile(path) else None

    def local_root(self) -> str | None:
        return self.root

    def iter_blobs(self) -> Iterator[tuple[str, float]]:
        base = os.path.join(self.root, "blobs", "sha256")
        if not os.path.isdir(base):
            return
        for fan in sorted(os.listdir(base)):
            folder = os.path.join(base, fan)
            if len(fan) != 2 or not os.path.isdir(folder):
                continue
            for rest in sorted(os.listdir(folder)):
                try:
                    yield fan + rest, os.stat(os.path.join(folder, rest)).st_mtime
                except FileNotFoundError:
                    continue

    def cleanup_temp(self, older_than: float) -> int:
        tmpdir = os.path.join(self.root, "tmp")
        if not os.path.isdir(tmpdir):
            return 0
        removed, now = 0, time.time()
        for entry in os.scandir(tmpdir):
            try:
                if now - entry.stat().st_mtime >= older_than:
                    if entry.is_dir(follow_symlinks=False):
                        import shutil

                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.remove(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _remove(path: str) -> None:
    try:
        os.chmod(path, 0o644)
        os.remove(path)
    except FileNotFoundError:
        pass


@adapterhub.hookimpl
def register_stores(register):
    register(FileStore)


@adapterhub.hookimpl
def register_metrics(register):
    from .metrics import BUILTIN

    for cls in BUILTIN:
        register(cls())
