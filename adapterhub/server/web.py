"""The web UI of ``adapterhub serve``: server-rendered pages over the same registry, tokens and namespaces as
the API. Tables and text need no JavaScript; the lineage graph (cytoscape.js + dagre) and the loss chart
(uPlot) are drawn by vendored scripts under ``/ui/static`` — no CDN, the pages work offline.

Read-only: the UI changes nothing, so the only forms are sign-in and sign-out (CSRF-protected, see
:mod:`.websession`). Every page needs scope ``read``; a namespace-bound token sees only its namespace
(another namespace's pages answer 404 and name nothing of it, in search and lineage neighbours too);
the audit log needs ``admin``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from typing import Any, Callable
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from ..errors import AdapterhubError, NotFound
from ..registry import audit, tokens
from ..registry.entities import VersionInfo
from ..registry.tokens import AuthError, Forbidden, Principal
from . import webdata, websession

log = logging.getLogger("adapterhub.server")
HERE = os.path.dirname(os.path.abspath(__file__))
#: scripts and styles only from this server; inline <script type="application/json"> data is never executed
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginNeeded(Exception):
    """No valid session: the page redirects to the sign-in form."""


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def fmt(value: Any) -> str:
    """Numbers as people read them (4 significant digits); other values as text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def signed(value: Any) -> str:
    return f"{value:+.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(os.path.join(HERE, "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters.update(
        size=human_size, fmt=fmt, signed=signed, short=lambda d: (d or "")[:19], q=lambda s: quote(str(s), safe="")
    )
    env.globals["is_forced"] = webdata.is_forced
    return env


def number(text: str, default: int = 1) -> int:
    """A page number from the query string; anything else is ``default`` (a page, never an error)."""
    return int(text) if text.isdigit() and len(text) < 10 else default


def safe_next(target: str | None) -> str:
    """Only a path of this site (``/x``, not ``//host`` or ``http://``) is followed after sign-in."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 33 or ord(c) == 127 for c in target)
    ):  # browsers drop tabs: "/\t/host" is "//host"
        return "/"
    return target


def version_context(registry: Any, who: Principal, info: VersionInfo) -> dict[str, Any]:
    """What version.html shows of ``info`` (a version ``who`` may see)."""
    graph = webdata.visible_lineage(registry, who, info.ref)
    for e in graph["edges"]:
        e["label"] = webdata.edge_label(e)
    training = info.manifest.get("training") or {}
    return {
        "v": info,
        "graph": graph,
        "loss": training.get("loss_history") or [],
        "alias_events": webdata.alias_events_of(registry, info),
        "gate": webdata.gate_status(registry, info),
        "evaluations": [{**e.to_dict(), "key": webdata.key_metric(e.metrics, e.details)} for e in info.evaluations],
        "tracking": info.manifest.get("tracking") or {},
        "data_check": info.manifest.get("data_check"),
    }


def mount(app: FastAPI, registry: Any) -> None:
    """Add the UI's pages to ``app`` (the API's app, serving ``registry``)."""
    env = templates()
    app.mount("/ui/static", StaticFiles(directory=os.path.join(HERE, "static")), name="ui-static")
    secret_box: dict[str, bytes] = {}

    def secret() -> bytes:
        if "key" not in secret_box:
            secret_box["key"] = websession.server_secret()
        return secret_box["key"]

    def render(
        request: Request, template_name: str, status: int = 200, who: Principal | None = None, **ctx: Any
    ) -> HTMLResponse:
        csrf = request.cookies.get(websession.CSRF_COOKIE) or websession.new_csrf()
        html = env.get_template(template_name).render(who=who, csrf=csrf, path=request.url.path, **ctx)
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        if request.cookies.get(websession.CSRF_COOKIE) != csrf:
            response.set_cookie(websession.CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/")
        return response

    def session(request: Request) -> Principal:
        who = websession.session_principal(registry, secret(), request.cookies.get(websession.SESSION_COOKIE))
        if who is None:
            raise LoginNeeded()
        who.require("read", "the web UI")
        return who

    def page(fn: Callable[..., tuple[str, dict[str, Any]]]) -> Callable[..., Any]:
        """A page handler: the session's principal is passed in; errors become an HTML page with the API's
        status (401 -> the sign-in form)."""

        @functools.wraps(fn)
        async def handler(request: Request, **kwargs: Any) -> Response:
            who = None
            try:
                who = await run_in_threadpool(session, request)
                template, ctx = await run_in_threadpool(fn, who, **kwargs)
                return render(request, template, who=who, **ctx)
            except LoginNeeded:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
            except Forbidden as exc:
                return render(request, "error.html", 403, who=who, title="Forbidden", message=str(exc))
            except NotFound:
                return render(
                    request,
                    "error.html",
                    404,
                    who=who,
                    title="Not found",
                    message="Nothing here, or nothing this token may see.",
                )
            except AdapterhubError as exc:
                from .statuses import status_of

                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return render(request, "error.html", status_of(exc), who=who, title="Error", message=msg)

        params = [p for p in inspect.signature(fn).parameters.values() if p.name != "who"]
        handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request), *params]
        )
        return handler

    # -- signing in and out -----------------------------------------------------------------------
    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        return render(request, "login.html", next=safe_next(next), error=None)

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
        token: str = Form("", max_length=200),
        csrf: str = Form("", max_length=100),
        next: str = Form("/", max_length=2000),
    ) -> Response:
        client = request.client.host if request.client else None
        if not websession.csrf_ok(request.cookies.get(websession.CSRF_COOKIE), csrf):
            return render(request, "login.html", 400, next=safe_next(next), error="The form expired; sign in again.")
        try:
            who = tokens.authenticate(registry, token)
            who.require("read", "the web UI")
        except (AuthError, Forbidden) as exc:
            actor = tokens.name_of_key(registry, token)
            with registry.write() as conn:
                audit.record(conn, actor, "login", None, 401, str(exc).splitlines()[0], client)
            return render(request, "login.html", 401, next=safe_next(next), error="Token missing, expired or revoked.")
        with registry.write() as conn:
            audit.record(conn, who.name, "login", None, 200, "web UI session", client)
        response = RedirectResponse(safe_next(next), status_code=303)
        response.set_cookie(
            websession.SESSION_COOKIE,
            websession.make_session(secret(), websession.key_id_of(token)),
            max_age=websession.SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            path="/",
            secure=request.url.scheme == "https",
        )
        response.set_cookie(websession.CSRF_COOKIE, websession.new_csrf(), httponly=True, samesite="strict", path="/")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form("", max_length=100)) -> Response:
        if not websession.csrf_ok(request.cookies.get(websession.CSRF_COOKIE), csrf):
            return render(request, "error.html", 400, title="Error", message="The form expired; reload the page.")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(websession.SESSION_COOKIE, path="/")
        return response

    # -- pages ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    @page
    def home(who: Principal, q: str = "", method: str = "", base: str = "", page: str = "1"):
        data = webdata.search(registry, who, q[:200], method[:64], base[:71], number(page))
        query = {k: v for k, v in (("q", q), ("method", method), ("base", base)) if v}
        return "home.html", {"data": data, "q": q, "method": method, "base": base, "query": urlencode(query)}

    @app.get("/models/{ns}/{name}", include_in_schema=False)
    @page
    def name_page(who: Principal, ns: str, name: str, page: str = "1"):
        return "name.html", {"data": webdata.name_versions(registry, who, f"{ns}/{name}", number(page))}

    @app.get("/models/{ns}", include_in_schema=False)
    def namespace_page(ns: str) -> Response:
        return RedirectResponse("/?" + urlencode({"q": ns + "/"}), status_code=303)

    def version_of(who: Principal, name: str, version: str) -> VersionInfo:
        if not who.sees(name):
            raise NotFound(name)
        return registry.show(f"{name}:{version}" if version.isdigit() else f"{name}@{version}")

    @app.get("/models/{ns}/{name}/{version}", include_in_schema=False)
    @page
    def version_page(who: Principal, ns: str, name: str, version: str):
        return "version.html", version_context(registry, who, version_of(who, f"{ns}/{name}", version))

    @app.get("/compare", include_in_schema=False)
    @page
    def compare_page(who: Principal, a: str = "", b: str = ""):
        from ..registry.refs import parse_ref
        from ..training.evaluate import compare

        if not (a.strip() and b.strip()):
            return "compare.html", {"a": a, "b": b, "cmp": None}
        for ref in (a, b):
            r = parse_ref(ref[:300])
            if r.remote is not None or r.name is None or not who.sees(r.name):
                raise NotFound(ref)
        return "compare.html", {"a": a, "b": b, "cmp": compare(registry, a.strip(), b.strip())}

    @app.get("/aliases/{ns}/{name}/{alias}", include_in_schema=False)
    @page
    def alias_page(who: Principal, ns: str, name: str, alias: str):
        full = f"{ns}/{name}"
        if not who.sees(full):
            raise NotFound(full)
        events = [{**e, "forced": webdata.is_forced(e["reason"])} for e in registry.alias_history(full, alias)]
        return "alias.html", {"name": full, "alias": alias, "events": events[::-1]}

    @app.get("/audit", include_in_schema=False)
    @page
    def audit_page(who: Principal, actor: str = "", action: str = "", before: str = ""):
        who.require("admin", "reading the audit log")
        with registry.read() as conn:
            events = audit.list_events(conn, 100, actor[:256] or None, action[:64] or None, number(before, 0) or None)
        kept = {k: v for k, v in (("actor", actor), ("action", action)) if v}
        older = urlencode({**kept, "before": events[-1]["id"]}) if len(events) == 100 else None
        return "audit.html", {"events": events, "actor": actor, "action": action, "older": older}
