"""A readable binary stream over one remote object (an S3 key, a presigned or server URL), fetched as
ranged GETs prefetched in a thread pool.

The first range comes with the request that opened the blob (so a missing blob fails in ``open``);
the rest are fetched ``window`` ranges ahead of the reader, in order, so memory stays bounded at about
``window * range_size`` bytes whatever the object size. Every range after the first is fetched with
``If-Match: <etag of the first>``, so a blob replaced while it is read is detected instead of mixed.
The bytes are *not* verified here: the caller hashes what it reads (``copy_stream_verified``).
"""

from __future__ import annotations

import io
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class RangeReader(io.RawIOBase):
    def __init__(
        self, first: bytes, size: int, range_size: int, fetch: Callable[[int, int], bytes], workers: int, window: int
    ):
        super().__init__()
        self._size = size
        self._range_size = range_size
        self._fetch = fetch  # (start, end inclusive) -> bytes, already retried and translated
        self._buf = memoryview(first)
        self._pos = 0  # position in _buf
        self._offset = len(first)  # object offset of the next range to schedule
        self._consumed = 0  # object bytes handed to the reader so far
        self._pending: deque[Future] = deque()
        self._pool = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adapterhub-get") if size > len(first) else None
        )
        self._window = max(1, window)
        self._fill()

    # -- prefetch ------------------------------------------------------------------------------
    def _fill(self) -> None:
        while self._pool is not None and self._offset < self._size and len(self._pending) < self._window:
            start = self._offset
            end = min(start + self._range_size, self._size) - 1
            self._pending.append(self._pool.submit(self._fetch, start, end))
            self._offset = end + 1

    def _next_range(self) -> bool:
        if not self._pending:
            return False
        fut = self._pending.popleft()
        data = fut.result()  # raises the fetch's (translated) error
        self._buf, self._pos = memoryview(data), 0
        self._fill()
        return True

    # -- io.RawIOBase --------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        out = memoryview(b).cast("B")
        while self._pos >= len(self._buf):
            if not self._next_range():
                return 0
        n = min(len(out), len(self._buf) - self._pos)
        out[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        self._consumed += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while self._pos >= len(self._buf):
            if not self._next_range():
                return b""
        n = min(size, len(self._buf) - self._pos)
        if self._pos == 0 and n == len(self._buf):
            data = self._buf.obj if isinstance(self._buf.obj, bytes) else self._buf.tobytes()
        else:
            data = self._buf[self._pos : self._pos + n].tobytes()
        self._pos += n
        self._consumed += n
        return data

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(1 << 24):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            for fut in self._pending:
                fut.cancel()
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._buf = memoryview(b"")
        super().close()

    @property
    def size(self) -> int:
        return self._size
