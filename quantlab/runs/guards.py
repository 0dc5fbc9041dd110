"""The checks that protect run directories, made on the command line before Hydra creates or writes
into a directory: an existing run is never overwritten, a resume names a resumable run, a PTQ source
is a finished run. Each failure is a ConfigError (one line, exit code 2)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from quantlab.errors import ConfigError

#: Hydra flags that print something and run nothing: no guard applies.
HYDRA_INFO = {"-h", "--help", "--hydra-help", "-c", "--cfg", "--info"}
RUN_MARKERS = ("results.json", "checkpoints")
CHECKPOINTS = ("best", "last")


def existing_run(run_dir: str | os.PathLike) -> bool:
    """A directory that already holds a run (never overwritten except by resume)."""
    return any((Path(run_dir) / m).exists() for m in RUN_MARKERS)


def value_of(args: list[str], key: str) -> str | None:
    """The value of `key=`, `+key=` or `++key=` among command-line overrides."""
    for arg in args:
        if arg.startswith((f"{key}=", f"+{key}=", f"++{key}=")):
            return arg.split("=", 1)[1]
    return None


def is_multirun(args: list[str]) -> bool:
    return "-m" in args or "--multirun" in args


def check_new_run_dir(args: list[str], hint: str = "") -> None:
    """`hydra.run.dir=` of a single run must not hold a run already."""
    run_dir = value_of(args, "hydra.run.dir")
    if run_dir and not is_multirun(args) and existing_run(run_dir):
        raise ConfigError(f"hydra.run.dir={run_dir}: already holds a run; pick a new directory{hint}")


def train_args(args: list[str]) -> list[str]:
    """`quantlab train` overrides, checked; a resume continues in the run's own directory."""
    if HYDRA_INFO & set(args):
        return args
    resume = value_of(args, "resume")
    if resume:
        if is_multirun(args):
            raise ConfigError("resume=... continues one run; it cannot be combined with -m/--multirun")
        run_dir = Path(resume).expanduser().resolve()
        if not (run_dir / "checkpoints" / "last.pt").is_file() or not (run_dir / "config.yaml").is_file():
            raise ConfigError(
                f"resume={resume}: not a run directory with checkpoints/last.pt and config.yaml"
            )
        # Continue in the run's own directory, and keep its .hydra/ (the original config) untouched.
        args = [a for a in args if not a.startswith("resume=")]
        return [*args, f"resume={run_dir}", f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    run_dir = value_of(args, "hydra.run.dir")
    check_new_run_dir(args, f" or resume={run_dir}")
    sweep_dir = value_of(args, "hydra.sweep.dir")
    if sweep_dir and is_multirun(args) and Path(sweep_dir).is_dir() and any(Path(sweep_dir).iterdir()):
        raise ConfigError(f"hydra.sweep.dir={sweep_dir}: already holds runs; pick a new directory")
    return args


def ptq_args(args: list[str]) -> list[str]:
    """`quantlab ptq` overrides, checked: every `run=` is a finished run, the output directory is new."""
    if HYDRA_INFO & set(args):
        return args
    runs = value_of(args, "run")
    which = value_of(args, "checkpoint") or "best"
    for run in runs.split(",") if runs and is_multirun(args) else [runs]:
        check_source(run, which)
    check_new_run_dir(args)
    return args


def check_source(run: Any, which: str = "best") -> Path:
    """The run directory to sweep: it must hold config.yaml and checkpoints/<which>.pt."""
    if which not in CHECKPOINTS:
        raise ConfigError(f"checkpoint={which!r}: must be one of {', '.join(CHECKPOINTS)}")
    if run is None or str(run).strip() == "":
        raise ConfigError("run: give the run directory to sweep, e.g. run=outputs/train/<date>_<time>")
    source = Path(str(run)).expanduser().resolve()
    if not source.is_dir():
        raise ConfigError(f"run={run}: no such directory")
    missing = [p for p in ("config.yaml", f"checkpoints/{which}.pt") if not (source / p).is_file()]
    if missing:
        raise ConfigError(
            f"run={run}: no {' and no '.join(missing)} there (not a finished quantlab train run)"
        )
    return source
