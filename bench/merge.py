"""Benchmark: ``adapterhub merge`` on the path users run (a registry ref, the cache on), vs ``--no-cache``,
peft's ``merge_and_unload`` + ``save_pretrained`` and a plain copy of the base.

A Llama-shaped model of about 1.1B parameters (TinyLlama's shape) in bf16 with random weights is written
tensor by tensor (never the whole model in memory), plus a LoRA r=16 on every linear layer with random
non-zero A and B, pushed to a registry under the work dir (``push ADAPTER acme/bench --base BASE``, as the
README does). Then, each in its own subprocess (peak RSS from ``os.wait4``'s rusage of that child):

* ``copy``:     a plain copy of the base files (the floor for any tool that rewrites the weights);
* ``dir``:      ``adapterhub merge ADAPTER_DIR --base BASE --out OUT --no-cache`` (what this bench measured before);
* ``nocache``:  ``adapterhub merge acme/bench --base BASE --out OUT --no-cache``;
* ``default``:  ``adapterhub merge acme/bench --base BASE --out OUT`` as this user (as root: no cache, see
  operations/merged_cache.py);
* ``first``:    the same with the cache on (``ADAPTERHUB_MERGE_CACHE=link``, a non-root user's default) and
  the cache emptied first: merges and fills the cache;
* ``hit``:      the same again into another OUT: served from the cache;
* ``peft``:     ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE, dtype=bf16), ADAPTER)
  .merge_and_unload().save_pretrained(OUT)``.

The cache hit's output and peft's are compared tensor by tensor (streaming, ``torch.equal``). Prints ratios;
targets: first ≤ 1.15× nocache, hit ≤ 0.25× nocache; peak RSS ≤ 0.15× peft's, wall ≤ 0.5× peft's, and
within 3× of the plain copy.

With ``--repeat N`` the contenders run N rounds, interleaved; each reports its best wall time and its largest
peak RSS. The load average is printed before and after: other jobs on the machine slow any of them down.

    python bench/merge.py [--workdir DIR] [--layers 22] [--repeat 2] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 2048, 5632, 32, 4, 32000
RANK = 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

PEFT_SCRIPT = r"""
import sys, warnings
warnings.simplefilter("ignore")
import torch, transformers, peft
transformers.logging.set_verbosity_error()
base, adapter, out = sys.argv[1:4]
model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
merged.save_pretrained(out)
"""


def build(workdir: str, layers: int) -> tuple[str, str, int]:
    """Write the base model (2 shards + index) and the adapter; returns (base, adapter, parameters)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from adapterhub.merge.plan import Entry, _header

    base, adapter = os.path.join(workdir, "base"), os.path.join(workdir, "adapter")
    os.makedirs(base)
    os.makedirs(adapter)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        tie_word_embeddings=False,
        dtype="bfloat16",
        architectures=["LlamaForCausalLM"],
    )
    cfg.save_pretrained(base)
    kv = HIDDEN // HEADS * KV_HEADS
    shapes = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        "model.norm.weight": (HIDDEN,),
        "lm_head.weight": (VOCAB, HIDDEN),
    }
    linear = {}
    for i in range(layers):
        p = f"model.layers.{i}."
        linear.update(
            {
                p + "self_attn.q_proj": (HIDDEN, HIDDEN),
                p + "self_attn.k_proj": (kv, HIDDEN),
                p + "self_attn.v_proj": (kv, HIDDEN),
                p + "self_attn.o_proj": (HIDDEN, HIDDEN),
                p + "mlp.gate_proj": (INTER, HIDDEN),
                p + "mlp.up_proj": (INTER, HIDDEN),
                p + "mlp.down_proj": (HIDDEN, INTER),
            }
        )
        shapes[p + "input_layernorm.weight"] = (HIDDEN,)
        shapes[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    shapes.update({k + ".weight": v for k, v in linear.items()})
    names = sorted(shapes)
    half = len(names) // 2
    g = torch.Generator().manual_seed(0)
    weight_map, params = {}, 0
    for s, part in enumerate((names[:half], names[half:])):
        fname = f"model-{s + 1:05d}-of-00002.safetensors"
        entries = [Entry(n, "BF16", shapes[n]) for n in part]
        with open(os.path.join(base, fname), "wb") as f:  # streaming: header, then one tensor at a time
            f.write(_header(entries))
            for e in entries:
                t = (torch.randn(e.shape, generator=g) * 0.02).to(torch.bfloat16)
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
                params += t.numel()
                weight_map[e.name] = fname
    with open(os.path.join(base, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 2 * params}, "weight_map": weight_map}, f)
    tensors = {}
    for path, (out_f, in_f) in linear.items():
        key = "base_model.model." + path
        tensors[key + ".lora_A.weight"] = torch.randn((RANK, in_f), generator=g) / in_f**0.5
        tensors[key + ".lora_B.weight"] = torch.randn((out_f, RANK), generator=g) * 0.01
    save_file(tensors, os.path.join(adapter, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": RANK,
                "lora_alpha": 2 * RANK,
                "lora_dropout": 0.0,
                "target_modules": TARGETS,
                "bias": "none",
                "fan_in_fan_out": False,
                "use_rslora": False,
                "use_dora": False,
                "base_model_name_or_path": base,
            },
            f,
        )
    return base, adapter, params


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    p.stdout.close()
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{out}\n{err}")
    return wall, usage.ru_maxrss * 1024


def compile_ours() -> int:
    """Byte-compile adapterhub and its plugins, as ``pip install`` does for an installed package. An editable
    install relies on the first import to write the caches, which ``PYTHONDONTWRITEBYTECODE`` (set on the
    reference VM) prevents: every run would then compile ~50 modules from source (~0.06 s)."""
    import compileall
    import importlib.metadata
    import importlib.util

    names = {"adapterhub"} | {ep.module.split(".")[0] for ep in importlib.metadata.entry_points(group="adapterhub")}
    dirs = [
        loc
        for n in sorted(names)
        if (spec := importlib.util.find_spec(n)) and spec.submodule_search_locations
        for loc in spec.submodule_search_locations
    ]
    for d in dirs:
        compileall.compile_dir(d, quiet=1)
    return len(dirs)


def settle(base: str) -> None:
    """Flush dirty pages so one run's writeback does not land in the next one's timing, read the base files
    so that every contender finds them in the page cache (this VM's proactive reclaim evicts files left
    cold for a while: a copy that followed peft's 20 s sometimes read the base from disk), then let the
    virtual disk settle (on the reference VM a contender started right after a 2 GB flush ran up to 4x
    slower, whichever it was)."""
    os.sync()
    buf = bytearray(1 << 20)  # small: a child's ru_maxrss starts from this process's peak (vfork + exec)
    for name in sorted(os.listdir(base)):
        with open(os.path.join(base, name), "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    time.sleep(2)


def compare(a_dir: str, b_dir: str) -> tuple[int, list[str]]:
    """Compare every tensor of two model directories, one tensor at a time."""
    import torch
    from safetensors import safe_open

    from adapterhub.files.fingerprint import find_weight_files

    def where(d):
        out = {}
        for path in find_weight_files(d):
            with safe_open(path, "pt") as f:
                out.update({k: path for k in f.keys()})
        return out

    wa, wb = where(a_dir), where(b_dir)
    bad = sorted(set(wa) ^ set(wb))
    for name in sorted(set(wa) & set(wb)):
        with safe_open(wa[name], "pt") as fa, safe_open(wb[name], "pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
            if x.dtype != y.dtype or not torch.equal(x, y):
                bad.append(name)
            del x, y
    return len(wa), bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="where to build (default: a temp dir, removed at the end)")
    ap.add_argument("--layers", type=int, default=22, help="decoder layers (22: ~1.1B parameters)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the three contenders, interleaved (best wall)")
    ap.add_argument("--step", choices=["build", "compare"], help=argparse.SUPPRESS)  # internal: run in a child
    ap.add_argument("--pair", nargs=2, default=["hit", "peft"], help=argparse.SUPPRESS)  # --step compare: these
    args = ap.parse_args()
    if args.step == "build":
        index = os.path.join(args.workdir, "base", "model.safetensors.index.json")
        if os.path.exists(index) and os.path.exists(os.path.join(args.workdir, "adapter", "adapter_config.json")):
            with open(index) as f:  # --workdir with a model built before: reuse it
                print(json.load(f)["metadata"]["total_size"] // 2)
            return
        base, adapter, params = build(args.workdir, args.layers)
        print(params)
        return
    if args.step == "compare":
        n, bad = compare(*(os.path.join(args.workdir, k) for k in args.pair))
        print(json.dumps({"n": n, "bad": bad}))
        return
    # this process imports no torch: a child's peak RSS (ru_maxrss) starts from this small parent
    workdir = args.workdir or tempfile.mkdtemp(prefix="adapterhub-bench-merge-")
    os.makedirs(workdir, exist_ok=True)
    me = [sys.executable, os.path.abspath(__file__), "--workdir", workdir]
    for old in ("copy", "ours", "dir", "nocache", "default", "first", "hit", "peft"):
        shutil.rmtree(os.path.join(workdir, old), ignore_errors=True)
    try:
        t0 = time.perf_counter()
        params = int(
            subprocess.run(
                me + ["--step", "build", "--layers", str(args.layers)], check=True, capture_output=True, text=True
            ).stdout.split()[-1]
        )
        base, adapter = os.path.join(workdir, "base"), os.path.join(workdir, "adapter")
        size = sum(os.path.getsize(os.path.join(base, n)) for n in os.listdir(base))
        print(f"built {params / 1e9:.2f}B parameters ({size / 1e9:.2f} GB bf16) in {time.perf_counter() - t0:.0f}s")
        home = os.path.join(workdir, "home")
        env = {**os.environ, "ADAPTERHUB_HOME": home, "TOKENIZERS_PARALLELISM": "false"}
        env.pop("ADAPTERHUB_MERGE_CACHE", None)
        linked = {**env, "ADAPTERHUB_MERGE_CACHE": "link"}
        if (
            subprocess.run(
                [sys.executable, "-m", "adapterhub", "show", "acme/bench"], env=env, capture_output=True
            ).returncode
            != 0
        ):  # (a reused --workdir has it already)
            subprocess.run(
                [sys.executable, "-m", "adapterhub", "push", adapter, "acme/bench", "--base", base],
                env=env,
                check=True,
                capture_output=True,
            )
        merge = [sys.executable, "-m", "adapterhub", "merge"]

        def out(k):
            return os.path.join(workdir, k)

        cmds = {
            "copy": (
                [
                    sys.executable,
                    "-c",
                    "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2])",
                    base,
                    out("copy"),
                ],
                None,
            ),
            "dir": (merge + [adapter, "--base", base, "--out", out("dir"), "--no-cache", "--json"], env),
            "nocache": (merge + ["acme/bench", "--base", base, "--out", out("nocache"), "--no-cache", "--json"], env),
            "default": (merge + ["acme/bench", "--base", base, "--out", out("default"), "--json"], env),
            "first": (merge + ["acme/bench", "--base", base, "--out", out("first"), "--json"], linked),
            "hit": (merge + ["acme/bench", "--base", base, "--out", out("hit"), "--json"], linked),
            "peft": ([sys.executable, "-c", PEFT_SCRIPT, base, adapter, out("peft")], env),
        }
        print(f"byte-compiled adapterhub and {compile_ours() - 1} plugin packages (as pip install does)")
        runs: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
        print("load average before: %.2f %.2f %.2f" % os.getloadavg())
        for rnd in range(max(1, args.repeat)):
            last = rnd == max(1, args.repeat) - 1
            for k, (cmd, cenv) in cmds.items():
                # each contender starts with the same free memory: the others' outputs (2.2 GB of page cache
                # each) removed, except the cache hit's for the comparison after the last round (peft runs last)
                for other in cmds:
                    if not (last and other == "hit" and k == "peft"):
                        shutil.rmtree(out(other), ignore_errors=True)
                if k == "first":  # a cold cache
                    shutil.rmtree(os.path.join(home, "cache", "merged"), ignore_errors=True)
                settle(base)
                runs[k].append(measure(cmd, cenv))
            print(
                f"round {rnd + 1}: "
                + ", ".join(f"{k} {w:.2f}s {r / 2**20:.0f} MiB" for k, v in runs.items() for w, r in v[-1:]),
                flush=True,
            )
        os.sync()
        print("load average after:  %.2f %.2f %.2f" % os.getloadavg())
        results = {k: (min(w for w, _ in v), max(r for _, r in v)) for k, v in runs.items()}
        cmp = json.loads(
            subprocess.run(me + ["--step", "compare"], check=True, capture_output=True, text=True).stdout.splitlines()[
                -1
            ]
        )
        n, bad = cmp["n"], cmp["bad"]
        for k, (wall, rss) in results.items():
            print(f"{k:8s} wall {wall:7.2f}s  peak RSS {rss / 2**20:8.0f} MiB")
        wall = {k: w for k, (w, _) in results.items()}
        (wo, ro), (wp, rp), wc = results["first"], results["peft"], wall["copy"]
        print(
            f"bit-identical (cache hit vs peft): {not bad} ({n} tensors compared"
            f"{'; differ: ' + ', '.join(bad[:5]) if bad else ''})"
        )
        print(f"wall first/nocache:   {wall['first'] / wall['nocache']:.3f}  (target <= 1.15)")
        print(f"wall hit/nocache:     {wall['hit'] / wall['nocache']:.3f}  (target <= 0.25)")
        print(f"wall default/nocache: {wall['default'] / wall['nocache']:.3f}  (as uid {os.geteuid()})")
        print(f"wall nocache/dir:     {wall['nocache'] / wall['dir']:.3f}")
        print(f"peak RSS first/peft:  {ro / rp:.3f}  (target <= 0.15)")
        print(f"wall first/peft:      {wo / wp:.3f}  (target <= 0.5)")
        print(f"wall hit/peft:        {wall['hit'] / wp:.3f}")
        print(f"wall first/copy:      {wo / wc:.3f}  (target <= 3)")
        if bad:
            raise SystemExit(1)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
