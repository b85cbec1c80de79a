"""A benchmark's work directory: the one given (kept), or a temporary one removed afterwards unless --keep."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def work_directory(given: str | None, keep: bool, prefix: str) -> Iterator[str]:
    path = given or tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        elif given is None:
            shutil.rmtree(path, ignore_errors=True)
