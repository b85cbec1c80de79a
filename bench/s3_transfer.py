"""S3 blob transfer: ``S3Store.put`` / ``open`` + ``copy_stream_verified`` vs raw boto3
``upload_file`` / ``download_file`` of the same bytes, against the same moto server in the same run.

    python bench/s3_transfer.py --size-mb 512

The moto server runs in a child process on 127.0.0.1 (so the server does not share the client's
GIL); both sides use the same botocore settings (``when_required`` checksums, path addressing). Ours
includes hashing: sha256 of the local file while uploading, and of every byte read back. The boto3
peer is measured twice: with its default ``TransferConfig`` and with ours (same part size and
concurrency). A re-put of identical content must move 0 bytes. Objects are deleted between phases
because moto keeps them in memory.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time

SERVER = r"""
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
s = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
s.start()
print(s.get_host_and_port()[1], flush=True)
sys.stdin.read()
s.stop()
"""

MiB = 1 << 20


def start_server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def make_file(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def drop_cache_hint(path: str) -> None:
    # keep the comparison fair: every phase reads the source from the page cache
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=512, help="blob size in MiB (default 512)")
    ap.add_argument("--part-size-mb", type=int, default=16, help="our part / range size in MiB (default 16)")
    ap.add_argument("--workers", type=int, default=8, help="our parallel requests (default 8)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per phase; the best is reported")
    args = ap.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    import boto3
    from adapterhub_s3 import S3Store
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    from adapterhub.registry.blobs import copy_stream_verified

    proc, endpoint = start_server()
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=32,
                retries={"max_attempts": 8, "mode": "adaptive"},
            ),
        )
        bucket = "bench"
        client.create_bucket(Bucket=bucket)
        store = S3Store.from_url(
            f"s3://{bucket}/ours", endpoint_url=endpoint, part_size=args.part_size_mb * MiB, max_workers=args.workers
        )
        size = args.size_mb * MiB
        with tempfile.TemporaryDirectory(prefix="adapterhub-bench-") as tmp:
            src = os.path.join(tmp, "src.bin")
            dst = os.path.join(tmp, "dst.bin")
            digest = make_file(src, size)
            mb = size / 1e6
            best: dict[str, float] = {}

            def record(name: str, seconds: float) -> None:
                best[name] = min(best.get(name, float("inf")), seconds)

            reput_bytes = None
            for _ in range(args.repeat):
                # ours -----------------------------------------------------------------------
                drop_cache_hint(src)
                sec, written = timed(lambda: store.put(digest, src, size))
                assert written is True
                record("ours put", sec)
                moved: list[int] = []
                sec_re, again = timed(lambda: store.put(digest, src, size, moved.append))
                assert again is False
                reput_bytes = sum(moved)

                def get_ours():
                    with store.open(digest) as s, open(dst, "wb") as d:
                        return copy_stream_verified(s, d, digest, "bench blob", size)

                sec, n = timed(get_ours)
                assert n == size
                record("ours get", sec)
                store.delete(digest)
                os.remove(dst)

                # boto3, default and matched transfer configs ---------------------------------
                for label, cfg in (
                    ("boto3 default", TransferConfig()),
                    (
                        "boto3 matched",
                        TransferConfig(
                            multipart_threshold=args.part_size_mb * MiB,
                            multipart_chunksize=args.part_size_mb * MiB,
                            max_concurrency=args.workers,
                        ),
                    ),
                ):
                    drop_cache_hint(src)
                    sec, _ = timed(lambda: client.upload_file(src, bucket, "peer/blob", Config=cfg))
                    record(f"{label} put", sec)
                    sec, _ = timed(lambda: client.download_file(bucket, "peer/blob", dst, Config=cfg))
                    record(f"{label} get", sec)
                    assert os.path.getsize(dst) == size
                    client.delete_object(Bucket=bucket, Key="peer/blob")
                    os.remove(dst)

            print(
                f"s3_transfer: {args.size_mb} MiB blob, moto server {endpoint}, part/range {args.part_size_mb} MiB, "
                f"{args.workers} workers, best of {args.repeat}"
            )
            for name, sec in best.items():
                print(f"  {name:<18} {mb / sec:8.1f} MB/s  ({sec:.2f} s)")
            for peer in ("boto3 default", "boto3 matched"):
                for op in ("put", "get"):
                    print(f"  ratio ours/{peer} {op}: {best[f'{peer} {op}'] / best[f'ours {op}']:.2f}")
            print(
                f"  re-put of identical content moved {reput_bytes} bytes (returned False), in {sec_re * 1000:.0f} ms"
            )
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
