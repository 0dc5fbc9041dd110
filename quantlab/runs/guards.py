"""The checks that protect run directories, made on the command line before Hydra creates or writes
into a directory: every job's config is checked (runs.preflight), an existing run is never overwritten,
a resume names a resumable run that no live process holds, a PTQ source is a finished run, and the
directory is locked (runs.lock) for the life of the process. Each failure is one ConfigError line.

The outcome is the argument list Hydra runs with, the run (or sweep) directory settled in it:
Hydra would otherwise resolve `${now:...}` itself, after anything could be checked or locked.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from quantlab.engine import lock
from quantlab.errors import ConfigError, MissingSetting, QuantlabError
from quantlab.quant.pairs import parse_pair, parse_sweep
from quantlab.runs.config import RESOLVED, override_key, resume_config
from quantlab.runs.preflight import check_train, compose_checked
from quantlab.runs.results import read_results
from quantlab.runs.training import start_mode

#: Hydra flags that print something and run nothing: no guard applies.
HYDRA_INFO = {"-h", "--help", "--hydra-help", "-c", "--cfg", "--info", "-i", "--shell-completion", "-sc"}
RUN_MARKERS = ("results.json", "checkpoints")
CHECKPOINTS = ("best", "last")
SWEEP_RECORD = "sweep.json"  # a sweep's own record of its grid: every planned job and its overrides


class NothingToDo(QuantlabError):
    """resume=auto of a run that completed: the command ends at once, successfully."""

    exit_code = 0


def existing_run(run_dir: str | os.PathLike) -> bool:
    """A directory that already holds a run (never overwritten except by resume)."""
    return any((Path(run_dir) / m).exists() for m in RUN_MARKERS)


def value_of(args: list[str], key: str) -> str | None:
    """The value of `key=`, `+key=` or `++key=` among command-line overrides."""
    for arg in args:
        if arg.startswith((f"{key}=", f"+{key}=", f"++{key}=")):
            return arg.split("=", 1)[1]
    return None


def without(args: list[str], *keys: str) -> list[str]:
    return [a for a in args if not a.lstrip("+").startswith(tuple(f"{k}=" for k in keys))]


def is_multirun(args: list[str]) -> bool:
    return "-m" in args or "--multirun" in args


def is_hydra_override(arg: str) -> bool:
    return arg.lstrip("+~").startswith(("hydra.", "hydra/"))


def task_overrides(args: list[str]) -> list[str]:
    """The overrides of the job's own config (Hydra's own settings and flags left out)."""
    return [a for a in args if not a.startswith("-") and not is_hydra_override(a)]


def settled_dir(args: list[str], key: str, config_name: str = "train") -> Path:
    """`hydra.run.dir` / `hydra.sweep.dir` as given, or as the config resolves it now."""
    given = value_of(args, key)
    if given:
        return Path(given).expanduser().resolve()
    hydra_args = [a for a in args if is_hydra_override(a)]
    cfg = compose_checked(hydra_args, config_name, keep_hydra=True)
    return Path(str(cfg.hydra.run.dir if key == "hydra.run.dir" else cfg.hydra.sweep.dir)).resolve()


def with_dir(args: list[str], key: str, directory: Path) -> list[str]:
    return [*without(args, key), f"{key}={directory}"]


# -- quantlab train -----------------------------------------------------------------------------------


def train_args(args: list[str]) -> list[str]:
    """`quantlab train` arguments, checked; the run or sweep directory settled and locked."""
    if HYDRA_INFO & set(args) or any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return args  # Hydra's own flags (--cfg, --config-dir, ...): Hydra handles them
    resume = value_of(args, "resume")
    if is_multirun(args):
        return sweep_args(args, resume)
    if resume == "auto":
        return auto_args(args)
    if resume:
        return resume_args(args, resume)
    check_train(task_overrides(args))
    run_dir = settled_dir(args, "hydra.run.dir")
    if existing_run(run_dir):
        raise ConfigError(
            f"hydra.run.dir={run_dir}: already holds a run; pick a new directory or resume={run_dir}"
        )
    lock.hold(run_dir)
    return with_dir(args, "hydra.run.dir", run_dir)


def resume_args(args: list[str], resume: str) -> list[str]:
    """resume=<run dir>: a run with a checkpoint, not completed, held by no live process, resumed with
    the settings it was started with (its own overrides, which the command line's replace: paths and
    machine settings may change, anything else must equal the run's)."""
    run_dir = Path(resume).expanduser().resolve()
    if not (run_dir / "checkpoints" / "last.pt").is_file() or not (run_dir / RESOLVED).is_file():
        raise ConfigError(f"resume={resume}: not a run directory with checkpoints/last.pt and {RESOLVED}")
    lock.hold(run_dir)
    if read_results(run_dir).get("status") == "completed":
        raise ConfigError(
            f"resume={resume}: this run completed; a resume would only repeat its test. Re-sweep it with "
            f"`quantlab ptq run={run_dir}`, or start a new run from it with init_from={run_dir}"
        )
    given = without(task_overrides(args), "resume")
    keys = {override_key(o) for o in given}
    overrides = [o for o in saved_overrides(run_dir) if override_key(o) not in keys] + given
    if given:  # only what the command line changes is compared with the run's settings
        resume_config(compose_checked(overrides), run_dir, given)
    # Continue in the run's own directory, and keep its .hydra/ (the original config) untouched.
    flags = [a for a in without(args, "resume", "hydra.run.dir", "hydra.output_subdir") if a not in given]
    return [*flags, *overrides, f"resume={run_dir}", f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def saved_overrides(run_dir: Path) -> list[str]:
    """The overrides a run was started with (its .hydra/overrides.yaml)."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def auto_args(args: list[str]) -> list[str]:
    """resume=auto (what a requeued SLURM job runs): continue the run in hydra.run.dir if it has a
    checkpoint, say so and stop if it completed, else start it there."""
    given = value_of(args, "hydra.run.dir")
    if not given:
        raise ConfigError("resume=auto: give the run directory to continue or start, hydra.run.dir=<dir>")
    run_dir = Path(given).expanduser().resolve()
    mode = start_mode("auto", run_dir)  # the same decision each job of a sweep resume makes
    if mode == "done":
        raise NothingToDo(f"{run_dir}: the run completed already; nothing to do")
    if mode == "resume":
        return resume_args(without(args, "resume"), str(run_dir))
    check_train(task_overrides(args))
    lock.hold(run_dir)
    return with_dir(args, "hydra.run.dir", run_dir)


def force_method_settings(args: list[str]) -> list[str]:
    """A grid over methods may set a key that only some of them have (`-m method=foothill,l1,float
    method.strength=1e-6`): such an override is forced in (`++`) so that every job composes, and a job
    whose method lacks the key fails alone with one line naming both. A key no method of the grid has
    stays as it is (a typo: Hydra's one-line error before anything runs)."""
    from omegaconf import OmegaConf

    task = task_overrides(args)
    settings = [a for a in task if a.startswith("method.") and "=" in a]
    if not settings:
        return args
    methods = {value_of(job, "method") for job in plan_jobs(task)}
    nodes = {m: compose_checked([f"method={m}"] if m else []).method for m in methods}
    forced = []
    for setting in settings:
        key = setting.split("=", 1)[0].removeprefix("method.")
        have = [m for m, node in nodes.items() if OmegaConf.select(node, key, default=_ABSENT) is not _ABSENT]
        if have and len(have) < len(nodes):
            forced.append(setting)
    return [f"++{a}" if a in forced else a for a in args]


_ABSENT = object()


def plan_jobs(overrides: list[str]) -> list[list[str]]:
    """Every job of a grid, in Hydra's own order (its basic sweeper's): job k runs in <sweep dir>/k."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except HydraException as e:
        raise ConfigError(" ".join(str(e).split())) from None


def sweep_args(args: list[str], resume: str | None) -> list[str]:
    """A multirun: every job checked before any runs; the sweep directory settled, locked and given
    its record (sweep.json). `resume=auto` with an existing sweep directory re-runs the recorded
    grid there: completed jobs are skipped, interrupted ones resumed, the others started."""
    if resume not in (None, "auto"):
        raise ConfigError(
            "resume=<dir> continues one run; a sweep continues with -m hydra.sweep.dir=<its dir> resume=auto"
        )
    sweep_dir = settled_dir(args, "hydra.sweep.dir")
    record_path = sweep_dir / SWEEP_RECORD
    if resume == "auto":
        record = read_record(sweep_dir)
        if record is None:
            raise ConfigError(
                f"resume=auto: {record_path} is missing; give the directory of a quantlab sweep"
            )
        given = without([a for a in args if a not in ("-m", "--multirun")], "resume", "hydra.sweep.dir")
        if given and given != record["overrides"]:
            raise ConfigError(
                f"resume=auto: the sweep's grid is recorded in {record_path}; give only -m, "
                "hydra.sweep.dir and resume=auto (or exactly the sweep's own overrides)"
            )
        args = ["-m", *record["overrides"], "resume=auto"]
    elif sweep_dir.is_dir() and any(p.name != lock.LOCK_FILE for p in sweep_dir.iterdir()):
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir}: already holds runs; pick a new directory, or continue that sweep "
            f"with: quantlab train -m hydra.sweep.dir={sweep_dir} resume=auto"
        )
    args = force_method_settings(args)
    jobs = plan_jobs(task_overrides(args))
    for num, job in enumerate(jobs):
        try:
            check_train(job)
        except MissingSetting as e:  # this job alone will fail, with this line; the others run
            print(
                f"quantlab train: warning: job {num} ({' '.join(without(job, 'resume'))}): {e}",
                file=sys.stderr,
            )
        except ConfigError as e:
            raise ConfigError(f"job {num} ({' '.join(without(job, 'resume'))}): {e}") from None
    lock.hold(sweep_dir, "sweep directory")
    if resume is None:
        from quantlab.engine.files import write_json_atomic

        recorded = without([a for a in args if a not in ("-m", "--multirun")], "hydra.sweep.dir")
        planned = [{"num": num, "overrides": job} for num, job in enumerate(jobs)]
        write_json_atomic(record_path, {"command": "train", "overrides": recorded, "jobs": planned})
    return with_dir(args, "hydra.sweep.dir", sweep_dir)


def read_record(sweep_dir: Path) -> dict[str, Any] | None:
    """A sweep's sweep.json (its overrides and planned jobs), or None when missing or malformed."""
    try:
        record = json.loads((sweep_dir / SWEEP_RECORD).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("overrides"), list)
    return record if ok and isinstance(record.get("jobs"), list) else None


# -- quantlab ptq -------------------------------------------------------------------------------------


def ptq_args(args: list[str]) -> list[str]:
    """`quantlab ptq` arguments, checked: every `run=` is a completed run (or allow_incomplete=true),
    the sweep settings are valid, the output directory is new and locked."""
    if HYDRA_INFO & set(args) or any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return args
    runs = value_of(args, "run")
    which = value_of(args, "checkpoint") or "best"
    allow = str(value_of(args, "allow_incomplete") or "false").lower() == "true"
    for run in runs.split(",") if runs and is_multirun(args) else [runs]:
        check_source(run, which, allow)
    if not is_multirun(args):
        from quantlab.quant.sweep import PTQSettings

        cfg = compose_checked(task_overrides(args), "ptq")
        PTQSettings.from_config(cfg.get("ptq"))
        parse_sweep(cfg.bitwidth.get("sweep"), "bitwidth.sweep", high=16)
        out_dir = settled_dir(args, "hydra.run.dir", "ptq")
        if existing_run(out_dir):
            raise ConfigError(f"hydra.run.dir={out_dir}: already holds a run; pick a new directory")
        lock.hold(out_dir)
        args = with_dir(args, "hydra.run.dir", out_dir)
    return args


# -- quantlab export ----------------------------------------------------------------------------------


def export_args(args: list[str]) -> list[str]:
    """`quantlab export` arguments, checked before anything is written: the extra is installed, `run=`
    is a completed run, `bits=` is a pair in 1..16, the ptq settings are valid, the network has only
    exportable operators, and the output directory is new (then locked)."""
    if HYDRA_INFO & set(args) or any(a.startswith("-") for a in args):
        return args
    from quantlab.quant.sweep import PTQSettings
    from quantlab.runs.export import check_network, export_settings, require_extra

    require_extra()
    if is_multirun(args):
        raise ConfigError("quantlab export: one run and one pair per command (no -m)")
    source = check_source(value_of(args, "run"), value_of(args, "checkpoint") or "best")
    cfg = compose_checked(task_overrides(args), "export")
    bits = cfg.get("bits")
    parse_pair(OmegaConf.to_container(bits) if OmegaConf.is_config(bits) else bits)
    for key in ("acc_points", "agreement"):
        value = cfg.tolerance.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"tolerance.{key}={value!r}: must be a number >= 0")
    run_cfg = OmegaConf.load(source / RESOLVED)
    check_network(run_cfg, PTQSettings.from_config(export_settings(run_cfg, cfg, task_overrides(args))))
    out_dir = settled_dir(args, "hydra.run.dir", "export")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"hydra.run.dir={out_dir}: not empty; pick a new directory")
    lock.hold(out_dir)
    return with_dir(args, "hydra.run.dir", out_dir)


def check_source(run: Any, which: str = "best", allow_incomplete: bool = False) -> Path:
    """The run directory to sweep: config.yaml and checkpoints/<which>.pt, and status completed
    (unless `allow_incomplete`: then any network it holds is swept, and results.json says so)."""
    if which not in CHECKPOINTS:
        raise ConfigError(f"checkpoint={which!r}: must be one of {', '.join(CHECKPOINTS)}")
    if run is None or str(run).strip() == "":
        raise ConfigError("run: give the run directory to sweep, e.g. run=outputs/train/<date>_<time>")
    source = Path(str(run)).expanduser().resolve()
    if not source.is_dir():
        raise ConfigError(f"run={run}: no such directory")
    missing = [p for p in (RESOLVED, f"checkpoints/{which}.pt") if not (source / p).is_file()]
    if missing:
        raise ConfigError(
            f"run={run}: no {' and no '.join(missing)} there (not a finished quantlab train run)"
        )
    status = read_results(source).get("status", "unknown")
    if status != "completed" and not allow_incomplete:
        raise ConfigError(
            f"run={run}: its status is {status}, not completed, so its network is not the run's result; "
            "resume it first, or sweep it anyway with allow_incomplete=true"
        )
    return source
