"""The registry server beside MLflow's, in one run on this machine, same backend kind.

Metadata: 32 concurrent clients (4 processes x 8 threads, keep-alive connections) for ``--seconds``:

- ours: ``GET /api/v1/show?ref=acme/bench:K`` (resolve a ref and read its manifest: one request);
- MLflow: ``GET model-versions/get`` + ``GET mlflow-artifacts/artifacts?path=...`` (the equivalent
  model-registry lookup and artifact listing: two requests).

Both servers run ``--workers W`` over SQLite (ours: + the file store; MLflow: ``--serve-artifacts`` with a
local artifacts destination), with the same adapter files. Reported: operations/s, requests/s, p50/p99.

Blobs: one version holding a ``--blob-mb`` file, served from moto's S3 server (ours: S3 store +
presigned URLs; peer: raw boto3 ``download_file`` from the same server; MLflow: its proxied artifact
download through ``mlflow artifacts download``). Ours is the README's command, timed as a process:
``adapterhub pull hub:acme/big:1 --out DIR`` (copied into the local registry, materialized, verified).

    python bench/server.py --seconds 10 --blob-mb 512
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from mlflowserver import MlflowServer  # noqa: E402
from serverproc import RegistryServer  # noqa: E402


def http_worker(
    url: str, paths: list[list[str]], headers: dict[str, str], seconds: float, threads: int, out: "mp.Queue"
) -> None:
    """``threads`` keep-alive clients, each doing one operation (a list of GETs) after another."""
    import http.client

    u = urllib.parse.urlparse(url)
    lat: list[float] = []
    reqs = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def run(i: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        mine, n, k = [], 0, i
        while time.monotonic() < stop_at:
            op = paths[k % len(paths)]
            k += threads
            t0 = time.perf_counter()
            for p in op:
                conn.request("GET", p, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise SystemExit(f"GET {p}: HTTP {r.status}")
                n += 1
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)
            reqs[0] += n

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((lat, reqs[0]))


def load(
    url: str, ops: list[list[str]], headers: dict[str, str], seconds: float, procs: int = 4, threads: int = 8
) -> dict[str, float]:
    http_worker(url, ops[:1], headers, 0.5, 2, mp.Queue())  # warm up
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=http_worker, args=(url, ops, headers, seconds, threads, q)) for _ in range(procs)]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    results = [q.get() for _ in ps]
    for p in ps:
        p.join()
    wall = time.perf_counter() - t0
    lat = sorted(x for r in results for x in r[0])
    reqs = sum(r[1] for r in results)
    return {
        "ops_s": len(lat) / wall,
        "req_s": reqs / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "ops": len(lat),
    }


def make_adapters(root: str, n: int) -> list[str]:
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from conftest import make_lora_dir

    return [make_lora_dir(os.path.join(root, f"a{i}"), seed=i, r=8, hidden=64, layers=2) for i in range(n)]


def cli(*args: str, env: dict[str, str]) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "adapterhub", *args], env={**os.environ, **env}, capture_output=True, text=True
    )
    if p.returncode:
        raise SystemExit(f"adapterhub {' '.join(args)}: {p.stderr}")
    return p.stdout


def bench_metadata(root: str, seconds: float, workers: int, versions: int) -> None:
    dirs = make_adapters(os.path.join(root, "adapters"), versions)
    home = os.path.join(root, "ours")
    env = {"ADAPTERHUB_HOME": home}
    for d in dirs:
        cli("push", d, "acme/bench", env=env)
    token = json.loads(cli("token", "create", "--name", "bench", "--scope", "read", "--json", env=env))["token"]
    with RegistryServer(env=env, workers=workers) as srv:
        ours = load(
            srv.url,
            [[f"/api/v1/show?ref=acme/bench:{k}"] for k in range(1, versions + 1)],
            {"Authorization": f"Bearer {token}"},
            seconds,
        )

    mlflow_server = MlflowServer(pathlib.Path(root) / "mlflow", workers=workers).start(timeout=300)
    url = mlflow_server.uri
    try:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(url)
        client = MlflowClient(url)
        client.create_registered_model("bench")
        paths = []
        for d in dirs:
            with mlflow.start_run() as run:
                mlflow.log_artifacts(d, artifact_path="adapter")
            mv = client.create_model_version("bench", f"runs:/{run.info.run_id}/adapter", run.info.run_id)
            exp = run.info.experiment_id
            paths.append(
                [
                    f"/api/2.0/mlflow/model-versions/get?name=bench&version={mv.version}",
                    f"/api/2.0/mlflow-artifacts/artifacts?path={exp}/{run.info.run_id}/artifacts/adapter",
                ]
            )
        theirs = load(url, paths, {}, seconds)
    finally:
        mlflow_server.stop()
    print(
        f"metadata: 32 clients (4 processes x 8 threads), {seconds:.0f} s each, {workers} server workers, "
        f"{versions} versions"
    )
    print(f"  {'':<34}{'ops/s':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for label, r in (("adapterhub serve (show)", ours), ("mlflow server (get + list)", theirs)):
        print(f"  {label:<34}{r['ops_s']:>9.0f}{r['req_s']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}")
    print(
        f"  ratio ours/mlflow: {ours['ops_s'] / theirs['ops_s']:.2f}x operations/s, "
        f"{ours['req_s'] / theirs['req_s']:.2f}x requests/s"
    )


def bench_blobs(root: str, blob_mb: int, workers: int) -> None:
    from s3server import MotoS3Server, aws_test_env

    os.environ.update(aws_test_env())
    big = os.path.join(root, "big")
    os.makedirs(big)
    with open(os.path.join(big, "adapter_model.safetensors"), "wb") as f:  # a safetensors file of random bytes
        header = json.dumps(
            {"w": {"dtype": "F32", "shape": [blob_mb * (1 << 20) // 4], "data_offsets": [0, blob_mb * (1 << 20)]}}
        ).encode()
        header += b" " * (-len(header) % 8)
        f.write(len(header).to_bytes(8, "little") + header)
        for _ in range(blob_mb):
            f.write(os.urandom(1 << 20))
    with open(os.path.join(big, "adapterhub.json"), "w") as f:
        json.dump({"method": "bitfit", "config": {}}, f)
    with MotoS3Server() as s3:
        bucket = s3.new_bucket()
        from adapterhub.registry.remotes import with_endpoint

        env = {
            "ADAPTERHUB_REGISTRY_DB": f"sqlite:///{root}/team.db",
            "ADAPTERHUB_REGISTRY_STORE": with_endpoint(f"s3://{bucket}/a", s3.endpoint_url),
            "ADAPTERHUB_HOME": os.path.join(root, "server-home"),
            **aws_test_env(),
        }
        src = f"{big}/adapter_model.safetensors"
        import hashlib

        from adapterhub.api import open_store
        from adapterhub.registry.blobs import hash_file

        digest, size = hash_file(src)
        os.environ.update(env)
        from adapterhub.api import open_registry
        from adapterhub.registry.records import LocalFile

        reg = open_registry()
        reg.publish(
            "acme/big", {"method": "bitfit", "config": {}}, [LocalFile("adapter_model.safetensors", src, digest, size)]
        )
        reg.close()
        token = json.loads(cli("token", "create", "--name", "bench", "--scope", "read", "--json", env=env))["token"]
        client_env = {"ADAPTERHUB_HOME": os.path.join(root, "client"), "HUB_TOKEN": token}
        with RegistryServer(env=env, workers=workers) as srv:
            cli("remote", "add", "hub", srv.url, "--token-env", "HUB_TOKEN", env=client_env)
            t0 = time.perf_counter()
            cli("pull", "hub:acme/big:1", "--out", os.path.join(root, "pulled"), env=client_env)
            ours = time.perf_counter() - t0
        import boto3

        s3c = boto3.client("s3", endpoint_url=s3.endpoint_url)
        key = open_store(env["ADAPTERHUB_REGISTRY_STORE"])._key(digest)
        t0 = time.perf_counter()
        s3c.download_file(bucket, key, os.path.join(root, "boto3.bin"))
        raw = time.perf_counter() - t0
        h = hashlib.sha256()
        with open(os.path.join(root, "boto3.bin"), "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        assert h.hexdigest() == digest
    mlflow_server = MlflowServer(pathlib.Path(root) / "mlflow", workers=workers).start(timeout=300)
    url = mlflow_server.uri
    try:
        import mlflow

        mlflow.set_tracking_uri(url)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(big, artifact_path="adapter")
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mlflow",
                "artifacts",
                "download",
                "--run-id",
                run.info.run_id,
                "--artifact-path",
                "adapter",
                "--dst-path",
                os.path.join(root, "mlflow-dl"),
            ],
            env={**os.environ, "MLFLOW_TRACKING_URI": url},
            check=True,
            capture_output=True,
        )
        theirs = time.perf_counter() - t0
    finally:
        mlflow_server.stop()
    mb = size / 1e6
    print(f"blobs: one {mb:.0f} MB file, moto S3 server on 127.0.0.1")
    print(f"  adapterhub pull hub:REF --out (presigned S3) {ours:7.2f} s  {mb / ours:7.1f} MB/s")
    print(f"  raw boto3 download_file                      {raw:7.2f} s  {mb / raw:7.1f} MB/s")
    print(f"  mlflow artifacts download (proxied)          {theirs:7.2f} s  {mb / theirs:7.1f} MB/s")
    print(f"  ratio ours/boto3 throughput: {raw / ours:.2f}x   ours/mlflow: {theirs / ours:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--workers", type=int, default=2, help="server processes, for both servers")
    ap.add_argument("--versions", type=int, default=20)
    ap.add_argument("--blob-mb", type=int, default=512)
    ap.add_argument("--only", choices=("metadata", "blobs"))
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="adapterhub-bench-server-")
    try:
        if args.only != "blobs":
            bench_metadata(os.path.join(root, "meta"), args.seconds, args.workers, args.versions)
        if args.only != "metadata":
            bench_blobs(os.path.join(root, "blobs"), args.blob_mb, args.workers)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
