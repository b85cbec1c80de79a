"""The registry's HTTP API (``/api/v1``), its health probes, and the rules every request passes.

Every ``/api/v1`` request carries ``Authorization: Bearer ahub_...``. The token decides everything:

- its **scope** (``read`` < ``write`` < ``promote`` < ``admin``) gates each endpoint;
- its **namespace**, if bound, hides every name outside it (listings are filtered; a ref or blob of
  another namespace answers 403, or 404 for digest refs, which do not confirm that it exists);
- its **name** is the actor of every change (``created_by``, alias history, the audit log); nothing the
  client sends (``ADAPTERHUB_USER``, ``X-Forwarded-User`` ...) can change it;
- the promotion gate runs here, inside the alias transaction, so no client can skip it.

Errors are JSON ``{"error": "one line"}`` with the status: 400 bad input, 401 token missing/expired/
revoked, 403 scope or namespace, 404 not found, 409 refused by the gate or an integrity check, 411/413 an
upload without a length or over ``max_blob_size``. Writes and refusals go to the audit log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import AdapterhubError, IntegrityError, InvalidInput, NotFound
from ..registry import audit, tokens
from ..registry.blobs import CHUNK, check_digest
from ..registry.bundle import VersionBundle
from ..registry.entities import Edge
from ..registry.records import NEVER_UPLOADED
from ..registry.registry import LocalFile, ParentSpec, Registry, is_external_ref
from ..registry.tokens import AuthError, Principal
from .bodies import (
    AliasBody,
    AliasRemoveBody,
    DigestsBody,
    EvaluationBody,
    FileSpec,
    GcBody,
    PublishBody,
    TagBody,
    TokenBody,
)
from .statuses import LengthRequired, PayloadTooLarge, status_of

log = logging.getLogger("adapterhub.server")

DEFAULT_MAX_BLOB_SIZE = 20 * 1000**3  # 20 GB
PRESIGN_SECONDS = 300
#: the largest request body outside blob uploads (JSON is read whole before it is validated)
MAX_JSON_BODY = 16 * 1024**2


@dataclass
class Settings:
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE
    presign_seconds: int = PRESIGN_SECONDS


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413), blob uploads excepted (they have their own limit,
    checked before their body is read): by ``Content-Length`` up front, else while the body streams in."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["method"] == "PUT" and scope["path"].startswith("/api/v1/blobs/")):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        too_large = JSONResponse({"error": f"request body over {self.limit} bytes"}, status_code=413)
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_large(scope, receive, send)
        seen, over, started = 0, False, False

        async def limited() -> dict[str, Any]:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # stop reading: the app sees the client go away
                over = True
                return {"type": "http.disconnect"}
            return message

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            if over and not started:
                return  # the app answers the "disconnect": drop that answer, ours follows
            started = True
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except Exception:
            if not over:
                raise
        if over and not started:
            await too_large(scope, receive, send)


# -- the application --------------------------------------------------------------------------------
def create_app(registry: Registry, settings: Settings | None = None) -> FastAPI:
    """The FastAPI application serving ``registry``."""
    settings = settings or Settings()
    app = FastAPI(
        title="adapterhub registry",
        version=__version__,
        description="The adapterhub registry over HTTP. Send `Authorization: Bearer ahub_...`.",
    )
    app.state.registry = registry
    app.state.settings = settings

    def bearer(request: Request) -> str | None:
        header = request.headers.get("authorization") or ""
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def principal(request: Request) -> Principal:
        token = bearer(request)
        try:
            who = tokens.authenticate(registry, token)
        except AuthError:
            request.state.refused_actor = tokens.name_of_key(registry, token)
            raise
        request.state.principal = who
        return who

    def auditing(action: str):
        """Mark a write endpoint: its outcome (success or refusal) goes to the audit log."""

        def mark(request: Request) -> None:
            request.state.action = action

        return Depends(mark)

    def record(request: Request, status: int, detail: str | None, target: str | None = None) -> None:
        action = getattr(request.state, "action", None)
        if action is None and status not in (401, 403):
            return
        who = getattr(request.state, "principal", None)
        actor = who.name if who else getattr(request.state, "refused_actor", None)
        try:
            with registry.write() as conn:
                audit.record(
                    conn,
                    actor,
                    action or f"{request.method} {request.url.path}"[:64],
                    target or getattr(request.state, "target", None),
                    status,
                    detail,
                    request.client.host if request.client else None,
                )
        except Exception:  # the answer must not fail because the log could not be written
            log.exception("could not write the audit log")

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if status == 500:
            log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
            message = f"internal error ({type(exc).__name__}); the server log has the details"
        await run_in_threadpool(record, request, status, message)
        return JSONResponse({"error": message}, status_code=status)

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'malformed')}"
        await run_in_threadpool(record, request, 400, message)
        return JSONResponse({"error": message}, status_code=400)

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    app.add_middleware(BodyLimit, limit=MAX_JSON_BODY)
    app.add_exception_handler(AdapterhubError, on_error)
    app.add_exception_handler(Exception, on_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)

    def done(request: Request, target: str, detail: str | None = None) -> None:
        record(request, 200, detail, target)

    def allowed(who: Principal, ref: str) -> Any:
        """``ref`` parsed, if ``who`` may name it: a bare ref (no remote prefix); a name ref inside its
        namespace (a digest ref is checked once resolved, by :func:`seen`)."""
        from ..registry.refs import parse_ref

        r = parse_ref(ref)
        if r.remote is not None:
            raise InvalidInput(f"ref '{ref}' names a remote; the server takes refs of its own registry")
        if r.name is not None:
            who.require_name(r.name, "ref")
        return r

    def seen(who: Principal, r: Any, name: str) -> None:
        """A version ``r`` resolved to, hidden (as if absent) when its name is outside ``who``'s namespace."""
        if not who.sees(name):
            raise NotFound(f"no version with digest sha256:{r.digest} in this registry")

    def visible(who: Principal, ref: str) -> dict[str, Any]:
        """Resolve ``ref`` for ``who`` (see :func:`allowed` and :func:`seen`)."""
        r = allowed(who, ref)
        v = registry.resolve(r)
        seen(who, r, v["name"])
        return v

    def hide(who: Principal, edges: tuple[Edge, ...]) -> tuple[Edge, ...]:
        """Lineage edges as ``who`` may see them: refs outside its namespace become external."""
        return tuple(
            replace(e, ref=None, external=True)
            if e.ref and not e.external and not who.sees(e.ref.split(":", 1)[0])
            else e
            for e in edges
        )

    # -- probes and identity ----------------------------------------------------------------------
    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, Any]:
        """The process answers."""
        return {"ok": True, "version": __version__}

    @app.get("/readyz", tags=["probes"])
    def readyz() -> JSONResponse:
        """The database and the blob store answer (503 otherwise, naming which does not)."""
        problems = {}
        try:
            with registry.read() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            problems["database"] = type(exc).__name__
        try:
            registry.store.has("0" * 64)
        except Exception as exc:
            problems["store"] = type(exc).__name__
        return JSONResponse({"ok": not problems, "problems": problems}, status_code=503 if problems else 200)

    @app.get("/api/v1/whoami", tags=["tokens"])
    def whoami(who: Principal = Depends(principal)) -> dict[str, Any]:
        """The token's name, scope and namespace."""
        return who.to_dict()

    # -- reading ----------------------------------------------------------------------------------
    @app.get("/api/v1/versions", tags=["read"])
    def list_versions(
        name: str | None = Query(None, max_length=129), who: Principal = Depends(principal)
    ) -> list[dict[str, Any]]:
        """Every version (of ``name``) the token may see."""
        if name:
            who.require_name(name, "name")
        return [r.to_dict() for r in registry.list(name) if who.sees(r.name)]

    @app.get("/api/v1/resolve", tags=["read"])
    def resolve(ref: str = Query(..., max_length=300), who: Principal = Depends(principal)) -> dict[str, Any]:
        """The version a ref names: name, number, digest, kind, method."""
        v = visible(who, ref)
        return {
            "name": v["name"],
            "version": v["number"],
            "ref": v["ref"],
            "digest": "sha256:" + v["digest"],
            "kind": v["kind"],
            "method": v["method"],
            "base_fingerprint": v["base_fingerprint"],
        }

    @app.get("/api/v1/show", tags=["read"])
    def show(ref: str = Query(..., max_length=300), who: Principal = Depends(principal)) -> dict[str, Any]:
        """One version: manifest, files, aliases, tags, lineage, evaluations."""
        r = allowed(who, ref)
        info = registry.show(r)
        seen(who, r, info.name)
        return replace(
            info,
            parents=hide(who, info.parents),
            children=tuple(c for c in info.children if c.ref and who.sees(c.ref.split(":", 1)[0])),
        ).to_dict()

    @app.get("/api/v1/export", tags=["read"])
    def export(
        request: Request, ref: str = Query(..., max_length=300), who: Principal = Depends(principal)
    ) -> dict[str, Any]:
        """A version as it travels (manifest text verbatim, files, edges, tags, evaluations, base)."""
        r = allowed(who, ref)
        bundle = registry.export_version(r)
        seen(who, r, bundle.name)
        for e in bundle.edges:
            if e.ref and not is_external_ref(e.ref) and not who.sees(e.ref.split(":", 1)[0]):
                e.ref = None
        return bundle.to_dict()

    @app.get("/api/v1/lineage", tags=["read"])
    def lineage(
        ref: str = Query(..., max_length=300), depth: int = Query(50, ge=1, le=200), who: Principal = Depends(principal)
    ) -> dict[str, Any]:
        """Ancestors and descendants of a version; nodes outside the token's namespace are anonymous."""
        from ..registry.maintenance import lineage as graph_of

        v = visible(who, ref)
        graph = graph_of(registry, v["ref"], depth=depth)
        hidden = {
            n["id"]
            for n in graph["nodes"]
            if n.get("ref") and not n["external"] and not who.sees(n["ref"].split(":", 1)[0])
        }
        if hidden:
            rename = {
                h: f"(outside {who.namespace}) {n['digest'][:19]}"
                for n in graph["nodes"]
                for h in [n["id"]]
                if h in hidden
            }
            graph["nodes"] = [
                (
                    {"id": rename[n["id"]], "ref": None, "digest": n["digest"], "method": None, "external": True}
                    if n["id"] in hidden
                    else n
                )
                for n in graph["nodes"]
            ]
            graph["edges"] = [
                {**e, "child": rename.get(e["child"], e["child"]), "parent": rename.get(e["parent"], e["parent"])}
                for e in graph["edges"]
            ]
        return graph

    @app.get("/api/v1/aliases/history", tags=["read"])
    def alias_history(
        name: str = Query(..., max_length=129),
        alias: str = Query(..., max_length=64),
        who: Principal = Depends(principal),
    ) -> list[dict[str, Any]]:
        who.require_name(name, "name")
        return registry.alias_history(name, alias)

    @app.get("/api/v1/verify", tags=["read"])
    def verify(ref: str | None = Query(None, max_length=300), who: Principal = Depends(principal)) -> dict[str, Any]:
        """Re-hash the blobs of ``ref`` (read scope), or of every version (admin scope)."""
        from ..registry.maintenance import verify as verify_blobs

        if ref is None:
            who.require("admin", "verifying the whole registry")
            return verify_blobs(registry)
        return verify_blobs(registry, visible(who, ref)["ref"])

    # -- blobs ------------------------------------------------------------------------------------
    def blob_visible(who: Principal, digest: str) -> int:
        """The blob's size, if a version the token may see references it; else NotFound."""
        import sqlalchemy as sa

        from ..registry import schema as t

        check_digest(digest)
        f, v, a = t.files, t.versions, t.adapters
        q = (
            sa.select(f.c.size, a.c.name)
            .join(v, v.c.id == f.c.version_id)
            .join(a, a.c.id == v.c.adapter_id)
            .where(f.c.blob_digest == digest)
        )
        if who.namespace is not None:
            q = q.where(a.c.name.startswith(who.namespace + "/", autoescape=True))
        with registry.read() as conn:
            row = conn.execute(q.limit(1)).first()
        if row is None:
            raise NotFound(f"no blob sha256:{digest} in a version this token may read")
        return row.size

    @app.post("/api/v1/blobs/locate", tags=["blobs"])
    def locate(body: DigestsBody, who: Principal = Depends(principal)) -> dict[str, Any]:
        """Where to download each blob: a presigned store URL (bytes go straight from the store), or
        ``null`` (GET ``/api/v1/blobs/{digest}`` from this server, with the token)."""
        out = {}
        for digest in body.digests:
            size = blob_visible(who, digest)
            out[digest] = {"size": size, "url": registry.store.presigned_url(digest, settings.presign_seconds)}
        return {"blobs": out}

    @app.get("/api/v1/blobs/{digest}", tags=["blobs"])
    def get_blob(digest: str, who: Principal = Depends(principal)):
        """The blob's bytes (HTTP Range supported from a file store); a presigned redirect from S3."""
        size = blob_visible(who, digest)
        path = registry.store.local_path(digest)
        if path:
            return FileResponse(path, media_type="application/octet-stream")
        url = registry.store.presigned_url(digest, settings.presign_seconds)
        if url:
            return RedirectResponse(url, status_code=307)
        stream = registry.store.open(digest, size)  # never more than the row declares

        def chunks():
            with stream:
                while data := stream.read(CHUNK):
                    yield data

        return StreamingResponse(chunks(), media_type="application/octet-stream", headers={"Content-Length": str(size)})

    @app.post("/api/v1/blobs/missing", tags=["blobs"])
    def missing(body: DigestsBody, who: Principal = Depends(principal)) -> dict[str, Any]:
        """Which of these blobs the store lacks (upload those before committing a version)."""
        who.require("write", "pushing")
        for d in body.digests:
            check_digest(d)
        return {"missing": [d for d in body.digests if not registry.store.has(d)]}

    @app.put("/api/v1/blobs/{digest}", tags=["blobs"])
    async def put_blob(digest: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        """Upload one blob. ``Content-Length`` is required and checked against ``max_blob_size`` before
        the body is read; the bytes are hashed while they arrive and stored only if they match."""
        check_digest(digest)
        who.require("write", "pushing")
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise LengthRequired("an upload needs a Content-Length header")
        size = int(length)
        if size > settings.max_blob_size:
            raise PayloadTooLarge(
                f"blob of {size} bytes is over this server's limit of {settings.max_blob_size} bytes (--max-blob-size)"
            )
        if await run_in_threadpool(registry.store.has, digest):
            return {"digest": digest, "stored": False}
        fd, tmp = tempfile.mkstemp(prefix="adapterhub-upload-")
        try:
            h, got = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    got += len(chunk)
                    if got > size:
                        raise InvalidInput(f"upload of sha256:{digest} sent more than its Content-Length ({size})")
                    h.update(chunk)
                    out.write(chunk)
            if got != size:
                raise InvalidInput(f"upload of sha256:{digest} ended after {got} of {size} bytes")
            if h.hexdigest() != digest:
                raise IntegrityError(f"upload of sha256:{digest}: the bytes hash to sha256:{h.hexdigest()}")
            stored = await run_in_threadpool(registry.store.put, digest, tmp, size)
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return {"digest": digest, "stored": stored}

    # -- writing ----------------------------------------------------------------------------------
    def check_blobs(files: list[FileSpec]) -> list[LocalFile]:
        absent = [f.sha256 for f in files if not registry.store.has(check_digest(f.sha256))]
        if absent:
            raise InvalidInput(f"{len(absent)} blob(s) {NEVER_UPLOADED} (e.g. sha256:{absent[0]}): upload them first")
        return [LocalFile(f.path, "", f.sha256, f.size) for f in files]

    def alias_scope(who: Principal, name: str, aliases: list[str], force: bool = False) -> None:
        from ..registry.gates import protected_aliases

        protected = sorted(set(aliases) & protected_aliases())
        if protected or force:
            who.require(
                "promote",
                f"moving the protected alias {name}@{(protected or aliases)[0]}" + (" with --force" if force else ""),
            )

    @app.post("/api/v1/versions", tags=["write"], dependencies=[auditing("push")])
    def publish(body: PublishBody, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        """Create a version from uploaded blobs (two-phase: the blobs are in the store, verified; one
        transaction makes the version visible). Protected aliases pass the promotion gate."""
        from ..registry.gates import alias_guard

        request.state.target = body.name
        who.require("write", "pushing")
        who.require_name(body.name, "pushing to")
        alias_scope(who, body.name, body.aliases)
        files = check_blobs(body.files)
        for p in body.parents:
            if p.ref and not is_external_ref(p.ref):
                visible(who, p.ref)
        pub = registry.publish(
            body.name,
            body.manifest,
            files,
            parents=[ParentSpec(p.relation, p.ref, p.digest, p.details) for p in body.parents],
            aliases=body.aliases,
            tags=body.tags,
            base=body.base,
            kind=body.kind,
            created_by=who.name,
            alias_guard=alias_guard() if body.aliases else None,
        )
        done(request, pub.ref, ("created" if pub.created else "already present") + f" sha256:{pub.digest[:12]}")
        return pub.to_dict()

    @app.post("/api/v1/versions/import", tags=["write"], dependencies=[auditing("push")])
    def import_version(body: dict[str, Any], request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        """Store a version copied from another registry, manifest byte for byte (same digest)."""
        try:
            bundle = VersionBundle.from_dict(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"invalid version bundle: {type(exc).__name__}: {exc}") from None
        request.state.target = bundle.name
        who.require("write", "pushing")
        who.require_name(bundle.name, "pushing to")
        bundle.check()
        files = check_blobs([FileSpec(path=f.path, sha256=f.digest, size=f.size) for f in bundle.files])
        pub = registry.import_bundle(bundle, files, created_by=who.name)
        done(request, pub.ref, ("created" if pub.created else "already present") + f" sha256:{pub.digest[:12]}")
        return pub.to_dict()

    @app.post("/api/v1/aliases", tags=["write"], dependencies=[auditing("alias.set")])
    def set_alias(body: AliasBody, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        """Move an alias; protected ones through the promotion gate (``force`` needs a reason and scope
        ``promote``, and is recorded with what it overrode)."""
        from ..registry.gates import set_alias as move

        request.state.target = f"{body.name}@{body.alias}"
        who.require("write", "moving aliases")
        who.require_name(body.name, "moving an alias of")
        alias_scope(who, body.name, [body.alias], body.force)
        r = move(
            registry,
            body.name,
            body.alias,
            body.version,
            reason=body.reason,
            force=body.force,
            gate=body.gate,
            by=who.name,
        )
        done(
            request,
            f"{body.name}@{body.alias}",
            f"-> {r['ref']}"
            + (" (forced)" if r["forced"] else "")
            + (f" reason: {body.reason}" if body.reason else ""),
        )
        return r

    @app.post("/api/v1/aliases/remove", tags=["write"], dependencies=[auditing("alias.rm")])
    def remove_alias(body: AliasRemoveBody, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        request.state.target = f"{body.name}@{body.alias}"
        who.require("write", "removing aliases")
        who.require_name(body.name, "removing an alias of")
        alias_scope(who, body.name, [body.alias])
        r = registry.remove_alias(body.name, body.alias, reason=body.reason, by=who.name)
        done(request, f"{body.name}@{body.alias}", f"removed (was {r['previous']})")
        return r

    @app.post("/api/v1/tags", tags=["write"], dependencies=[auditing("tag")])
    def tag(body: TagBody, request: Request, who: Principal = Depends(principal)) -> dict[str, str]:
        request.state.target = body.ref
        who.require("write", "tagging")
        v = visible(who, body.ref)
        result = registry.set_tags(v["ref"], body.set, body.remove)
        done(
            request, v["ref"], ", ".join([f"{k}={val}" for k, val in body.set.items()] + [f"-{k}" for k in body.remove])
        )
        return result

    @app.post("/api/v1/evaluations", tags=["write"], dependencies=[auditing("eval")])
    def add_evaluation(body: EvaluationBody, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        request.state.target = body.ref
        who.require("write", "storing evaluations")
        v = visible(who, body.ref)
        registry.add_evaluation(v["ref"], body.data_digest, body.metrics, body.details)
        done(request, v["ref"], f"on {body.data_digest[:19]}")
        return {"ref": v["ref"], "stored": True}

    # -- administration ---------------------------------------------------------------------------
    @app.get("/api/v1/tokens", tags=["tokens"])
    def list_tokens(all: bool = False, who: Principal = Depends(principal)) -> list[dict[str, Any]]:
        who.require("admin", "listing tokens")
        return tokens.list_tokens(registry, include_revoked=all)

    @app.post("/api/v1/tokens", tags=["tokens"], dependencies=[auditing("token.create")])
    def create_token(body: TokenBody, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        request.state.target = body.name
        who.require("admin", "creating tokens")
        return tokens.create_token(registry, body.name, body.scope, body.namespace, body.expires, created_by=who.name)

    @app.delete("/api/v1/tokens/{name}", tags=["tokens"], dependencies=[auditing("token.revoke")])
    def revoke_token(name: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        request.state.target = name
        who.require("admin", "revoking tokens")
        return tokens.revoke_token(registry, name, revoked_by=who.name)

    @app.get("/api/v1/audit", tags=["admin"])
    def audit_log(
        limit: int = Query(100, ge=1, le=10_000),
        actor: str | None = None,
        action: str | None = None,
        before: int | None = None,
        who: Principal = Depends(principal),
    ) -> list[dict[str, Any]]:
        who.require("admin", "reading the audit log")
        with registry.read() as conn:
            return audit.list_events(conn, limit, actor, action, before)

    @app.post("/api/v1/gc", tags=["admin"], dependencies=[auditing("gc")])
    def gc(body: GcBody, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        from ..registry.maintenance import gc as collect

        who.require("admin", "gc")
        r = collect(registry, grace=body.grace, dry_run=body.dry_run)
        done(request, None, f"removed {r['removed_blobs']} blobs" + (" (dry run)" if body.dry_run else ""))
        return r

    from .web import mount

    mount(app, registry)  # the web UI (adapterhub/server/web.py)
    return app


def create_app_from_env() -> FastAPI:
    """The app for the registry the environment names (what each uvicorn worker process builds):
    ``ADAPTERHUB_REGISTRY_DB`` + ``ADAPTERHUB_REGISTRY_STORE``, else the local registry of
    ``ADAPTERHUB_HOME``; ``ADAPTERHUB_SERVER_MAX_BLOB_SIZE`` bytes."""
    from ..api import open_registry

    settings = Settings(max_blob_size=int(os.environ.get("ADAPTERHUB_SERVER_MAX_BLOB_SIZE", DEFAULT_MAX_BLOB_SIZE)))
    return create_app(open_registry().ready(), settings)
