"""A rank of an in-process distributed test (torch.multiprocessing.spawn, gloo on the CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def join(rank: int, world: int, port: int) -> None:
    """torchrun's environment for rank `rank` of `world` (nothing for one process)."""
    if world > 1:
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank)}
        os.environ.update(env, WORLD_SIZE=str(world), LOCAL_RANK=str(rank))


def train_methods(rank: int, world: int, port: int, methods: list[str], out: str, steps: int) -> None:
    """Train each method `steps` steps as rank `rank` of `world`; save its export to out/<i>-<rank>.pt."""
    join(rank, world, port)
    from quantlab.engine import distributed
    from quantlab.runs.components import method_overrides, trainer_for

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


def train_runs(rank: int, world: int, port: int, runs: list[list[str]], out: str, steps: int) -> None:
    """Train each run (a list of overrides; global batch 32) `steps` steps as rank `rank` of `world`;
    save its trained weights to out/<i>-<rank>.pt (world 1: in this process, without a group)."""
    join(rank, world, port)
    from quantlab.engine import distributed
    from quantlab.runs.components import trainer_for

    distributed.start()
    try:
        for i, overrides in enumerate(runs):
            settings = ["schedule.batch_size=32", "trainer.log_every=2", "trainer.grad_norms_every=0"]
            trainer = trainer_for([*overrides, *settings], Path(out) / f"run{i}-{world}")
            trainer.fit(until=steps)
            trainer.end_parallel()
            # plain batch norm again after training, for folding and export
            norms = {type(m) for m in trainer.model.modules() if "BatchNorm" in type(m).__name__}
            assert norms <= {torch.nn.BatchNorm1d, torch.nn.BatchNorm2d}, norms
            torch.save(trainer.model.state_dict(), Path(out) / f"{i}-{world}-{rank}.pt")
    finally:
        distributed.stop()


def penalty_gradients(rank: int, world: int, port: int, runs: list[list[str]], out: str) -> None:
    """For each run (overrides; global batch 32): on the first training batch, this rank's penalty
    value and the gradient of its penalty term (what DistributedDataParallel averages over the
    ranks), saved to out/p<i>-<world>-<rank>.pt."""
    import torch.nn.functional as F

    join(rank, world, port)
    from quantlab.engine import distributed
    from quantlab.runs.components import trainer_for

    distributed.start()
    try:
        for i, overrides in enumerate(runs):
            trainer = trainer_for([*overrides, "schedule.batch_size=32"], Path(out) / f"grad{i}-{world}")
            x, y = next(iter(trainer.train_loader.iterate(0, 0)))
            trainer.model.train()
            loss = F.cross_entropy(trainer.forward(x), y)
            (term,) = trainer.method.penalty(trainer.model, loss, (x, y)).values()
            params = list(trainer.model.parameters())
            grads = torch.autograd.grad(term, params, allow_unused=True)
            flat = torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
            torch.save({"value": term.detach(), "grad": flat}, Path(out) / f"p{i}-{world}-{rank}.pt")
            trainer.end_parallel()
    finally:
        distributed.stop()
