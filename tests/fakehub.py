"""A Hugging Face Hub over HTTP on 127.0.0.1, as small as ``huggingface_hub.snapshot_download`` needs: repo info
(``/api/models/ORG/NAME/revision/REV``), the file tree (``/api/models/ORG/NAME/tree/SHA``) and file downloads
(``HEAD``/``GET /ORG/NAME/resolve/SHA/PATH`` with ``X-Repo-Commit`` and ``ETag``), and the Hub's error codes
(``X-Error-Code: RepoNotFound`` / ``RevisionNotFound``); and uploads (create repo, pre-upload with every file
inline, commit). Pointed at by ``HF_ENDPOINT``, it tests the online
path with huggingface_hub's own client; it records the requests (path and Authorization header)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> commit -> path -> bytes
        self.refs: dict[str, dict[str, str]] = {}  # repo -> branch/tag -> commit
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        self.private: dict[str, bool] = {}  # repos created private
        self.gated: set[str] = set()  # repos whose terms were not accepted
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo: str, src_dir: str, ref: str = "main") -> str:
        """Publish the files of ``src_dir`` as a commit of ``repo`` that ``ref`` points at; returns its sha."""
        files = {}
        for root, _, names in os.walk(src_dir):
            for n in names:
                full = os.path.join(root, n)
                with open(full, "rb") as fh:
                    files[os.path.relpath(full, src_dir).replace(os.sep, "/")] = fh.read()
        commit = hashlib.sha1(
            json.dumps({p: hashlib.sha256(b).hexdigest() for p, b in sorted(files.items())}).encode()
        ).hexdigest()
        self.repos.setdefault(repo, {})[commit] = files
        self.refs.setdefault(repo, {})[ref] = commit
        return commit

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code, body=b"", headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, code_name):
                self._send(
                    404,
                    json.dumps({"error": code_name}).encode(),
                    {"X-Error-Code": code_name, "Content-Type": "application/json"},
                )

            def _commit(self, repo, rev):
                if repo not in hub.repos:
                    return self._error("RepoNotFound")
                if repo in hub.gated:
                    return self._error("GatedRepo")
                commit = hub.refs[repo].get(rev, rev if rev in hub.repos[repo] else None)
                return commit if commit else self._error("RevisionNotFound")

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Authorization")))
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
                if m:
                    commit = self._commit(m[1], m[3])
                    if commit is None:
                        return
                    files = hub.repos[m[1]][commit]
                    if m[2] == "revision":
                        body = {"id": m[1], "sha": commit, "siblings": [{"rfilename": p} for p in sorted(files)]}
                    else:
                        body = [
                            {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                            for p, b in sorted(files.items())
                        ]
                    return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    commit = self._commit(m[1], m[2])
                    if commit is None:
                        return
                    data = hub.repos[m[1]][commit].get(m[3])
                    if data is None:
                        return self._error("EntryNotFound")
                    etag = f'"{hashlib.sha256(data).hexdigest()}"'
                    return self._send(
                        200, data, {"X-Repo-Commit": commit, "ETag": etag, "Content-Type": "application/octet-stream"}
                    )
                self._send(404, b"{}")

            def do_POST(self):
                """Uploads: create a repo, validate a model card, pre-upload (every file inline), commit."""
                path = unquote(urlsplit(self.path).path)
                auth = self.headers.get("Authorization")
                hub.requests.append(("POST", path, auth))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not auth:
                    return self._send(401, b"{}", {"X-Error-Message": "Invalid username or password."})
                if path == "/api/validate-yaml":
                    return self._send(200, b'{"errors": [], "warnings": []}')
                if path == "/api/repos/create":
                    d = json.loads(body)
                    repo = f"{d['organization']}/{d['name']}"
                    if repo in hub.repos:
                        return self._send(409, b'{"error": "You already created this model repo"}')
                    hub.repos[repo], hub.refs[repo] = {}, {}
                    hub.private[repo] = d.get("visibility") == "private"
                    return self._send(200, json.dumps({"url": f"{hub.url}/{repo}"}).encode())
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
                if not m or m[1] not in hub.repos:
                    return self._error("RepoNotFound")
                if m[2] == "preupload":
                    files = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in json.loads(body)["files"]
                    ]
                    return self._send(200, json.dumps({"files": files}).encode())
                repo, branch = m[1], m[3]
                files = dict(hub.repos[repo].get(hub.refs[repo].get(branch, ""), {}))
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
                hub.repos[repo][commit] = files
                hub.refs[repo][branch] = commit
                self._send(
                    200, json.dumps({"commitUrl": f"{hub.url}/{repo}/commit/{commit}", "commitOid": commit}).encode()
                )

        return Handler
