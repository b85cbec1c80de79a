"""One process of ``test_scaleout.py::test_processes_agree_gather_fsdp_shards_and_time_out``, started by
``torchrun --nproc-per-node 2`` (gloo). Writes what it saw to ``$OUT/rank<N>.json``."""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))


def main() -> None:
    import torch

    from adapterhub.errors import AdapterhubError, InvalidInput, ReportedElsewhere
    from adapterhub.training.distributed import adapter_state, start

    procs = start(timeout_s=2.0, cuda=False)
    seen: dict = {"rank": procs.rank, "world_size": procs.world_size}

    # 1. a failure on process 1 only, while checking inputs: process 0 reports it, process 1 stays quiet
    try:
        with procs.together("checking the data"):
            if procs.rank == 1:
                raise InvalidInput("data file train.jsonl does not exist")
    except AdapterhubError as exc:
        seen["check"] = [type(exc).__name__, str(exc)]

    # 2. FSDP2 (torch's fully_shard, CPU, gloo): the adapter's sharded DTensors are gathered whole
    from tinymodels import tiny_llama
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from adapterhub.plugins import get_plugins

    method = get_plugins().get("methods", "lora")
    model = tiny_llama()
    method.attach(model, method.make_config({"r": 4, "target_modules": ["q_proj", "v_proj"]}))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p))  # B non-zero: a gather that dropped a shard would show
    whole = {k: v.detach().clone() for k, v in method.state_dict(model).items()}
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    seen["sharded"] = all(isinstance(v, DTensor) for v in method.state_dict(model).values())
    seen["local_numel"] = sum(v.to_local().numel() for v in method.state_dict(model).values())
    seen["whole_numel"] = sum(v.numel() for v in whole.values())
    gathered = adapter_state(method, model)
    seen["gathered_keys_match"] = sorted(gathered) == sorted(whole)
    seen["gathered_max_diff"] = max((gathered[k] - whole[k]).abs().max().item() for k in whole)

    # 3. process 0 is stuck (here: asleep) while process 1 waits for it: process 1 gives up after the timeout
    began = time.time()
    try:
        if procs.rank == 0:
            time.sleep(5)
        procs.share("done" if procs.main else None, "waiting for process 0 to push")
        seen["wait"] = ["returned"]
    except (AdapterhubError, ReportedElsewhere) as exc:
        seen["wait"] = [type(exc).__name__, str(exc)]
    seen["waited_s"] = round(time.time() - began, 1)
    with open(os.path.join(os.environ["OUT"], f"rank{procs.rank}.json"), "w") as f:
        json.dump(seen, f)
    sys.stdout.flush()
    os._exit(0)  # the group is broken on purpose: skip its teardown


if __name__ == "__main__":
    main()
