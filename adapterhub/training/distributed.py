"""Several processes, one result: ``adapterhub train`` under ``torchrun`` / ``accelerate launch``.

Every process trains its share of each global batch (the Trainer's DDP over gloo on CPU, NCCL on GPUs);
process 0 alone checks the data, writes the adapter, pushes and talks to the tracker, and the others wait
for it and exit quietly. A failure on any process is one ``Error:`` line: failures while checking inputs
are gathered and printed by process 0 (naming the process); a process that fails while training prints
its own and leaves a note in the launcher's store, so the others exit without a second line. Every wait on
another process has a timeout (``--dist-timeout``, ``$ADAPTERHUB_DIST_TIMEOUT``, default 1800 s: the
Trainer's own ``ddp_timeout``), so a stuck or vanished process never hangs the run.

On CPU, accelerate runs neither FSDP nor DeepSpeed (it trains plain DDP and says nothing); both are
refused there with a message. Under FSDP2 on GPUs the adapter's tensors are sharded ``DTensor``s:
:func:`adapter_state` gathers them (every process must call it).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import AdapterhubError, InvalidInput, ReportedElsewhere, describe

DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_ENV = "ADAPTERHUB_DIST_TIMEOUT"
_FAILURE_KEY = "adapterhub/failed"
#: what gloo and NCCL say when a peer process is gone or a collective timed out
_PEER_LOST = ("connection closed", "connection reset", "broken pipe", "timed out", "timeout", "nccl", "gloo")

FSDP_ON_CPU = (
    "FSDP needs CUDA GPUs: accelerate shards only on GPU-class devices and on CPU would silently "
    "train plain DDP (torch's own FSDP runs on CPU, but not through accelerate and the Trainer); on "
    "CPU launch without --use_fsdp (DDP), on GPUs see 'Scale out' in the README"
)
FSDP_VERSION_1 = (
    "FSDP version 1 renames the model's modules (the adapter's keys would change); use FSDP2: "
    "accelerate launch --use_fsdp --fsdp_version 2 (or fsdp_version: 2 in the accelerate config)"
)
DEEPSPEED = (
    "DeepSpeed through accelerate is not supported: on CPU accelerate ignores it (plain DDP), and on "
    "GPUs the Trainer's DeepSpeed checkpoints hold the whole model, not only the adapter; use DDP, or "
    "FSDP2 on GPUs for a base that does not fit one GPU (see 'Scale out' in the README)"
)


def timeout_seconds(value: float | None) -> float:
    """``--dist-timeout``, else ``$ADAPTERHUB_DIST_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`."""
    if value is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if not raw:
            return DEFAULT_TIMEOUT_S
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInput(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise InvalidInput(f"--dist-timeout must be a positive number of seconds, got {value}")
    return float(value)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def check_engine(cuda: bool) -> list[str]:
    """Refuse an accelerate engine that would not do what was asked (FSDP or DeepSpeed on CPU, FSDP1,
    DeepSpeed); returns warnings for a launch that runs fewer processes than the user likely meant."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        raise InvalidInput(DEEPSPEED)
    if _flag("ACCELERATE_USE_FSDP"):
        if not cuda:
            raise InvalidInput(FSDP_ON_CPU)
        if os.environ.get("FSDP_VERSION", "1").strip() != "2":
            raise InvalidInput(FSDP_VERSION_1)
    if (
        _flag("ACCELERATE_USE_CPU")
        and os.environ.get("MASTER_ADDR")
        and not os.environ.get("WORLD_SIZE")
        and not any(os.environ.get(v) for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"))
    ):
        return [
            "'accelerate launch --cpu' started one process: accelerate runs several CPU processes only "
            "through MPI; for data parallelism on CPU use 'accelerate launch --multi_gpu --num_processes N' "
            "(torchrun, gloo) or torchrun"
        ]
    return []


class Processes:
    """The processes of one training run: one unless launched by ``torchrun`` / ``accelerate launch``.

    The collectives here go over a gloo group (the default group on CPU, a side group next to NCCL on
    GPUs) with the run's timeout; their failures become :class:`AdapterhubError` lines."""

    def __init__(
        self,
        world_size: int = 1,
        rank: int = 0,
        local_rank: int = 0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        group: Any = None,
    ):
        self.world_size, self.rank, self.local_rank = world_size, rank, local_rank
        self.timeout_s = timeout_s
        self._group = group

    @property
    def main(self) -> bool:
        """Process 0: the one that writes, pushes, tracks and prints."""
        return self.rank == 0

    # -- collectives -------------------------------------------------------------------------------------
    def _call(self, stage: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, group=self._group, **kwargs)
        except Exception as exc:
            raise self.lost(exc, stage) from None

    def lost(self, exc: BaseException, stage: str) -> AdapterhubError:
        """The error for a collective that failed while ``stage``: quiet when another process already
        reported why; else process 0 says whether it timed out or a peer vanished (process 1 does when the
        one gone or stuck is process 0; the others stay quiet)."""
        elsewhere = self.failure_note()
        if elsewhere is not None:
            return ReportedElsewhere(elsewhere)
        text = describe(exc)
        if self.rank > 1:
            return ReportedElsewhere(text)
        if "timed out" in text.lower() or "timeout" in text.lower():
            return AdapterhubError(
                f"process {self.rank} waited {self.timeout_s:g} s for the other processes while {stage} and gave "
                f"up: one is stuck, was killed or cannot be reached (the limit is --dist-timeout or {TIMEOUT_ENV})"
            )
        return AdapterhubError(
            f"process {self.rank}: another process of this run ended while {stage} (killed, "
            f"crashed or its node failed; {_transport_reason(text)})"
        )

    def stopped(self, stage: str) -> AdapterhubError:
        """The error for SIGTERM from the launcher (torchrun stops every process once one has failed)."""
        elsewhere = self.failure_note()
        if elsewhere is not None or not self.main:
            return ReportedElsewhere(elsewhere or "stopped by the launcher")
        return AdapterhubError(
            f"process 0 was stopped by the launcher while {stage}: another process of this run "
            "ended (killed or crashed) or the run was interrupted"
        )

    def check_all(self, exc: BaseException | None, stage: str) -> None:
        """Every process says how its part of ``stage`` went; if any failed, all raise: process 0 the
        first failure (its own as it was, another's prefixed with the process number), the others
        :class:`ReportedElsewhere`."""
        if self.world_size == 1:
            if exc is not None:
                raise exc
            return
        import torch.distributed as dist

        everyone: list[Any] = [None] * self.world_size
        self._call(stage, dist.all_gather_object, everyone, None if exc is None else describe(exc))
        failed = [(rank, text) for rank, text in enumerate(everyone) if text is not None]
        if not failed:
            return
        if not self.main:
            raise ReportedElsewhere(failed[0][1]) from exc
        if exc is not None:
            raise exc
        rank, text = failed[0]
        raise AdapterhubError(f"process {rank}: {text}")

    @contextmanager
    def together(self, stage: str) -> Iterator[None]:
        """Run a block on every process and agree on its outcome (see :meth:`check_all`)."""
        try:
            yield
        except Exception as exc:
            self.check_all(exc, stage)
            raise
        self.check_all(None, stage)

    def share(self, value: Any, stage: str) -> Any:
        """Process 0's ``value`` on every process."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value if self.main else None]
        self._call(stage, dist.broadcast_object_list, box, src=0)
        return box[0]

    def barrier(self, stage: str) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            self._call(stage, dist.barrier)

    def mean(self, value: float, stage: str) -> float:
        """The mean of ``value`` over the processes (e.g. each one's share of the training loss)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        self._call(stage, dist.all_gather_object, values, float(value))
        return sum(values) / len(values)

    def close(self) -> None:
        """Leave the process group (at the end of a run, failed or not): torch tears it down in order here,
        where at interpreter exit, with a peer already gone, gloo aborts the process."""
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    # -- a failure note, for the processes that only see a peer vanish -----------------------------------
    def note_failure(self, message: str) -> None:
        """Tell the other processes that this one failed and printed why (best effort)."""
        store = self._store()
        if store is not None:
            try:
                store.set(_FAILURE_KEY, f"process {self.rank}: {message}")
            except Exception:  # the store may be gone too: the others then print their own line
                pass

    def failure_note(self) -> str | None:
        store = self._store()
        if store is None:
            return None
        try:
            if store.check([_FAILURE_KEY]):
                return store.get(_FAILURE_KEY).decode("utf-8", "replace")
        except Exception:
            return None
        return None

    def _store(self) -> Any:
        if self.world_size == 1:
            return None
        try:
            from torch.distributed import distributed_c10d

            return distributed_c10d._get_default_store()
        except Exception:
            return None


def start(timeout_s: float, cuda: bool) -> Processes:
    """Join the run's processes (the launcher's environment: torchrun, accelerate, MPI), or stand alone.
    The process group is created here with the run's timeout; the Trainer reuses it."""
    if not _launched():
        return Processes(timeout_s=timeout_s)
    from datetime import timedelta

    import torch.distributed as dist
    from accelerate import PartialState

    try:
        state = PartialState(cpu=not cuda, timeout=timedelta(seconds=timeout_s))
    except Exception as exc:
        raise AdapterhubError(f"could not join the other processes of this run: {describe(exc)}") from None
    if state.num_processes == 1:
        return Processes(timeout_s=timeout_s)
    if cuda:  # one GPU per process: what quantized loading (device_map) and NCCL use
        import torch

        torch.cuda.set_device(state.local_process_index)
    group = None
    if dist.get_backend() != "gloo":  # NCCL carries tensors; our small messages go over gloo with the timeout
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return Processes(state.num_processes, state.process_index, state.local_process_index, timeout_s, group)


def _transport_reason(text: str) -> str:
    """What gloo / NCCL said, in a few words (their messages run to a paragraph with a source path)."""
    low = text.lower()
    for phrase in ("connection reset by peer", "connection closed by peer", "broken pipe", "connection refused"):
        if phrase in low:
            return phrase
    text = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)  # "[.../pair.cc:537] "
    return text.split(". ")[0][:120]


def _launched() -> bool:
    for name in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


def peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (raised while training) says a collective failed: a peer vanished or timed out."""
    try:
        import torch.distributed as dist

        if isinstance(exc, dist.DistError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _PEER_LOST)


def adapter_state(method: Any, model: Any) -> dict[str, Any]:
    """The adapter's tensors as whole CPU tensors. Under FSDP2 its parameters are sharded ``DTensor``s and
    are gathered here, so every process must call this, in the same order."""
    from torch.distributed.tensor import DTensor

    out = {}
    for key, value in method.state_dict(getattr(model, "module", model)).items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out
