"""Output directories written atomically: refused when they exist and are not empty (unless forced),
written as a temp dir beside them and renamed into place, removed on any error. (No database imports:
merging, exporting and training use these without opening a registry.)

A process killed mid-write (SIGKILL, OOM) cannot remove its temp dir, so temp names carry the host and the
pid (``.OUT.tmp-<host>-<pid>-<random>``): the next write of the same ``OUT`` removes those of dead
processes of this host (:func:`sweep`), and ``gc`` those it was told about (``merged_cache.clean``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import uuid
from typing import Iterator

from ..errors import AdapterhubError


def check_out(out: str, force: bool) -> None:
    """Refuse (before any work) an ``out`` that exists and is not empty, unless ``force``."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise AdapterhubError(f"{out} exists and is not a directory")
        if os.listdir(out) and not force:
            raise AdapterhubError(f"{out} exists and is not empty (use --force to replace it)")
        if holds_registry(out):
            raise AdapterhubError(
                f"{out} holds an adapterhub registry (registry.db / blobs/sha256): replacing it would "
                "delete every version in it, even with --force; choose another output directory"
            )


def holds_registry(path: str) -> bool:
    """A local registry's home: its SQLite database or its blob store."""
    return os.path.isfile(os.path.join(path, "registry.db")) or os.path.isdir(os.path.join(path, "blobs", "sha256"))


def check_out_base(out: str, base: str) -> None:
    """Refuse (even with --force) an ``out`` that is the base directory or contains it: replacing ``out`` would
    delete the base model. Compared by identity (``samestat``), so symlinks and bind mounts count too. An
    ``out`` inside the base is allowed: the base's own files are left alone."""
    try:
        out_st = os.stat(out)
    except OSError:
        return  # out does not exist (yet): it can be neither the base nor an ancestor of it
    here = os.path.realpath(base)
    while True:
        try:
            same = os.path.samestat(os.stat(here), out_st)
        except OSError:
            same = False
        if same:
            where = "is the base directory" if here == os.path.realpath(base) else f"contains the base directory {base}"
            raise AdapterhubError(
                f"--out {out} {where}: writing there would replace the base model, even with "
                "--force; choose another --out"
            )
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent


#: this host, in temp names (a dead pid means nothing on another host sharing the file system)
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TAG = re.compile(r"([0-9a-f]{6})-([0-9]+)-[0-9A-Za-z_]+(\.old)?")


def temp_tag() -> str:
    """``<host>-<pid>-<random>``: what :func:`sweep` recognises."""
    return f"{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # (another user's process, or a pid that cannot be ours: left alone)
    return True


#: the temp-dir prefix of adapters downloaded for a merge or export (``sweep`` finds a killed run's ones)
EXPORT_PREFIX = "adapterhub-export-"


def sweep(parent: str, prefix: str) -> int:
    """Remove the entries of ``parent`` named ``prefix + temp_tag()`` (or ``... .old``) whose process, on
    this host, is gone; returns how many. Entries of live processes and other hosts are left alone."""
    removed = 0
    try:
        names = os.listdir(parent)
    except OSError:
        return 0
    for name in names:
        m = _TAG.fullmatch(name[len(prefix) :]) if name.startswith(prefix) else None
        if m is None or m.group(1) != HOST or alive(int(m.group(2))):
            continue
        path = os.path.join(parent, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed += 1
        except FileNotFoundError:
            continue
        except OSError:
            pass  # best effort: the next run or gc tries again
    return removed


def prepare_out(out: str, force: bool) -> str:
    """Refuse an ``out`` that exists and is not empty (unless ``force``); return a fresh temp dir
    beside it, on the same file system, so the final rename is atomic."""
    check_out(out, force)
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        prefix = f".{os.path.basename(out)}.tmp-"
        sweep(parent, prefix)  # what killed writes of this OUT left behind
        tmp = os.path.join(parent, prefix + temp_tag())
        os.mkdir(tmp)
    except OSError as exc:
        raise AdapterhubError(f"cannot write to {parent}: {exc.strerror}") from None
    return tmp


def finish_out(tmp: str, out: str) -> None:
    """Move the finished temp dir into place (replacing an existing ``out``)."""
    out = os.path.abspath(out)
    old = None
    if os.path.exists(out):
        old = f"{tmp}.old"
        os.rename(out, old)
    os.rename(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_out(out: str, force: bool = False) -> Iterator[str]:
    """A temp dir beside ``out`` that becomes ``out`` when the block succeeds. On any error nothing is left
    behind, and an ``OSError`` (a full disk, a read-only file system) becomes one ``AdapterhubError`` line."""
    tmp = prepare_out(out, force)
    try:
        yield tmp
        finish_out(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AdapterhubError(f"cannot write {os.path.abspath(out)}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
