"""Base-model fingerprints: one digest for a set of weights, independent of how they are stored.

The fingerprint is ``sha256:`` over one line per tensor, sorted by name::

    f"{name}\\t{dtype}\\t{json.dumps(list(shape))}\\t{sha256 of the tensor bytes}\\n"

so the same weights give the same fingerprint whatever the sharding, the file names or the
safetensors ``__metadata__``, and one changed value, dtype, shape or name gives another.

Files are read straight from their safetensors headers (no torch), each tensor's byte range in
chunks of ``CHUNK`` bytes (memory stays at about ``workers * CHUNK``), with one sha256 per tensor
computed in a thread pool (hashlib and file reads release the GIL), largest tensors first. Per-file
results can be cached by (absolute path, size, mtime_ns, inode), so an unchanged base re-fingerprints
in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from ..errors import InvalidInput
from .safetensors_header import read_header

INDEX = "model.safetensors.index.json"
CHUNK = 8 * 1024 * 1024
_CACHE_VERSION = 1
_LINE = re.compile(r"[^\t\n]+\t[A-Z0-9_]+\t\[[0-9, ]*\]\t[0-9a-f]{64}\n")


@dataclass(frozen=True)
class Fingerprint:
    digest: str  # "sha256:<64 hex>"
    tensors: int  # number of tensors
    bytes: int  # total tensor bytes

    def to_dict(self) -> dict:
        return {"fingerprint": self.digest, "tensors": self.tensors, "bytes": self.bytes}


def _load_index(base_dir: str) -> dict[str, str] | None:
    """The index's ``weight_map`` (tensor -> shard file name), or None if there is no index."""
    path = os.path.join(base_dir, INDEX)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            wmap = json.load(f)["weight_map"]
        if not isinstance(wmap, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise InvalidInput(f"{INDEX}: not a valid index (needs a 'weight_map' of tensor -> shard)") from None
    for shard in set(wmap.values()):
        # shards live next to the index: refuse absolute paths and '..' escapes
        if os.path.isabs(shard) or ".." in shard.replace("\\", "/").split("/"):
            raise InvalidInput(f"{INDEX}: shard '{shard}' is outside the model directory")
    return wmap


def find_weight_files(base_dir: str) -> list[str]:
    """The safetensors files holding the weights of the model in ``base_dir`` (absolute, sorted).

    The shards named by ``model.safetensors.index.json`` if there is one, else every top-level
    ``*.safetensors`` file. Raises :class:`InvalidInput` for a missing directory, a missing shard,
    pickle-only weights or no weights at all.
    """
    if not os.path.exists(base_dir):
        raise InvalidInput(f"{base_dir}: no such directory")
    if not os.path.isdir(base_dir):
        raise InvalidInput(f"{base_dir}: not a directory (give the directory holding the weights)")
    base_dir = os.path.abspath(base_dir)
    wmap = _load_index(base_dir)
    if wmap is not None:
        files = sorted({os.path.normpath(os.path.join(base_dir, s)) for s in wmap.values()})
        for f in files:
            if not os.path.isfile(f):
                raise InvalidInput(f"{INDEX} names shard '{os.path.basename(f)}' but it does not exist")
        if not files:
            raise InvalidInput(f"{base_dir}: {INDEX} lists no tensors")
        return files
    names = sorted(os.listdir(base_dir))
    files = [os.path.join(base_dir, n) for n in names if n.endswith(".safetensors")]
    files = [f for f in files if os.path.isfile(f)]
    if files:
        return files
    pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    if pickles:
        raise InvalidInput(
            f"{base_dir}: weights are pickle files ({pickles[0]}), which are not supported; "
            "convert them to safetensors (save_pretrained(..., safe_serialization=True))"
        )
    raise InvalidInput(f"{base_dir}: no weights found (expected *.safetensors files)")


def _stat_key(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidInput(f"{os.path.basename(path)}: cannot read: {exc.strerror}") from None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _cache_path(cache_dir: str, path: str) -> str:
    return os.path.join(cache_dir, hashlib.sha256(path.encode("utf-8")).hexdigest() + ".json")


def _read_cache(cache_dir: str, path: str, key: list[int]) -> tuple[list[str], int] | None:
    """Cached (lines, tensor bytes) for ``path`` if the entry matches ``key``; None if absent/corrupt."""
    try:
        with open(_cache_path(cache_dir, path), encoding="utf-8") as f:
            doc = json.load(f)
        if doc["v"] != _CACHE_VERSION or doc["path"] != path or doc["key"] != key:
            return None
        lines, nbytes = doc["lines"], doc["bytes"]
        if isinstance(nbytes, int) and all(isinstance(s, str) and _LINE.fullmatch(s) for s in lines):
            return lines, nbytes
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_cache(cache_dir: str, path: str, key: list[int], lines: list[str], nbytes: int) -> None:
    """Store one file's result atomically (temp file + os.replace); a failure only costs speed."""
    doc = {"v": _CACHE_VERSION, "path": path, "key": key, "bytes": nbytes, "lines": lines}
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(tmp, _cache_path(cache_dir, path))
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass


def _hash_range(path: str, start: int, end: int, report: Callable[[int], None] | None) -> str:
    """sha256 of bytes [start, end) of ``path``, read in CHUNK-sized pieces into one buffer."""
    h = hashlib.sha256()
    view = memoryview(bytearray(min(CHUNK, end - start)))
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(start)
            left = end - start
            while left:
                n = f.readinto(view[: min(left, len(view))])
                if not n:
                    raise InvalidInput(f"{os.path.basename(path)}: truncated while reading (file changed?)")
                h.update(view[:n])
                left -= n
                if report:
                    report(n)
    except OSError as exc:
        raise InvalidInput(f"{os.path.basename(path)}: cannot read: {exc.strerror}") from None
    return h.hexdigest()


def fingerprint(
    base_dir: str,
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Fingerprint:
    """Fingerprint the weights in ``base_dir`` (see the module docstring for the definition).

    ``cache_dir`` keeps per-file results between calls; ``workers`` threads hash in parallel
    (default: ``os.cpu_count()``); ``progress(nbytes)`` is called as bytes are hashed (and once
    with the size of each file answered from the cache). Raises :class:`InvalidInput` on bad input.
    """
    files = find_weight_files(base_dir)
    base_dir = os.path.abspath(base_dir)
    wmap = _load_index(base_dir)

    # 1. per file: the cached lines, or the header whose tensors still need hashing
    results: dict[str, tuple[list[str], int]] = {}  # path -> (lines, tensor bytes)
    pending = {}  # path -> (stat key, Header)
    names: dict[str, set[str]] = {}
    for path in files:
        key = _stat_key(path)
        hit = _read_cache(cache_dir, path, key) if cache_dir else None
        if hit:
            results[path] = hit
            names[path] = {line.split("\t", 1)[0] for line in hit[0]}
        else:
            header = read_header(path)
            pending[path] = (key, header)
            names[path] = set(header.tensors)

    # 2. check the weights are consistent before spending time hashing
    seen: dict[str, str] = {}
    for path in files:
        for name in names[path]:
            if "\t" in name or "\n" in name or not name:
                raise InvalidInput(f"{os.path.basename(path)}: invalid tensor name {name!r}")
            if name in seen:
                first, second = os.path.basename(seen[name]), os.path.basename(path)
                raise InvalidInput(f"tensor '{name}' is in both {first} and {second}")
            seen[name] = path
    if wmap is not None:
        for name, shard in wmap.items():
            if seen.get(name) != os.path.normpath(os.path.join(base_dir, shard)):
                raise InvalidInput(f"{INDEX} puts tensor '{name}' in {shard}, but it is not there")
        extra = sorted(set(seen) - set(wmap))
        if extra:
            where = os.path.basename(seen[extra[0]])
            raise InvalidInput(f"tensor '{extra[0]}' in {where} is not listed in {INDEX}")

    # 3. hash what the cache did not answer: one job per tensor, largest first
    if progress:
        for _, nbytes in results.values():
            progress(nbytes)
    if pending:
        lock = threading.Lock()

        def report(n: int) -> None:
            with lock:  # progress callbacks (e.g. tqdm.update) need not be thread-safe
                progress(n)

        jobs = [(path, t) for path, (_, h) in pending.items() for t in h.tensors.values()]
        jobs.sort(key=lambda job: job[1].nbytes, reverse=True)
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
        lines_by_file: dict[str, list[str]] = {path: [] for path in pending}
        with ThreadPoolExecutor(n_workers, thread_name_prefix="fingerprint") as pool:
            futures = [
                (path, t, pool.submit(_hash_range, path, t.start, t.end, report if progress else None))
                for path, t in jobs
            ]
            try:
                for path, t, fut in futures:
                    line = f"{t.name}\t{t.dtype}\t{json.dumps(list(t.shape))}\t{fut.result()}\n"
                    lines_by_file[path].append(line)
            except BaseException:
                for _, _, fut in futures:  # fail fast: drop the jobs not started yet
                    fut.cancel()
                raise
        for path, (key, header) in pending.items():
            if _stat_key(path) != key:
                raise InvalidInput(f"{os.path.basename(path)}: changed while being fingerprinted; try again")
            lines = sorted(lines_by_file[path])
            results[path] = (lines, header.file_size - header.data_start)
            if cache_dir:
                _write_cache(cache_dir, path, key, lines, results[path][1])

    # 4. the digest over all lines, sorted by tensor name
    all_lines = [line for lines, _ in results.values() for line in lines]
    all_lines.sort(key=lambda line: line.split("\t", 1)[0])
    h = hashlib.sha256()
    for line in all_lines:
        h.update(line.encode("utf-8"))
    total = sum(nbytes for _, nbytes in results.values())
    return Fingerprint("sha256:" + h.hexdigest(), len(all_lines), total)
