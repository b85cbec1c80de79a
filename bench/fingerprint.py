"""Benchmark base-model fingerprints against `sha256sum` of the same files.

Builds a sharded bf16 model of random bytes (default 1 GB, 4 shards + index; safetensors written by
hand for speed), reads it once so the page cache is warm for everyone, then measures:

* ``fingerprint()`` with an empty cache dir (best of --repeat), with all cores and with one worker;
* ``sha256sum`` of the shard files (one process, best of --repeat), and ``openssl dgst -sha256``;
* a cached re-fingerprint (best of 5), in ms.

    python bench/fingerprint.py [--size-gb 1] [--shards 4] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

from adapterhub.files.fingerprint import find_weight_files, fingerprint

HIDDEN, VOCAB = 4096, 32000


def _model_tensors(size: int) -> list[tuple[str, list[int]]]:
    """Llama-like bf16 tensor names and shapes adding up to at least ``size`` bytes."""
    tensors = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    total, layer = VOCAB * HIDDEN * 2, 0
    while total < size:
        for part in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors.append((f"model.layers.{layer}.self_attn.{part}.weight", [HIDDEN, HIDDEN]))
        tensors.append((f"model.layers.{layer}.input_layernorm.weight", [HIDDEN]))
        total += 4 * HIDDEN * HIDDEN * 2 + HIDDEN * 2
        layer += 1
    return tensors


def build(d: str, size_gb: float, shards: int) -> None:
    """Write the model: ``shards`` files of about equal size and model.safetensors.index.json."""
    rng = np.random.default_rng(0)
    tensors = _model_tensors(int(size_gb * 1e9))
    nbytes = lambda shape: int(np.prod(shape)) * 2  # noqa: E731
    target = sum(nbytes(s) for _, s in tensors) / shards
    groups: list[list] = [[]]
    acc = 0
    for t in tensors:
        if acc >= target * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(t)
        acc += nbytes(t[1])
    wmap = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        header, pos = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in group:
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [pos, pos + nbytes(shape)]}
            pos += nbytes(shape)
            wmap[name] = fname
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(os.path.join(d, fname), "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for _name, shape in group:  # random bytes in 16 MiB pieces: the build stays small in memory
                left = nbytes(shape)
                while left:
                    f.write(rng.bytes(min(left, 16 << 20)))
                    left -= min(left, 16 << 20)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": acc}, "weight_map": wmap}, f)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="model size in GB (default 1)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts")
    ap.add_argument("--workers", type=int, default=None, help="fingerprint threads (default: all cores)")
    ap.add_argument("--dir", help="build (or reuse) the model here and keep it; default: a temp dir")
    args = ap.parse_args()

    d = args.dir or tempfile.mkdtemp(prefix="fp-bench-")
    cache = tempfile.mkdtemp(prefix="fp-bench-cache-")
    try:
        os.makedirs(d, exist_ok=True)
        if not os.path.exists(os.path.join(d, "model.safetensors.index.json")):
            t0 = time.perf_counter()
            build(d, args.size_gb, args.shards)
            print(f"built {d} in {time.perf_counter() - t0:.1f} s")
        files = find_weight_files(d)
        file_bytes = sum(os.path.getsize(f) for f in files)
        for f in files:  # warm the page cache so both sides read from memory
            with open(f, "rb", buffering=0) as fh:
                while fh.read(64 << 20):
                    pass

        def cold(workers):
            def run():
                shutil.rmtree(cache, ignore_errors=True)
                return fingerprint(d, cache_dir=cache, workers=workers)

            return run

        fp = cold(args.workers)()
        t_ours = best(cold(args.workers), args.repeat)
        t_one = best(cold(1), args.repeat)
        t_sum = best(lambda: subprocess.run(["sha256sum", *files], check=True, stdout=subprocess.DEVNULL), args.repeat)
        # coreutils' sha256sum may lack SHA-NI; `openssl dgst` (what hashlib uses) is the stricter bar
        t_ssl = shutil.which("openssl") and best(
            lambda: subprocess.run(["openssl", "dgst", "-sha256", *files], check=True, stdout=subprocess.DEVNULL),
            args.repeat,
        )
        fingerprint(d, cache_dir=cache)  # populate the cache
        t_cached = best(lambda: fingerprint(d, cache_dir=cache), 5)
        assert fingerprint(d, cache_dir=cache) == fp
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        gbs = lambda n, t: n / t / 1e9  # noqa: E731
        workers = args.workers or os.cpu_count()
        print(
            f"model: {len(files)} shards, {fp.tensors} tensors, {fp.bytes / 1e9:.2f} GB bf16 "
            f"({os.cpu_count()} cores, python {sys.version.split()[0]})"
        )
        print(f"{'measurement':<36}{'time':>10}{'GB/s':>8}")
        print(f"{f'fingerprint(), {workers} workers, no cache':<36}{t_ours:>9.3f}s{gbs(fp.bytes, t_ours):>8.2f}")
        print(f"{'fingerprint(), 1 worker, no cache':<36}{t_one:>9.3f}s{gbs(fp.bytes, t_one):>8.2f}")
        print(f"{'sha256sum (one process)':<36}{t_sum:>9.3f}s{gbs(file_bytes, t_sum):>8.2f}")
        if t_ssl:
            print(f"{'openssl dgst -sha256 (one process)':<36}{t_ssl:>9.3f}s{gbs(file_bytes, t_ssl):>8.2f}")
        print(f"{'fingerprint(), cached':<36}{t_cached * 1e3:>8.2f}ms")
        ratio = gbs(fp.bytes, t_ours) / gbs(file_bytes, t_sum)
        ratio1 = gbs(fp.bytes, t_one) / gbs(file_bytes, t_sum)
        print(
            f"throughput ours/sha256sum: {ratio:.2f} ({workers} workers), {ratio1:.2f} (1 worker); "
            f"peak RSS {rss:.0f} MiB"
        )
        print(f"fingerprint: {fp.digest}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if not args.dir:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
