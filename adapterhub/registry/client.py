"""The client of ``adapterhub serve``: an ``http(s)://`` remote that behaves like a database remote.

:class:`HttpRegistry` offers the registry operations the commands use (show, list, publish, copy in and
out, aliases, tags, evaluations, lineage, verify, tokens, audit) over the server's JSON API, with a token.
It trusts the server with nothing it can check itself: every blob it downloads is verified by sha256 and
size while it is written, and every version it pulls is checked (its manifest hashes to its digest and
lists exactly the files served) before anything is stored locally.

Blob bytes come from presigned store URLs when the server's store can make them (S3), else from the
server itself; uploads stream to the server, which hashes them before they become visible.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any, Iterable
from urllib.parse import quote, urlencode, urlparse

from ..errors import AdapterhubError, IntegrityError, InvalidInput, NotFound
from .blobs import CHUNK, Progress, copy_stream_verified
from .bundle import VersionBundle
from .entities import VersionInfo, VersionSummary
from .ranges import RangeReader
from .records import BLOBS_GONE, NEVER_UPLOADED, LocalFile, ParentSpec, Published
from .refs import RemoteNames, check_registry_of, parse_ref
from .tokens import AuthError, Forbidden

API = "/api/v1"
CONNECT_TIMEOUT = 10.0
#: blob downloads: bytes per ranged GET, and GETs in flight
RANGE_SIZE = 16 << 20
RANGE_WORKERS = 8
#: seconds without a byte from the server before a request fails
READ_TIMEOUT = float(os.environ.get("ADAPTERHUB_HTTP_TIMEOUT", "120"))


def _retries():
    import urllib3

    return urllib3.Retry(total=3, connect=3, read=2, status=0, backoff_factor=0.3, redirect=0, allowed_methods=None)


class ServerError(AdapterhubError):
    """The server answered 5xx, or could not be reached."""


def _error_class(status: int) -> type[AdapterhubError]:
    from .gates import GateRefused

    return {401: AuthError, 403: Forbidden, 404: NotFound, 409: GateRefused}.get(
        status, InvalidInput if 400 <= status < 500 else ServerError
    )


class HttpRegistry:
    """A registry served by ``adapterhub serve`` at ``url``, used with ``token``; ``label``, ``remote`` and
    ``remotes`` as for :class:`.registry.Registry` (refs naming another registry are refused)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        label: str = "remote",
        *,
        remote: str | None = None,
        remotes: RemoteNames | None = None,
    ):
        import urllib3

        parts = urlparse(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"invalid server URL {url!r}: expected http(s)://HOST[:PORT]")
        self.url = url.rstrip("/")
        self.label = label
        self.remote = remote
        self._remotes = remotes
        self._token = token
        self._http = urllib3.PoolManager(
            num_pools=4,
            maxsize=RANGE_WORKERS + 2,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
            retries=urllib3.Retry(
                total=3, connect=3, read=0, status=0, backoff_factor=0.3, redirect=0, allowed_methods=None
            ),
        )

    # -- plumbing -----------------------------------------------------------------------------------
    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "adapterhub"}
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        h.update(extra or {})
        return h

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        raw: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ):
        import urllib3

        url = self.url + path + ("?" + urlencode({k: v for k, v in query.items() if v is not None}) if query else "")
        extra = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode("utf-8")
            extra["Content-Type"] = "application/json"
        try:
            resp = self._http.request(
                method, url, body=data, headers=self._headers(extra), preload_content=not stream, redirect=False
            )
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ServerError(
                f"cannot reach the registry server {self.label} at {self.url}: {_short(reason)}"
            ) from None
        if resp.status >= 400:
            self._raise(resp)
        return resp

    def _raise(self, resp) -> None:
        try:
            message = json.loads(resp.data or b"{}").get("error") or ""
        except (ValueError, AttributeError):
            message = ""
        message = message or f"HTTP {resp.status}"
        if resp.status == 401:
            message = (
                f"{self.label}: {message} (adapterhub login {self.label}, or set the variable the "
                "remote's --token-env names)"
            )
        elif resp.status >= 500:
            message = f"the registry server {self.label} failed: {message}"
        raise _error_class(resp.status)(message)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._request(method, path, **kw)
        try:
            return json.loads(resp.data)
        except ValueError:
            raise ServerError(f"the registry server {self.label} sent a malformed answer to {method} {path}") from None

    def _bare(self, ref: Any) -> str:
        """``ref`` without this remote's prefix (``hub:acme/x:3`` -> ``acme/x:3``); a ref naming another
        registry is refused."""
        r = check_registry_of(parse_ref(str(ref)), self.remote, self.label, self._remotes)
        return str(replace(r, remote=None))

    def close(self) -> None:
        self._http.clear()

    def ready(self) -> "HttpRegistry":
        return self

    # -- reading ------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``/healthz``: the server answers (no token needed)."""
        return self._json("GET", "/healthz")

    def whoami(self) -> dict[str, Any]:
        return self._json("GET", f"{API}/whoami")

    def list(self, name: str | None = None) -> list[VersionSummary]:
        try:
            return [VersionSummary.from_dict(row) for row in self._json("GET", f"{API}/versions", query={"name": name})]
        except (KeyError, TypeError, AttributeError):
            raise ServerError(f"the registry server {self.label} sent a malformed version list") from None

    def resolve(self, ref: Any) -> dict[str, Any]:
        r = self._json("GET", f"{API}/resolve", query={"ref": self._bare(ref)})
        return {**r, "number": r["version"], "digest": r["digest"].removeprefix("sha256:")}

    def show(self, ref: Any) -> VersionInfo:
        try:
            return VersionInfo.from_dict(self._json("GET", f"{API}/show", query={"ref": self._bare(ref)}))
        except (KeyError, TypeError, AttributeError):
            raise ServerError(f"the registry server {self.label} sent a malformed version of {ref}") from None

    def lineage(self, ref: Any, depth: int = 50) -> dict[str, Any]:
        return self._json("GET", f"{API}/lineage", query={"ref": self._bare(ref), "depth": depth})

    def alias_history(self, name: str, alias: str) -> list[dict[str, Any]]:
        return self._json("GET", f"{API}/aliases/history", query={"name": name, "alias": alias})

    def verify(self, ref: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
        return self._json("GET", f"{API}/verify", query={"ref": self._bare(ref) if ref else None})

    def export_version(self, ref: Any) -> VersionBundle:
        d = self._json("GET", f"{API}/export", query={"ref": self._bare(ref)})
        try:
            return VersionBundle.from_dict(d)
        except (KeyError, TypeError, ValueError):
            raise ServerError(f"the registry server {self.label} sent a malformed version of {ref}") from None

    def has_version(self, digest: str) -> bool:
        try:
            self.resolve(f"sha256:{digest}")
            return True
        except NotFound:
            return False

    def has_blob(self, digest: str) -> bool:
        return not self._json("POST", f"{API}/blobs/missing", body={"digests": [digest]})["missing"]

    def fetch_blob(
        self, digest: str, dest: str, size: int, progress: Progress | None = None, what: str | None = None
    ) -> None:
        """Download blob ``digest`` to ``dest``, verified by sha256 and size as it is written: from a
        presigned store URL when the server gives one (bytes go straight from the store; no token is sent
        there), else from the server. Large blobs come as parallel ranged GETs, in order."""
        where = self._json("POST", f"{API}/blobs/locate", body={"digests": [digest]})["blobs"].get(digest) or {}
        what = what or f"blob sha256:{digest}"
        url = where.get("url")
        headers = {"User-Agent": "adapterhub"} if url else self._headers()
        stream = self._ranged(url or f"{self.url}{API}/blobs/{digest}", headers, size, what)
        try:
            with open(dest, "wb") as out:
                copy_stream_verified(stream, out, digest, what, size, progress)
                out.flush()
                os.fsync(out.fileno())
        finally:
            stream.close()

    def _ranged(self, url: str, headers: dict[str, str], size: int, what: str) -> RangeReader:
        """A reader over ``url``: the first range now (so a refusal fails here), the rest prefetched."""
        import urllib3

        def get(start: int, end: int, etag: str | None = None) -> tuple[bytes, str | None]:
            h = {**headers, "Range": f"bytes={start}-{end}"}
            if etag:
                h["If-Match"] = etag
            try:
                resp = self._http.request("GET", url, headers=h, redirect=False, retries=_retries())
            except urllib3.exceptions.HTTPError as exc:
                raise IntegrityError(
                    f"the download of {what} broke off: {_short(getattr(exc, 'reason', exc))}"
                ) from None
            if resp.status == 412:
                raise IntegrityError(f"{what} changed while it was downloaded")
            if resp.status not in (200, 206):
                if url.startswith(self.url):
                    self._raise(resp)
                raise ServerError(f"the store answered HTTP {resp.status} for {what}")
            data = resp.data
            if resp.status == 200 and (start, end) != (0, size - 1):
                data = data[start : end + 1]  # a server that ignores Range: the whole body came
            return data, resp.headers.get("ETag")

        if size == 0:
            first, etag = b"", None
        else:
            first, etag = get(0, min(RANGE_SIZE, size) - 1)
        return RangeReader(
            first, size, RANGE_SIZE, lambda s, e: get(s, e, etag)[0], workers=RANGE_WORKERS, window=RANGE_WORKERS * 2
        )

    def materialize(self, ref: Any, out: str, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
        """Write the files of ``ref`` to ``out`` (verified; nothing is left at ``out`` on any error)."""
        from ..files.output_dir import atomic_out
        from .records import check_relpath

        bundle = self.export_version(self._bare(ref)).check()
        for f in bundle.files:
            check_relpath(f.path)
        with atomic_out(out, force) as tmp:
            for f in bundle.files:
                dest = os.path.join(tmp, *f.path.split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                self.fetch_blob(
                    f.digest, dest, f.size, progress, what=f"blob sha256:{f.digest} ({bundle.ref} {f.path})"
                )
        files = [{"path": f.path, "digest": "sha256:" + f.digest, "size": f.size} for f in bundle.files]
        return {
            "ref": bundle.ref,
            "digest": "sha256:" + bundle.digest,
            "out": os.path.abspath(out),
            "files": files,
            "bytes": bundle.size,
        }

    # -- writing ------------------------------------------------------------------------------------
    def upload_missing(self, files: Iterable[LocalFile], progress: Progress | None = None) -> int:
        """Upload the blobs the server lacks; returns the bytes sent."""
        files = list({f.sha256: f for f in files}.values())
        absent = set(self._json("POST", f"{API}/blobs/missing", body={"digests": [f.sha256 for f in files]})["missing"])
        sent = 0
        for f in files:
            if f.sha256 not in absent:
                if progress:
                    progress(f.size)
                continue
            with open(f.source, "rb") as src:
                self._request(
                    "PUT",
                    f"{API}/blobs/{f.sha256}",
                    raw=_ProgressFile(src, progress),
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(f.size)},
                )
            sent += f.size
        return sent

    def publish(
        self,
        name: str,
        manifest: dict[str, Any],
        files: list[LocalFile],
        *,
        parents: Iterable[ParentSpec] = (),
        aliases: Iterable[str] = (),
        tags: dict[str, str] | None = None,
        base: dict[str, Any] | None = None,
        kind: str = "adapter",
        created_by: str | None = None,
        progress: Progress | None = None,
        alias_guard: Any = None,
    ) -> Published:
        """Upload the blobs, then create the version on the server (which records the token's name as
        ``created_by`` and runs the promotion gate for protected aliases: ``created_by`` and
        ``alias_guard`` are the server's business and ignored here)."""
        body = {
            "name": name,
            "manifest": manifest,
            "kind": kind,
            "base": base,
            "tags": dict(tags or {}),
            "aliases": list(aliases),
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files],
            "parents": [
                {"relation": p.relation, "ref": p.ref, "digest": p.digest, "details": p.details} for p in parents
            ],
        }
        return self._commit(f"{API}/versions", body, files, progress)

    def import_bundle(
        self,
        bundle: VersionBundle,
        files: list[LocalFile],
        progress: Progress | None = None,
        created_by: str | None = None,
    ) -> Published:
        bundle.check()
        return self._commit(f"{API}/versions/import", bundle.to_dict(), files, progress)

    def _commit(self, path: str, body: dict[str, Any], files: list[LocalFile], progress: Progress | None) -> Published:
        """Upload the blobs the server lacks, then create the version; once more when the server's ``gc``
        removed a blob in between (the server re-checks them when it commits, and says so)."""
        sent = 0
        for attempt in (1, 2):
            sent += self.upload_missing(files, progress)
            try:
                return _published(self._json("POST", path, body=body), sent)
            except (InvalidInput, IntegrityError) as exc:
                if attempt == 2 or not any(m in str(exc) for m in (BLOBS_GONE, NEVER_UPLOADED)):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def move_alias(
        self,
        name: str,
        alias: str,
        version: str,
        reason: str | None = None,
        force: bool = False,
        gate: bool | None = None,
    ) -> dict[str, Any]:
        return self._json(
            "POST",
            f"{API}/aliases",
            body={
                "name": name,
                "alias": alias,
                "version": str(version),
                "reason": reason,
                "force": force,
                "gate": bool(gate),
            },
        )

    def remove_alias(self, name: str, alias: str, reason: str | None = None) -> dict[str, Any]:
        return self._json("POST", f"{API}/aliases/remove", body={"name": name, "alias": alias, "reason": reason})

    def set_tags(self, ref: str, set_: dict[str, str], remove: Iterable[str] = ()) -> dict[str, str]:
        return self._json("POST", f"{API}/tags", body={"ref": self._bare(ref), "set": set_, "remove": list(remove)})

    def add_evaluation(
        self, ref: str, data_digest: str, metrics: dict[str, Any], details: dict[str, Any] | None = None
    ) -> None:
        self._json(
            "POST",
            f"{API}/evaluations",
            body={"ref": self._bare(ref), "data_digest": data_digest, "metrics": metrics, "details": details},
        )

    # -- administration -----------------------------------------------------------------------------
    def create_token(
        self, name: str, scope: str, namespace: str | None = None, expires: str | None = None
    ) -> dict[str, Any]:
        return self._json(
            "POST", f"{API}/tokens", body={"name": name, "scope": scope, "namespace": namespace, "expires": expires}
        )

    def list_tokens(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        return self._json("GET", f"{API}/tokens", query={"all": "true" if include_revoked else None})

    def revoke_token(self, name: str) -> dict[str, Any]:
        return self._json("DELETE", f"{API}/tokens/{quote(name, safe='')}")

    def audit(self, limit: int = 100, actor: str | None = None, action: str | None = None) -> list[dict[str, Any]]:
        return self._json("GET", f"{API}/audit", query={"limit": limit, "actor": actor, "action": action})

    def gc(self, grace: float = 600.0, dry_run: bool = False) -> dict[str, Any]:
        return self._json("POST", f"{API}/gc", body={"grace": grace, "dry_run": dry_run})

    def describe(self) -> str:
        return self.url


def _published(d: dict[str, Any], sent: int) -> Published:
    return Published(
        d["name"], d["version"], d["digest"].removeprefix("sha256:"), d["created"], d.get("base_fingerprint"), sent
    )


def _short(reason: Any) -> str:
    text = str(reason)
    for marker in ("Connection refused", "timed out", "Name or service not known", "Connection reset"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(reason).__name__


class _ProgressFile:
    """A file urllib3 streams as a request body, reporting progress as it is read."""

    def __init__(self, f: Any, progress: Progress | None):
        self.f, self.progress = f, progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n if n and n > 0 else CHUNK)
        if data and self.progress:
            self.progress(len(data))
        return data
