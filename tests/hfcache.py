"""A Hugging Face cache built at test time, laid out as ``huggingface_hub`` lays it out (see its
``file_download`` module): ``models--ORG--NAME/blobs/<hash>``, ``snapshots/<commit>/<file>`` relative
symlinks to the blobs, and ``refs/<branch>`` holding the commit. Offline clusters run from such a cache."""

from __future__ import annotations

import hashlib
import os
import shutil


def add_snapshot(cache: str, repo_id: str, src_dir: str, ref: str | None = "main") -> str:
    """Copy the files of ``src_dir`` into ``cache`` as one commit of the model repo ``repo_id`` (``ref``, if
    given, then points at it); returns the 40-hex commit sha (derived from the content, as git would)."""
    from huggingface_hub.file_download import repo_folder_name

    repo = os.path.join(cache, repo_folder_name(repo_id=repo_id, repo_type="model"))
    files = sorted(os.path.relpath(os.path.join(d, f), src_dir) for d, _, fs in os.walk(src_dir) for f in fs)
    digests = {}
    for rel in files:
        h = hashlib.sha256()
        with open(os.path.join(src_dir, rel), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digests[rel] = h.hexdigest()
    commit = hashlib.sha1("".join(f"{r}\0{d}\n" for r, d in digests.items()).encode()).hexdigest()
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    for rel, digest in digests.items():
        blob = os.path.join(repo, "blobs", digest)
        if not os.path.exists(blob):
            shutil.copyfile(os.path.join(src_dir, rel), blob)
        link = os.path.join(repo, "snapshots", commit, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    if ref:
        os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
        with open(os.path.join(repo, "refs", ref), "w") as fh:
            fh.write(commit)  # no newline: huggingface_hub reads the file verbatim
    return commit


def use_offline_cache(monkeypatch, cache: str) -> None:
    """Point huggingface_hub at ``cache``, offline: the environment (for subprocesses) and its constants
    (read once at import, so set in place for this process)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
