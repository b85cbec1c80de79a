"""A real ``adapterhub serve`` process for tests: started on 127.0.0.1 (a free port), stopped or killed.

    with RegistryServer(env={"ADAPTERHUB_HOME": str(home)}) as srv:
        srv.url        # http://127.0.0.1:PORT
        srv.kill()     # SIGKILL (a crash), then srv.start() again on the same port

The server reads its registry from the environment it is given (``ADAPTERHUB_HOME``, or
``ADAPTERHUB_REGISTRY_DB`` + ``ADAPTERHUB_REGISTRY_STORE`` and the AWS variables for an S3 store).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    def __init__(
        self, env: dict[str, str], workers: int = 1, port: int | None = None, extra_args: tuple[str, ...] = ()
    ):
        self.env = {**os.environ, **env}
        self.env.pop("ADAPTERHUB_LOAD_PLUGINS", None)
        self.workers = workers
        self.port = port or free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.first_line = ""
        self.log = tempfile.NamedTemporaryFile(prefix="adapterhub-serve-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "RegistryServer":
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "adapterhub",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                *self.extra_args,
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        self.first_line = self.proc.stdout.readline().strip()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"adapterhub serve exited {self.proc.returncode}: {self.first_line} {self.stderr_text()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if json.load(r).get("ok"):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("adapterhub serve did not become ready")

    def kill(self) -> None:
        """SIGKILL the whole process group (the server and its workers): a crash, no cleanup."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def stderr_text(self) -> str:
        """What the server wrote to stderr so far."""
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def __enter__(self) -> "RegistryServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
