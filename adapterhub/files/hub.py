"""Hugging Face Hub ids wherever a base model directory is accepted: ``ORG/NAME[@REVISION]`` resolves to a
snapshot directory of the Hugging Face cache with ``huggingface_hub.snapshot_download``, which itself honours
``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` and ``HF_ENDPOINT``. Everything downstream
keeps working on a plain directory; the id and commit are recovered from the snapshot path
(``models--ORG--NAME/snapshots/<sha>``) where a name hint is recorded, so they survive any hand-off."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterator

from ..errors import InvalidInput, NotFound

#: what a base needs besides its weights: config, tokenizer and the shard index (top level only, as
#: transformers reads it); then the weights: the shards the index names, else every top-level
#: ``*.safetensors`` (what the fingerprint hashes), so a repo's second copy (``consolidated.safetensors``,
#: ``original/``) and its pickles are never downloaded
BASE_META_PATTERNS = [
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "chat_template.*",
]
INDEX = "model.safetensors.index.json"
#: what a PEFT adapter repo needs (``import_bin`` adds the pickle weights that ``push --import-bin`` converts;
#: not ``*.bin``: that would pull in ``training_args.bin``, a pickle of arguments, not tensors)
ADAPTER_PATTERNS = ["adapter_config.json", "*.safetensors", "adapterhub.json", "README.md"]
BIN_PATTERNS = ["adapter_model.bin"]

_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[^@\s]+))?")
_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<sha>[0-9a-f]{40})/?$")
_HINT = re.compile(r"([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)@([0-9a-f]{40})")  # a Hub base's name hint
HF_SCHEME = "hf://"


@dataclass(frozen=True)
class ResolvedBase:
    """A base (or adapter) ready to read: ``path`` a directory; ``hub_id`` and ``revision_sha`` when it
    came from the Hugging Face Hub (or cache)."""

    path: str
    hub_id: str | None = None
    revision_sha: str | None = None

    @property
    def name(self) -> str:
        """The name hint recorded in manifests: ``ORG/NAME@<sha>`` for a Hub snapshot, else the directory name."""
        return f"{self.hub_id}@{self.revision_sha}" if self.hub_id else os.path.basename(os.path.abspath(self.path))


def looks_like_id(spec: str) -> bool:
    """Whether ``spec`` is spelled as ``ORG/NAME[@REVISION]`` (it may still be a local directory, which wins)."""
    return bool(_ID.fullmatch(spec)) and not spec.startswith((".", "~"))


def from_path(path: str) -> ResolvedBase:
    """What a directory is: a snapshot of the Hugging Face cache is known by its repo id and commit."""
    m = _SNAPSHOT.search(os.path.abspath(path).replace(os.sep, "/"))
    if m:
        return ResolvedBase(path, f"{m['org']}/{m['name']}", m["sha"])
    return ResolvedBase(path)


def base_name(path: str) -> str:
    """The name hint for the base in ``path`` (see :attr:`ResolvedBase.name`)."""
    return from_path(path).name


def peft_base_fields(hint: str | None) -> dict[str, str]:
    """``base_model_name_or_path`` (and ``revision``) for a PEFT config from a base's name hint: a Hub base
    (``ORG/NAME@<commit>``) gives its id and commit, what peft's ``AutoPeftModel`` loads; else the hint."""
    if not hint:
        return {}
    m = _HINT.fullmatch(hint)
    return {"base_model_name_or_path": m[1], "revision": m[2]} if m else {"base_model_name_or_path": hint}


def resolve_base(spec: str) -> ResolvedBase:
    """A local directory as is (it wins over an id of the same spelling); else ``ORG/NAME[@REVISION]`` from the
    Hugging Face cache or Hub (config, tokenizer and safetensors weights only); anything else is returned
    unchanged for the caller's own "no such directory" error."""
    if os.path.exists(spec) or not looks_like_id(spec):
        return from_path(spec)
    meta = _snapshot(spec, BASE_META_PATTERNS, "model", "no such directory, and ")
    weights = ["*.safetensors"]
    if os.path.isfile(os.path.join(meta.path, INDEX)):
        try:
            with open(os.path.join(meta.path, INDEX), encoding="utf-8") as fh:
                weights = sorted(set(json.load(fh)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # a broken index: fetch every shard; the fingerprint names what is wrong with it
    # the same commit for the weights, whatever the branch does meanwhile
    pinned = f"{meta.hub_id}@{meta.revision_sha}"
    return _snapshot(pinned, BASE_META_PATTERNS + weights, "model", "no such directory, and ", spec)


def resolve_adapter(url: str, import_bin: bool = False) -> ResolvedBase:
    """``hf://ORG/NAME[@REVISION]``: a PEFT adapter repo's snapshot (safetensors only unless ``import_bin``)."""
    spec = url[len(HF_SCHEME) :] if url.startswith(HF_SCHEME) else url
    if not looks_like_id(spec):
        raise InvalidInput(f"{url}: expected hf://ORG/NAME or hf://ORG/NAME@REVISION")
    return _snapshot(spec, ADAPTER_PATTERNS + (BIN_PATTERNS if import_bin else []), "adapter repo", "", url)


@contextlib.contextmanager
def staged_adapter(url: str, import_bin: bool = False) -> Iterator[tuple[str, ResolvedBase]]:
    """``(directory, resolved)`` for ``hf://ORG/NAME[@REVISION]``: the snapshot's top-level adapter files
    copied (hard-linked where possible) out of the cache into a scratch directory, since adapter directories
    refuse symbolic links; a link is followed only into its own repo's ``blobs/`` folder. Filtered here too:
    offline, huggingface_hub returns the cached snapshot as it is (whatever other tools downloaded into it)."""
    from huggingface_hub.utils import filter_repo_objects

    resolved = resolve_adapter(url, import_bin)
    patterns = ADAPTER_PATTERNS + (BIN_PATTERNS if import_bin else [])
    blobs = os.path.realpath(os.path.join(resolved.path, "..", "..", "blobs"))
    names = sorted(n for n in os.listdir(resolved.path) if os.path.isfile(os.path.join(resolved.path, n)))
    names = list(filter_repo_objects(names, allow_patterns=patterns))
    if not any(n.endswith(".safetensors") or (import_bin and n in BIN_PATTERNS) for n in names):
        raise InvalidInput(
            f"{url}: the Hugging Face snapshot {resolved.revision_sha} has no safetensors weights"
            + ("" if import_bin else " (for adapter_model.bin, add --import-bin)")
        )
    tmp = tempfile.mkdtemp(prefix="adapterhub-hf-")
    try:
        out = os.path.join(tmp, "adapter")
        os.makedirs(out)
        for n in names:
            full = os.path.join(resolved.path, n)
            real = os.path.realpath(full)
            if os.path.islink(full) and os.path.commonpath([real, blobs]) != blobs:
                raise InvalidInput(f"{url}: {n} in the Hugging Face cache links outside its repo ({real})")
            try:
                os.link(real, os.path.join(out, n))
            except OSError:
                shutil.copyfile(real, os.path.join(out, n))
        yield out, resolved
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _snapshot(spec: str, patterns: list[str], what: str, lead: str, label: str | None = None) -> ResolvedBase:
    """``snapshot_download`` with its errors as one line each: ``label`` (default ``spec``) names the input,
    ``lead`` says what else was tried (a local directory)."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, _, revision = spec.partition("@")
    label = label or spec
    try:
        path = huggingface_hub.snapshot_download(
            repo, revision=revision or None, allow_patterns=patterns, ignore_patterns=["*/*"]
        )  # top level only
    except HFValidationError as exc:
        raise InvalidInput(f"{label}: {lead}not a valid Hugging Face {what} id ({str(exc).splitlines()[0]})") from None
    except RevisionNotFoundError:
        raise NotFound(f"{label}: the Hugging Face {what} {repo} has no revision {revision!r}") from None
    except GatedRepoError:
        raise NotFound(
            f"{label}: the Hugging Face {what} {repo} is gated: accept its terms on the Hub and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise NotFound(f"{label}: {lead}no Hugging Face {what} {repo} (a private one needs HF_TOKEN)") from None
    except LocalEntryNotFoundError as exc:
        rev = f" at revision {revision!r}" if revision else ""
        if constants.HF_HUB_OFFLINE:
            raise NotFound(
                f"{label}: {lead}{repo}{rev} is not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}) while HF_HUB_OFFLINE=1: download it online first, or "
                "point HF_HUB_CACHE at a cache that has it"
            ) from None
        cause = exc.__cause__
        raise NotFound(
            f"{label}: {lead}the Hugging Face Hub ({constants.ENDPOINT}) could not be "
            f"reached{f' ({type(cause).__name__})' if cause else ''}; {repo}{rev} is not cached"
        ) from None
    except (OSError, ValueError) as exc:  # HTTP errors (5xx), incomplete snapshots, disk full
        text = str(exc).strip().splitlines()
        raise InvalidInput(
            f"{label}: could not fetch the Hugging Face {what}: {text[0] if text else type(exc).__name__}"
        ) from None
    resolved = from_path(path)
    return ResolvedBase(path, repo, resolved.revision_sha or os.path.basename(path.rstrip("/")))


def parse_hf_url(url: str) -> str:
    """The repo id of ``hf://ORG/NAME`` (an upload target: no revision, it becomes a new commit on main)."""
    spec = url[len(HF_SCHEME) :] if url.startswith(HF_SCHEME) else ""
    if not looks_like_id(spec) or "@" in spec:
        raise InvalidInput(f"{url}: expected hf://ORG/NAME (uploads commit to the repo's main branch)")
    return spec


def upload_folder(folder: str, url: str, message: str, private: bool = False) -> tuple[str, str]:
    """Upload ``folder`` to the Hub model repo of ``url`` (created if missing) as one commit, with
    huggingface_hub's own settings (``HF_TOKEN``, ``HF_ENDPOINT``); returns ``(commit sha, commit url)``."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    repo = parse_hf_url(url)
    if constants.HF_HUB_OFFLINE:
        raise InvalidInput(f"{url}: uploading to the Hugging Face Hub needs the network, but HF_HUB_OFFLINE is set")
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=message)
    except HFValidationError as exc:
        raise InvalidInput(f"{url}: not a valid Hugging Face repo id ({str(exc).splitlines()[0]})") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise InvalidInput(
                f"{url}: the Hugging Face Hub refused the upload (HTTP {status}): set HF_TOKEN to a "
                "token with write access to the repo"
            ) from None
        raise InvalidInput(f"{url}: the upload failed: {str(exc).strip().splitlines()[0]}") from None
    except Exception as exc:  # connection refused, DNS, timeouts: OSError or the HTTP client's TransportError
        if not (isinstance(exc, OSError) or any(c.__name__ == "TransportError" for c in type(exc).__mro__)):
            raise
        raise InvalidInput(
            f"{url}: the Hugging Face Hub ({constants.ENDPOINT}) could not be reached ({type(exc).__name__})"
        ) from None
    return info.oid, info.commit_url
