"""Named remotes: team registries (a database URL + a blob-store URL) kept in ``<home>/config.json``.

    adapterhub remote add team --db postgresql://user:pw@db/adapters --store s3://bucket/adapters

``ADAPTERHUB_REGISTRY_DB`` and ``ADAPTERHUB_REGISTRY_STORE`` (both) make the team registry the default
one, which is what a deployment pipeline on a clean machine sets. Passwords and keys in URLs are never
printed: listings mask them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from . import config
from .errors import InvalidInput, NotFound

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
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
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    data.setdefault("remotes", {})
    return data


def save_config(home: str, data: dict[str, Any]) -> None:
    os.makedirs(home, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=home, prefix=".config.", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.chmod(tmp, 0o600)  # may hold credentials
    os.replace(tmp, _config_path(home))


def with_endpoint(store: str, endpoint_url: str | None) -> str:
    """Add ``endpoint_url`` to a store URL's query (how the s3 store takes options)."""
    if not endpoint_url:
        return store
    parts = urlparse(store)
    query = dict(parse_qsl(parts.query))
    query["endpoint_url"] = endpoint_url
    return urlunparse(parts._replace(query=urlencode(query)))


def add_remote(home: str, name: str, db: str, store: str, endpoint_url: str | None = None,
               replace: bool = False) -> dict[str, Any]:
    if not NAME_RE.match(name) or name in RESERVED:
        raise InvalidInput(f"invalid remote name {name!r}: lowercase letters, digits, - and _ (not 'local')")
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", db):
        raise InvalidInput(f"invalid database URL for remote {name!r}: expected postgresql://... or sqlite:///...")
    if "://" not in store:
        raise InvalidInput(f"invalid store URL {store!r}: expected s3://bucket/prefix or file:///path")
    data = load_config(home)
    if name in data["remotes"] and not replace:
        raise InvalidInput(f"remote {name!r} exists (remote rm {name} first, or --replace)")
    data["remotes"][name] = {"db": db, "store": with_endpoint(store, endpoint_url)}
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


def mask(url: str) -> str:
    """``url`` with passwords and secret-looking query values replaced by ``***``."""
    parts = urlparse(url)
    netloc = parts.netloc
    if "@" in netloc:
        cred, host = netloc.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in cred else f"{user}@{host}"
    query = [(k, "***" if re.search(r"secret|password|token|key", k, re.I) else v) for k, v in parse_qsl(parts.query)]
    return urlunparse(parts._replace(netloc=netloc, query=urlencode(query, safe=":/")))


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
