"""A rank of an in-process distributed test (torch.multiprocessing.spawn, gloo on the CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def train_methods(rank: int, world: int, port: int, methods: list[str], out: str, steps: int) -> None:
    """Train each method `steps` steps as rank `rank` of `world`; save its export to out/<i>-<rank>.pt."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank)}
    os.environ.update(env, WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from quantlab.engine import distributed
    from quantlab.runs.builders import method_overrides, trainer_for

    distributed.start()
    try:
        for i, spec in enumerate(methods):
            overrides = [*method_overrides(spec), "schedule.batch_size=32", "trainer.log_every=2"]
            trainer = trainer_for(overrides, Path(out) / f"run{i}")
            trainer.fit(until=steps)
            trainer.end_parallel()
            exported = trainer.method.export(trainer.model)
            torch.save(exported.state_dict(), Path(out) / f"{i}-{rank}.pt")
    finally:
        distributed.stop()
