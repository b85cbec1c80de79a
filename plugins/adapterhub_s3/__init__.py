"""Built-in plugin: a content-addressed blob store in S3 or any S3-compatible server (``s3://`` URLs).

``s3://bucket/prefix`` keeps blob ``<digest>`` at key ``prefix/blobs/sha256/ab/cdef...`` (the same
layout as the local store). Credentials, region and endpoint come from the standard AWS sources
(environment, ``~/.aws/config``, instance roles); ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) or
the ``endpoint_url`` option points it at MinIO, Ceph, moto and the like. Options are keyword arguments
of :meth:`S3Store.from_url` or query parameters of the URL
(``s3://bucket/prefix?endpoint_url=http%3A%2F%2F127.0.0.1%3A9000&part_size=16MiB``).

Writes: the local file is hashed while it is read and uploaded (a single PutObject up to
``multipart_threshold``, else a parallel multipart upload); the upload is completed only if the bytes
hash to the digest, with ``If-None-Match: *`` so two writers never clobber each other (the loser gets
412 and ``put`` returns False). Reads: ranged GETs prefetched in parallel; the caller verifies sha256.
boto3 is imported only when the first request is made, so ``adapterhub --help`` never loads it.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import parse_qsl, urlparse

import adapterhub
from adapterhub.errors import AdapterhubError, IntegrityError, InvalidInput
from adapterhub.infra import RangeReader, check_digest, mask, scrub
from adapterhub.interfaces import BlobStore, Progress

from . import _errors

MiB = 1 << 20
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "kib": 1 << 10,
    "m": MiB,
    "mb": 1000**2,
    "mib": MiB,
    "g": 1 << 30,
    "gb": 1000**3,
    "gib": 1 << 30,
}
_MIN_PART = 5 * MiB  # S3's minimum size of every part but the last
_MAX_PARTS = 10000


def parse_size(value: Any) -> int:
    """``16777216``, ``"16MiB"``, ``"64MB"`` -> bytes."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(" ", "")
    num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(num) :]
    if unit not in _UNITS or not num:
        raise InvalidInput(f"invalid size '{value}' (use bytes or e.g. 16MiB)")
    try:
        return int(float(num) * _UNITS[unit])
    except ValueError:
        raise InvalidInput(f"invalid size '{value}' (use bytes or e.g. 16MiB)") from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidInput(f"invalid boolean '{value}' (use true or false)")


#: seconds an S3 operation may go without progress before it fails (attempts and retries included)
STALL_ENV = "ADAPTERHUB_S3_STALL_TIMEOUT"
DEFAULT_STALL = 120.0


def stall_timeout() -> float:
    """``$ADAPTERHUB_S3_STALL_TIMEOUT`` (seconds, > 0), else 2 minutes."""
    text = os.environ.get(STALL_ENV, "").strip()
    if not text:
        return DEFAULT_STALL
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InvalidInput(f"{STALL_ENV} must be a number of seconds > 0, got {text!r}")
    return value


#: the options :meth:`S3Store.from_url` accepts as keywords or URL query parameters
OPTIONS = (
    "endpoint_url",
    "region",
    "profile",
    "part_size",
    "multipart_threshold",
    "max_workers",
    "max_attempts",
    "part_retries",
    "connect_timeout",
    "read_timeout",
    "addressing_style",
    "conditional_writes",
)


class S3Store(BlobStore):
    """Blobs in ``s3://bucket/prefix``.

    :param bucket: bucket name.
    :param prefix: key prefix (no leading or trailing slash needed).
    :param endpoint_url: an S3-compatible server (default: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
        / AWS itself).
    :param region: AWS region (default: the standard AWS configuration, else ``us-east-1``).
    :param profile: a profile of ``~/.aws/config``.
    :param part_size: bytes per multipart part and per ranged GET (default 16 MiB; at least 5 MiB).
    :param multipart_threshold: files larger than this use multipart upload (default ``part_size``).
    :param max_workers: parallel requests per transfer (default 8).
    :param max_attempts: botocore attempts per request, with adaptive backoff (default 8).
    :param part_retries: extra tries of a whole part / range after botocore gave up (default 2).
    :param connect_timeout: seconds (default 10). :param read_timeout: seconds (default 60).
    :param addressing_style: ``path`` / ``virtual`` / ``auto`` (default ``path`` with a custom
        endpoint, else ``auto``).
    :param conditional_writes: send ``If-None-Match: *`` (default True; turned off by itself, with a
        fallback, if the server answers that it does not implement it).
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        part_size: int | str = 16 * MiB,
        multipart_threshold: int | str | None = None,
        max_workers: int | str = 8,
        max_attempts: int | str = 8,
        part_retries: int | str = 2,
        connect_timeout: float | str = 10,
        read_timeout: float | str = 60,
        addressing_style: str | None = None,
        conditional_writes: bool | str = True,
    ):
        if not bucket:
            raise InvalidInput("an S3 store URL needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.profile = profile or None
        self.part_size = parse_size(part_size)
        self.multipart_threshold = (
            parse_size(multipart_threshold) if multipart_threshold is not None else self.part_size
        )
        self.max_workers = max(1, int(max_workers))
        self.max_attempts = max(1, int(max_attempts))
        self.part_retries = max(0, int(part_retries))
        # a stalled endpoint fails within the stall deadline: each wait is at most a third of it, and no
        # attempt starts that could end past it (_check_deadline, _retrying); each retry is said on stderr
        self.stall = stall_timeout()
        self.connect_timeout = min(float(connect_timeout), self.stall / 3)
        self.read_timeout = min(float(read_timeout), self.stall / 3)
        self.addressing_style = addressing_style
        self.conditional_writes = _bool(conditional_writes)
        if self.part_size < _MIN_PART:
            # S3 refuses parts under 5 MiB (but the last); small sizes are allowed for tests against
            # servers that do not check, so only refuse what can never work.
            if self.part_size < 1:
                raise InvalidInput(f"part_size must be positive, got {self.part_size}")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client_obj: Any = None
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, **options: Any) -> "S3Store":
        """``s3://bucket/prefix[?option=value&...]``; keyword ``options`` override query options."""
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise InvalidInput(f"invalid S3 store URL '{url}' (expected s3://bucket/prefix)")
        query = dict(parse_qsl(parsed.query, keep_blank_values=False))
        known = set(OPTIONS)
        unknown = sorted(set(query) - known)
        if unknown:
            raise InvalidInput(
                f"unknown S3 store option(s) {', '.join(unknown)} in {parsed.scheme}://{parsed.netloc}{parsed.path} "
                f"(known: {', '.join(sorted(known))})"
            )
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidInput(f"unknown S3 store option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        query.update({k: v for k, v in options.items() if v is not None})
        return cls(parsed.netloc, parsed.path, **query)

    def describe(self) -> str:
        return self.url + (f" at {mask(self._endpoint())}" if self._endpoint() != "AWS" else "")

    @property
    def _client(self) -> Any:
        client = self._client_obj
        if client is None:
            with self._lock:
                if self._client_obj is None:
                    self._client_obj = self._make_client()
                client = self._client_obj
        return client

    def _make_client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise AdapterhubError("the S3 store needs boto3: pip install 'adapterhub[s3]'") from None
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        style = self.addressing_style or ("path" if endpoint else "auto")
        options: dict[str, Any] = dict(
            retries={"max_attempts": self.max_attempts, "mode": "adaptive"},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=max(10, 2 * self.max_workers + 2),
            s3={"addressing_style": style},
            # S3-compatible servers that predate flexible checksums reject aws-chunked CRC trailers;
            # we verify sha256 end to end ourselves.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            config = Config(**options)
        except TypeError:  # botocore < 1.36 knows neither checksum switch (and does not need them)
            options.pop("request_checksum_calculation")
            options.pop("response_checksum_validation")
            config = Config(**options)
        try:
            session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
            region = session.region_name or "us-east-1"
            client = session.client("s3", endpoint_url=self.endpoint_url, region_name=region, config=config)
        except Exception as exc:
            raise self._translate(exc, "connect", self.url) from None
        client.meta.events.register("before-call.s3", _start_clock)
        client.meta.events.register_first("needs-retry.s3", self._check_deadline)
        try:
            creds = session.get_credentials()
            if creds is not None:
                frozen = creds.get_frozen_credentials()
                self._secrets = tuple(s for s in (frozen.secret_key, frozen.token, frozen.access_key) if s)
        except Exception:
            pass
        return client

    def _stalled(self, op: str, where: str, waited: float, attempts: int) -> AdapterhubError:
        err = AdapterhubError(
            f"S3 endpoint {mask(self._endpoint())} made no progress for {waited:.1f} s on {op} "
            f"of {where} ({attempts} attempts); giving up ({STALL_ENV}={self.stall:g} s)"
        )
        err.unreachable = True  # type: ignore[attr-defined]
        return err

    def _check_deadline(
        self, request_dict: Any = None, caught_exception: Any = None, attempts: int = 1, operation: Any = None, **_: Any
    ) -> None:
        """botocore's ``needs-retry`` hook, before its own retry handler: after a timeout or a dropped
        connection, no further attempt that could end past the stall deadline (counted from the call's start);
        a retry after a wait of a second or more is said on stderr."""
        if caught_exception is None or not _errors.is_connection_error(caught_exception):
            return None
        start = ((request_dict or {}).get("context") or {}).get("adapterhub_start")
        waited = time.monotonic() - start if start else 0.0
        op = getattr(operation, "name", "a request")
        if waited + max(self.read_timeout, self.connect_timeout) > self.stall + 0.05:
            params = (request_dict or {}).get("url_path", "")
            raise self._stalled(op, f"s3://{self.bucket}{params}", waited, attempts)
        if waited >= 1.0:  # a long wait is said on stderr, not sat through in silence
            print(
                f"adapterhub: S3 endpoint {mask(self._endpoint())} has not answered {op} for {waited:.0f} s "
                f"({type(caught_exception).__name__}); retrying until {self.stall:g} s ({STALL_ENV})",
                file=sys.stderr,
                flush=True,
            )
        return None

    # -- helpers -------------------------------------------------------------------------------
    def _key(self, digest: str) -> str:
        check_digest(digest)
        base = f"blobs/sha256/{digest[:2]}/{digest[2:]}"
        return f"{self.prefix}/{base}" if self.prefix else base

    def _blob_prefix(self) -> str:
        return f"{self.prefix}/blobs/sha256/" if self.prefix else "blobs/sha256/"

    def _endpoint(self) -> str:
        if self._client_obj is not None:
            return self._client_obj.meta.endpoint_url
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return scrub(text, [self._endpoint()])

    def _translate(self, exc: BaseException, op: str, where: str, attempts: int | None = None) -> AdapterhubError:
        return _errors.translate(
            exc,
            op=op,
            where=where,
            bucket=self.bucket,
            endpoint=mask(self._endpoint()),
            attempts=attempts or self.max_attempts,
            scrub=self._scrub,
        )

    def _call(self, op: str, where: str, **params: Any) -> Any:
        """One S3 API call (botocore retries it); any failure becomes a one-line AdapterhubError."""
        client = self._client
        try:
            return getattr(client, op)(**params)
        except Exception as exc:
            raise self._translate(exc, op, where) from None

    def _retrying(self, op: str, where: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (botocore already retries each request) and retry the whole of it
        ``part_retries`` more times with jittered backoff on throttling and dropped connections,
        including a body that breaks off while it is read. Errors come out translated."""
        attempt, start = 0, time.monotonic()
        while True:
            try:
                return fn()
            except Exception as exc:
                if isinstance(exc, AdapterhubError) or attempt >= self.part_retries or not _errors.is_retryable(exc):
                    raise self._translate(exc, op, where, self.max_attempts * (attempt + 1)) from None
                if (
                    _errors.is_connection_error(exc)
                    and time.monotonic() - start + self.read_timeout > self.stall + 0.05
                ):
                    raise self._stalled(op, where, time.monotonic() - start, attempt + 1) from None
                attempt += 1
                time.sleep(min(8.0, 0.25 * 2**attempt) * (0.5 + random.random() / 2))

    # -- BlobStore -----------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return self.size(digest) is not None

    def size(self, digest: str) -> int | None:
        key = self._key(digest)
        try:
            return int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except Exception as exc:
            if _errors.is_client_error(exc) and _errors.error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._translate(exc, "HeadObject", f"s3://{self.bucket}/{key}") from None

    def put(self, digest: str, path: str, size: int, progress: Progress | None = None) -> bool:
        key = self._key(digest)
        if self.has(digest):
            return False
        try:
            actual = os.path.getsize(path)
        except OSError as exc:
            raise AdapterhubError(f"cannot read {path}: {exc.strerror}") from None
        if size is not None and actual != size:
            raise IntegrityError(
                f"source file {path} is corrupt: expected sha256:{digest} ({size} bytes), got {actual} bytes"
            )
        if actual <= self.multipart_threshold:
            return self._put_single(digest, key, path, actual, progress)
        return self._put_multipart(digest, key, path, actual, progress)

    def _check(self, h: Any, digest: str, path: str, size: int, total: int) -> None:
        if h.hexdigest() != digest or total != size:
            raise IntegrityError(
                f"source file {path} is corrupt: expected sha256:{digest} ({size} bytes), "
                f"got sha256:{h.hexdigest()} ({total} bytes)"
            )

    def _conditional_unsupported(self, exc: BaseException) -> bool:
        """The server says it does not implement ``If-None-Match`` on writes."""
        code = _errors.error_code(exc)
        if _errors.http_status(exc) == 501 or code in ("NotImplemented", "501"):
            return True
        if code in ("InvalidArgument", "InvalidRequest", "400") or type(exc).__name__ == "ParamValidationError":
            text = str(exc).lower()
            return "if-none-match" in text or "ifnonematch" in text or "conditional" in text
        return False

    def _put_single(self, digest: str, key: str, path: str, size: int, progress: Progress | None) -> bool:
        with open(path, "rb") as f:
            data = f.read()
        h = hashlib.sha256(data)
        self._check(h, digest, path, size, len(data))
        where = f"s3://{self.bucket}/{key}"

        def send() -> bool:
            params = dict(Bucket=self.bucket, Key=key, Body=data, ContentType="application/octet-stream")
            if self.conditional_writes:
                try:
                    self._client.put_object(IfNoneMatch="*", **params)
                    return True
                except Exception as exc:
                    if _errors.error_code(exc) == "PreconditionFailed" or _errors.http_status(exc) == 412:
                        return False  # another writer stored this blob first: same bytes by construction
                    if not self._conditional_unsupported(exc):
                        raise
                    self.conditional_writes = False
            if self.has(digest):
                return False
            self._client.put_object(**params)
            return True

        written = self._retrying("PutObject", where, send)
        if written and progress:
            progress(size)
        return written

    def _put_multipart(self, digest: str, key: str, path: str, size: int, progress: Progress | None) -> bool:
        where = f"s3://{self.bucket}/{key}"
        part_size = max(self.part_size, -(-size // _MAX_PARTS))
        upload = self._call(
            "create_multipart_upload", where, Bucket=self.bucket, Key=key, ContentType="application/octet-stream"
        )
        upload_id = upload["UploadId"]
        parts: dict[int, str] = {}
        lock = threading.Lock()
        done = False
        h = hashlib.sha256()
        total = 0

        def send_part(number: int, data: bytes) -> None:
            def once() -> None:
                resp = self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
                with lock:
                    parts[number] = resp["ETag"]

            self._retrying("UploadPart", where, once)
            if progress:
                progress(len(data))

        pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="adapterhub-s3-put")
        futures: set[Future] = set()
        try:
            with open(path, "rb") as f:
                number = 0
                while True:
                    data = f.read(part_size)
                    if not data and number > 0:
                        break
                    number += 1
                    h.update(data)  # hashing overlaps the uploads in flight (hashlib drops the GIL)
                    total += len(data)
                    # bounded memory: at most max_workers parts in flight plus the one just read
                    while len(futures) >= self.max_workers:
                        finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            fut.result()
                    futures.add(pool.submit(send_part, number, data))
                    if len(data) < part_size:
                        break
            self._check(h, digest, path, size, total)
            for fut in futures:
                fut.result()
            result = self._complete(digest, key, upload_id, parts)
            done = True
            return result
        except BaseException as exc:
            for fut in futures:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            if not done and not _errors.is_connection_error(exc) and not getattr(exc, "unreachable", False):
                self._abort(key, upload_id)  # an unreachable endpoint leaves it for cleanup_temp
            raise
        finally:
            pool.shutdown(wait=False)

    def _complete(self, digest: str, key: str, upload_id: str, parts: dict[int, str]) -> bool:
        where = f"s3://{self.bucket}/{key}"
        body = {"Parts": [{"ETag": parts[n], "PartNumber": n} for n in sorted(parts)]}

        def complete() -> bool:
            params = dict(Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload=body)
            if self.conditional_writes:
                try:
                    self._client.complete_multipart_upload(IfNoneMatch="*", **params)
                    return True
                except Exception as exc:
                    code = _errors.error_code(exc)
                    if code == "PreconditionFailed" or _errors.http_status(exc) == 412:
                        self._abort(key, upload_id)
                        return False
                    if code == "ConditionalRequestConflict" and self.has(digest):
                        self._abort(key, upload_id)
                        return False
                    if code == "NoSuchUpload" and self.has(digest):
                        return False  # a retried complete whose first try went through
                    if not self._conditional_unsupported(exc):
                        raise
                    self.conditional_writes = False
            if self.has(digest):
                self._abort(key, upload_id)
                return False
            self._client.complete_multipart_upload(**params)
            return True

        return self._retrying("CompleteMultipartUpload", where, complete)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception:
            pass  # best effort: cleanup_temp removes what is left

    def open(self, digest: str, limit: int | None = None) -> BinaryIO:
        key = self._key(digest)
        first_end = min(self.part_size, limit if limit is not None else self.part_size) - 1
        where = f"s3://{self.bucket}/{key}"
        missing = IntegrityError(f"blob sha256:{digest} is missing from {self.url}")

        def first() -> tuple[bytes, int, str | None]:
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{max(first_end, 0)}")
            except Exception as exc:
                code = _errors.error_code(exc)
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise missing from None
                if code != "InvalidRange" and _errors.http_status(exc) != 416:
                    raise
                resp = self._client.get_object(Bucket=self.bucket, Key=key)  # an empty blob
            data = resp["Body"].read()
            content_range = resp.get("ContentRange") or ""
            total = int(content_range.rsplit("/", 1)[1]) if "/" in content_range else len(data)
            return data, total, resp.get("ETag")

        data, total, etag = self._retrying("GetObject", where, first)
        if limit is not None:  # never fetch past what the caller will read
            total = min(total, limit)
            data = data[:limit]

        def fetch(start: int, end: int) -> bytes:
            def once() -> bytes:
                params = dict(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}")
                if etag:
                    params["IfMatch"] = etag
                try:
                    body = self._client.get_object(**params)["Body"].read()
                except Exception as exc:
                    code = _errors.error_code(exc)
                    if code in ("NoSuchKey", "404"):
                        raise missing from None
                    if code == "PreconditionFailed" or _errors.http_status(exc) == 412:
                        raise IntegrityError(f"blob sha256:{digest} in {self.url} changed while it was read") from None
                    raise
                if len(body) != end - start + 1:
                    raise IntegrityError(f"blob sha256:{digest} in {self.url}: short read at bytes {start}-{end}")
                return body

            return self._retrying("GetObject", where, once)

        return RangeReader(data, total, self.part_size, fetch, self.max_workers, self.max_workers)

    def presigned_url(self, digest: str, expires: int) -> str | None:
        """A presigned GET of the blob's key (no request is made: signing is local)."""
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(digest)}, ExpiresIn=int(expires)
        )

    def delete(self, digest: str) -> None:
        key = self._key(digest)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _errors.error_code(exc) in ("NoSuchKey", "404"):
                return
            raise self._translate(exc, "DeleteObject", f"s3://{self.bucket}/{key}") from None

    def iter_blobs(self) -> Iterator[tuple[str, float]]:
        prefix = self._blob_prefix()
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", ()):
                    rest = obj["Key"][len(prefix) :]
                    fan, _, tail = rest.partition("/")
                    digest = fan + tail
                    if (
                        len(fan) != 2
                        or "/" in tail
                        or len(digest) != 64
                        or any(c not in "0123456789abcdef" for c in digest)
                    ):
                        continue
                    yield digest, obj["LastModified"].timestamp()
        except AdapterhubError:
            raise
        except Exception as exc:
            raise self._translate(exc, "ListObjectsV2", f"s3://{self.bucket}/{prefix}") from None

    def cleanup_temp(self, older_than: float) -> int:
        """Abort multipart uploads under the blob prefix started more than ``older_than`` seconds ago."""
        prefix = self._blob_prefix()
        where = f"s3://{self.bucket}/{prefix}"
        cutoff = time.time() - older_than
        stale: list[tuple[str, str]] = []
        try:
            for page in self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for up in page.get("Uploads", ()):
                    if up["Initiated"].timestamp() <= cutoff:
                        stale.append((up["Key"], up["UploadId"]))
        except Exception as exc:
            raise self._translate(exc, "ListMultipartUploads", where) from None
        removed = 0
        for key, upload_id in stale:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                removed += 1
            except Exception as exc:
                if _errors.error_code(exc) == "NoSuchUpload":
                    continue  # finished or aborted meanwhile
                raise self._translate(exc, "AbortMultipartUpload", f"s3://{self.bucket}/{key}") from None
        return removed


def _start_clock(context: Any = None, **_: Any) -> None:
    """botocore's ``before-call`` hook: when the call began (its attempts share ``context``)."""
    if context is not None:
        context["adapterhub_start"] = time.monotonic()


@adapterhub.hookimpl
def register_stores(register):
    register(S3Store)
