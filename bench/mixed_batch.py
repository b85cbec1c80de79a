"""Per-row adapter routing in one batch (multi-tenant serving): adapterhub vs peft's ``adapter_names=``.

A Llama built from a config (no download: hidden 512, 4 layers, GQA 8/4 heads, vocab 2048), 8 LoRA adapters
with ranks 8..64 on every projection (q/k/v/o/gate/up/down), B non-zero. The same adapters are loaded
into one ``peft.PeftModel`` (``load_adapter`` x 8) and into ``adapterhub.operations.compose.attach_routed``; both are
called on the same mixed batches (rows shuffled over the 8 adapters plus base rows) with
``adapter_names=[...]``. Reported: median seconds per call (the plain base model too, as the floor both share)
and rows/s for each, the throughput ratio ours/peft, its ceiling peft/base (what routing with adapters that
cost nothing would reach: both pay the base model), the same ratio on the time spent on adapters alone
((peft - base) / (ours - base)), and the largest absolute difference between the two outputs' logits (they
must agree).

    . .venv/bin/activate && python bench/mixed_batch.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

import torch

warnings.simplefilter("ignore")

RANKS = (8, 16, 32, 64, 8, 16, 32, 64)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_base(hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=2048,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def make_adapters(hidden: int, layers: int, n: int, tmp: str):
    """n adapter directories (PEFT layout, written by adapterhub) + LoadedAdapters for them."""
    from adapterhub_lora import LoraMethod

    from adapterhub.files.checkpoint import LoadedAdapter, save_adapter

    lora = LoraMethod()
    model = build_base(hidden, layers)
    out = {}
    for i in range(n):
        r = RANKS[i % len(RANKS)]
        eff = lora.attach(
            model, lora.make_config(dict(r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False))
        )
        g = torch.Generator().manual_seed(100 + i)
        tensors = {
            k: (torch.randn(v.shape, generator=g) * (0.02 if "lora_B" in k else 1 / v.shape[-1] ** 0.5))
            for k, v in lora.state_dict(model).items()
        }
        lora.detach(model)
        path = os.path.join(tmp, f"tenant{i}")
        save_adapter(path, {"method": "lora"}, tensors, peft_config=lora.to_peft_config(eff))
        out[f"tenant{i}"] = (path, LoadedAdapter(lora, eff, tensors, {"method": "lora"}))
    return out


def timed(fns, repeat: int, warmup: int = 2) -> list[float]:
    """Median seconds of each function, calls interleaved (a, b, c, a, b, c ...) so that load from other
    processes on a shared machine hits all alike."""
    for _ in range(warmup):
        for f in fns:
            f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for f, ts in zip(fns, times):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--shapes", default="64x1,32x4,32x16,8x128", help="rows x tokens per call, comma-separated")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import peft

    from adapterhub.operations import compose

    torch.set_grad_enabled(False)
    tmp = tempfile.mkdtemp(prefix="bench-mixed-")
    adapters = make_adapters(args.hidden, args.layers, args.adapters, tmp)
    names = list(adapters)

    pm = peft.PeftModel.from_pretrained(
        build_base(args.hidden, args.layers), adapters[names[0]][0], adapter_name=names[0]
    )
    for n in names[1:]:
        pm.load_adapter(adapters[n][0], adapter_name=n)
    pm.eval()
    plain = build_base(args.hidden, args.layers)
    ours = build_base(args.hidden, args.layers)
    compose.attach_routed(ours, {n: la for n, (_, la) in adapters.items()})

    print(
        f"llama hidden {args.hidden}, {args.layers} layers, {args.adapters} LoRA adapters (ranks "
        f"{', '.join(map(str, RANKS[: args.adapters]))}) on {len(TARGETS)} projections; "
        f"torch {torch.__version__}, peft {peft.__version__}, {torch.get_num_threads()} threads, "
        f"python {platform.python_version()}"
    )
    print(
        f"{'rows x tokens':>14} {'base s/call':>12} {'peft s/call':>12} {'ours s/call':>12} {'peft rows/s':>12} "
        f"{'ours rows/s':>12} {'ours/peft':>10} {'ceiling':>8} {'adapters only':>14} {'max |diff|':>11}"
    )
    g = torch.Generator().manual_seed(1)
    for shape in args.shapes.split(","):
        rows, tokens = map(int, shape.split("x"))
        ids = torch.randint(0, 2048, (rows, tokens), generator=g)
        pool = names + ["__base__"]
        route = [pool[int(i)] for i in torch.randint(0, len(pool), (rows,), generator=g)]
        theirs_out = pm(input_ids=ids, adapter_names=route).logits
        ours_out = ours(input_ids=ids, adapter_names=route).logits
        diff = (theirs_out - ours_out).abs().max().item()
        assert diff < 1e-3, f"outputs disagree: {diff}"
        t_base, t_peft, t_ours = timed(
            [
                lambda: plain(input_ids=ids),
                lambda: pm(input_ids=ids, adapter_names=route),
                lambda: ours(input_ids=ids, adapter_names=route),
            ],
            args.repeat,
        )
        extra = (t_peft - t_base) / max(t_ours - t_base, 1e-9)  # time spent on the adapters, peft / ours
        # ceiling: the ratio a routing with free adapters would reach (both pay the base model's time)
        print(
            f"{shape:>14} {t_base:12.4f} {t_peft:12.4f} {t_ours:12.4f} {rows / t_peft:12.1f} {rows / t_ours:12.1f} "
            f"{t_peft / t_ours:10.2f} {t_peft / t_base:8.2f} {extra:14.2f} {diff:11.2e}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
