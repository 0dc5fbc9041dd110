"""The Hydra job a command runs as: its run directory, overrides and choices, the results.json it
starts with, and the one place a user-fixable error becomes exit code 2 (or, in a multirun, a failed
job that Hydra records while the others run)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from quantlab.engine import distributed
from quantlab.engine.console import fail
from quantlab.engine.rundir import RunDir
from quantlab.errors import ConfigError, Interrupted, QuantlabError, as_interruption
from quantlab.runs.cmdline import CommandLine


@dataclass
class Job:
    """One run of a Hydra command, as seen from inside it."""

    dir: Path
    overrides: list[str]
    choices: dict[str, str]
    multirun: bool
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def current(cls) -> Job:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return cls(
            dir=Path(hc.runtime.output_dir),
            # resume=... says how this process runs, not what the run is
            overrides=[o for o in hc.overrides.task if not o.startswith("resume=")],
            # the groups a user picks (method, model, ...), not Hydra's own nor a config's inner defaults
            choices={
                k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and "/" not in k
            },
            multirun=hc.mode == RunMode.MULTIRUN,
        )

    @property
    def files(self) -> RunDir:
        """The names of the job's files (results.json, config.yaml, checkpoints, ...)."""
        return RunDir(self.dir)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def new_results(self, overrides: list[str] | None = None, **facts: Any) -> dict[str, Any]:
        """results.json as a run starts: status running, no metrics yet."""
        return {
            "status": "running",
            "run_dir": str(self.dir),
            **facts,
            "overrides": list(self.overrides if overrides is None else overrides),
            "metrics": {},
            "ptq": [],
            "timing": {},
        }


def run_command(
    run: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig, command: str
) -> dict[str, Any] | None:
    """`run(cfg)` for a Hydra command. A user-fixable QuantlabError is one plain line on stderr and
    exit 2. In a multirun, a job that fails (any error but an interruption) is one line naming the
    job, its traceback goes to the job's log, and the sweep goes on (None); `launch` sums it up."""
    try:
        return run(cfg)
    except QuantlabError as e:
        if Job.current().multirun and not isinstance(e, Interrupted):
            return failed_job(command, e)
        logging.getLogger("quantlab").debug("stopped", exc_info=True)
        fail(command, e, e.exit_code, "interrupted" if isinstance(e, Interrupted) else "error")
    except KeyboardInterrupt:  # a second Ctrl-C, after the first one's orderly stop began
        fail(command, "stopped by a second Ctrl-C (what was written is complete)", 130, "interrupted")
    except Exception as e:
        stop = as_interruption(e)  # a stop signal that surfaced as another error
        if stop is not None:
            fail(command, stop, stop.exit_code, "interrupted")
        if not Job.current().multirun:
            raise
        return failed_job(command, e)


def failed_job(command: str, error: Exception) -> None:
    """One line for a failed job of a multirun; the traceback appended to the job's log."""
    import traceback

    job = Job.current()
    log_file = job.dir / f"{command.split()[-1]}.log"
    with contextlib.suppress(OSError), log_file.open("a") as f:
        f.write("".join(traceback.format_exception(error)))
    text = (
        " ".join(str(error).split())
        if isinstance(error, QuantlabError)
        else f"{type(error).__name__}: {error}"
    )
    shown = " ".join(job.overrides)
    num = job.dir.name
    print(f"{command}: job {num} ({shown}): error: {text}", file=sys.stderr, flush=True)
    return None


def sweep_summary(command: str, args: list[str]) -> int:
    """After a multirun: one line counting its jobs by status; the exit code (1 when one failed)."""
    sweep = RunDir(CommandLine.parse(args).text("hydra.sweep.dir") or "")
    record = sweep.read_sweep_record()
    if record is None:
        return 0
    runs = [sweep.job(int(job["num"])) for job in record["jobs"]]
    statuses = [run.status() if run.results.is_file() else "not run" for run in runs]
    counts = {s: statuses.count(s) for s in sorted(set(statuses), key=lambda s: (s != "completed", s))}
    failed = [str(job["num"]) for job, s in zip(record["jobs"], statuses, strict=True) if s != "completed"]
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    tail = f" (not completed: job {', '.join(failed)})" if failed else ""
    print(f"{command}: sweep {sweep}: {parts}{tail}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def devices_command(args: list[str]) -> list[str] | None:
    """`quantlab train trainer.devices=N` (N > 1): the torchrun command line that trains the run on N
    processes (one per GPU; gloo processes on a machine without one), as the README spells it. A
    resume (`resume=<dir>`, or `resume=auto` of a hydra.run.dir) of a run started that way gets its
    N from the run's config."""
    line = CommandLine.parse(args)
    value = line.value("trainer.devices")
    resume = line.text("resume")
    if resume == "auto":  # the run in hydra.run.dir, if there is one
        resume = line.text("hydra.run.dir")
    if value is None and resume is not None:
        saved = RunDir(resume).config
        devices = OmegaConf.load(saved).get("trainer", {}).get("devices", 1) if saved.is_file() else 1
        args, value = [*args, f"trainer.devices={devices}"], devices
    if value is None or value == 1:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"trainer.devices={value}: must be an integer >= 1 (processes for this run)")
    if line.multirun:
        raise ConfigError(
            "trainer.devices: one run on several GPUs; for a grid of multi-GPU runs use "
            "hydra/launcher=slurm_ddp (each job one process group)"
        )
    import torch

    if torch.cuda.is_available() and value > torch.cuda.device_count():
        raise ConfigError(f"trainer.devices={value}: this machine has {torch.cuda.device_count()} GPUs")
    runner = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={value}"]
    return [sys.executable, *runner, "-m", "quantlab", "train", *args]


def run_torchrun(command: list[str]) -> NoReturn:
    """torchrun's elastic agent in this process (`torch.distributed.run.run`, the function its
    command line calls), so that its endings are quantlab's: Ctrl-C / SIGTERM stop every rank (rank 0
    says so in one line) and exit 130 / 143; a rank that fails or is killed is one line naming it,
    exit 1 — without the agent's own traceback and ChildFailedError report."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as agent

    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        agent(parse_args(command[3:]))  # after [python, -m, torch.distributed.run]
    except SignalException as e:
        sys.exit(128 + int(e.sigval))
    except ChildFailedError as e:
        ended = []
        for failure in e.failures.values():
            how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit {failure.exitcode}"
            ended.append(f"rank {failure.local_rank} (PID {failure.pid}) ended: {how}")
        fail("quantlab train", "; ".join(ended) + "; every rank stopped (resume the run from last.pt)", 1)
    sys.exit(0)


def launch(
    command: str, guard: Callable[[list[str]], list[str]], app: Callable[[], Any], argv: list[str] | None
) -> None:
    """`quantlab <command> [overrides]`: the command's guards on its arguments (beside each command:
    commands/train_checks.py, ptq.py, export.py), before Hydra creates anything, then its Hydra app."""
    args = list(sys.argv[1:] if argv is None else argv)
    here = distributed.start()  # one of the processes of a torchrun / multi-task SLURM run?
    if command == "train" and not here.active:
        try:
            torchrun = devices_command(args)
        except QuantlabError as e:
            fail(f"quantlab {command}", e, e.exit_code)
        if torchrun:
            run_torchrun(torchrun)
    try:
        args = guarded_on_rank_0(command, guard, args) if here.active else guard(args)
    except QuantlabError as e:
        if e.exit_code == 0:  # e.g. resume=auto of a completed run
            if here.main:
                print(f"quantlab {command}: {e}", file=sys.stderr)
            return
        if not here.main:  # rank 0 says it
            sys.exit(e.exit_code)
        fail(f"quantlab {command}", e, e.exit_code)
    if not here.main:  # the run directory and its logs are rank 0's
        args += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    sys.argv = [f"quantlab {command}", *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own failures come here, not as its traceback
    try:
        app()
    except OSError as e:  # Hydra could not create or write the run's files (.hydra/, its log)
        where = e.filename or "the run directory"
        message = f"{where}: cannot write it ({e.strerror or e}); nothing ran"
        if command == "train":
            record_start_failure(args, message)
        fail(f"quantlab {command}", message, 1)
    finally:
        distributed.stop()
    if command == "train" and here.main and ("-m" in args or "--multirun" in args):
        code = sweep_summary(f"quantlab {command}", args)
        if code:
            sys.exit(code)


def record_start_failure(args: list[str], message: str) -> None:
    """results.json of a run Hydra could not start (where it can still be written)."""
    from quantlab.engine.files import write_json_atomic
    from quantlab.errors import WriteFailed

    line = CommandLine.parse(args)
    run = line.text("hydra.run.dir")
    if line.multirun or not run or RunDir(run).results.is_file():
        return
    record = {"status": "failed", "run_dir": run, "error": message, "overrides": line.task(), "metrics": {}}
    with contextlib.suppress(WriteFailed):
        write_json_atomic(RunDir(run).results, record)


def guarded_on_rank_0(command: str, guard: Callable[[list[str]], list[str]], args: list[str]) -> list[str]:
    """The guards run once, on rank 0 (which settles and locks the run directory); every rank then
    runs with rank 0's arguments (Hydra would resolve `${now:...}` to a directory per process)."""
    outcome: tuple[str, Any, int] | None = None
    if distributed.ranks().main:
        try:
            if command != "train" or "-m" in args or "--multirun" in args:
                raise ConfigError(
                    f"quantlab {command} under torchrun: one `quantlab train` run per process group; a "
                    "grid of multi-GPU runs is `quantlab train -m hydra/launcher=slurm_ddp ...`"
                )
            outcome = ("ok", guard(args), 0)
        except QuantlabError as e:
            outcome = (type(e).__name__, str(e), e.exit_code)
    kind, value, code = distributed.broadcast(outcome)
    if kind != "ok":
        error = QuantlabError(value)
        error.exit_code = code
        raise error
    return list(value)
