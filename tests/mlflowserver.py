"""A real ``mlflow server`` for tests and benchmarks: SQLite backend, artifacts proxied to a local
directory, its own process group (so ``stop``/``kill`` end its workers too), no background job workers.

    server = MlflowServer(tmp_path / "mlflow").start()   # server.uri is http://127.0.0.1:PORT
    server.stop()
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 (a free port), SQLite backend, artifacts proxied to a local
    directory; its own process group, so ``stop``/``kill`` end the uvicorn worker too."""

    def __init__(self, root: pathlib.Path, workers: int = 1):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = root / "artifacts"
        self.proc: subprocess.Popen | None = None
        self.workers = workers

    def start(self, timeout: float = 120) -> "MlflowServer":
        exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
        cmd = [
            exe,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.artifacts),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers (2 shared cores)
        self.log = open(self.root / "server.log", "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not come up: {(self.root / 'server.log').read_text()[-2000:]}")

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Die now, like a crashed server: SIGKILL to the server and its worker."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # a worker that outlived its parent
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        self._signal(signal.SIGTERM)
        try:
            if self.proc is not None:
                self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        self.log.close()
