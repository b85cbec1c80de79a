"""Peak memory of QLoRA vs LoRA training, and of a merge onto the dequantized base vs a plain merge.

A Llama-shaped model (hidden 1024, 8 layers, MLP 2816, vocab 32000, untied head: ~170M parameters, bf16,
random weights from a config) is saved with a small word tokenizer. Then each phase runs in its own
subprocess (the model is built in one too: a child's ``ru_maxrss`` starts at its parent's RSS at fork) and
its peak RSS is read from ``os.wait4``'s rusage of that child (``ru_maxrss``, which counts file pages the
loader mmaps); the child also samples its peak anonymous RSS (``RssAnon``, every 5 ms):

* ``train lora``  — ``adapterhub.training.train.train`` with method ``lora`` (r=16 on all 7 projections) on the bf16 base;
* ``train qlora`` — the same with method ``qlora`` (the base is loaded through the ``nf4`` quantizer, double
  quantization, blocksize 64: the projections are 4-bit, embeddings / head / norms stay bf16);
* ``merge lora``  — ``merge_adapter`` of the LoRA adapter onto the original weights (streaming);
* ``merge qlora`` — the same for the QLoRA adapter, onto the dequantized base (each projection weight is
  NF4-quantized and dequantized exactly as in training, then merged).

Prints peak RSS and wall time per phase, and the ratios qlora / lora. On the CPU bitsandbytes' 4-bit
matmuls dequantize the weight on every call: QLoRA saves memory there but is slower than LoRA (the GPU
kernels are what make it fast; not measured here).

    python bench/qlora_memory.py [--steps 3] [--batch 2] [--seq 64] [--layers 8] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from scratch import work_directory  # noqa: E402  (bench/ is on sys.path when run as a script)

HERE = os.path.dirname(os.path.abspath(__file__))
HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 1024, 2816, 16, 8, 32000
TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def build(workdir: str, layers: int) -> tuple[str, str, int]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from tinymodels import WORDS, word_tokenizer

    base = os.path.join(workdir, "base")
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        tie_word_embeddings=False,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(base)
    del model
    word_tokenizer().save_pretrained(base)
    import random

    rnd = random.Random(0)
    data = os.path.join(workdir, "train.jsonl")
    with open(data, "w") as f:
        for _ in range(64):
            f.write(json.dumps({"text": " ".join(rnd.choice(WORDS) for _ in range(200))}) + "\n")
    return base, data, params


class AnonPeak:
    """Samples this process' anonymous RSS (``RssAnon``: heap and tensors, not file pages the kernel can
    drop) every 5 ms; ``peak`` in MiB."""

    def __init__(self):
        import threading

        self.peak, self.stop = 0, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        while not self.stop.is_set():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) // 1024)
            self.stop.wait(0.005)

    def done(self) -> int:
        self.stop.set()
        self.t.join()
        return self.peak


def worker(phase: str, method: str, workdir: str, steps: int, batch: int, seq: int) -> None:
    import torch

    if phase == "build":
        base, _, params = build(workdir, steps)  # --steps carries the layer count here
        print(json.dumps({"params": params, "torch": torch.__version__, "cuda": torch.cuda.is_available()}))
        return
    anon = AnonPeak()

    torch.set_num_threads(os.cpu_count() or 1)
    base = os.path.join(workdir, "base")
    out = os.path.join(workdir, f"adapter-{method}")
    if phase == "train":
        from adapterhub.plugins import get_plugins
        from adapterhub.training.train import TrainOptions, train

        opts = TrainOptions(
            base=base,
            method=method,
            task="causal-lm",
            data=os.path.join(workdir, "train.jsonl"),
            out=out,
            settings={"r": "16", "lora_alpha": "32", "target_modules": TARGETS},
            max_steps=steps,
            batch_size=batch,
            max_length=seq,
            lr=1e-4,
            progress=False,
            home=os.path.join(workdir, "home"),
            force=True,
            mixed_precision="no",
        )
        r = train(opts, get_plugins())
        print(
            json.dumps(
                {
                    "train_loss": r["metrics"]["train_loss"],
                    "trainable": r["trainable_params"],
                    "anon_peak_mb": anon.done(),
                }
            )
        )
    else:
        from adapterhub.merge.plan import merge_adapter, open_adapter_dir
        from adapterhub.plugins import get_plugins

        loaded = open_adapter_dir(out, get_plugins())
        r = merge_adapter(loaded, base, os.path.join(workdir, f"merged-{method}"), force=True, hash_files=False)
        print(
            json.dumps(
                {
                    "merged": r["tensors_merged"],
                    "dequantized": r.get("tensors_dequantized", 0),
                    "anon_peak_mb": anon.done(),
                }
            )
        )


def measure(phase: str, method: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        phase,
        method,
        "--workdir",
        args.workdir,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:  # files: no pipe can fill up
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{phase} {method} failed:\n{err[-3000:]}")
    return {
        "phase": phase,
        "method": method,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "wall_s": wall,
        **json.loads(out.strip().splitlines()[-1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=2, metavar=("PHASE", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--workdir")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.workdir, args.steps, args.batch, args.seq)
        return
    with work_directory(args.workdir, args.keep, "qlora-bench-") as args.workdir:
        # built in a child: a child's ru_maxrss starts at its parent's RSS at fork, so the parent stays small
        t = time.perf_counter()
        info = measure("build", "-", argparse.Namespace(**{**vars(args), "steps": args.layers}))
        base = os.path.join(args.workdir, "base")
        size = sum(os.path.getsize(os.path.join(base, f)) for f in os.listdir(base) if f.endswith(".safetensors"))
        print(
            f"model: {info['params'] / 1e6:.0f}M parameters, {size / 2**20:.0f} MiB bf16 safetensors (built in "
            f"{time.perf_counter() - t:.0f} s); train: {args.steps} steps, batch {args.batch} x {args.seq} tokens; "
            f"torch {info['torch']}, {os.cpu_count()} CPUs, CUDA: {info['cuda']}"
        )
        rows = [measure(phase, m, args) for phase in ("train", "merge") for m in ("lora", "qlora")]
        print(f"{'phase':<14}{'peak RSS MiB':>14}{'peak anon MiB':>15}{'wall s':>9}  notes")
        for r in rows:
            note = (
                f"train_loss={r['train_loss']:.3f} trainable={r['trainable']:,}"
                if r["phase"] == "train"
                else f"merged={r['merged']} dequantized={r['dequantized']}"
            )
            print(
                f"{r['phase'] + ' ' + r['method']:<14}{r['peak_rss_mb']:>14.0f}{r['anon_peak_mb']:>15.0f}"
                f"{r['wall_s']:>9.1f}  {note}"
            )
        by = {(r["phase"], r["method"]): r for r in rows}
        for phase in ("train", "merge"):
            q, lo = by[(phase, "qlora")], by[(phase, "lora")]
            print(
                f"{phase}: qlora/lora peak RSS {q['peak_rss_mb'] / lo['peak_rss_mb']:.2f}x, peak anon "
                f"{q['anon_peak_mb'] / lo['anon_peak_mb']:.2f}x, wall {q['wall_s'] / lo['wall_s']:.2f}x"
            )


if __name__ == "__main__":
    main()
