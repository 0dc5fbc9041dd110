"""One run on N processes with torch.distributed: who this process is, the process group, and the
few collectives the runner needs (settling the run directory, agreeing to stop, gathering checkpoint
parts); tensor reductions over the ranks are quantlab.collective'.

The ranks come from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK); a SLURM job with
several tasks gets the same variables from submitit's TorchDistributedEnvironment. The default group
has gloo for CPU tensors (objects, flags) and, on CUDA, NCCL for the gradients; every collective has
a timeout (`QUANTLAB_DIST_TIMEOUT`, seconds, default 1800), so that a rank that died never leaves the
others waiting for ever.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from quantlab.errors import QuantlabError

TIMEOUT_S = 1800


class PeerFailed(QuantlabError):
    """Another process of the run died or failed: this one cannot go on (status failed)."""

    exit_code = 1


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank (0 writes everything), world size, local rank (its GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def ranks() -> Ranks:
    """From the process group when there is one, else from torchrun's environment (1 process without)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def export_slurm_env() -> None:
    """In a task of a multi-task job that submitit started (hydra/launcher=slurm_ddp): RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from SLURM's variables, through submitit, as
    torchrun would set them. Any other process in a SLURM allocation of several tasks (a script of
    `sbatch -n 4` running one quantlab) is one process, not a rank waiting for three others."""
    env = os.environ
    submitit_task = env.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_PROCID" in env
    if "RANK" in env or not submitit_task or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def start() -> Ranks:
    """Join the run's process group when this process is one of several (a no-op otherwise)."""
    export_slurm_env()
    here = ranks()
    if here.active and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        timeout = datetime.timedelta(seconds=float(os.environ.get("QUANTLAB_DIST_TIMEOUT", TIMEOUT_S)))
        dist.init_process_group(backend, timeout=timeout)
        if torch.cuda.is_available():
            torch.cuda.set_device(here.local_rank)
    return ranks()


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (itself where there is one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values of `tensors`, in place, on every rank."""
    if dist.is_available() and dist.is_initialized():
        for t in tensors:
            dist.broadcast(t, src=0)


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank ([obj] where there is one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any (a CPU all-reduce: no device synchronisation)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def lost_peer(error: BaseException) -> bool:
    """A collective that failed because another rank is gone (gloo: a reset connection; NCCL and
    the store: torch.distributed's own errors; any backend: the collective timeout)."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        mark in text for mark in ("gloo", "Connection reset", "Connection closed", "NCCL", "timed out")
    )


@contextlib.contextmanager
def peers_watched() -> Iterator[None]:
    """In a run of several processes, a collective that failed because another rank is gone ends this
    one with one line (PeerFailed) instead of a backend's traceback."""
    try:
        yield
    except RuntimeError as e:
        if not (ranks().active and lost_peer(e)):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PeerFailed(
            f"another process of this run stopped or failed (its own output says why); rank "
            f"{ranks().rank} could not go on: {first}"
        ) from None
