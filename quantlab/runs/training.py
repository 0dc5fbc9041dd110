"""A training run's session: how it starts (new, resumed, or nothing to do), the run log opened
(continued, for a resume), the trainer built from the config and brought to the checkpoint's state,
SIGINT / SIGTERM (and submitit's preemption signal) turned into a stop at the next step boundary,
and the method's report recorded."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from quantlab.data import DataBundle
from quantlab.engine import checkpoint, distributed
from quantlab.engine.rundir import RunDir
from quantlab.engine.settings import TrainerSettings
from quantlab.engine.trainer import Trainer
from quantlab.errors import STOP_SIGNAL, Interrupted
from quantlab.methods.base import Method
from quantlab.runs.cmdline import shell_command
from quantlab.runs.runlog import RunLog, flatten, numbers
from quantlab.runs.tracking import LoggerSettings, Tracker

log = logging.getLogger("quantlab")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def start_mode(resume: Any, run_dir: Path) -> str:
    """How a `train` job starts in `run_dir`: "new", "resume" (its last.pt), or "done" (resume=auto
    of a run that completed: a sweep resume skips it)."""
    if not resume:
        return "new"
    if str(resume) == "auto":
        if RunDir(run_dir).status() == "completed":
            return "done"
        return "resume" if RunDir(run_dir).resumable() else "new"
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
    signals: StopOnSignals | None = None,
    tracker: Tracker | None = None,
) -> Iterator[tuple[Trainer, RunLog]]:
    """A Trainer for `cfg` writing into `run_dir`, and its RunLog (closed on leaving). With `resume`,
    both continue from checkpoints/last.pt: what was logged after it is dropped and logged again.
    `started` (perf_counter) is when this session began: its wall time adds to the run's; `signals`
    (when given) stops the trainer at a step boundary; `tracker` (when given) gets every logged scalar
    (MLflow). TensorBoard is written unless `logger.tensorboard` is false."""
    state = checkpoint.load(RunDir(run_dir).last) if resume else None
    position = state.get("log_position") if state else None
    main = distributed.ranks().main  # other ranks of a distributed run write nothing
    tensorboard = LoggerSettings.from_config(cfg.logger).tensorboard
    step = state["clock"]["step"] if state else None
    opened = RunLog(run_dir, step, position, tensorboard, tracker) if main else None
    with opened or contextlib.nullcontext() as runlog:
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
        if signals is not None:
            signals.trainer = trainer
        yield trainer, runlog


class StopOnSignals:
    """SIGINT and SIGTERM (what SLURM sends before preemption) for a run's whole life: while its
    trainer trains, the trainer stops at the next step boundary and writes last.pt; at any other time
    (loading data, testing, the PTQ sweep) the run stops at once. Either way it ends as Interrupted
    (status interrupted, exit 130 / 143). A second signal gets the default behaviour.

    In a job that submitit started (hydra/launcher=slurm, slurm_ddp, submitit_local), its preemption
    and time-out signal (SUBMITIT_PREEMPT_SIGNAL, USR2 unless set) stops the run the same way, then
    hands the signal to submitit's own handler, which requeues the job (rank 0; the Hydra launcher's
    `checkpoint` resubmits it with the same overrides). The requeued job finds its run in its own
    directory and continues it from last.pt (see `requeued`)."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.previous: dict[int, Any] = {}
        self.requeue_signal = submitit_signal()
        self.requeue: Any = None  # submitit's handler, called once the run stopped on its signal

    def __enter__(self) -> StopOnSignals:
        STOP_SIGNAL.clear()  # this command's signals only
        if threading.current_thread() is threading.main_thread():  # e.g. not in joblib's threads
            signals = [*STOP_SIGNALS, *([self.requeue_signal] if self.requeue_signal else [])]
            self.previous = {s: signal.getsignal(s) for s in signals}
            for s in signals:
                signal.signal(s, self.handler)
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self.restore()
        requeue, self.requeue = self.requeue, None
        if isinstance(error, Interrupted) and callable(requeue):
            log.info("preempted: last.pt written; submitit requeues the job, which continues from it")
            requeue(self.requeue_signal, None)  # rank 0: resubmit and exit; other ranks: return

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous = {}

    def handler(self, signum: int, frame: Any) -> None:
        if signum == self.requeue_signal:
            self.requeue = self.previous.get(signum)
        self.restore()
        STOP_SIGNAL.append(signum)
        if self.trainer is not None and self.trainer.fitting:
            self.trainer.stop_requested = signum
        else:
            raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)


def submitit_signal() -> int | None:
    """The signal submitit sends a job it should checkpoint and requeue; None outside submitit."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", None)


def requeued(cfg_resume: Any, run_dir: Path, multirun: bool) -> Any:
    """The resume a job runs with. A job of a sweep finds a run in its own directory only when its
    launcher started it again (submitit's requeue after a preemption: the same overrides, the same
    directory; a sweep started afresh refuses a directory with runs): it continues as resume=auto."""
    if cfg_resume or not multirun or not RunDir(run_dir).results.is_file():
        return cfg_resume
    log.info(f"{run_dir}: this job ran here before (requeued); continuing it from checkpoints/last.pt")
    return "auto"


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
        again = shell_command("quantlab", "train", "-m", f"hydra.sweep.dir={run_dir.parent}", "resume=auto")
        return f"continue the sweep with: {again}"
    if RunDir(run_dir).last.is_file():
        again = shell_command("quantlab", "train", f"resume={run_dir}")
        return f"checkpoints/last.pt is saved; continue with: {again}"
    again = shell_command("quantlab", "train", *overrides, "resume=auto", f"hydra.run.dir={run_dir}")
    return f"no checkpoint was written yet; start it again with: {again}"
