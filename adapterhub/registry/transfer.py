"""Copying versions between registries (``push REF --to team``, ``pull team:REF``), database or HTTP.

A copied version keeps its manifest byte for byte, so its digest is the same in every registry. The
source's bundle is checked first (the manifest hashes to the digest and lists exactly the files served);
blobs are streamed through a temp file and verified by sha256 and size on the way; missing parents are
copied first (recursively) so lineage stays connected, and evaluations and tags come along.

``src`` and ``dst`` are anything with the registry transfer interface (:class:`Registry` over SQL, or the
HTTP client of ``adapterhub serve``): ``export_version``, ``has_version``, ``has_blob``, ``fetch_blob``,
``import_bundle``, ``label``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from .blobs import Progress
from .records import LocalFile, Published

#: how deep a chain of parents is followed when copying (a guard against cycles in damaged data)
MAX_PARENT_DEPTH = 50


def copy_version(
    src: Any, dst: Any, ref: str, progress: Progress | None = None, with_parents: bool = True, _depth: int = 0
) -> Published:
    """Copy version ``ref`` of ``src`` (with its blobs, lineage, tags and evaluations) into ``dst``."""
    bundle = src.export_version(ref).check()
    if with_parents and _depth < MAX_PARENT_DEPTH:
        for edge in bundle.edges:
            if edge.ref and edge.digest and not dst.has_version(edge.digest):
                copy_version(src, dst, edge.ref, progress, with_parents, _depth + 1)
    tmp = tempfile.mkdtemp(prefix="adapterhub-copy-")
    try:
        local: list[LocalFile] = []
        for f in bundle.files:
            path = os.path.join(tmp, f.digest)
            if not os.path.exists(path) and not dst.has_blob(f.digest):
                src.fetch_blob(f.digest, path, f.size, progress, what=f"blob sha256:{f.digest} ({bundle.ref} {f.path})")
            local.append(LocalFile(f.path, path, f.digest, f.size))
        return dst.import_bundle(bundle, local, progress=progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary(pub: Published, src_label: str, dst_label: str) -> dict[str, Any]:
    d = pub.to_dict()
    d.update({"from": src_label, "to": dst_label})
    return d
