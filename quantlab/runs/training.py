"""A training run's session: the run log opened (continued, for a resume), the trainer built from
the config and brought to the checkpoint's state, and the method's report recorded at the end."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from quantlab.data import DataBundle
from quantlab.engine import checkpoint
from quantlab.engine.trainer import Trainer, TrainerSettings
from quantlab.methods.base import Method
from quantlab.runs.runlog import RunLog, flatten, numbers

log = logging.getLogger("quantlab")


@contextlib.contextmanager
def training(
    model: nn.Module, method: Method, data: DataBundle, cfg: DictConfig, run_dir: Path, resume: bool
) -> Iterator[tuple[Trainer, RunLog]]:
    """A Trainer for `cfg` writing into `run_dir`, and its RunLog (closed on leaving). With `resume`,
    both continue from checkpoints/last.pt: what was logged after it is dropped and logged again."""
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt") if resume else None
    with RunLog(run_dir, state["clock"]["step"] if state else None) as runlog:
        trainer = Trainer(model, method, data, TrainerSettings.from_config(cfg), run_dir, runlog)
        if state:
            trainer.load_state(state)
            del state
            log.info(f"resumed {run_dir} at step {trainer.clock.step}/{trainer.total_steps}")
        log.info(
            f"{type(method).__name__} on {data.name} with {type(model).__name__}: "
            f"{trainer.epochs} epochs, {trainer.total_steps} steps, device {trainer.device}"
        )
        yield trainer, runlog


def record_report(
    results: dict[str, Any], report: dict[str, Any], runlog: RunLog, step: int, epoch: int
) -> dict[str, float]:
    """A method's report (e.g. WaveQ's learned bit-widths) into results.json's `method` entry and
    TensorBoard's report/*; returns its top-level numbers as method/* metrics."""
    if not report:
        return {}
    results["method"] = report
    runlog.scalars(numbers(flatten(report, "report/", sep="/")), step, epoch)
    return {f"method/{k}": v for k, v in report.items() if isinstance(v, (int, float))}
