"""Writing a merge plan: every tensor of every shard, by several threads, in any order.

Each tensor's place in its shard is known from the plan (the header is written first), so tensors go to
their offsets with positioned writes and the work splits over threads with no ordering between them:

* a **stager** thread starts at once, before torch is imported (which takes a second or more): it copies
  the untouched tensors inside the kernel (``copy_file_range``: no user-space buffer, GIL released) and
  then, ahead of the merging threads, the base bytes of the tensors that will be merged. Their page-cache
  pages then already exist when the merged values are written over them, which costs a fraction of
  filling fresh pages from user space (on the 2-core reference VM, a third);
* **merging** threads (one per core plus one, this one included once torch is imported) take the other
  tensors in file order: a method with :meth:`Method.row_merger` (LoRA) gets each weight in row blocks that
  stay in cache from read to write; otherwise the tensor is read into a per-thread scratch buffer (reused,
  so no page faults after the first), merged in place where the method allows it
  (``merge_tensor(inplace=True)``) and written at its offset.
  torch runs with one intra-op thread per merging thread: with as many torch threads as cores, every op
  stalls at its parallel region's barrier whenever another thread holds a core;
* a **hasher** thread (when file digests are wanted) follows each file's contiguous written prefix.

The first error stops every thread and is raised; the caller removes the partial directory.
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import AdapterhubError
from ..files.checkpoint import write_json
from ..files.fingerprint import INDEX
from ..files.peft_keys import PEFT_PREFIX
from ..files.safetensors_header import DTYPE_SIZES
from ..files.safetensors_io import (
    RegionHasher,
    _BaseReader,
    _fixed_mmap_threshold,
    _header,
    preallocate,
    pwrite_all,
    torch_dtype,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..files.checkpoint import LoadedAdapter
    from .plan import Entry, Plan

#: the merging threads' scratch buffers (one largest tensor each) stay within this many bytes
SCRATCH_BUDGET = 1 << 30

#: the stager copies at most this much in one call (a merging thread that reaches a tensor being staged waits)
RUN_BYTES = 256 << 20

PENDING, STAGING, READY = 0, 1, 2

#: elements per row block of a streamed merge: 512K (2 MiB of fp32, 1 MiB of bf16 rows, in cache from read to
#: write); of 64K..1M, the fastest 1B merge on the reference VM (smaller: more Python per element; 64K took
#: 1.6x as long; larger: the blocks leave the cache)
ROW_BLOCK = 1 << 19


#: fewest rows in a block (unless the tensor has fewer): MKL computes GEMMs of up to 3 rows another way,
#: whose sums differ in the last bit from the same rows of a taller GEMM (as PEFT computes the whole delta)
MIN_BLOCK_ROWS = 16


def row_blocks(rows: int, cols: int, elements: int | None = None) -> list[tuple[int, int]]:
    """``[(i, j), ...]`` row ranges of about ``elements`` each covering ``rows``; each has at least
    :data:`MIN_BLOCK_ROWS` rows (a shorter remainder joins the block before) unless the tensor is shorter,
    so that a GEMM over a block takes the same path as over the whole tensor. A method checks that it does
    for the block sizes given (see ``adapterhub_lora.layer.blocks_exact``)."""
    elements = ROW_BLOCK if elements is None else elements
    step = min(rows, max(MIN_BLOCK_ROWS, elements // max(1, cols)))
    bounds, i = [], 0
    while i < rows:
        j = min(rows, i + step)
        j = rows if rows - j < MIN_BLOCK_ROWS else j
        bounds.append((i, j))
        i = j
    return bounds


@dataclass
class _Job:
    entry: Any  # merge.Entry
    fd: int
    offset: int
    copy: bool = False  # untouched, same dtype: copied by the stager only (set by _Run)
    stage: bool = False  # merged, same size as the base bytes: the stager may copy those ahead (set by _Run)
    state: int = PENDING


def shard(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
    """Greedy in order: a new shard when the next tensor would overflow (a huge tensor gets its own)."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def merging_threads(largest: int, base_transform: Any = None) -> int:
    """One per core plus one, with every thread's scratch buffer (``largest`` bytes) within :data:`SCRATCH_BUDGET`,
    at least one (``ADAPTERHUB_MERGE_THREADS`` overrides); a quantizer's base transform runs in one thread."""
    if base_transform is not None:
        return 1
    if os.environ.get("ADAPTERHUB_MERGE_THREADS", "").isdigit():
        return max(1, int(os.environ["ADAPTERHUB_MERGE_THREADS"]))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    # one more than the cores: while a thread waits for the GIL or in a read or write, another computes
    # (1.1B merge on 2 cores: 2.3-2.4 s with 3 threads, 2.6-2.8 s with 2, 2.4-2.7 s with 4)
    return max(1, min(cpus + 1, 8, SCRATCH_BUDGET // max(1, largest)))


class _Reads(Mapping):
    """The adapter's tensors, remembering which ones were read: one the merge never read was not merged."""

    def __init__(self, tensors: Mapping[str, Any]):
        self.tensors, self.read = tensors, set()
        self.header = getattr(tensors, "header", None)  # a lazily read file's header: shapes without reading

    def __getitem__(self, key: str) -> Any:
        value = self.tensors[key]
        self.read.add(key)  # (atomic under the GIL: the merging threads share this set)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


class _Run:
    """The shared state of one ``write_model`` call."""

    def __init__(
        self,
        jobs: list[_Job],
        method: Any,
        adapter: LoadedAdapter,
        modules: set[str],
        base_transform: Any,
        hasher: RegionHasher | None,
        progress: Callable[[int], None] | None,
    ):
        self.jobs = jobs
        self.method, self.config, self.tensors = method, adapter.config, _Reads(adapter.tensors)
        self.modules, self.base_transform, self.hasher, self.progress = modules, base_transform, hasher, progress
        for job in jobs:
            e = job.entry
            from_base = e.base_path is not None and not e.adapter_key and e.dtype == e.base_info.dtype
            job.copy = from_base and not self.touched(e)
            job.stage = from_base and not job.copy and not self.transforms(e)
        self.merges = [j for j in jobs if not j.copy]
        self.reader = _BaseReader()
        self.cond = threading.Condition()
        self.torch_lock = threading.Lock()
        self.next_merge = 0
        self.error: BaseException | None = None
        self.torch: Any = None
        self.torch_threads = 0
        self.counts = {"merged": 0, "untouched": 0, "added": 0, "transformed": 0}

    # -- bookkeeping --------------------------------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.cond.notify_all()

    def finished(self, job: _Job, kind: str, transformed: bool = False) -> None:
        if self.hasher is not None:
            self.hasher.done(job.fd, job.offset, job.offset + job.entry.nbytes)
        with self.cond:
            self.counts[kind] += 1
            self.counts["transformed"] += transformed
        if self.progress:
            self.progress(1)

    def torch_ready(self) -> Any:
        """torch, imported by the first thread that needs it (the others wait here; not on ``cond``, which
        the stager needs meanwhile)."""
        with self.torch_lock:
            if self.torch is None:
                import torch  # (with the collector off: see write_model)

                self.torch_threads = torch.get_num_threads()
                torch.set_num_threads(1)
                self.torch = torch
            return self.torch

    # -- the threads ----------------------------------------------------------------------------------------
    def runs(self) -> list[list[_Job]]:
        """The jobs the stager copies, grouped into runs that are contiguous in both the base file and the
        output (one ``copy_file_range`` each, up to :data:`RUN_BYTES`): a thread that needs the GIL back
        after every tensor waits up to the switch interval (5 ms) for it while torch is being imported."""
        runs: list[list[_Job]] = []
        for job in self.jobs:
            if not (job.copy or job.stage):
                continue
            last = runs[-1][-1] if runs else None
            if (
                last is not None
                and last.fd == job.fd
                and last.offset + last.entry.nbytes == job.offset
                and last.entry.base_path == job.entry.base_path
                and last.entry.base_info.end == job.entry.base_info.start
                and sum(j.entry.nbytes for j in runs[-1]) + job.entry.nbytes <= RUN_BYTES
            ):
                runs[-1].append(job)
            else:
                runs.append([job])
        return runs

    def stage(self) -> None:
        """Copy the untouched tensors and, ahead of the merging threads, the base bytes of merged ones."""
        try:
            for run in self.runs():
                while run:
                    with self.cond:
                        if self.error is not None:
                            return
                        # the longest prefix still free: a merging thread may have taken a tensor to merge
                        # (never an untouched one); that one is skipped, the rest copied after it
                        n = next((i for i, job in enumerate(run) if job.stage and job.state != PENDING), len(run))
                        if n == 0:
                            run = run[1:]
                            continue
                        span, run = run[:n], run[n:]
                        for job in span:
                            job.state = STAGING
                    first, last = span[0], span[-1]
                    try:
                        self.reader.copy_span(
                            first.entry.base_path,
                            first.entry.base_info.start,
                            last.entry.base_info.end,
                            first.fd,
                            first.offset,
                        )
                    finally:
                        with self.cond:
                            for job in span:
                                job.state = READY
                            self.cond.notify_all()
                    for job in span:
                        if job.copy:
                            self.finished(job, "untouched")
        except BaseException as exc:
            self.fail(exc)

    def merge(self) -> None:
        scratch: list[Any] = [None]  # this thread's read buffer, reused from tensor to tensor
        try:
            while True:
                with self.cond:
                    if self.error is not None or self.next_merge >= len(self.merges):
                        return
                    job = self.merges[self.next_merge]
                    self.next_merge += 1
                    if job.state == PENDING:
                        job.state = READY  # not staged: written from scratch, no harm
                    while job.state == STAGING and self.error is None:  # the merged values must land last
                        self.cond.wait()
                self.finished(job, *self.merge_one(job, scratch))
        except BaseException as exc:
            self.fail(exc)

    def merge_one(self, job: _Job, scratch: list[Any]) -> tuple[str, bool]:
        """Write ``job``'s tensor; returns (merged | untouched | added, transformed)."""
        torch = self.torch_ready()
        e, tensors, method, config = job.entry, self.tensors, self.method, self.config
        want = torch_dtype(e.dtype)
        transformed = False
        if e.base_path is None or e.adapter_key:  # provided by the adapter (head, resized vocab)
            t = tensors[e.adapter_key]
            result = method.merge_tensor(e.name, torch.empty(t.shape, dtype=want), tensors, config)
            result = t.to(want) if result is None else result
            kind = "added" if e.base_path is None else "merged"
        elif not self.touched(e):  # untouched but cast to another dtype: piece by piece
            offset = job.offset
            for data in self.reader.chunks(e.base_path, e.base_info, want):
                pwrite_all(job.fd, data, offset)
                offset += len(data)
            return "untouched", False
        elif self.by_rows(job, want, scratch):
            return "merged", False
        else:
            base = self.reader.read(e.base_path, e.base_info, self.scratch(scratch, e.base_info.nbytes))
            transformed = self.transforms(e)
            if transformed:
                base = self.base_transform(e.name, base)
            if base.dtype != want:
                base = base.to(want)
            # ``base`` is this thread's scratch buffer (or a new tensor made from it): the method may merge
            # into it
            result = method.merge_tensor(e.name, base, tensors, config, inplace=True)
            kind = "merged" if result is not None else "untouched"
            result = base if result is None else result
            del base
        if tuple(result.shape) != e.shape or result.dtype != want:
            raise AdapterhubError(
                f"merging '{e.name}' gave {result.dtype} {tuple(result.shape)}, expected {want} {e.shape}"
            )
        pwrite_all(job.fd, result.detach().contiguous().reshape(-1).view(torch.uint8).numpy(), job.offset)
        return kind, transformed

    def by_rows(self, job: _Job, want: Any, scratch: list[Any]) -> bool:
        """Merge ``job``'s tensor in row blocks that stay in cache from read to write, when the method offers
        it (:meth:`Method.row_merger`); False to merge the whole tensor instead."""
        e = job.entry
        if len(e.shape) != 2 or self.transforms(e) or e.shape[0] < 2:
            return False
        torch = self.torch
        rows, cols = e.shape
        blocks = row_blocks(rows, cols)
        max_rows = max(j - i for i, j in blocks)
        merge = self.method.row_merger(e.name, e.shape, want, self.tensors, self.config, blocks)
        if merge is None:
            return False
        src = torch_dtype(e.base_info.dtype)
        in_row, out_row = cols * DTYPE_SIZES[e.base_info.dtype], cols * DTYPE_SIZES[e.dtype]
        buf = self.scratch(scratch, max_rows * max(in_row, out_row))
        raw = memoryview(buf.numpy())  # read into; written from unless cast
        base_rows = buf[: max_rows * in_row].view(src).view(max_rows, cols)
        out = base_rows if src == want else torch.empty((max_rows, cols), dtype=want)  # merged in, written
        out_raw = raw if src == want else memoryview(out.view(torch.uint8).numpy()).cast("B")
        for i, j in blocks:
            self.reader.read_into(e.base_path, raw[: (j - i) * in_row], e.base_info.start + i * in_row, e.name)
            block = out[: j - i]
            if src != want:
                block.copy_(base_rows[: j - i])
            merge(block, i, j)
            pwrite_all(job.fd, out_raw[: (j - i) * out_row], job.offset + i * out_row)
        return True

    def scratch(self, scratch: list[Any], nbytes: int) -> Any:
        """This thread's read buffer (``scratch[0]``), grown to at least ``nbytes`` (the old one freed first)."""
        if scratch[0] is None or scratch[0].numel() < nbytes:
            scratch[0] = None
            scratch[0] = self.torch.empty(nbytes, dtype=self.torch.uint8)
        return scratch[0]

    # -- which tensors ------------------------------------------------------------------------------------
    def transforms(self, e: Entry) -> bool:
        t = self.base_transform
        return t is not None and e.base_path is not None and not e.adapter_key and t.applies(e.name)

    def touched(self, e: Entry) -> bool:
        return e.name.rsplit(".", 1)[0] in self.modules or PEFT_PREFIX + e.name in self.tensors or self.transforms(e)


def write_model(
    plan: Plan,
    adapter: LoadedAdapter,
    out_dir: str,
    shard_bytes: int,
    progress: Callable[[int], None] | None = None,
    hash_files: bool = True,
    base_transform: Any = None,
) -> dict[str, Any]:
    """Write the shards (and index) of ``plan`` into ``out_dir``; returns files (with sha256 when
    ``hash_files``), tensor counts and ``unread``: the adapter tensors the merge never read (so never merged:
    the caller refuses the result). ``base_transform`` (see :func:`merge.base_transform_for`) rewrites
    the base tensors it ``applies`` to before they are merged (or written untouched)."""
    from ..files.peft_keys import module_prefixes

    _fixed_mmap_threshold()
    groups = shard(plan.entries, shard_bytes)
    n = len(groups)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    tensors = adapter.tensors
    owners = {k[len(PEFT_PREFIX) :].rsplit(".", 1)[0] for k in tensors if k.startswith(PEFT_PREFIX)}
    modules = owners | module_prefixes(owners)  # every module the adapter holds tensors of, and their parents
    files: list[dict[str, Any]] = []
    hasher: RegionHasher | None = None
    run: _Run | None = None
    ok = False
    collecting = gc.isenabled()
    gc.disable()  # every torch op makes tensor objects: the collector's passes over torch's ~10^5 module
    # objects cost ~10% of a merge; the writer makes no cycles worth collecting
    try:
        jobs: list[_Job] = []
        for fname, group in zip(names, groups):
            fd = os.open(os.path.join(out_dir, fname), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            head = _header(group)
            size = len(head) + sum(e.nbytes for e in group)
            files.append({"path": fname, "sha256": None, "size": size, "fd": fd, "head": len(head)})
            preallocate(fd, size)  # a full disk fails here, before any work
            pwrite_all(fd, head, 0)
            pos = len(head)
            for e in group:
                jobs.append(_Job(e, fd, pos))
                pos += e.nbytes
        if hash_files:
            hasher = RegionHasher([(f["fd"], f["size"]) for f in files])
            for f in files:
                hasher.done(f["fd"], 0, f["head"])
        run = _Run(jobs, adapter.method, adapter, modules, base_transform, hasher, progress)
        largest = max([j.entry.nbytes for j in run.merges] + [1])
        threads = [threading.Thread(target=run.stage, name="merge-stage", daemon=True)]
        threads += [
            threading.Thread(target=run.merge, name=f"merge-{i}", daemon=True)
            for i in range(merging_threads(largest, base_transform) - 1)
        ]
        for t in threads:
            t.start()
        if run.merges:
            try:
                run.torch_ready()  # while the stager copies
            except BaseException as exc:
                run.fail(exc)
        run.merge()
        for t in threads:
            t.join()
        if run.error is not None:
            raise run.error
        written = sum(run.counts[k] for k in ("merged", "untouched", "added"))
        if written != len(jobs):  # a scheduling bug must not leave zeros behind (or the hasher waiting)
            raise AdapterhubError(f"internal error: {len(jobs) - written} of {len(jobs)} tensors were not written")
        if hasher is not None:
            for f, digest in zip(files, hasher.result()):
                f["sha256"] = digest
        ok = True
    finally:
        if hasher is not None and not ok:
            hasher.fail()
        if run is not None:
            run.reader.close()
            if run.torch is not None:
                run.torch.set_num_threads(run.torch_threads)
        for f in files:
            os.close(f["fd"])
        if collecting:
            gc.enable()
    out = [{k: f[k] for k in ("path", "sha256", "size")} for f in files]
    if n > 1:
        index = {
            "metadata": {"total_size": sum(e.nbytes for e in plan.entries)},
            "weight_map": {e.name: fname for fname, g in zip(names, groups) for e in g},
        }
        out.append(write_small_json(out_dir, INDEX, index))
    # (PEFT saves the base layer of a targeted tied or embedding layer, ``<module>.base_layer.weight``: a copy
    # of the base's own weight, which the fingerprint check vouches for; the merge has no use for it)
    unread = [k for k in tensors if k not in run.tensors.read and ".base_layer." not in k]
    return {"files": out, "counts": run.counts if run is not None else {}, "unread": unread}


def write_small_json(out_dir: str, name: str, obj: Any) -> dict[str, Any]:
    """Write ``obj`` as JSON file ``name`` in ``out_dir``; its file entry (path, sha256, size)."""
    path = os.path.join(out_dir, name)
    write_json(path, obj)
    with open(path, "rb") as f:
        data = f.read()
    return {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
