"""Named remotes: team registries (a database URL + a blob-store URL) kept in ``<home>/config.json``.

    adapterhub remote add team --db postgresql://user:pw@db/adapters --store s3://bucket/adapters

``ADAPTERHUB_REGISTRY_DB`` and ``ADAPTERHUB_REGISTRY_STORE`` (both) make the team registry the default
one, which is what a deployment pipeline on a clean machine sets. Passwords and keys in URLs are never
printed: listings mask them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from .. import config
from ..errors import InvalidInput, NotFound

NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # always used with fullmatch
RESERVED = {"local", "sha256"}


def _config_path(home: str) -> str:
    return os.path.join(home, "config.json")


def load_config(home: str) -> dict[str, Any]:
    path = _config_path(home)
    if not os.path.exists(path):
        return {"remotes": {}}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    _check_shape(path, data)
    data.setdefault("remotes", {})
    return data


def _check_shape(path: str, data: Any) -> None:
    """Refuse a config.json that is JSON but not ``{"remotes": {NAME: {"db": URL, "store": URL}}}``."""
    def bad(problem: str) -> InvalidInput:
        return InvalidInput(f"invalid {path}: {problem} (fix or remove the file)")

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, found {type(data).__name__}")
    remotes = data.get("remotes", {})
    if not isinstance(remotes, dict):
        raise bad(f"'remotes' must be an object of NAME: {{db, store}}, found {type(remotes).__name__}")
    for name, spec in remotes.items():
        if not isinstance(spec, dict):
            raise bad(f"remote {name!r} must be an object with 'db' and 'store', found {type(spec).__name__}")
        for key in ("db", "store"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise bad(f"remote {name!r} has no {key!r} URL")


def save_config(home: str, data: dict[str, Any]) -> None:
    """Write ``config.json`` atomically (a temporary file, fsynced, renamed over it)."""
    os.makedirs(home, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=home, prefix=".config.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # may hold credentials
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _config_path(home))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def with_endpoint(store: str, endpoint_url: str | None) -> str:
    """Add ``endpoint_url`` to a store URL's query (how the s3 store takes options)."""
    if not endpoint_url:
        return store
    parts = urlparse(store)
    query = dict(parse_qsl(parts.query))
    query["endpoint_url"] = endpoint_url
    return urlunparse(parts._replace(query=urlencode(query)))


def add_remote(home: str, name: str, db: str, store: str, endpoint_url: str | None = None,
               replace: bool = False, check: Callable[[dict[str, str]], Any] | None = None) -> dict[str, Any]:
    """Save remote ``name``. ``check(spec)``, if given, runs first (connect, migrate ...): when it raises,
    ``config.json`` is left as it was (an existing remote of that name included)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in RESERVED:
        raise InvalidInput(f"invalid remote name {name!r}: lowercase letters, digits, - and _ (not 'local')")
    if not re.match(r"(sqlite|postgresql)(\+\w+)?://", db):
        raise InvalidInput(f"invalid database URL for remote {name!r}: expected postgresql://... or sqlite:///...")
    if "://" not in store:
        raise InvalidInput(f"invalid store URL {store!r}: expected s3://bucket/prefix or file:///path")
    data = load_config(home)
    if name in data["remotes"] and not replace:
        raise InvalidInput(f"remote {name!r} exists (remote rm {name} first, or --replace)")
    spec = {"db": db, "store": with_endpoint(store, endpoint_url)}
    if check is not None:
        check(spec)  # before anything is written: a failed check keeps the old remote
        data = load_config(home)  # re-read: the check may take a while
        if name in data["remotes"] and not replace:
            raise InvalidInput(f"remote {name!r} exists (remote rm {name} first, or --replace)")
    data["remotes"][name] = spec
    save_config(home, data)
    return describe(name, data["remotes"][name])


def remove_remote(home: str, name: str) -> None:
    data = load_config(home)
    if name not in data["remotes"]:
        raise NotFound(f"no remote named {name!r}")
    del data["remotes"][name]
    save_config(home, data)


def get_remote(home: str, name: str) -> dict[str, str]:
    remotes = load_config(home)["remotes"]
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none; add one with 'adapterhub remote add'"
        raise NotFound(f"no remote named {name!r} (remotes: {known})")
    return remotes[name]


def env_registry() -> dict[str, str] | None:
    db, store = os.environ.get("ADAPTERHUB_REGISTRY_DB"), os.environ.get("ADAPTERHUB_REGISTRY_STORE")
    if db and store:
        return {"db": db, "store": store}
    if db or store:
        raise InvalidInput("set both ADAPTERHUB_REGISTRY_DB and ADAPTERHUB_REGISTRY_STORE (or neither)")
    return None


_SECRET_KEY = re.compile(r"secret|password|token|key", re.I)


def mask(url: str) -> str:
    """``url`` with passwords and secret-looking query values replaced by ``***``; everything else is
    kept character for character (``sqlite:////abs/path`` stays a four-slash URL)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if i != -1:
            end = min(end, i)
    netloc, tail = rest[:end], rest[end:]
    if "@" in netloc:
        cred, host = netloc.rsplit("@", 1)
        if ":" in cred:
            netloc = f"{cred.split(':', 1)[0]}:***@{host}"
    before_q, qsep, query = tail.partition("?")
    if qsep:
        query, hsep, frag = query.partition("#")
        pairs = [(k, "***" if _SECRET_KEY.search(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        tail = before_q + "?" + urlencode(pairs, safe=":/*") + hsep + frag
    return f"{scheme}://{netloc}{tail}"


def describe(name: str, remote: dict[str, str]) -> dict[str, str]:
    return {"name": name, "db": mask(remote["db"]), "store": mask(remote["store"])}


def list_remotes(home: str) -> list[dict[str, str]]:
    out = [describe(n, r) for n, r in sorted(load_config(home)["remotes"].items())]
    env = env_registry()
    if env:
        out.append({**describe("(env)", env), "default": "true"})
    return out


def home_dir(home: str | None) -> str:
    return config.home_dir(home)
