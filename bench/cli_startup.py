"""CLI start-up and listing speed, side by side with peers measured in the same run.

    python bench/cli_startup.py [--versions 10000] [--repeat 7]

Measures (best of --repeat, wall time of a fresh process each):
  * ``adapterhub --help`` vs the Hugging Face Hub CLI ``hf --help`` and a bare ``python -c pass``
    (the floor any Python CLI pays); target: under 0.3 s.
  * ``adapterhub list`` / ``list --json`` over a registry holding --versions versions (populated through
    the real publish path); target: under 0.5 s. Peer: ``sqlite3`` reading the same rows, the floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)


def best(cmd: list[str], repeat: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.decode()[-500:]}")
    return min(times)


def populate(home: str, n: int) -> float:
    """Publish ``n`` versions (over n/50 names) through Registry.publish with one small file each."""
    from adapterhub.api import open_registry
    from adapterhub.registry.blobs import hash_file
    from adapterhub.registry.registry import LocalFile

    reg = open_registry(home)
    src = os.path.join(home, "..", "payload.json")
    t = time.perf_counter()
    for i in range(n):
        with open(src, "w") as f:
            f.write(f'{{"i": {i}}}')
        digest, size = hash_file(src)
        reg.publish(
            f"bench/adapter-{i % max(1, n // 50):04d}",
            {"method": "lora", "config": {"r": 8}},
            [LocalFile("adapter_config.json", src, digest, size)],
            aliases=["production"] if i % 97 == 0 else (),
        )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="adapterhub-bench-")
    home = os.path.join(tmp, "home")
    env = {**os.environ, "ADAPTERHUB_HOME": home, "HF_HUB_OFFLINE": "1"}
    try:
        ah = [os.path.join(BIN, "adapterhub")]
        rows = []
        floor = best([sys.executable, "-c", "pass"], args.repeat, env)
        ours = best(ah + ["--help"], args.repeat, env)
        hf = shutil.which("hf", path=BIN)
        peer = best([hf, "--help"], args.repeat, env) if hf else None
        rows.append(("adapterhub --help", ours, "hf --help", peer))
        rows.append(("(python -c pass)", floor, "", None))
        pop = populate(home, args.versions)
        lst = best(ah + ["list"], args.repeat, env)
        lst_json = best(ah + ["list", "--json"], args.repeat, env)
        db = os.path.join(home, "registry.db")
        sql = best(
            [
                sys.executable,
                "-c",
                f"import sqlite3; c=sqlite3.connect({db!r}); "
                "c.execute('select * from versions join adapters on adapters.id=versions.adapter_id').fetchall()",
            ],
            args.repeat,
            env,
        )
        rows.append((f"adapterhub list ({args.versions} versions)", lst, "python+sqlite3 select (floor)", sql))
        rows.append((f"adapterhub list --json ({args.versions})", lst_json, "", None))
        print(f"populated {args.versions} versions in {pop:.1f} s ({pop / args.versions * 1000:.1f} ms per publish)")
        print(f"{'ours':<40} {'s':>7}   {'peer':<32} {'s':>7}  ratio ours/peer")
        for name, t, pname, pt in rows:
            ratio = f"{t / pt:.2f}" if pt else ""
            print(
                f"{name:<40} {t:7.3f}   {pname:<32} {pt if pt is not None else '':>7.3}  {ratio}"
                if pt is not None
                else f"{name:<40} {t:7.3f}"
            )
        print(
            f"targets: --help < 0.3 s: {'PASS' if ours < 0.3 else 'FAIL'}; "
            f"list < 0.5 s: {'PASS' if lst < 0.5 else 'FAIL'}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
