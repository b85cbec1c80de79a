"""A Hugging Face Hub over HTTP on 127.0.0.1, as small as ``huggingface_hub.snapshot_download`` needs: repo info
(``/api/models/ORG/NAME/revision/REV``), the file tree (``/api/models/ORG/NAME/tree/SHA``) and file downloads
(``HEAD``/``GET /ORG/NAME/resolve/SHA/PATH`` with ``X-Repo-Commit`` and ``ETag``), and the Hub's error codes
(``X-Error-Code: RepoNotFound`` / ``RevisionNotFound``). Pointed at by ``HF_ENDPOINT``, it tests the online
path with huggingface_hub's own client; it records the requests (path and Authorization header)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}   # repo -> commit -> path -> bytes
        self.refs: dict[str, dict[str, str]] = {}                 # repo -> branch/tag -> commit
        self.requests: list[tuple[str, str, str | None]] = []    # (method, path, Authorization)
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
        commit = hashlib.sha1(json.dumps({p: hashlib.sha256(b).hexdigest() for p, b in sorted(files.items())})
                              .encode()).hexdigest()
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
                self._send(404, json.dumps({"error": code_name}).encode(), {"X-Error-Code": code_name,
                                                                            "Content-Type": "application/json"})

            def _commit(self, repo, rev):
                if repo not in hub.repos:
                    return self._error("RepoNotFound")
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
                        body = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                for p, b in sorted(files.items())]
                    return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    commit = self._commit(m[1], m[2])
                    if commit is None:
                        return
                    data = hub.repos[m[1]][commit].get(m[3])
                    if data is None:
                        return self._error("EntryNotFound")
                    return self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                                  "Content-Type": "application/octet-stream"})
                self._send(404, b"{}")

        return Handler
