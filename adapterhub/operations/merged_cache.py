"""The merged-model cache: a merge done before is served by hard links, for the cost of a few ``stat`` calls.

Each entry is ``HOME/cache/merged/<entry>/``: ``files/`` holds the merged directory's files as read-only
(0444) hard links of the ``--out`` files that merge wrote, and ``entry.json`` records, for each file, its
path, size, mtime and inode. ``<entry>`` is the sha256 of the key (adapter digest, base fingerprint, dtype,
shard size, variant), and ``entry.json`` is sealed with an HMAC whose key (``HOME/cache/merged.key``, 0600)
never leaves this machine: an entry answers only for the merge it was written for, and a forged or edited
one (another user, a database row, a renamed folder) is never served.

Why links: a copy of a 2.2 GB model costs about as much as merging it again (bench/merge.py), and hashing
every written byte costs about 0.4x of a merge on 2 cores; a link costs neither. So a file is checked before
it is served by what any write through any link changes: it must be a regular file with the recorded size,
mtime and inode and no write permission. Otherwise the merge is recomputed and the entry rewritten (a read
never deletes anything). Not detected: a byte flipped on disk with its mtime restored.

``ADAPTERHUB_MERGE_CACHE``: ``auto`` (default) links when ``--out`` is on the cache's file system and the
process is not root (root writes through 0444, so ``--out`` would share writable inodes with the cache); else
no cache (a copy would not pay). ``pull --merged`` from a remote (a deployment) adds no entry under ``auto``:
it would keep the model on disk after the next deployment replaced its ``--out``. ``link`` links even as root; ``off`` never caches. Writing the cache is best
effort: a failure is a warning and the merge still succeeds.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import shutil
import stat
import time
from typing import Any

from ..config import cache_dir
from ..errors import AdapterhubError, InvalidInput

MODES = ("auto", "link", "off")
TMP_PREFIX = ".tmp-"
JOURNAL = ".outputs"
FORMAT = 1
KEY_FILE = "merged.key"


def mode(home: str, out: str, auto: str = "link") -> str:
    """``link`` or ``off`` for a merge into ``out`` (see the module docstring); ``auto``: what ``auto`` means
    where linking is possible (``pull --merged`` from a remote says ``off``: a deployment keeps no cache)."""
    want = os.environ.get("ADAPTERHUB_MERGE_CACHE", "auto").strip().lower() or "auto"
    if want not in MODES:
        raise InvalidInput(f"ADAPTERHUB_MERGE_CACHE={want!r}: expected one of {', '.join(MODES)}")
    if want == "off" or (want == "auto" and (auto == "off" or os.geteuid() == 0)):
        return "off"
    return "link" if _device(cache_dir(home, "merged")) == _device(os.path.dirname(os.path.abspath(out))) else "off"


def _device(path: str) -> int | None:
    """The file system of ``path`` or of its nearest existing ancestor."""
    here = os.path.abspath(path)
    while True:
        try:
            return os.stat(here).st_dev
        except OSError:
            parent = os.path.dirname(here)
            if parent == here:
                return None
            here = parent


def entry_id(key: tuple) -> str:
    """The sha256 naming the entry of ``key`` = (adapter digest, base fingerprint, dtype, shard size)."""
    return hashlib.sha256(_canonical({"format": FORMAT, "key": list(key)})).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _key(home: str, create: bool) -> bytes | None:
    """This machine's HMAC key (32 random bytes), made on first use by a cache write."""
    path = os.path.join(cache_dir(home, "merged"), "..", KEY_FILE)
    path = os.path.normpath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data if len(data) == 32 else None
    except FileNotFoundError:
        if not create:
            return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, os.urandom(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic, and never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        os.remove(tmp)
    return _key(home, create=False)


def _seal(key: bytes, body: dict) -> str:
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def restore(home: str, key: tuple, out: str, force: bool) -> tuple[dict | None, str | None]:
    """Materialize the cached merge of ``key`` into ``out`` by hard links; ``(summary, None)`` on a hit,
    ``(None, None)`` when there is no entry, ``(None, problem)`` when the entry cannot be trusted (the caller
    merges afresh and :func:`store` rewrites it). Reads only: never deletes or changes the cache."""
    from ..files.output_dir import atomic_out
    from ..merge.plan import base_config
    from ..registry.records import check_relpath

    folder = os.path.join(cache_dir(home, "merged"), entry_id(key))
    try:
        with open(os.path.join(folder, "entry.json"), "rb") as f:
            body = json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"the cached merge's entry.json is unreadable ({exc}); recomputed"
    try:
        secret = _key(home, create=False)
    except OSError as exc:
        return None, f"the cache key is unreadable ({exc.strerror}); recomputed"
    seal = body.pop("seal", None) if isinstance(body, dict) else None
    if secret is None or not isinstance(seal, str) or not hmac.compare_digest(seal, _seal(secret, body)):
        return None, "the cached merge's entry.json is not sealed by this machine's key; recomputed"
    if body.get("key") != list(key) or body.get("format") != FORMAT:
        return None, "the cached merge was written for another merge; recomputed"
    start = time.monotonic()
    files, summary = body.get("files"), body.get("summary") or {}
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files) or not isinstance(summary, dict):
        return None, "cached merge not used: its entry.json is malformed; recomputed"
    try:
        with atomic_out(out, force) as tmp:
            for f in files:
                rel = check_relpath(f["path"])
                src = os.path.join(folder, "files", *rel.split("/"))
                try:
                    st = os.lstat(src)
                except OSError as exc:
                    raise _Changed(f"{rel}: {exc.strerror}") from None
                if (
                    not stat.S_ISREG(st.st_mode)
                    or st.st_mode & 0o222
                    or st.st_size != f["size"]
                    or st.st_mtime_ns != f["mtime_ns"]
                    or st.st_ino != f["ino"]
                ):
                    raise _Changed(f"{rel} changed since it was cached (size, mtime, inode or mode)")
                dest = os.path.join(tmp, *rel.split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.link(src, dest)
            try:  # never serve a merge that would not load
                base_config(tmp)
            except InvalidInput:
                raise _Changed("the cached merge has no usable config.json") from None
    except (_Changed, InvalidInput) as exc:
        return None, f"cached merge not used: {exc}; recomputed"
    except (KeyError, TypeError, AttributeError, ValueError):
        return None, "cached merge not used: its entry.json is malformed; recomputed"
    except AdapterhubError as exc:  # atomic_out's one line for an OSError (a cached file gone, EXDEV ...)
        return None, f"cached merge not used: {exc}; recomputed"
    summary = dict(summary)
    summary.update(
        {
            "out": os.path.abspath(out),
            "bytes": sum(f["size"] for f in files),
            "cached": True,
            "files": [{k: f.get(k) for k in ("path", "sha256", "size")} for f in files],
            "seconds": round(time.monotonic() - start, 3),
        }
    )
    return summary, None


class _Changed(Exception):
    """A cached file that is not what was cached (or a cached merge that would not load)."""


SUMMARY = (
    "dtype",
    "shard_size",
    "architectures",
    "tensors_merged",
    "tensors_untouched",
    "tensors_added",
    "untied",
    "notes",
)


def store(home: str, key: tuple, result: dict[str, Any]) -> str | None:
    """Make ``result`` (a merge written to ``result["out"]``) the cache entry of ``key``: its files become
    read-only and are hard-linked into the entry. Best effort: returns a one-line reason when it could not."""
    from ..files.output_dir import temp_tag

    root = cache_dir(home, "merged")
    tmp = os.path.join(root, TMP_PREFIX + temp_tag())
    try:
        secret = _key(home, create=True)
        if secret is None:
            return f"the cache key {os.path.join(os.path.dirname(root), KEY_FILE)} is unreadable"
        files = []
        for f in result["files"]:
            src = os.path.join(result["out"], *f["path"].split("/"))
            os.chmod(src, 0o444)
            dest = os.path.join(tmp, "files", *f["path"].split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.link(src, dest)
            st = os.lstat(dest)
            files.append(
                {
                    "path": f["path"],
                    "sha256": f.get("sha256"),
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "ino": st.st_ino,
                }
            )
        body = {
            "format": FORMAT,
            "key": list(key),
            "files": files,
            "summary": {k: result.get(k) for k in SUMMARY if k in result},
        }
        body["seal"] = _seal(secret, body)
        with open(os.path.join(tmp, "entry.json"), "w") as fh:
            fh.write(json.dumps(body))
        final = os.path.join(root, entry_id(key))
        old = None
        if os.path.exists(final):  # an entry that could not be used: replaced
            old = f"{tmp}.old"
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another merge of the same key stored it meanwhile
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return None
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}"


# -- leftovers of killed runs ---------------------------------------------------------------------------------
class Journal:
    """Names the temp dirs a merge writes beside ``out`` in ``HOME/cache/merged/.outputs/<tag>`` while it
    runs, so that ``gc`` (:func:`clean`) finds them if the process is killed. Best effort."""

    def __init__(self, home: str, out: str):
        from ..files.output_dir import temp_tag

        out = os.path.abspath(out)
        self.path = os.path.join(cache_dir(home, "merged"), JOURNAL, temp_tag())
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "w") as f:
                json.dump({"parent": os.path.dirname(out), "prefix": f".{os.path.basename(out)}.tmp-"}, f)
        except OSError:
            self.path = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.path:
            try:
                os.remove(self.path)
            except OSError:
                pass


def clean(home: str) -> int:
    """Remove what killed runs left: temp dirs beside the ``--out`` of merges named in the journal, cache
    entries being written, and adapter downloads in the temp dir (``adapterhub-export-*``), each only when
    its process (on this host) is gone. Returns how many were removed."""
    import tempfile

    from ..files.output_dir import EXPORT_PREFIX, sweep

    root = cache_dir(home, "merged")
    removed = sweep(root, TMP_PREFIX) + sweep(tempfile.gettempdir(), EXPORT_PREFIX)
    journal = os.path.join(root, JOURNAL)
    try:
        names = os.listdir(journal)
    except OSError:
        return removed
    for name in names:
        try:
            with open(os.path.join(journal, name)) as f:
                entry = json.load(f)
            removed += sweep(str(entry["parent"]), str(entry["prefix"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return removed + sweep(journal, "")  # the journal files of the dead processes
