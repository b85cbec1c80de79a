"""Bounded reads and waits against moto's S3 server behind a TCP proxy the test controls: a row's
declared size caps what is fetched, and a stalled endpoint fails within ADAPTERHUB_S3_STALL_TIMEOUT."""

from __future__ import annotations

import time

import pytest
from tcpproxy import TcpProxy

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def proxied(s3_server, tmp_path, monkeypatch):
    """(Registry on SQLite + S3 through a TcpProxy, proxy, bucket) with a 3 s stall deadline."""
    from adapterhub_s3 import S3Store

    from adapterhub.registry.registry import Registry

    monkeypatch.setenv("ADAPTERHUB_S3_STALL_TIMEOUT", "3")
    host, port = s3_server.endpoint_url.rsplit("/", 1)[-1].rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        bucket = s3_server.new_bucket()
        store = S3Store.from_url(f"s3://{bucket}/a", endpoint_url=f"http://{proxy.address}")
        reg = Registry(f"sqlite:///{tmp_path}/r.db", store).ready()
        yield reg, proxy, bucket
        proxy.resume()
        reg.close()


def _push(reg, tmp_path, content: bytes):
    from adapterhub.registry.blobs import hash_file
    from adapterhub.registry.records import LocalFile

    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    digest, size = hash_file(str(path))
    reg.publish("acme/chat", {"method": "lora"}, [LocalFile("weights.bin", str(path), digest, size)])
    return digest


def test_a_10_byte_row_backed_by_a_big_object_is_refused_after_declared_plus_one_bytes(proxied, tmp_path, s3_server):
    from adapterhub.errors import IntegrityError

    reg, proxy, bucket = proxied
    digest = _push(reg, tmp_path, b"0123456789")
    big = 8 * 1024 * 1024
    s3_server.client().put_object(Bucket=bucket, Key=f"a/blobs/sha256/{digest[:2]}/{digest[2:]}", Body=b"x" * big)
    before = proxy.bytes_forwarded
    with pytest.raises(IntegrityError, match="longer than its declared 10 bytes"):
        reg.materialize("acme/chat:1", str(tmp_path / "out"))
    assert proxy.bytes_forwarded - before < 64 * 1024  # headers and 11 bytes, not 8 MiB
    assert not (tmp_path / "out").exists()


def test_a_stalled_endpoint_fails_within_the_deadline_saying_what_it_waited_for(proxied, tmp_path, capfd):
    from adapterhub.errors import AdapterhubError

    reg, proxy, _ = proxied
    _push(reg, tmp_path, b"weights" * 1000)
    proxy.stall()
    start = time.monotonic()
    with pytest.raises(AdapterhubError) as info:
        reg.materialize("acme/chat:1", str(tmp_path / "out"))
    took = time.monotonic() - start
    msg = str(info.value)
    assert took < 3 + 1.5, (took, msg)  # the audit saw it hang silently past 240 s (up to ~24 min)
    assert "made no progress" in msg and "GetObject" in msg and "ADAPTERHUB_S3_STALL_TIMEOUT=3 s" in msg, msg
    notices = [line for line in capfd.readouterr().err.splitlines() if "has not answered GetObject" in line]
    assert notices and "retrying until 3 s (ADAPTERHUB_S3_STALL_TIMEOUT)" in notices[0], notices
    proxy.resume()
    reg.materialize("acme/chat:1", str(tmp_path / "out"))  # and it works again once the endpoint answers
