"""The web UI over HTTP against a real ``adapterhub serve`` (no browser): sign-in and its cookie, sessions
that end with their token, namespace isolation on every page, the pages' content, and pagination that reads
one page of rows however many versions a name has."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest
from serverproc import RegistryServer
from webhub import cli_in, token


@pytest.fixture
def ui(web_hub):
    return web_hub


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Client:
    """A cookie-keeping HTTP client that does not follow redirects: ``get``/``post`` -> (status, headers, text)."""

    def __init__(self, url: str):
        self.url, self.jar = url, http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    def _open(self, req):
        try:
            with self.opener.open(req, timeout=30) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def get(self, path: str):
        return self._open(urllib.request.Request(self.url + path))

    def post(self, path: str, form: dict[str, str]):
        return self._open(urllib.request.Request(self.url + path, data=urllib.parse.urlencode(form).encode()))

    def csrf(self, path: str = "/login") -> str:
        status, _, body = self.get(path)
        return re.search(r'name="csrf" value="([^"]+)"', body).group(1)

    def login(self, token: str, next: str = "/"):
        return self.post("/login", {"token": token, "csrf": self.csrf(), "next": next})

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)


def signed_in(ui, role: str) -> Client:
    c = Client(ui["url"])
    status, headers, _ = c.login(ui["tokens"][role])
    assert status == 303 and headers["Location"] == "/", status
    return c


def test_sign_in_sets_a_strict_httponly_session_cookie_without_the_token(ui):
    c = Client(ui["url"])
    status, headers, _ = c.get("/models/acme/chat")
    assert status == 303 and headers["Location"] == "/login?next=%2Fmodels%2Facme%2Fchat"
    status, _, body = c.get("/login?next=/models/acme/chat")
    assert status == 200 and 'name="token"' in body and 'name="csrf"' in body
    # without the form's CSRF value, or with a wrong token: refused
    assert c.post("/login", {"token": ui["tokens"]["read"], "csrf": "forged"})[0] == 400
    status, _, body = c.login("ahub_" + "0" * 16 + "_" + "x" * 43)
    assert status == 401 and "Token missing, expired or revoked" in body
    token = ui["tokens"]["read"]
    status, headers, _ = c.login(token, next="/models/acme/chat")
    assert status == 303 and headers["Location"] == "/models/acme/chat"
    cookie = next(h for h in headers.get_all("Set-Cookie") if h.startswith("ahub_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    secret = token.split("_", 2)[2]
    assert secret not in cookie and token not in cookie
    status, headers, body = c.get("/models/acme/chat")
    assert status == 200 and "acme/chat" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    # an off-site "next" is not followed
    for off_site in ("//evil.example/", "/\t/evil.example/", "/\\evil.example", "https://evil.example/"):
        assert Client(ui["url"]).login(token, next=off_site)[1]["Location"] == "/", off_site
    # sign-out needs the page's CSRF value and ends the session
    assert c.post("/logout", {"csrf": "forged"})[0] == 400
    assert c.post("/logout", {"csrf": c.csrf("/")})[0] == 303
    assert c.get("/")[0] == 303
    events = json.loads(cli_in(ui["home"])("audit", "--json", "--action", "login"))
    assert {(e["actor"], e["status"]) for e in events} >= {("reader", 200), (None, 401)}


def test_a_session_ends_when_its_token_is_revoked_and_cannot_be_forged(ui):
    home = ui["home"]
    c = Client(ui["url"])
    assert c.login(token(home, "short-lived", "read"))[0] == 303
    assert c.get("/")[0] == 200
    # a cookie re-signed for another token's id (the admin's) does not verify
    key_id, expiry, mac = c.cookie("ahub_session").split(".")
    admin_id = ui["tokens"]["admin"].split("_")[1]
    forged = Client(ui["url"])
    forged.jar.set_cookie(
        http.cookiejar.Cookie(
            0,
            "ahub_session",
            f"{admin_id}.{expiry}.{mac}",
            None,
            False,
            "127.0.0.1",
            False,
            False,
            "/",
            True,
            False,
            None,
            False,
            None,
            None,
            {},
        )
    )
    assert forged.get("/audit")[0] == 303
    for junk in ("é.1.x", f"{key_id}.{expiry}", "a" * 4000):  # malformed cookies: signed out, no error
        status, _, _ = forged._open(urllib.request.Request(ui["url"] + "/", headers={"Cookie": f"ahub_session={junk}"}))
        assert status == 303, junk
    cli_in(home)("token", "revoke", "short-lived")
    assert c.get("/")[0] == 303


def test_a_namespace_bound_token_sees_nothing_of_other_namespaces(ui):
    c = signed_in(ui, "acme")
    status, _, body = c.get("/")
    assert status == 200 and "acme/chat" in body and "acme/mix" in body
    assert "other" not in body and "secret" not in body
    found = c.get("/?q=secret")[2]
    assert "No models match" in found and "other/secret" not in found
    for path in (
        "/models/other/secret",
        "/models/other/secret/1",
        "/aliases/other/secret/production",
        "/compare?a=acme/chat:1&b=other/secret:1",
    ):
        status, _, body = c.get(path)
        assert status == 404 and "other/secret" not in body.split("<main>")[1], path
    # the lineage of acme/cross names its acme parent but nothing of the other namespace's
    status, _, body = c.get("/models/acme/cross/1")
    assert status == 200 and "acme/chat:1" in body and "outside your namespace" in body
    digest = signed_in(ui, "read").get("/models/other/secret/1")[2]
    secret_digest = re.search(r"sha256:([0-9a-f]{64})", digest).group(1)
    assert "other/secret" not in body and secret_digest[:12] not in body
    assert c.get("/audit")[0] == 403


def test_pages_show_the_version_its_evaluations_aliases_and_lineage(ui):
    c = signed_in(ui, "admin")
    status, _, home = c.get("/")
    assert status == 200
    row = re.search(r'<a href="/models/acme/chat">acme/chat</a>.*?</tr>', home, re.S).group(0)
    assert "production → 1" in row and "staging → 2" in row and "accuracy 0.8" in row and "+0.3 vs base" in row
    assert "acme/chat" in c.get("/?q=canary")[2] and "acme/mix" not in c.get("/?q=canary")[2]
    assert "acme/chat" not in c.get("/?method=bitfit")[2]

    status, _, page = c.get("/models/acme/chat")
    assert status == 200 and page.index(">2</a>") < page.index(">1</a>")  # newest first
    status, _, v2 = c.get("/models/acme/chat/2")
    assert status == 200
    for text in (
        "adapter_model.safetensors",
        "stage",
        "canary",
        "eval.jsonl",
        "+0.3",
        "canary looks good",
        "adapterhub pull hub:acme/chat:2 --out acme-chat-2",
        "--merged --base tiny-llama",
        'id="lineage"',
        "acme/mix:1",
        "combined_from w=0.3",
    ):
        assert text in v2, text
    assert "sha256:" in re.search(r'<table id="files">.*?</table>', v2, re.S).group(0)
    assert c.get("/models/acme/chat/production")[2].count("acme/chat:1") >= 1  # an alias opens its version
    gate = re.search(r'<table id="gate">.*?</table>', v2, re.S).group(0)
    assert "production" in gate and "would pass" in gate  # evaluated; production's holder (1) never was
    assert "points here" in c.get("/models/acme/chat/1")[2]
    gate = re.search(r'<table id="gate">.*?</table>', c.get("/models/acme/mix/1")[2], re.S).group(0)
    assert "would refuse" in gate and "acme/mix:1 has no evaluation" in gate
    status, _, stack = c.get("/models/acme/stack/1")
    assert "composed_of #1" in stack and "composed_of #2" in stack
    status, _, tuned = c.get("/models/acme/tuned/1")
    loss = json.loads(re.search(r'<script type="application/json" id="loss-data">(.*?)</script>', tuned, re.S).group(1))
    assert [p["step"] for p in loss if "loss" in p] == [1, 2, 3, 4, 5, 6] and 'id="loss-chart"' in tuned
    assert [p["step"] for p in loss if "eval_loss" in p] == [2, 4, 6]
    assert "No per-step loss recorded" in v2
    status, _, hist = c.get("/aliases/acme/chat/production")
    assert status == 200 and '<tr class="forced">' in hist and "hotfix INC-7" in hist
    assert '<a href="/compare?a=acme%2Fchat%3A1&amp;b=acme%2Fchat%3A2">vs 1</a>' in page
    status, _, cmp = c.get("/compare?a=acme/chat:1&b=acme/chat:2")
    assert status == 200 and 'id="compare-config"' in cmp and "acme/chat:2" in cmp
    status, _, log = c.get("/audit?action=login")
    assert status == 200 and "admin-bot" in log
    assert signed_in(ui, "read").get("/audit")[0] == 403
    assert c.get("/models/acme/nothing")[0] == 404 and c.get("/models/acme/chat/99")[0] == 404
    assert c.get("/models/acme/chat?page=abc")[0] == 200 and c.get("/audit?before=-1")[0] == 200
    assert c.get("/models/acme")[1]["Location"] == "/?q=acme%2F"


def test_the_tracking_link_is_a_link_only_for_http_urls(ui):
    """A manifest's MLflow run URL becomes a link; anything else (``javascript:``) stays text."""
    from adapterhub.api import local_registry
    from adapterhub.registry.tokens import Principal
    from adapterhub.server.web import templates, version_context

    reg = local_registry(ui["home"])
    try:
        info = reg.show("acme/tuned:1")
        who = Principal("x", "read")
        for url, linked in (("http://mlflow:5000/#/experiments/1/runs/abc", True), ("javascript:alert(1)", False)):
            info.manifest["tracking"] = {"tracker": "mlflow", "run_id": "abc", "url": url}
            html = (
                templates()
                .get_template("version.html")
                .render(who=who, csrf="c", path="/", **version_context(reg, who, info))
            )
            assert ("mlflow run abc" in html) and ((f'href="{url}"' in html) == linked), url
    finally:
        reg.close()


def test_sessions_hold_across_workers(ui):
    """Two worker processes over one home: a session made by one is accepted by the other (the signing
    secret is shared through HOME/server-secret), and the token's revocation ends it on both."""
    with RegistryServer(env={"ADAPTERHUB_HOME": ui["home"]}, workers=2) as srv:
        c = Client(srv.url)
        assert c.login(token(ui["home"], "two-workers", "read"))[0] == 303
        assert {c.get("/models/acme/chat")[0] for _ in range(12)} == {200}
        cli_in(ui["home"])("token", "revoke", "two-workers")
        assert {c.get("/models/acme/chat")[0] for _ in range(6)} == {303}


def test_alias_events_are_those_of_the_versions_name(tmp_path):
    """The same files pushed to two names are one digest, two versions: the page of one never lists the
    other's alias moves (which may be in another namespace)."""
    from webhub import make_lora_dir

    from adapterhub.api import local_registry
    from adapterhub.server import webdata

    home, src = str(tmp_path / "home"), make_lora_dir(tmp_path / "a")
    run = cli_in(home)
    run("push", src, "acme/one")
    run("push", src, "other/one")
    run("alias", "set", "other/one", "staging", "1", "--reason", "other namespace's move")
    reg = local_registry(home)
    try:
        assert reg.show("acme/one:1").digest == reg.show("other/one:1").digest
        assert webdata.alias_events_of(reg, reg.show("acme/one:1")) == []
        moves = webdata.alias_events_of(reg, reg.show("other/one:1"))
        assert [e["reason"] for e in moves] == ["other namespace's move"]
    finally:
        reg.close()


def test_a_tampered_manifest_is_named_on_its_row_and_the_rest_still_list(tmp_path):
    import sqlalchemy as sa
    from webhub import make_lora_dir

    from adapterhub.api import local_registry
    from adapterhub.registry import schema as t
    from adapterhub.registry.tokens import Principal
    from adapterhub.server import webdata

    home = str(tmp_path / "home")
    run = cli_in(home)
    run("push", make_lora_dir(tmp_path / "a"), "acme/one")
    run("push", make_lora_dir(tmp_path / "b", seed=1), "acme/one")
    reg = local_registry(home)
    try:
        with reg.write() as conn:
            conn.execute(sa.update(t.versions).where(t.versions.c.number == 1).values(manifest="not json"))
        rows = webdata.name_versions(reg, Principal("x", "read"), "acme/one")["rows"]
    finally:
        reg.close()
    assert [(r["version"], r["data_check"]) for r in rows][1] == (1, "manifest unreadable: verify this version")
    assert rows[0]["version"] == 2 and rows[0]["data_check"] != rows[1]["data_check"]


def test_a_name_with_10000_versions_reads_one_page(tmp_path):
    """Bulk-inserted versions (rows as ``publish`` writes them); the name page issues a few statements,
    each bounded by LIMIT, and the real server pages through them."""
    import sqlalchemy as sa
    from webhub import make_lora_dir

    from adapterhub.api import local_registry
    from adapterhub.registry import schema as t
    from adapterhub.registry.records import now
    from adapterhub.registry.tokens import Principal
    from adapterhub.server import webdata

    home = str(tmp_path / "home")
    cli_in(home)("push", make_lora_dir(tmp_path / "a"), "bulk/many")
    reg = local_registry(home)
    with reg.write() as conn:
        v1 = conn.execute(sa.select(t.versions)).one()
        manifest = json.dumps({"method": "lora", "task": "causal-lm"})
        conn.execute(
            t.versions.insert(),
            [
                {
                    "adapter_id": v1.adapter_id,
                    "number": n,
                    "digest": f"{n:064x}",
                    "kind": "adapter",
                    "method": "lora",
                    "manifest": manifest,
                    "size": 1,
                    "created_at": now(),
                    "created_by": "bulk",
                }
                for n in range(2, 10_001)
            ],
        )
    statements: list[str] = []
    sa.event.listen(reg.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    data = webdata.name_versions(reg, Principal("x", "read"), "bulk/many", page=3)
    reg.close()
    assert [r["version"] for r in data["rows"]][:2] == [9900, 9899] and len(data["rows"]) == webdata.PAGE
    assert data["pages"] == 200 and data["total"] == 10_000
    assert len(statements) <= 6, statements
    reads = [s for s in statements if "versions.manifest" in s]
    assert len(reads) == 1 and "LIMIT" in reads[0]

    tok = token(home, "bulk-reader", "read")
    with RegistryServer(env={"ADAPTERHUB_HOME": home}) as srv:
        c = Client(srv.url)
        assert c.login(tok)[0] == 303
        status, _, last = c.get("/models/bulk/many?page=200")
        assert status == 200 and "page 200 of 200" in last and '<a href="/models/bulk/many/1">1</a>' in last
        assert '<a href="/models/bulk/many/51">' not in last


def test_the_pages_queries_on_postgresql(pg_url, tmp_path, monkeypatch, cli):
    """The same pages' SQL on PostgreSQL: search (names, tags, LIKE escapes), filters, a name's page,
    alias events and lineage, for a token bound to acme."""
    from webhub import make_lora_dir

    from adapterhub.api import open_registry
    from adapterhub.registry.tokens import Principal
    from adapterhub.server import webdata

    monkeypatch.setenv("ADAPTERHUB_REGISTRY_DB", pg_url)
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_STORE", "file://" + str(tmp_path / "store"))
    for i, name in enumerate(("acme/chat", "acme/chat", "acme/x_y", "other/chat")):
        assert cli("push", make_lora_dir(tmp_path / str(i), seed=i), name).exit_code == 0
    assert cli("combine", "acme/chat:1", "other/chat:1", "--name", "acme/mix").exit_code == 0
    assert cli("tag", "acme/chat:1", "team=Search_Quality").exit_code == 0
    assert cli("alias", "set", "acme/chat", "staging", "1").exit_code == 0
    reg = open_registry()
    try:
        acme = Principal("a", "read", "acme")
        assert [r["name"] for r in webdata.search(reg, acme)["rows"]] == ["acme/chat", "acme/mix", "acme/x_y"]
        assert [r["name"] for r in webdata.search(reg, acme, q="search_q")["rows"]] == ["acme/chat"]
        assert [r["name"] for r in webdata.search(reg, acme, q="x_")["rows"]] == ["acme/x_y"]
        assert [r["name"] for r in webdata.search(reg, acme, q="%")["rows"]] == []
        assert webdata.search(reg, acme, method="lora")["total"] == 3
        assert webdata.search(reg, acme, base="ff")["total"] == 0
        assert webdata.search(reg, acme)["namespaces"] == [("acme", 3)]
        page = webdata.name_versions(reg, acme, "acme/chat")
        assert [(r["version"], r["aliases"]) for r in page["rows"]] == [(2, []), (1, ["staging"])]
        events = webdata.alias_events_of(reg, reg.show("acme/chat:1"))
        assert [(e["alias"], e["from"], e["to"]) for e in events] == [("staging", None, 1)]
        graph = webdata.visible_lineage(reg, acme, "acme/mix:1")
        assert sorted(n["id"] for n in graph["nodes"]) == ["acme/chat:1", "acme/mix:1", "hidden-1"]
        with pytest.raises(Exception, match="no adapter named"):
            webdata.name_versions(reg, acme, "other/chat")
    finally:
        reg.close()
