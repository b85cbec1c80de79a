"""Our LoRA training step vs peft's, on the same model, batch and seed, each in its own process.

    python bench/train_step.py [--hidden 512] [--layers 8] [--seq 256] [--batch 4] [--steps 12] [--rank 16]

Each side builds the same Llama-shaped model from a config (random weights, fixed seed), attaches LoRA
(r on q/k/v/o/gate/up/down) — ours through the `lora` method plugin, peft through `get_peft_model` — and
runs AdamW steps (forward, backward, step) on the same batch. Reports the median step time after
warm-up, the process's peak RSS, and the trainable parameter count (asserted identical). Targets:
time ratio <= 1.0 and peak-memory ratio <= 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=8000,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=args.seq,
    )
    model = LlamaForCausalLM(cfg)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if args.side == "ours":
        from adapterhub.plugins import get_plugins

        m = get_plugins().get("methods", "lora")
        m.attach(model, m.make_config({"r": args.rank, "lora_alpha": 2 * args.rank, "target_modules": targets}))
    else:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 8000, (args.batch, args.seq), generator=g)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "trainable": sum(p.numel() for p in params),
                "step_s": statistics.median(times[2:]),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "final_loss": loss.item(),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="alternate the two sides this many times; best of")
    ap.add_argument("--side", choices=["ours", "peft"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        worker(args)
        return
    results: dict[str, list[dict]] = {"ours": [], "peft": []}
    for _ in range(args.rounds):
        for side in ("peft", "ours"):
            cmd = [sys.executable, __file__, "--side", side] + [
                f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "seq", "batch", "steps", "rank")
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[side].append(json.loads(out))
    best = {s: min(r, key=lambda x: x["step_s"]) for s, r in results.items()}
    mem = {s: min(x["peak_rss_mb"] for x in r) for s, r in results.items()}
    assert best["ours"]["trainable"] == best["peft"]["trainable"], best
    print(
        f"model: llama hidden={args.hidden} layers={args.layers}, batch {args.batch}x{args.seq}, LoRA r={args.rank} "
        f"on all linear layers; {best['ours']['trainable']:,} trainable parameters (identical)"
    )
    print(f"{'':<6} {'step (median)':>14} {'peak RSS':>10}  final loss")
    for s in ("ours", "peft"):
        print(f"{s:<6} {best[s]['step_s'] * 1000:11.1f} ms {mem[s]:8.0f} MB  {best[s]['final_loss']:.4f}")
    print(
        f"ratio ours/peft: time {best['ours']['step_s'] / best['peft']['step_s']:.3f} (target <= 1.0), "
        f"peak memory {mem['ours'] / mem['peft']:.3f} (target <= 1.0)"
    )


if __name__ == "__main__":
    main()
