"""`quantlab train`'s guards, on the command line before Hydra creates or writes into a directory:
every job's config is checked (runs.preflight), an existing run is never overwritten, a resume names
a resumable run that no live process holds, and the directory is locked (engine.lock) for the life
of the process. Each refusal is one ConfigError line and changes nothing.

The outcome is the argument list Hydra runs with, the run (or sweep) directory settled in it.
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from quantlab.data.vision import DatasetMissing
from quantlab.engine import checkpoint, lock
from quantlab.engine.files import write_json_atomic
from quantlab.engine.rundir import RunDir
from quantlab.errors import ConfigError, MissingSetting, NothingToDo
from quantlab.runs.cmdline import CommandLine, shell_command
from quantlab.runs.config import override_key, resume_config
from quantlab.runs.preflight import check_train, compose_checked, settled_dir
from quantlab.runs.tracking import require_extra_for
from quantlab.runs.training import start_mode


def train_args(args: list[str]) -> list[str]:
    """`quantlab train` arguments, checked; the run or sweep directory settled and locked."""
    line = CommandLine.parse(args)
    if line.runs_nothing:
        return args  # Hydra's own flags (--cfg, --help, --config-dir, ...): Hydra handles them
    require_extra_for(line)
    resume = line.text("resume")
    if line.multirun:
        return sweep_args(line, resume)
    if resume == "auto":
        return auto_args(line)
    if resume:
        return resume_args(line, resume)
    check_train(line.task())
    return new_run(line, RunDir(settled_dir(line, "hydra.run.dir")))


def new_run(line: CommandLine, run: RunDir) -> list[str]:
    """A new run in `run`: refused where a run is already, then locked."""
    if run.holds_run():
        raise ConfigError(f"hydra.run.dir={run}: already holds a run; pick a new directory or resume={run}")
    lock.hold(run.path)
    return line.with_value("hydra.run.dir", str(run.path)).args()


def resume_args(line: CommandLine, resume: str) -> list[str]:
    """resume=<run dir>: a run with a checkpoint, not completed, held by no live process, resumed with
    the settings it was started with (its own overrides, which the command line's replace: paths and
    machine settings may change, anything else must equal the run's). Every check comes before the
    lock is taken, so that a refusal leaves the run as it was."""
    run = RunDir(resume)
    lock.check_free(run.path)  # a live run, with or without its first last.pt: name its process
    if not run.resumable():
        raise ConfigError(f"resume={resume}: not a run directory with checkpoints/last.pt and config.yaml")
    if run.status() == "completed":
        raise ConfigError(
            f"resume={resume}: this run completed; a resume would only repeat its test. Re-sweep it with "
            f"`{shell_command('quantlab', 'ptq', f'run={run}')}`, or start a new run from it with "
            f"`{shell_command('quantlab', 'train', f'init_from={run}')}`"
        )
    checkpoint.load(run.last)  # readable and safe: a refused checkpoint leaves the run as it was
    given = line.without("resume").task()
    keys = {override_key(o) for o in given}
    overrides = [o for o in run.saved_overrides() if override_key(o) not in keys] + given
    if given:  # only what the command line changes is compared with the run's settings
        resume_config(compose_checked(overrides), run.path, given)
    lock.hold(run.path)
    # Continue in the run's own directory, and keep its .hydra/ (the original config) untouched.
    hydra = line.without("resume", "hydra.run.dir", "hydra.output_subdir").hydra()
    resumed = line.with_overrides([*hydra, *overrides])
    resumed = resumed.with_value("resume", str(run.path)).with_value("hydra.run.dir", str(run.path))
    return resumed.with_value("hydra.output_subdir", "null").args()


def auto_args(line: CommandLine) -> list[str]:
    """resume=auto (what a requeued SLURM job runs): continue the run in hydra.run.dir if it has a
    checkpoint, say so and stop if it completed, else start it there."""
    given = line.text("hydra.run.dir")
    if not given:
        raise ConfigError("resume=auto: give the run directory to continue or start, hydra.run.dir=<dir>")
    run = RunDir(given)
    mode = start_mode("auto", run.path)  # the same decision each job of a sweep resume makes
    if mode == "done":
        raise NothingToDo(f"{run}: the run completed already; nothing to do")
    if mode == "resume":
        return resume_args(line.without("resume"), str(run.path))
    check_train(line.task())
    lock.hold(run.path)
    return line.with_value("hydra.run.dir", str(run.path)).args()


def force_method_settings(line: CommandLine) -> CommandLine:
    """A grid over methods may set a key that only some of them have (`-m method=foothill,l1,float
    method.strength=1e-6`), or that the default method lacks (Hydra composes the sweep's own config
    with it): such an override is forced in (`++`) so that every job composes, and a job whose
    method lacks the key fails alone with one line naming both. A key no method of the grid has is a
    typo: one line naming the methods, before anything runs."""
    settings = [k for k in line.given_keys() if k.startswith("method.")]
    if not settings or not line.has("method"):
        return line
    methods = sorted(set(line.values("method")))
    nodes = {m: compose_checked([f"method={m}"]).method for m in methods}
    forced = set()
    for key in settings:
        path = key.removeprefix("method.")
        have = [
            m for m, node in nodes.items() if OmegaConf.select(node, path, default=_ABSENT) is not _ABSENT
        ]
        if not have:
            raise ConfigError(f"{key}: no method of the grid ({', '.join(methods)}) has this setting")
        forced.add(key)
    return line.forced(forced)


_ABSENT = object()


def sweep_args(line: CommandLine, resume: str | None) -> list[str]:
    """A multirun: every job checked before any runs; the sweep directory settled, locked and given
    its record (sweep.json). `resume=auto` with an existing sweep directory re-runs the recorded
    grid there: completed jobs are skipped, interrupted ones resumed, the others started."""
    if resume not in (None, "auto"):
        raise ConfigError(
            "resume=<dir> continues one run; a sweep continues with -m hydra.sweep.dir=<its dir> resume=auto"
        )
    sweep = RunDir(settled_dir(line, "hydra.sweep.dir"))
    if resume == "auto":
        record = sweep.read_sweep_record()
        if record is None:
            raise ConfigError(
                f"resume=auto: {sweep.sweep_record} is missing; give the directory of a quantlab sweep"
            )
        given = line.without("resume", "hydra.sweep.dir").args()
        given = [a for a in given if a not in ("-m", "--multirun")]
        if given and given != record["overrides"]:
            raise ConfigError(
                f"resume=auto: the sweep's grid is recorded in {sweep.sweep_record}; give only -m, "
                "hydra.sweep.dir and resume=auto (or exactly the sweep's own overrides)"
            )
        line = CommandLine.parse(["-m", *record["overrides"], "resume=auto"])
    elif sweep.path.is_dir() and any(p.name != lock.LOCK_FILE for p in sweep.path.iterdir()):
        again = shell_command("quantlab", "train", "-m", f"hydra.sweep.dir={sweep}", "resume=auto")
        raise ConfigError(
            f"hydra.sweep.dir={sweep}: already holds runs; pick a new directory, or continue that sweep "
            f"with: {again}"
        )
    line = force_method_settings(line)
    jobs = line.jobs()
    for num, job in enumerate(jobs):
        shown = " ".join(o for o in job if not o.startswith("resume="))
        try:
            check_train(job)
        except (MissingSetting, DatasetMissing) as e:  # this job alone will fail, with this line
            print(f"quantlab train: warning: job {num} ({shown}): {e}", file=sys.stderr)
        except ConfigError as e:
            raise ConfigError(f"job {num} ({shown}): {e}") from None
    lock.hold(sweep.path, "sweep directory")
    if resume is None:
        recorded = [a for a in line.without("hydra.sweep.dir").args() if a not in ("-m", "--multirun")]
        planned = [{"num": num, "overrides": job} for num, job in enumerate(jobs)]
        write_json_atomic(sweep.sweep_record, {"command": "train", "overrides": recorded, "jobs": planned})
    return line.with_value("hydra.sweep.dir", str(sweep.path)).args()
