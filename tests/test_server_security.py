"""The registry server's security matrix, request by request against a real `adapterhub serve`: every
refusal is a JSON one-line error with the right status, nothing is stored, and no secret leaks."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import os
import socket
import urllib.parse

import pytest
from conftest import assert_clean_error, make_lora_dir, run_subprocess
from serverproc import RegistryServer
from test_server import make_token


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server_home = str(tmp_path_factory.mktemp("sec-home"))
    tokens = {s: make_token(server_home, f"{s}-bot", s) for s in ("read", "write", "promote", "admin")}
    tokens["acme-write"] = make_token(server_home, "acme-writer", "write", namespace="acme")
    tokens["revoked"] = make_token(server_home, "gone", "admin")
    tokens["expired"] = make_token(server_home, "old", "admin", expires="1h")
    assert run_subprocess("--home", server_home, "token", "revoke", "gone").exit_code == 0
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{server_home}/registry.db")
    with engine.begin() as conn:  # the clock moved on: the token's hour is over
        conn.execute(
            sa.text("UPDATE tokens SET expires_at = :t WHERE name = 'old'"),
            {"t": dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)},
        )
    engine.dispose()
    with RegistryServer(
        env={"ADAPTERHUB_HOME": server_home, "ADAPTERHUB_DEBUG": "1"}, extra_args=("--max-blob-size", "1MB")
    ) as server:
        yield {"url": server.url, "home": server_home, "tokens": tokens, "server": server}


def call(srv, method, path, token=None, body=None, raw=None, headers=None):
    """One HTTP request; returns (status, parsed JSON or None, raw body)."""
    u = urllib.parse.urlparse(srv["url"])
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {srv['tokens'].get(token, token)}"
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return resp.status, parsed, text


def raw_head(srv, request: bytes) -> str:
    """Send raw bytes (headers only, say) and read the answer's status line, headers and body."""
    u = urllib.parse.urlparse(srv["url"])
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        try:
            s.sendall(request)
        except OSError:
            pass
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                None,
            )
            if sep and length is not None and len(body) >= length:
                break
    return data.decode(errors="replace")


def versions(srv):
    status, rows, _ = call(srv, "GET", "/api/v1/versions", "admin")
    assert status == 200
    return rows


def one_line_error(payload):
    assert isinstance(payload, dict) and isinstance(payload.get("error"), str), payload
    assert "\n" not in payload["error"] and "Traceback" not in payload["error"]
    return payload["error"]


@pytest.fixture(scope="module")
def pushed(srv, tmp_path_factory):
    """acme/base:1 pushed by the write token, with the bytes of its files."""
    from adapterhub.registry.client import HttpRegistry

    src = make_lora_dir(tmp_path_factory.mktemp("pushed") / "a", seed=3)
    from adapterhub.files.checkpoint import read_adapter_dir
    from adapterhub.plugins import get_plugins

    adir = read_adapter_dir(src, get_plugins())
    pub = HttpRegistry(srv["url"], srv["tokens"]["write"], "sec").publish("acme/base", adir.manifest, adir.files)
    return pub


@pytest.mark.parametrize(
    "token,status,needle",
    [
        (None, 401, "token missing, expired or revoked"),
        ("ahub_0123456789abcdef_" + "A" * 43, 401, "token missing, expired or revoked"),
        ("not-a-token", 401, "token missing, expired or revoked"),
        ("revoked", 401, "token missing, expired or revoked"),
        ("expired", 401, "token missing, expired or revoked"),
    ],
)
def test_bad_tokens_are_refused_and_audited(srv, token, status, needle):
    code, payload, _ = call(srv, "GET", "/api/v1/versions", token)
    assert code == status and needle in one_line_error(payload)
    r = run_subprocess("--home", srv["home"], "audit", "--json", "--limit", "5")
    last = r.json()[0]
    assert last["status"] == 401
    if token in ("revoked", "expired"):
        assert last["actor"] == {"revoked": "gone", "expired": "old"}[token]  # named, though refused


def test_wrong_secret_of_a_real_key_id_is_refused(srv):
    real = srv["tokens"]["admin"]
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    code, payload, _ = call(srv, "GET", "/api/v1/whoami", forged)
    assert code == 401 and "token missing, expired or revoked" in one_line_error(payload)


@pytest.mark.parametrize(
    "who,method,path,body,needle",
    [
        ("read", "POST", "/api/v1/versions", {"name": "acme/x", "manifest": {}, "files": []}, "needs scope 'write'"),
        ("read", "POST", "/api/v1/tags", {"ref": "acme/base:1", "set": {"a": "b"}}, "needs scope 'write'"),
        (
            "read",
            "POST",
            "/api/v1/evaluations",
            {"ref": "acme/base:1", "data_digest": "sha256:" + "0" * 64, "metrics": {"loss": 1.0}},
            "needs scope 'write'",
        ),
        (
            "write",
            "POST",
            "/api/v1/aliases",
            {"name": "acme/base", "alias": "production", "version": "1"},
            "needs scope 'promote'",
        ),
        ("promote", "POST", "/api/v1/tokens", {"name": "x", "scope": "admin"}, "needs scope 'admin'"),
        ("promote", "GET", "/api/v1/audit", None, "needs scope 'admin'"),
        ("write", "POST", "/api/v1/gc", {"grace": 0}, "needs scope 'admin'"),
        ("acme-write", "POST", "/api/v1/tags", {"ref": "other/x:1", "set": {"a": "b"}}, "bound to namespace 'acme'"),
        (
            "acme-write",
            "POST",
            "/api/v1/versions",
            {"name": "other/x", "manifest": {}, "files": []},
            "bound to namespace 'acme'",
        ),
    ],
)
def test_scope_and_namespace_matrix(srv, pushed, who, method, path, body, needle):
    before = versions(srv)
    code, payload, _ = call(srv, method, path, who, body=body)
    assert code == 403 and needle in one_line_error(payload)
    assert versions(srv) == before
    last = run_subprocess("--home", srv["home"], "audit", "--json", "--limit", "1").json()[0]
    assert last["status"] == 403 and last["actor"] == {"acme-write": "acme-writer"}.get(who, f"{who}-bot")


def test_forged_actor_headers_are_ignored(srv, pushed):
    code, _, _ = call(
        srv,
        "POST",
        "/api/v1/tags",
        "write",
        body={"ref": "acme/base:1", "set": {"k": "v"}},
        headers={"X-Forwarded-User": "ceo", "X-Adapterhub-User": "ceo", "X-Remote-User": "ceo"},
    )
    assert code == 200
    last = run_subprocess("--home", srv["home"], "audit", "--json", "--limit", "1").json()[0]
    assert last["actor"] == "write-bot"


@pytest.mark.parametrize(
    "ref",
    [
        "../../etc/passwd",
        "acme/../../x:1",
        "acme/base:1/../../x",
        "sha256:zz",
        "acme/base;DROP TABLE versions",
        "acme/base' OR '1'='1",
        "hub:acme/base:1",
    ],
)
def test_bad_refs_are_one_line_errors(srv, pushed, ref):
    code, payload, _ = call(srv, "GET", "/api/v1/show?" + urllib.parse.urlencode({"ref": ref}), "admin")
    assert code in (400, 404) and one_line_error(payload)
    assert len(versions(srv)) >= 1  # the tables are still there


@pytest.mark.parametrize("digest", ["..%2F..%2Fregistry.db", "../../registry.db", "0" * 63 + "g", "A" * 64])
def test_blob_paths_cannot_traverse(srv, digest):
    code, payload, text = call(srv, "GET", f"/api/v1/blobs/{digest}", "admin")
    assert code in (400, 404), (code, text[:200])
    assert b"SQLite format" not in text


def test_sql_metacharacters_in_tags_are_stored_verbatim(srv, pushed):
    value = "x'); DROP TABLE versions; --"
    code, payload, _ = call(srv, "POST", "/api/v1/tags", "write", body={"ref": "acme/base:1", "set": {"note": value}})
    assert code == 200 and payload["note"] == value
    code, payload, _ = call(srv, "POST", "/api/v1/tags", "write", body={"ref": "acme/base:1", "set": {"a'b": "1"}})
    assert code == 400 and "invalid tag key" in one_line_error(payload)


def test_a_manifest_naming_blobs_never_uploaded_is_refused(srv):
    before = versions(srv)
    body = {
        "name": "acme/ghost",
        "manifest": {"method": "lora"},
        "files": [{"path": "adapter_model.safetensors", "sha256": "f" * 64, "size": 10}],
    }
    code, payload, _ = call(srv, "POST", "/api/v1/versions", "write", body=body)
    assert code == 400 and "never uploaded" in one_line_error(payload)
    assert versions(srv) == before


def test_an_upload_whose_bytes_do_not_match_its_digest_is_refused(srv):
    data = b"not what the digest says"
    digest = hashlib.sha256(b"something else").hexdigest()
    code, payload, _ = call(
        srv, "PUT", f"/api/v1/blobs/{digest}", "write", raw=data, headers={"Content-Length": str(len(data))}
    )
    assert code == 409 and "hash to" in one_line_error(payload)
    code, payload, _ = call(srv, "POST", "/api/v1/blobs/missing", "write", body={"digests": [digest]})
    assert payload["missing"] == [digest]


def test_an_oversized_upload_is_refused_before_its_body_is_read(srv):
    """Content-Length over --max-blob-size (1 MB here): 413 while the client has sent headers only."""
    head = raw_head(
        srv,
        (
            f"PUT /api/v1/blobs/{'e' * 64} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{srv['tokens']['write']}\r\nContent-Length: {300 * 1000**2}\r\n\r\n"
        ).encode(),
    )
    assert head.startswith("HTTP/1.1 413") and "over this server's limit" in head


def test_an_upload_without_a_length_is_refused(srv):
    code, payload, _ = call(
        srv, "PUT", "/api/v1/blobs/" + "d" * 64, "write", raw=iter([b"abc"]), headers={"Transfer-Encoding": "chunked"}
    )
    assert code == 411 and "Content-Length" in one_line_error(payload)


def test_malformed_json_and_wrong_shapes_are_one_line_400s(srv):
    for raw in (b"{not json", b"[]", json.dumps({"name": 3}).encode()):
        code, payload, _ = call(
            srv, "POST", "/api/v1/aliases", "write", raw=raw, headers={"Content-Type": "application/json"}
        )
        assert code == 400 and one_line_error(payload).startswith("invalid request")
    code, payload, _ = call(srv, "POST", "/api/v1/versions/import", "write", body={"name": "acme/x"})
    assert code == 400 and "invalid version bundle" in one_line_error(payload)


def test_huge_headers_are_refused(srv):
    head = raw_head(srv, b"GET /api/v1/versions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n")
    assert head.startswith(("HTTP/1.1 400", "HTTP/1.1 431")), head[:100]
    code, payload, _ = call(srv, "GET", "/healthz")
    assert code == 200  # the server is still up


def test_secrets_never_reach_logs_json_or_the_audit_log(srv, pushed):
    for name in srv["tokens"]:
        call(srv, "GET", "/api/v1/versions", name)
        call(srv, "GET", "/api/v1/nope", name)
    r = run_subprocess("--home", srv["home"], "audit", "--json", "--limit", "10000")
    r2 = run_subprocess("--home", srv["home"], "token", "list", "--all", "--json")
    text = r.stdout + r2.stdout + srv["server"].stderr_text()
    for secret in srv["tokens"].values():
        assert secret not in text and secret.split("_", 2)[2] not in text  # ahub_<key id>_<secret>
    with open(os.path.join(srv["home"], "registry.db"), "rb") as f:
        db = f.read()
    for secret in srv["tokens"].values():
        assert secret.split("_", 2)[2].encode() not in db  # only salted hashes are stored


def test_token_commands_refuse_bad_input(srv):
    h = ["--home", srv["home"], "token", "create"]
    assert_clean_error(run_subprocess(*h, "--name", "Bad Name", "--scope", "read"), "invalid token name")
    assert_clean_error(run_subprocess(*h, "--name", "x1", "--scope", "read", "--expires", "soon"), "invalid --expires")
    assert_clean_error(
        run_subprocess(*h, "--name", "x2", "--scope", "read", "--namespace", "../etc"), "invalid namespace"
    )
    assert_clean_error(run_subprocess(*h, "--name", "read-bot", "--scope", "read"), "exists")
    assert_clean_error(run_subprocess("--home", srv["home"], "token", "revoke", "nobody"), "no active token")


def test_an_oversized_json_body_is_refused_unread(srv):
    head = raw_head(
        srv,
        (
            f"POST /api/v1/tags HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {srv['tokens']['write']}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {500 * 1024**2}\r\n\r\n"
        ).encode(),
    )
    assert head.startswith("HTTP/1.1 413"), head[:200]
    # no Content-Length: the body is counted while it streams in and refused once over the limit
    import threading

    u = urllib.parse.urlparse(srv["url"])
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(
            (
                f"POST /api/v1/tags HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {srv['tokens']['write']}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )

        def send_forever():
            chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
            try:
                for _ in range(1024):  # 64 MiB, far over the limit
                    s.sendall(chunk)
            except OSError:
                pass

        sender = threading.Thread(target=send_forever, daemon=True)
        sender.start()
        answer = s.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]


def test_token_list_shows_when_a_token_was_last_used(srv):
    call(srv, "GET", "/api/v1/whoami", "promote")
    rows = run_subprocess("--home", srv["home"], "token", "list", "--json").json()
    used = {r["name"]: r["last_used_at"] for r in rows}
    assert used["promote-bot"] is not None
