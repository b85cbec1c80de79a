"""Benchmark: a deployment pipeline on a clean machine, ``adapterhub pull REF --from team --merged`` against a
real PostgreSQL + S3 (moto's server over HTTP), vs the same done with boto3 + peft.

The model and adapter are bench/merge.py's (1.1B-parameter bf16 Llama, LoRA r=16 on every linear layer).
Setup (not timed): a publisher's home pushes the adapter with ``--base`` and then to the team registry (a
fresh PostgreSQL database on ``$ADAPTERHUB_BENCH_PG`` or postgresql://postgres@127.0.0.1:5432/test, and an S3
bucket), and ``alias set team:acme/bench production 1`` (forced: random weights have no evaluation); the PEFT adapter directory is uploaded to the same bucket with boto3.
Then, each in its own subprocess (peak RSS from ``os.wait4``'s rusage of that child):

* ``ours``: a clean home with only ``remote add team ...``, then
  ``adapterhub pull acme/bench@production --from team --merged --base BASE --out OUT`` (timed);
* ``peer``: boto3 ``download_file`` of the adapter's two files, then
  ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE, dtype=bf16), DIR).merge_and_unload()
  .save_pretrained(OUT)``.

The outputs are compared tensor by tensor (``torch.equal``). Targets: ours ≤ 0.3× the peer's wall time and
≤ 0.2× its peak RSS. The load average is printed before and after.

    python bench/deploy.py [--workdir DIR] [--layers 22] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from merge import compile_ours, measure, settle  # noqa: E402

PG_ADMIN = os.environ.get("ADAPTERHUB_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")

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

PEER = r"""
import os, sys, tempfile, warnings
warnings.simplefilter("ignore")
import boto3, torch, transformers, peft
transformers.logging.set_verbosity_error()
endpoint, bucket, prefix, base, out = sys.argv[1:6]
s3 = boto3.client("s3", endpoint_url=endpoint)
with tempfile.TemporaryDirectory() as adapter:
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        s3.download_file(bucket, f"{prefix}/{name}", os.path.join(adapter, name))
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
"""

AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAADAPTERHUBBENCH1",
    "AWS_SECRET_ACCESS_KEY": "bench-secret-not-a-real-one",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/bench-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/bench-aws-cred",
}


def run(cmd: list[str], env: dict) -> str:
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:5])} failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def setup(db: str, endpoint: str, adapter: str) -> None:
    """(a child process: this one stays small) the database and the bucket, the PEFT files uploaded."""
    import boto3
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="team")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        s3.upload_file(os.path.join(adapter, name), "team", f"peft/acme-bench/{name}")


def drop(db: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="where to build (default: a temp dir, removed at the end)")
    ap.add_argument("--layers", type=int, default=22, help="decoder layers (22: ~1.1B parameters)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--step", nargs="+", help=argparse.SUPPRESS)  # internal: run in a child
    args = ap.parse_args()
    if args.step:
        {"setup": setup, "drop": drop}[args.step[0]](*args.step[1:])
        return
    # this process imports neither torch nor boto3: a child's peak RSS (ru_maxrss) starts from this small parent
    workdir = args.workdir or tempfile.mkdtemp(prefix="adapterhub-bench-deploy-")
    os.makedirs(workdir, exist_ok=True)
    db = "ah_bench_" + uuid.uuid4().hex[:8]
    me = [sys.executable, os.path.abspath(__file__)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTERHUB_", "AWS_"))}
    env = {**clean, **AWS, "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = f"http://127.0.0.1:{int(server.stdout.readline())}"
        merge_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "merge.py")
        params = int(
            run(
                [sys.executable, merge_py, "--workdir", workdir, "--step", "build", "--layers", str(args.layers)],
                dict(os.environ),
            ).split()[-1]
        )
        base, adapter = os.path.join(workdir, "base"), os.path.join(workdir, "adapter")
        print(f"model: {params / 1e9:.2f}B parameters bf16; moto S3 {endpoint}; PostgreSQL database {db}")
        print(f"byte-compiled adapterhub and {compile_ours() - 1} plugin packages (as pip install does)")
        run(me + ["--step", "setup", db, endpoint, adapter], env)
        db_url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{db}"
        ah = [sys.executable, "-m", "adapterhub"]
        publisher = {**env, "ADAPTERHUB_HOME": os.path.join(workdir, "publisher")}
        shutil.rmtree(publisher["ADAPTERHUB_HOME"], ignore_errors=True)
        remote = ["remote", "add", "team", "--db", db_url, "--store", "s3://team/adapters", "--endpoint-url", endpoint]
        run(ah + remote, publisher)
        run(ah + ["push", adapter, "acme/bench", "--base", base], publisher)
        run(ah + ["push", "acme/bench:1", "--to", "team"], publisher)
        run(
            ah
            + [
                "alias",
                "set",
                "team:acme/bench",
                "production",
                "1",
                "--force",
                "--reason",
                "benchmark (random weights: no evaluation)",
            ],
            publisher,
        )
        deploy = {**env, "ADAPTERHUB_HOME": os.path.join(workdir, "deploy-home")}  # a clean machine's home
        shutil.rmtree(deploy["ADAPTERHUB_HOME"], ignore_errors=True)
        run(ah + remote, deploy)
        cmds = {
            "ours": (
                ah
                + [
                    "pull",
                    "acme/bench@production",
                    "--from",
                    "team",
                    "--merged",
                    "--base",
                    base,
                    "--out",
                    os.path.join(workdir, "ours"),
                    "--json",
                ],
                deploy,
            ),
            "peer": (
                [sys.executable, "-c", PEER, endpoint, "team", "peft/acme-bench", base, os.path.join(workdir, "peer")],
                env,
            ),
        }
        print("load average before: %.2f %.2f %.2f" % os.getloadavg())
        results = {}
        for k, (cmd, cenv) in cmds.items():
            shutil.rmtree(os.path.join(workdir, k), ignore_errors=True)
            settle(base)
            results[k] = measure(cmd, cenv)
            print(f"{k:5s} wall {results[k][0]:7.2f}s  peak RSS {results[k][1] / 2**20:8.0f} MiB", flush=True)
        print("load average after:  %.2f %.2f %.2f" % os.getloadavg())
        cmp = json.loads(
            run(
                [sys.executable, merge_py, "--workdir", workdir, "--step", "compare", "--pair", "ours", "peer"],
                dict(os.environ),
            ).splitlines()[-1]
        )
        n, bad = cmp["n"], cmp["bad"]
        (wo, ro), (wp, rp) = results["ours"], results["peer"]
        print(f"bit-identical: {not bad} ({n} tensors compared{'; differ: ' + ', '.join(bad[:5]) if bad else ''})")
        print(f"wall ours/peer:     {wo / wp:.3f}  (target <= 0.3)")
        print(f"peak RSS ours/peer: {ro / rp:.3f}  (target <= 0.2)")
        if bad:
            raise SystemExit(1)
    finally:
        server.stdin.close()
        server.wait()
        subprocess.run(me + ["--step", "drop", db], capture_output=True)
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
