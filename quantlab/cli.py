"""The `quantlab` command: subcommands dispatch to their Hydra apps (or argparse for `bench`)."""

from __future__ import annotations

import sys
from pathlib import Path

from quantlab.results import existing_run

USAGE = """usage: quantlab <command> [overrides ...]

commands:
  train    train a model with a quantization method, export it, evaluate float and exported
           (Hydra app: `quantlab train --help` lists the config groups; `-m` runs a grid)
  ptq      sweep post-training quantization bit-widths on a finished run, into a new directory
  bench    training throughput of methods side by side, as ratios to `float`
  table    aggregate runs and grids (their results.json) into a table: mean ± std over seeds;
           --paper <table> lays them out as a paper's table with its numbers beside ours
  plot     PNG figures of runs and grids: accuracy against PTQ bit-width, val accuracy and beta/lambda

examples:
  quantlab train                                   # the embedded default: digits, small_cnn, float
  quantlab train model=lenet5 schedule.epochs=5
  quantlab train -m method=float seed=0,1,2        # a multirun grid
  quantlab train resume=outputs/train/<run>        # continue an interrupted run
  quantlab ptq run=outputs/train/<run> bitwidth.sweep=[[8,4],[6,4],[4,4]]
  quantlab bench --model resnet18 --methods float
  quantlab table outputs/train/multirun/<date> --rows method --cols ptq
  quantlab table outputs/tables/md_t1 --paper md_t1
  quantlab plot outputs/train/multirun/<date> --rows method
"""

COMMANDS = {
    "train": "quantlab.train",
    "ptq": "quantlab.ptq",
    "bench": "quantlab.bench",
    "table": "quantlab.table",
    "plot": "quantlab.plot",
}
HYDRA_INFO = {"-h", "--help", "--hydra-help", "-c", "--cfg", "--info"}


def _fail(message: str) -> None:
    print(f"quantlab: error: {message}", file=sys.stderr)
    sys.exit(2)


def _value(args: list[str], key: str) -> str | None:
    for arg in args:
        if arg.startswith(f"{key}=") or arg.startswith(f"+{key}=") or arg.startswith(f"++{key}="):
            return arg.split("=", 1)[1]
    return None


def _train_args(args: list[str]) -> list[str]:
    """Checks that must happen before Hydra creates or writes into a run directory."""
    multirun = "-m" in args or "--multirun" in args
    resume = _value(args, "resume")
    if resume:
        if multirun:
            _fail("resume=... continues one run; it cannot be combined with -m/--multirun")
        run_dir = Path(resume).expanduser().resolve()
        if not (run_dir / "checkpoints" / "last.pt").is_file() or not (run_dir / "config.yaml").is_file():
            _fail(f"resume={resume}: not a run directory with checkpoints/last.pt and config.yaml")
        # Continue in the run's own directory, and keep its .hydra/ (the original config) untouched.
        args = [a for a in args if not a.startswith("resume=")]
        return [*args, f"resume={run_dir}", f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    run_dir = _value(args, "hydra.run.dir")
    if run_dir and not multirun and existing_run(run_dir):
        _fail(f"hydra.run.dir={run_dir}: already holds a run; pick a new directory or resume={run_dir}")
    sweep_dir = _value(args, "hydra.sweep.dir")
    if sweep_dir and multirun and Path(sweep_dir).is_dir() and any(Path(sweep_dir).iterdir()):
        _fail(f"hydra.sweep.dir={sweep_dir}: already holds runs; pick a new directory")
    return args


def _ptq_args(args: list[str]) -> list[str]:
    """`run=` must name finished runs before Hydra creates an output directory."""
    from quantlab.config import QuantlabError
    from quantlab.ptq import check_source

    runs = _value(args, "run")
    which = _value(args, "checkpoint") or "best"
    multirun = "-m" in args or "--multirun" in args
    for run in runs.split(",") if runs and multirun else [runs]:
        try:
            check_source(run, which)
        except QuantlabError as e:
            _fail(str(e))
    run_dir = _value(args, "hydra.run.dir")
    if run_dir and not multirun and existing_run(run_dir):
        _fail(f"hydra.run.dir={run_dir}: already holds a run; pick a new directory")
    return args


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        _fail(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}")
    if command == "train" and not (HYDRA_INFO & set(rest)):
        rest = _train_args(rest)
    if command == "ptq" and not (HYDRA_INFO & set(rest)):
        rest = _ptq_args(rest)
    import importlib

    module = importlib.import_module(COMMANDS[command])
    sys.argv = [f"quantlab {command}", *rest]
    module.main()
