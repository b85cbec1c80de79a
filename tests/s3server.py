"""A real S3-compatible HTTP server for tests: moto's ``ThreadedMotoServer`` on 127.0.0.1.

Use it from a fixture::

    import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/
    from s3server import MotoS3Server, aws_test_env

    @pytest.fixture(scope="session")
    def s3_server():
        with MotoS3Server() as server:   # port 0: a free port; server.endpoint_url is the URL
            yield server

    @pytest.fixture
    def s3_env(monkeypatch, s3_server):
        for k, v in aws_test_env().items():
            monkeypatch.setenv(k, v)      # dummy credentials + region, no ~/.aws files
        ...

``stop()`` really stops the server: it closes the listening socket (so new connections are refused
rather than left in the backlog) and shuts down kept-alive connections (werkzeug serves HTTP/1.1, so a
client's pooled connection would otherwise keep working). ``start()`` again binds the same port; moto
keeps its state in the process, so buckets and objects survive a restart. Clients are boto3 with
``endpoint_url=server.endpoint_url``; no in-process mocking is involved.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from typing import Iterator

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

#: dummy credentials: moto accepts anything, boto3 only needs something to sign with
TEST_ACCESS_KEY = "AKIAADAPTERHUBTEST01"
TEST_SECRET_KEY = "adapterhub-test-secret-key-do-not-print"


def aws_test_env(region: str = "us-east-1") -> dict[str, str]:
    """Environment for boto3 against the test server: dummy credentials, a region, no profile files."""
    return {
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_CONFIG_FILE": "/nonexistent/adapterhub-test-aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/adapterhub-test-aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


#: variables to remove so a developer's own AWS setup never leaks into a test
AWS_ENV_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
)


class MotoS3Server(ThreadedMotoServer):
    """moto's threaded server on ``host:port`` (port 0 picks a free one) that can be stopped and
    restarted on the same port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(ip_address=host, port=port, verbose=False)
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

    def _server_entry(self) -> None:
        server_ref = self

        class Handler(MotoRequestHandler):
            def setup(self) -> None:
                super().setup()
                with server_ref._conn_lock:
                    server_ref._connections.add(self.connection)

            def finish(self) -> None:
                with server_ref._conn_lock:
                    server_ref._connections.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def log_message(self, *args) -> None:  # quiet
                pass

        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=Handler)
        self._server.handle_error = lambda request, client_address: None  # dropped connections on stop()
        self._port = self._server.server_address[1]  # keep the port for a restart
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{self._ip_address}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server_ready_event.is_set()

    def start(self) -> "MotoS3Server":
        super().start()
        return self

    def stop(self) -> None:
        if not self.running:
            return
        server = self._server
        super().stop()
        if server is not None:
            server.server_close()  # refuse new connections instead of queueing them
        with self._conn_lock:
            conns, self._connections = list(self._connections), set()
        for conn in conns:  # drop kept-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server = None

    def client(self, **kwargs):
        """A plain boto3 S3 client for this server (for test setup and for reaching behind the store)."""
        import boto3
        from botocore.config import Config

        env = aws_test_env()
        config = Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 2, "mode": "standard"},
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=TEST_ACCESS_KEY,
            aws_secret_access_key=TEST_SECRET_KEY,
            config=config,
            **kwargs,
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a uniquely named bucket and return its name (moto's state is shared process-wide)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def enforce_auth(self, enabled: bool) -> None:
        """Turn moto's request authentication on (unknown access keys get 403) or off (the default),
        through moto's own ``/moto-api/reset-auth`` endpoint. The setting is process-wide."""
        import urllib.request

        req = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=b"0" if enabled else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def __enter__(self) -> "MotoS3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def moto_s3_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[MotoS3Server]:
    """Generator for a pytest fixture: a started server, stopped afterwards."""
    server = MotoS3Server(host, port).start()
    try:
        yield server
    finally:
        server.stop()
