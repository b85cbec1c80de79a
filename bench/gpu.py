"""GPU figures for ``adapterhub train``: QLoRA vs LoRA on a >= 1B-parameter bf16 base, and DDP on the GPUs there are.

    python bench/gpu.py [--steps 20] [--batch 4] [--seq 512] [--layers 22] [--no-gradient-checkpointing]
                        [--workdir DIR] [--keep]

Needs a CUDA build of torch (the CPU build CI uses sees no GPU) and bitsandbytes with its CUDA kernels. On a
machine without CUDA it says so and exits with status 2, having measured nothing.

A Llama-shaped base is built from a config (TinyLlama-1.1B's shapes: hidden 2048, MLP 5632, 22 layers, 32
query / 4 key-value heads, vocab 32000, untied head: 1.10B parameters), random weights, bf16, saved with a
small word tokenizer; the training rows are random words, truncated to --seq tokens. Each run is its own
process (its own CUDA context and peak counters), through ``adapterhub.training.train.train`` exactly as
``adapterhub train`` calls it, with r=16 LoRA on all 7 projections and the same seed, rows and schedule:

* ``lora``  - the bf16 base, bf16 autocast, AdamW (``adamw_torch``);
* ``qlora`` - the base loaded through the ``nf4`` quantizer (NF4, double quantization, blocksize 64, bf16
  compute), ``--optim paged_adamw_8bit`` (bitsandbytes' paged 8-bit AdamW);
* ``lora DDP`` - ``torchrun --nproc-per-node N`` with N = the GPUs present (only when N >= 2), the same
  per-GPU batch: the global batch is N times larger.

Per run: peak ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` (process 0; every process's in
the JSON), the peak device memory in use as the driver sees it (``mem_get_info``: counts the CUDA context and
the paged optimizer's managed memory, which torch's counters do not, and any other process on the GPU), the
median optimizer-step time after 3 warm-up steps (from the Trainer's per-step log, via a tracker plugin), and
tokens per second over all GPUs. Prints a table and the ratios qlora/lora and DDP/one GPU; ``--json FILE``
writes the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from scratch import work_directory  # noqa: E402  (bench/ is on sys.path when run as a script)

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
}
WARMUP = 3
NO_CUDA = 2  # exit status: nothing measured


def cuda_or_exit() -> None:
    try:
        import torch
    except ImportError:
        print("bench/gpu.py: torch is not installed; nothing measured", file=sys.stderr)
        raise SystemExit(NO_CUDA) from None
    if not torch.cuda.is_available():
        build = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        print(
            f"bench/gpu.py needs a CUDA GPU: torch {torch.__version__} ({build}) sees none here; nothing "
            "measured (see bench/README.md)",
            file=sys.stderr,
        )
        raise SystemExit(NO_CUDA)


# -- the base ---------------------------------------------------------------------------------------------
def build(workdir: str, layers: int, seq: int) -> dict:
    import random

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from tinymodels import WORDS, word_tokenizer

    base = os.path.join(workdir, "base")
    cfg = LlamaConfig(
        **SHAPE,
        num_hidden_layers=layers,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):  # random init on the GPU: minutes faster than on the CPU for 1B parameters
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(base)
    del model
    torch.cuda.empty_cache()
    word_tokenizer().save_pretrained(base)
    rnd = random.Random(0)
    with open(os.path.join(workdir, "train.jsonl"), "w") as f:
        for _ in range(256):
            f.write(json.dumps({"text": " ".join(rnd.choice(WORDS) for _ in range(seq + 16))}) + "\n")
    return {
        "params": params,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count(),
        "gpu": torch.cuda.get_device_name(0),
    }


# -- one run (a process; under torchrun, one per GPU) ----------------------------------------------------
def worker(method: str, args: argparse.Namespace) -> None:
    import torch

    import adapterhub
    from adapterhub.plugins import get_plugins
    from adapterhub.training.tracking import Tracker
    from adapterhub.training.train import TrainOptions, train

    device_peak = [0]

    def sample_device() -> None:
        free, total = torch.cuda.mem_get_info()
        device_peak[0] = max(device_peak[0], total - free)

    clock: list[tuple[int, float]] = []

    class StepClock(Tracker):
        """Receives the Trainer's log at every optimizer step (logging_steps=1): the time between two is
        one step."""

        name = "benchclock"

        def log_metrics(self, metrics, step):
            if "loss" in metrics:
                torch.cuda.synchronize()
                clock.append((step, time.perf_counter(), metrics["loss"]))
                sample_device()

    class BenchPlugin:
        @adapterhub.hookimpl
        def register_trackers(self, register):
            register(StepClock)

    plugins = get_plugins()
    plugins.register(BenchPlugin(), "bench")
    settings = {"r": "16", "lora_alpha": "32", "target_modules": TARGETS}
    opts = TrainOptions(
        base=os.path.join(args.workdir, "base"),
        method=method,
        task="causal-lm",
        data=os.path.join(args.workdir, "train.jsonl"),
        out=os.path.join(args.workdir, f"out-{method}"),
        settings=settings,
        max_steps=args.steps,
        eval_steps=args.steps,
        batch_size=args.batch,
        max_length=args.seq,
        lr=1e-4,
        seed=0,
        logging_steps=1,
        mixed_precision="bf16",
        gradient_checkpointing=args.gradient_checkpointing,
        track="benchclock",
        progress=False,
        home=os.path.join(args.workdir, "home"),
        force=True,
        resume=False,
        optim="paged_adamw_8bit" if method == "qlora" else "adamw_torch",
        quantize_options={"double_quant": "true", "compute_dtype": "bfloat16"} if method == "qlora" else {},
    )
    result = train(opts, plugins)
    sample_device()
    rank = int(os.environ.get("RANK", "0"))
    mine = {
        "rank": rank,
        "peak_allocated": torch.cuda.max_memory_allocated(),
        "peak_reserved": torch.cuda.max_memory_reserved(),
        "peak_device": device_peak[0],
    }
    with open(os.path.join(args.workdir, f"{args.tag}-rank{rank}.json"), "w") as f:
        json.dump(mine, f)
    if result is None:  # not process 0
        return
    times = [b[1] - a[1] for a, b in zip(clock, clock[1:]) if a[0] >= WARMUP]
    print(
        json.dumps(
            {
                **mine,
                "step_s": statistics.median(times) if times else None,
                "steps_timed": len(times),
                "loss_first": clock[0][2] if clock else None,
                "loss_last": clock[-1][2] if clock else None,
                "trainable": result["trainable_params"],
                "total": result["total_params"],
                "world_size": result["world_size"],
                "global_batch": result["global_batch_size"],
            }
        )
    )


def measure(tag: str, method: str, args: argparse.Namespace, nproc: int = 1) -> dict:
    here = [
        __file__,
        "--worker",
        method,
        "--tag",
        tag,
        "--workdir",
        args.workdir,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
    ]
    if not args.gradient_checkpointing:
        here.append("--no-gradient-checkpointing")
    if nproc > 1:
        cmd = [
            os.path.join(os.path.dirname(sys.executable), "torchrun"),
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            *here,
        ]
    else:
        cmd = [sys.executable, *here]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"bench/gpu.py: {tag} failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    row = json.loads([line for line in p.stdout.splitlines() if line.startswith("{")][-1])
    row["ranks"] = [json.load(open(os.path.join(args.workdir, f"{tag}-rank{r}.json"))) for r in range(nproc)]
    row.update({"tag": tag, "gpus": nproc, "wall_s": time.perf_counter() - t})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", metavar="METHOD", help=argparse.SUPPRESS)
    ap.add_argument("--tag", help=argparse.SUPPRESS)
    ap.add_argument("--workdir")
    ap.add_argument("--layers", type=int, default=22, help="decoder layers (22: 1.10B parameters)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per run (the first 3 are warm-up)")
    ap.add_argument("--batch", type=int, default=4, help="rows per GPU per step")
    ap.add_argument("--seq", type=int, default=512, help="tokens per row")
    ap.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (base, adapters)")
    args = ap.parse_args()
    cuda_or_exit()
    if args.worker == "build":
        print(json.dumps(build(args.workdir, args.layers, args.seq)))
        return
    if args.worker:
        worker(args.worker, args)
        return
    if args.steps <= WARMUP + 1:
        raise SystemExit(f"bench/gpu.py: --steps must be more than {WARMUP + 1} (the first {WARMUP} are warm-up)")
    with work_directory(args.workdir, args.keep, "gpu-bench-") as args.workdir:
        t = time.perf_counter()
        # built in a child: this process never holds a CUDA context while the runs measure the device
        p = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                "build",
                "--workdir",
                args.workdir,
                "--layers",
                str(args.layers),
                "--seq",
                str(args.seq),
            ],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise SystemExit(f"bench/gpu.py: building the base failed:\n{p.stderr[-4000:]}")
        info = json.loads(p.stdout.strip().splitlines()[-1])
        print(
            f"base: {info['params'] / 1e9:.2f}B parameters, bf16, built in {time.perf_counter() - t:.0f} s; "
            f"{info['gpus']} x {info['gpu']}; torch {info['torch']} (CUDA {info['cuda']}); {args.steps} steps "
            f"of {args.batch} x {args.seq} tokens per GPU, gradient checkpointing "
            f"{'on' if args.gradient_checkpointing else 'off'}"
        )
        rows = [measure("lora", "lora", args), measure("qlora", "qlora", args)]
        if info["gpus"] >= 2:
            rows.append(measure(f"lora DDP x{info['gpus']}", "lora", args, nproc=info["gpus"]))
        gib = 2**30
        print(
            f"{'run':<16}{'GPUs':>5}{'peak alloc GiB':>16}{'peak reserved GiB':>19}{'device used GiB':>17}"
            f"{'step s':>9}{'tokens/s':>11}  loss first -> last"
        )
        for r in rows:
            tokens = r["global_batch"] * args.seq
            rate = f"{tokens / r['step_s']:>11.0f}" if r["step_s"] else f"{'-':>11}"
            step = f"{r['step_s']:>9.3f}" if r["step_s"] else f"{'-':>9}"
            print(
                f"{r['tag']:<16}{r['gpus']:>5}{r['peak_allocated'] / gib:>16.2f}{r['peak_reserved'] / gib:>19.2f}"
                f"{r['peak_device'] / gib:>17.2f}{step}{rate}  {r['loss_first']:.3f} -> {r['loss_last']:.3f}"
            )
        by = {r["tag"]: r for r in rows}
        q, lo = by["qlora"], by["lora"]
        print(
            f"qlora / lora: peak allocated {q['peak_allocated'] / lo['peak_allocated']:.2f}x, device used "
            f"{q['peak_device'] / lo['peak_device']:.2f}x, step time {q['step_s'] / lo['step_s']:.2f}x"
        )
        if len(rows) == 3:
            d = rows[2]
            speedup = (d["global_batch"] / d["step_s"]) / (lo["global_batch"] / lo["step_s"])
            print(
                f"DDP x{d['gpus']} / one GPU: tokens/s {speedup:.2f}x (ideal {d['gpus']}x: "
                f"{100 * speedup / d['gpus']:.0f}% scaling), step time {d['step_s'] / lo['step_s']:.2f}x"
            )
        else:
            print("DDP: one GPU here; it needs 2 or more (not measured)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"info": info, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
