"""Named remotes kept in ``<home>/config.json``: a registry server (``adapterhub serve``) by URL, or a
team registry's database URL + blob-store URL (for admins and one-machine use).

    adapterhub remote add hub https://registry.example.com --token-env HUB_TOKEN
    adapterhub remote add team --db postgresql://user:pw@db/adapters --store s3://bucket/adapters

A server remote's token comes from the environment variable its ``token_env`` names, else from
``<home>/credentials.json`` (written by ``adapterhub login NAME``, readable only by you).

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
            raise bad(f"remote {name!r} must be an object with 'url', or 'db' and 'store', found {type(spec).__name__}")
        if "url" in spec:
            if not isinstance(spec["url"], str) or not re.match(r"https?://", spec["url"]):
                raise bad(f"remote {name!r} has no http(s):// 'url'")
            if spec.get("token_env") is not None and not isinstance(spec["token_env"], str):
                raise bad(f"remote {name!r}: 'token_env' must be a variable name")
            continue
        for key in ("db", "store"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise bad(f"remote {name!r} has no {key!r} URL")


def save_config(home: str, data: dict[str, Any]) -> None:
    """Write ``config.json`` atomically and readable only by its owner (it may hold credentials)."""
    write_private_json(_config_path(home), data)


def write_private_json(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, mode 0600, fsynced, renamed over it)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def server_spec(url: str, token_env: str | None = None) -> dict[str, str]:
    """The config entry of a registry-server remote (checked): ``{"url", "token_env"?}``."""
    parts = urlparse(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username
        or parts.password
        or parts.query
        or parts.fragment
    ):
        raise InvalidInput(
            f"invalid server URL {mask(url)!r}: expected http(s)://HOST[:PORT][/PATH] without "
            "credentials (give the token with --token-env or adapterhub login)"
        )
    spec = {"url": url.rstrip("/")}
    if token_env is not None:
        if not _ENV_NAME_RE.fullmatch(token_env):
            raise InvalidInput(f"invalid --token-env {token_env!r}: the name of an environment variable")
        spec["token_env"] = token_env
    return spec


def add_remote(
    home: str,
    name: str,
    db: str | None = None,
    store: str | None = None,
    endpoint_url: str | None = None,
    replace: bool = False,
    check: Callable[[dict[str, str]], Any] | None = None,
    url: str | None = None,
    token_env: str | None = None,
) -> dict[str, Any]:
    """Save remote ``name``: a registry server (``url``, ``token_env``) or a database + store. ``check(spec)``,
    if given, runs first (connect, migrate ...): when it raises, ``config.json`` is left as it was (an
    existing remote of that name included)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in RESERVED:
        raise InvalidInput(f"invalid remote name {name!r}: lowercase letters, digits, - and _ (not 'local')")
    if url is not None:
        if db or store or endpoint_url:
            raise InvalidInput(
                "a server remote takes a URL only (--db, --store and --endpoint-url are for database remotes)"
            )
        spec: dict[str, str] = server_spec(url, token_env)
    else:
        if not db or not store:
            raise InvalidInput(
                f"remote {name!r} needs a server URL (adapterhub remote add {name} https://HOST) "
                "or both --db and --store"
            )
        if token_env:
            raise InvalidInput("--token-env is for server remotes (http(s):// URLs)")
        if not re.match(r"(sqlite|postgresql)(\+\w+)?://", db):
            raise InvalidInput(f"invalid database URL for remote {name!r}: expected postgresql://... or sqlite:///...")
        if "://" not in store:
            raise InvalidInput(f"invalid store URL {mask(store)!r}: expected s3://bucket/prefix or file:///path")
        spec = {"db": db, "store": with_endpoint(store, endpoint_url)}
    data = load_config(home)
    if name in data["remotes"] and not replace:
        raise InvalidInput(f"remote {name!r} exists (remote rm {name} first, or --replace)")
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
    forget_token(home, name)


def get_remote(home: str, name: str) -> dict[str, str]:
    remotes = load_config(home)["remotes"]
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none; add one with 'adapterhub remote add'"
        raise NotFound(f"no remote named {name!r} (remotes: {known})")
    return remotes[name]


def remote_names(home: str) -> list[str]:
    """The names of the remotes ``config.json`` holds."""
    return sorted(load_config(home)["remotes"])


def env_registry() -> dict[str, str] | None:
    db, store = os.environ.get("ADAPTERHUB_REGISTRY_DB"), os.environ.get("ADAPTERHUB_REGISTRY_STORE")
    if db and store:
        return {"db": db, "store": store}
    if db or store:
        raise InvalidInput("set both ADAPTERHUB_REGISTRY_DB and ADAPTERHUB_REGISTRY_STORE (or neither)")
    return None


_SECRET_KEY = re.compile(r"secret|passw|pwd|token|key|signature|sig$|credential|auth", re.I)
#: a password piece shorter than this is not scrubbed from error text (it would mangle ordinary words)
_MIN_SECRET = 4
_MIN_PIECE = 6


def _split(url: str) -> tuple[str, str | None, str, str, str] | None:
    """``(scheme, userinfo, host, path, query+fragment)`` of ``url`` without parsing it strictly: a raw
    ``@``, ``:`` or ``/`` in a password still leaves the userinfo whole (None: no userinfo)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    q = min((i for i in (rest.find("?"), rest.find("#")) if i != -1), default=len(rest))
    head, tail = rest[:q], rest[q:]
    at = head.rfind("@")
    userinfo: str | None = None
    if at != -1 and "/" not in head[:at].split(":", 1)[0]:
        userinfo, head = head[:at], head[at + 1 :]
    slash = head.find("/")
    host, path = (head, "") if slash == -1 else (head[:slash], head[slash:])
    return scheme, userinfo, host, path, tail


def _secret_user(scheme: str, userinfo: str) -> bool:
    """A user name alone is a credential in http(s) URLs (``https://TOKEN@host``), not in database ones."""
    return ":" in userinfo or scheme.lower() in ("http", "https")


def mask(url: str) -> str:
    """``url`` with its credentials replaced by ``***``: the password (or an http(s) user name alone),
    secret-looking query values, and URLs inside query values (``endpoint_url=http://key:secret@host``),
    recursively; everything else is kept character for character (``sqlite:////abs/path`` stays a
    four-slash URL). Never raises, whatever the text."""
    parts = _split(url)
    if parts is None:
        return url
    scheme, userinfo, host, path, tail = parts
    if userinfo is not None:
        if ":" in userinfo:
            host = f"{userinfo.split(':', 1)[0]}:***@{host}"
        else:
            host = f"***@{host}" if _secret_user(scheme, userinfo) else f"{userinfo}@{host}"
    if tail.startswith("?"):
        query, hsep, frag = tail[1:].partition("#")
        pairs = [
            (k, "***" if _SECRET_KEY.search(k) else mask(v) if "://" in v else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        tail = "?" + urlencode(pairs, safe=":/*@") + hsep + frag
    return f"{scheme}://{host}{path}{tail}"


def secrets_of(url: str) -> set[str]:
    """The credentials in ``url`` as they may appear in error text: whole, percent-decoded, and (for a
    password holding a raw ``@``, which drivers split differently) each long ``@``/``:``/``/`` piece."""
    from urllib.parse import unquote

    parts = _split(url)
    if parts is None:
        return set()
    scheme, userinfo, _host, _path, tail = parts
    found: set[str] = set()
    pieces: set[str] = set()  # of a password a driver may split differently: only the long ones
    if userinfo is not None and _secret_user(scheme, userinfo):
        secret = userinfo.split(":", 1)[1] if ":" in userinfo else userinfo
        found.update({secret, unquote(secret)})
        pieces.update(re.split(r"[@:/]", secret), re.split(r"[@:/]", unquote(secret)))
    if tail.startswith("?"):
        for k, v in parse_qsl(tail[1:].partition("#")[0], keep_blank_values=True):
            if _SECRET_KEY.search(k):
                found.add(v)
            elif "://" in v:
                found |= secrets_of(v)
    return {s for s in found if len(s) >= _MIN_SECRET} | {p for p in pieces if len(p) >= _MIN_PIECE}


def scrub(text: str, urls: Any) -> str:
    """``text`` (an error message) with every credential of ``urls`` replaced by ``***``, longest first."""
    secrets: set[str] = set()
    for u in urls:
        if isinstance(u, str) and "://" in u:
            secrets |= secrets_of(u)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def known_urls(home: str | None, args: Any = ()) -> list[str]:
    """Every URL a command may have used: its arguments (``--opt=URL`` too), the remotes of ``config.json``
    and the environment's registry and endpoint variables; what :func:`scrub` is given."""
    urls = [a.partition("=")[2] if a.startswith("--") else a for a in args if isinstance(a, str) and "://" in a]
    urls += [
        os.environ.get(v, "")
        for v in ("ADAPTERHUB_REGISTRY_DB", "ADAPTERHUB_REGISTRY_STORE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    ]
    try:
        for spec in load_config(config.home_dir(home))["remotes"].values():
            urls += [spec.get("db", ""), spec.get("store", ""), spec.get("url", "")]
    except Exception:  # an unreadable config: scrub what we have
        pass
    return [u for u in urls if u]


def describe(name: str, remote: dict[str, str]) -> dict[str, str]:
    if "url" in remote:
        d = {"name": name, "url": mask(remote["url"])}
        if remote.get("token_env"):
            d["token_env"] = remote["token_env"]
        return d
    return {"name": name, "db": mask(remote["db"]), "store": mask(remote["store"])}


# -- tokens of server remotes -------------------------------------------------------------------
def _credentials_path(home: str) -> str:
    return os.path.join(home, "credentials.json")


def save_token(home: str, name: str, token: str) -> None:
    """Remember ``token`` for server remote ``name`` in ``<home>/credentials.json`` (mode 0600)."""
    creds = _load_credentials(_credentials_path(home))
    creds[name] = token
    write_private_json(_credentials_path(home), creds)


def forget_token(home: str, name: str) -> bool:
    creds = _load_credentials(_credentials_path(home))
    if creds.pop(name, None) is None:
        return False
    write_private_json(_credentials_path(home), creds)
    return True


def _load_credentials(path: str) -> dict[str, str]:
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {type(exc).__name__} (fix or remove the file)") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InvalidInput(f"invalid {path}: expected an object of remote name -> token (fix or remove the file)")
    return data


def token_for(home: str, name: str, spec: dict[str, str]) -> str | None:
    """The token of server remote ``name``: ``$token_env`` if the remote names one and it is set, else
    what ``adapterhub login`` saved, else None."""
    env = spec.get("token_env")
    if env and os.environ.get(env):
        return os.environ[env].strip()
    return _load_credentials(_credentials_path(home)).get(name)


def list_remotes(home: str) -> list[dict[str, str]]:
    out = [describe(n, r) for n, r in sorted(load_config(home)["remotes"].items())]
    env = env_registry()
    if env:
        out.append({**describe("(env)", env), "default": "true"})
    return out


def home_dir(home: str | None) -> str:
    return config.home_dir(home)
