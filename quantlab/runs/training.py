"""A training run's session: how it starts (new, resumed, or nothing to do), the run log opened
(continued, for a resume), the trainer built from the config and brought to the checkpoint's state,
SIGINT / SIGTERM turned into a stop at the next step boundary, and the method's report recorded."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from quantlab.data import DataBundle
from quantlab.engine import checkpoint
from quantlab.engine.settings import TrainerSettings
from quantlab.engine.trainer import Trainer
from quantlab.errors import Interrupted
from quantlab.methods.base import Method
from quantlab.runs.results import read_results
from quantlab.runs.runlog import RunLog, flatten, numbers

log = logging.getLogger("quantlab")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def start_mode(resume: Any, run_dir: Path) -> str:
    """How a `train` job starts in `run_dir`: "new", "resume" (its last.pt), or "done" (resume=auto
    of a run that completed: a sweep resume skips it)."""
    if not resume:
        return "new"
    if str(resume) == "auto":
        if read_results(run_dir).get("status") == "completed":
            return "done"
        return "resume" if (run_dir / "checkpoints" / "last.pt").is_file() else "new"
    return "resume"


@contextlib.contextmanager
def training(
    model: nn.Module,
    method: Method,
    data: DataBundle,
    cfg: DictConfig,
    run_dir: Path,
    resume: bool,
    started: float,
) -> Iterator[tuple[Trainer, RunLog]]:
    """A Trainer for `cfg` writing into `run_dir`, and its RunLog (closed on leaving). With `resume`,
    both continue from checkpoints/last.pt: what was logged after it is dropped and logged again.
    `started` (perf_counter) is when this session began: its wall time adds to the run's."""
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt") if resume else None
    position = state.get("log_position") if state else None
    with RunLog(run_dir, state["clock"]["step"] if state else None, position) as runlog:
        trainer = Trainer(model, method, data, TrainerSettings.from_config(cfg), run_dir, runlog)
        if state:
            trainer.load_state(state)
            del state
            log.info(f"resumed {run_dir} at step {trainer.clock.step}/{trainer.total_steps}")
        trainer.session_started = started
        log.info(
            f"{type(method).__name__} on {data.name} with {type(model).__name__}: "
            f"{trainer.epochs} epochs, {trainer.total_steps} steps, device {trainer.device}"
        )
        with stop_on_signals(trainer):
            yield trainer, runlog


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT and SIGTERM (what SLURM sends before preemption): while the trainer trains, it stops at
    the next step boundary and writes last.pt; otherwise (test, PTQ) the run stops at once. A second
    signal gets the default behaviour."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed in the main thread (e.g. not in joblib workers)
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def handler(signum: int, frame: Any) -> None:
        for s, h in previous.items():
            signal.signal(s, h)
        if trainer.fitting:
            trainer.stop_requested = signum
        else:
            raise Interrupted(f"stopped by {signal.Signals(signum).name} after training", signum)

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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


def resume_hint(run_dir: Path, multirun: bool, overrides: list[str]) -> str:
    """The exact command that continues a stopped run."""
    if multirun:
        return f"continue the sweep with: quantlab train -m hydra.sweep.dir={run_dir.parent} resume=auto"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return f"checkpoints/last.pt is saved; continue with: quantlab train resume={run_dir}"
    again = " ".join([*overrides, "resume=auto", f"hydra.run.dir={run_dir}"])
    return f"no checkpoint was written yet; start it again with: quantlab train {again}"
