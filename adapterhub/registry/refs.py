"""Names and refs.

A name is ``namespace/name``; each segment is lowercase ``[a-z0-9._-]``, starts with a letter or digit
and is at most 64 characters. A ref names one version::

    acme/bot            the latest version
    acme/bot:3          version 3
    acme/bot@production the version an alias points at
    sha256:<hex>        a manifest digest (a unique prefix of 12+ hex digits also works)
    team:acme/bot:3     any of the above in the named remote ``team``
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Collection

from ..errors import InvalidInput, NotFound

_SEGMENT = r"[a-z0-9][a-z0-9._-]{0,63}"
NAME_RE = re.compile(rf"^{_SEGMENT}/{_SEGMENT}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
REMOTE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{12,64})$")
VERSION_RE = re.compile(r"^[0-9]+$")  # ASCII digits only (str.isdigit also accepts '²', '٣', ...)
MAX_NAME = 129
#: the largest version number a ref may name: versions.number is a 32-bit INTEGER on PostgreSQL (and a
#: larger value overflows SQLite's 64-bit INTEGER), and no registry allocates anywhere near it
MAX_VERSION = 2**31 - 1


@dataclass(frozen=True)
class Ref:
    """A parsed ref. Exactly one of ``digest`` or ``name`` is set; ``version`` and ``alias``
    qualify ``name``; neither means the latest version."""

    name: str | None = None
    version: int | None = None
    alias: str | None = None
    digest: str | None = None  # hex, possibly a prefix, without "sha256:"
    remote: str | None = None

    def __str__(self) -> str:
        prefix = f"{self.remote}:" if self.remote else ""
        if self.digest:
            return f"{prefix}sha256:{self.digest}"
        if self.version is not None:
            return f"{prefix}{self.name}:{self.version}"
        if self.alias:
            return f"{prefix}{self.name}@{self.alias}"
        return f"{prefix}{self.name}"


#: how a version relates to a parent it names (the ``relation`` of a lineage edge)
RELATIONS = ("trained_from", "combined_from", "composed_of", "quantized_from", "extracted_from", "imported_from")

#: the names of the configured remotes, read only when a ref names a remote that is not the registry's own
RemoteNames = Callable[[], Collection[str]]


def check_registry_of(r: Ref, remote: str | None, label: str, remotes: RemoteNames | None = None) -> Ref:
    """``r`` if it names no remote or ``remote`` (the name this registry has among the remotes; None for the
    local or the environment's registry), else an error: a ref naming another registry must never resolve
    its name here. ``remotes`` tells a remote that is not configured (:class:`NotFound`) from another
    registry (:class:`InvalidInput`); without it every other remote is the latter."""
    if r.remote is None or r.remote == remote:
        return r
    if remotes is not None and r.remote not in remotes():
        raise NotFound(f"ref '{r}' names remote {r.remote!r}, but there is no remote named {r.remote!r}")
    raise InvalidInput(
        f"ref '{r}' names remote {r.remote!r}, but this command uses the {label} registry "
        f"(copy it first: adapterhub pull {r})"
    )


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid ``namespace/name``, else raise :class:`InvalidInput`."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("invalid name '': expected namespace/name")
    if len(name) > MAX_NAME:
        raise InvalidInput(f"invalid name '{name[:40]}...': longer than {MAX_NAME} characters")
    if not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid name {name!r}: expected namespace/name, each part lowercase [a-z0-9._-] "
            "starting with a letter or digit (at most 64 characters)"
        )
    return name


def validate_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias) or alias == "latest":
        raise InvalidInput(
            f"invalid alias {alias!r}: expected lowercase [a-z0-9._-] starting with a letter"
            + (" ('latest' is reserved)" if alias == "latest" else "")
        )
    return alias


def parse_version(num: str, text: str | None = None) -> int:
    """A version number from its decimal text: a positive integer of ASCII digits, at most
    :data:`MAX_VERSION`; else :class:`InvalidInput` naming ``text`` (the whole ref, shortened)."""
    shown = text if text is not None else num
    shown = repr(shown if len(shown) <= 80 else shown[:60] + "...")
    if not isinstance(num, str) or not VERSION_RE.fullmatch(num) or not num.strip("0"):
        raise InvalidInput(f"invalid ref {shown}: the version after ':' must be a positive integer")
    digits = num.lstrip("0")
    if len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
        raise InvalidInput(f"invalid ref {shown}: version numbers go up to {MAX_VERSION}")
    return int(digits)


def parse_ref(text: str) -> Ref:
    """Parse a ref string; raise :class:`InvalidInput` with the accepted forms if it is malformed."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("invalid ref '': expected name, name:N, name@alias or sha256:<digest>")
    text = text.strip()
    remote = None
    head, sep, rest = text.partition(":")
    if sep and "/" not in head and head != "sha256" and REMOTE_RE.fullmatch(head):
        remote, text = head, rest
    m = DIGEST_RE.fullmatch(text)
    if m:
        return Ref(digest=m.group(1), remote=remote)
    if text.startswith("sha256:"):
        raise InvalidInput(f"invalid digest ref '{text}': expected sha256: and 12 to 64 hex digits")
    name, version, alias = text, None, None
    if "@" in text:
        name, _, alias = text.partition("@")
        validate_alias(alias)
    elif ":" in text:
        name, _, num = text.rpartition(":")
        version = parse_version(num, text)
    try:
        validate_name(name)
    except InvalidInput as exc:
        raise InvalidInput(f"invalid ref {text!r}: {exc}") from None
    return Ref(name=name, version=version, alias=alias, remote=remote)
