"""The S3 blob store against a real S3-compatible HTTP server (moto's server mode on 127.0.0.1),
driven by boto3 over HTTP. No in-process AWS mocking."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/, for s3server
from adapterhub_s3 import S3Store  # noqa: E402
from s3server import TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoS3Server  # noqa: E402

from adapterhub.errors import AdapterhubError, IntegrityError, InvalidInput  # noqa: E402
from adapterhub.plugins import Plugins  # noqa: E402
from adapterhub.registry.blobs import copy_stream_verified, copy_verified, verify_blob  # noqa: E402

MiB = 1 << 20
PART = 5 * MiB  # S3's (and moto's) minimum part size: multipart is exercised with a few MiB
FAST = dict(part_size=PART, max_attempts=2, part_retries=1, connect_timeout=1, read_timeout=10, max_workers=4)


pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def bucket(s3_server):
    return s3_server.new_bucket()


@pytest.fixture
def raw(s3_server):
    return s3_server.client()


@pytest.fixture
def store(s3_server, bucket):
    return S3Store.from_url(f"s3://{bucket}/team/reg", endpoint_url=s3_server.endpoint_url, **FAST)


def blob(tmp_path, size, seed=0, name=None):
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    if size > 64:  # not all-periodic, so a swapped range would be noticed
        data = os.urandom(64) + data[64:]
    path = tmp_path / (name or f"blob-{seed}-{size}")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), str(path), data


def read_back(store, digest, size=None):
    out = io.BytesIO()
    with store.open(digest) as src:
        copy_stream_verified(src, out, digest, f"blob sha256:{digest}", size)
    return out.getvalue()


def assert_clean_message(err):
    text = str(err)
    assert "\n" not in text and "Traceback" not in text
    assert TEST_SECRET_KEY not in text


# -- plugin and URL ---------------------------------------------------------------------------


def test_registered_as_plugin():
    assert Plugins().get("stores", "s3") is S3Store


def test_import_does_not_load_boto3():
    code = "import sys, adapterhub_s3; adapterhub_s3.S3Store.from_url('s3://b/p'); print('boto3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_from_url_and_key_layout():
    st = S3Store.from_url("s3://my-bucket/a/b/?part_size=8MiB&max_workers=3&endpoint_url=http%3A%2F%2Fh%3A9000")
    assert (st.bucket, st.prefix, st.part_size, st.max_workers) == ("my-bucket", "a/b", 8 * MiB, 3)
    assert st.endpoint_url == "http://h:9000" and st.url == "s3://my-bucket/a/b"
    digest = "ab" + "c" * 62
    assert st._key(digest) == "a/b/blobs/sha256/ab/" + "c" * 62
    assert S3Store.from_url("s3://bkt")._key(digest) == "blobs/sha256/ab/" + "c" * 62
    assert S3Store.from_url("s3://bkt/p?part_size=1", part_size=7 * MiB).part_size == 7 * MiB
    for bad in ("s3:///nobucket", "http://b/p", "s3://b/p?colour=red"):
        with pytest.raises(InvalidInput):
            S3Store.from_url(bad)
    with pytest.raises(InvalidInput):
        S3Store.from_url("s3://b/p", nonsense=1)
    with pytest.raises(InvalidInput):
        S3Store.from_url("s3://b/p?part_size=lots")
    with pytest.raises(InvalidInput):
        st.has("not-a-digest")


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, PART - 1, PART, 2 * PART + 12345])
def test_put_has_open_round_trip(store, raw, tmp_path, size):
    digest, path, data = blob(tmp_path, size)
    assert not store.has(digest)
    sent = []
    assert store.put(digest, path, size, sent.append) is True
    assert sum(sent) == size
    assert store.has(digest)
    assert read_back(store, digest, size) == data
    head = raw.head_object(Bucket=store.bucket, Key=f"team/reg/blobs/sha256/{digest[:2]}/{digest[2:]}")
    assert head["ContentLength"] == size
    multipart = "-" in head["ETag"]
    assert multipart == (size > PART)
    dest = tmp_path / "out"
    copy_verified(store, digest, str(dest), size)
    assert dest.read_bytes() == data
    assert verify_blob(store, digest) is None


def test_multipart_parts_are_parallel_and_ranged_reads_prefetch(store, tmp_path):
    digest, path, data = blob(tmp_path, 4 * PART + 7)
    assert store.put(digest, path, len(data))
    with store.open(digest) as src:
        assert src.read(10) == data[:10]
        assert src.read(PART) == data[10:PART]  # the rest of the first range
        assert src.read() == data[PART:]
        assert src.read(1) == b""


def test_reput_is_deduplicated(store, tmp_path):
    for size in (1000, 2 * PART + 1):
        digest, path, _ = blob(tmp_path, size)
        assert store.put(digest, path, size) is True
        sent = []
        assert store.put(digest, path, size, sent.append) is False
        assert sum(sent) == 0


def test_put_verifies_the_local_file(store, raw, tmp_path):
    for size in (1000, 2 * PART + 1):
        digest, path, _ = blob(tmp_path, size, seed=1)
        _, other, _ = blob(tmp_path, size, seed=2)
        with pytest.raises(IntegrityError, match=digest):
            store.put(digest, other, size)
        assert not store.has(digest)
    with pytest.raises(IntegrityError):
        store.put(digest, path, size + 1)  # wrong declared size
    assert raw.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


# -- conditional writes --------------------------------------------------------------------------


class RacingStore(S3Store):
    """A writer that lost the race: its HEAD said 'absent' just before another writer stored the blob."""

    def has(self, digest):
        return False


@pytest.mark.parametrize("size", [1000, 2 * PART + 1])
def test_conditional_write_never_clobbers(s3_server, store, raw, tmp_path, size):
    digest, path, data = blob(tmp_path, size)
    key = store._key(digest)
    raw.put_object(Bucket=store.bucket, Key=key, Body=b"first writer")  # marker bytes, to see a clobber
    racer = RacingStore.from_url(store.url, endpoint_url=s3_server.endpoint_url, **FAST)
    assert racer.put(digest, path, size) is False
    assert raw.get_object(Bucket=store.bucket, Key=key)["Body"].read() == b"first writer"
    assert raw.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []  # loser aborted


def test_concurrent_writers_store_one_blob(s3_server, store, tmp_path):
    digest, path, data = blob(tmp_path, 2 * PART + 3)
    results, errors = [], []

    def push():
        try:
            st = S3Store.from_url(store.url, endpoint_url=s3_server.endpoint_url, **FAST)
            results.append(st.put(digest, path, len(data)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=push) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and True in results
    assert read_back(store, digest, len(data)) == data


def test_without_conditional_writes(s3_server, bucket, tmp_path):
    st = S3Store.from_url(f"s3://{bucket}/x?conditional_writes=false", endpoint_url=s3_server.endpoint_url, **FAST)
    digest, path, data = blob(tmp_path, 2 * PART + 1)
    assert st.put(digest, path, len(data)) is True
    assert st.put(digest, path, len(data)) is False
    assert read_back(st, digest) == data


# -- corrupt and missing blobs ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 2 * PART + 1])
def test_corrupt_blob_in_s3_is_detected_on_read(store, raw, tmp_path, size):
    digest, path, data = blob(tmp_path, size)
    assert store.put(digest, path, size)
    bad = bytearray(data)
    bad[size // 2] ^= 0xFF
    raw.put_object(Bucket=store.bucket, Key=store._key(digest), Body=bytes(bad))
    assert store.has(digest)
    with pytest.raises(IntegrityError, match=f"sha256:{digest}") as err:
        read_back(store, digest, size)
    assert_clean_message(err.value)
    assert verify_blob(store, digest).startswith("corrupt")
    with pytest.raises(IntegrityError, match=digest):
        copy_verified(store, digest, str(tmp_path / "out"), size)


def test_missing_blob(store):
    digest = "0" * 64
    assert not store.has(digest)
    with pytest.raises(IntegrityError, match=f"blob sha256:{digest} is missing from s3://.*/team/reg") as err:
        store.open(digest)
    assert_clean_message(err.value)
    assert verify_blob(store, digest) == "missing"


def test_iter_blobs_and_delete(store, raw, tmp_path):
    assert list(store.iter_blobs()) == []
    digests = set()
    for seed in range(3):
        digest, path, _ = blob(tmp_path, 100 + seed, seed=seed)
        store.put(digest, path, 100 + seed)
        digests.add(digest)
    # leftovers that are not blobs are ignored; so are other prefixes
    raw.put_object(Bucket=store.bucket, Key="team/reg/blobs/sha256/zz/not-a-digest", Body=b"x")
    raw.put_object(Bucket=store.bucket, Key="team/other/blobs/sha256/00/" + "0" * 62, Body=b"x")
    listed = dict(store.iter_blobs())
    assert set(listed) == digests
    assert all(isinstance(t, float) and t > 1.6e9 for t in listed.values())
    gone = sorted(digests)[0]
    store.delete(gone)
    assert not store.has(gone)
    assert set(dict(store.iter_blobs())) == digests - {gone}
    store.delete(gone)  # deleting a missing blob is fine


def test_iter_blobs_paginates(store, raw):
    keys = [f"{i:064x}" for i in range(1005)]  # more than one ListObjectsV2 page
    for d in keys:
        raw.put_object(Bucket=store.bucket, Key=store._key(d), Body=b"")
    assert sorted(d for d, _ in store.iter_blobs()) == keys


def test_cleanup_temp_aborts_stale_multipart_uploads(store, raw):
    key = store._key("ab" * 32)
    raw.create_multipart_upload(Bucket=store.bucket, Key=key)
    raw.create_multipart_upload(Bucket=store.bucket, Key="elsewhere/blobs/sha256/ab/" + "ab" * 31)
    # moto reports every upload as initiated on 2010-11-10: "not stale yet" needs a 30-year threshold
    assert store.cleanup_temp(30 * 365 * 86400) == 0
    assert store.cleanup_temp(0) == 1
    left = raw.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["elsewhere/blobs/sha256/ab/" + "ab" * 31]


# -- clear errors ---------------------------------------------------------------------------------


def test_no_such_bucket(s3_server, tmp_path):
    st = S3Store.from_url("s3://no-such-bucket-adapterhub/p", endpoint_url=s3_server.endpoint_url, **FAST)
    digest, path, _ = blob(tmp_path, 10)
    with pytest.raises(AdapterhubError, match="S3 bucket 'no-such-bucket-adapterhub' does not exist") as err:
        st.put(digest, path, 10)
    assert_clean_message(err.value)
    with pytest.raises(AdapterhubError, match="does not exist"):
        list(st.iter_blobs())
    with pytest.raises(AdapterhubError, match="does not exist"):
        st.open(digest)


def test_access_denied(s3_server, store, tmp_path, monkeypatch):
    digest, path, _ = blob(tmp_path, 10)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    st = S3Store.from_url(store.url, endpoint_url=s3_server.endpoint_url, **FAST)
    s3_server.enforce_auth(True)
    try:
        for call in (lambda: st.put(digest, path, 10), lambda: st.open(digest), lambda: list(st.iter_blobs())):
            with pytest.raises(AdapterhubError, match="access denied to s3://") as err:
                call()
            assert_clean_message(err.value)
    finally:
        s3_server.enforce_auth(False)


def test_unreachable_endpoint(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    st = S3Store.from_url("s3://b/p", endpoint_url=f"http://127.0.0.1:{port}", **FAST)
    digest, path, _ = blob(tmp_path, 10)
    started = time.monotonic()
    for call in (lambda: st.has(digest), lambda: st.put(digest, path, 10), lambda: st.open(digest)):
        with pytest.raises(AdapterhubError, match=f"cannot reach S3 endpoint http://127.0.0.1:{port}") as err:
            call()
        assert_clean_message(err.value)
        assert TEST_ACCESS_KEY not in str(err.value)
    assert time.monotonic() - started < 30


def test_server_stopped_mid_upload_then_retried(tmp_path):
    """The server goes away between parts: a clear error in bounded time; once a server is back on the
    same address, the same put completes and the abandoned upload is cleaned up."""
    server = MotoS3Server().start()
    try:
        bucket = server.new_bucket()
        st = S3Store.from_url(f"s3://{bucket}/reg", endpoint_url=server.endpoint_url, **{**FAST, "max_workers": 2})
        digest, path, data = blob(tmp_path, 6 * PART + 1)
        sent = []

        def progress(n):
            sent.append(n)
            if len(sent) == 1:
                server.stop()  # after the first part went through

        started = time.monotonic()
        with pytest.raises(AdapterhubError, match="cannot reach S3 endpoint") as err:
            st.put(digest, path, len(data), progress)
        assert time.monotonic() - started < 30
        assert_clean_message(err.value)
        assert sum(sent) < len(data)

        server.start()  # same port; moto kept its state
        assert not st.has(digest)
        assert st.put(digest, path, len(data)) is True
        assert read_back(st, digest, len(data)) == data
        assert st.cleanup_temp(0) == 1  # the upload the failed put left behind
    finally:
        server.stop()


def test_server_stopped_before_put_then_retried(tmp_path):
    server = MotoS3Server().start()
    try:
        bucket = server.new_bucket()
        st = S3Store.from_url(f"s3://{bucket}/reg", endpoint_url=server.endpoint_url, **FAST)
        digest, path, data = blob(tmp_path, 1000)
        assert st.has(digest) is False  # the client now holds a pooled connection
        server.stop()
        with pytest.raises(AdapterhubError, match="cannot reach S3 endpoint"):
            st.put(digest, path, len(data))
        server.start()
        assert st.put(digest, path, len(data)) is True
        assert read_back(st, digest) == data
    finally:
        server.stop()
