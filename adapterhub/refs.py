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

from .errors import InvalidInput

_SEGMENT = r"[a-z0-9][a-z0-9._-]{0,63}"
NAME_RE = re.compile(rf"^{_SEGMENT}/{_SEGMENT}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
REMOTE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{12,64})$")
MAX_NAME = 129


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
        if not num.isdigit() or int(num) < 1:
            raise InvalidInput(f"invalid ref {text!r}: the version after ':' must be a positive integer")
        version = int(num)
    try:
        validate_name(name)
    except InvalidInput as exc:
        raise InvalidInput(f"invalid ref {text!r}: {exc}") from None
    return Ref(name=name, version=version, alias=alias, remote=remote)
