"""The `quantlab` command: dispatch to a command's main() (quantlab.commands); nothing else."""

from __future__ import annotations

import os
import sys

USAGE = """usage: quantlab <command> [overrides ...]

commands:
  train    train a model with a quantization method, export it, evaluate float and exported
           (Hydra app: `quantlab train --help` lists the config groups; `-m` runs a grid)
  ptq      sweep post-training quantization bit-widths on a finished run, into a new directory
  export   a finished run at one PTQ pair as ONNX (QuantizeLinear / DequantizeLinear), verified in
           onnxruntime against the fake-quantized network (extra: pip install 'quantlab[export]')
  bench    training throughput of methods side by side, as ratios to `float`
           (`bench data`: loaders alone, the step alone and full epochs; `bench ptq`: a PTQ sweep)
  table    aggregate runs and grids (their results.json) into a table: mean ± std over seeds;
           --paper <table> lays them out as a paper's table with its numbers beside ours
  plot     PNG figures of runs and grids: accuracy against PTQ bit-width, val accuracy and beta/lambda
  claims   the papers' claims measured on runs (effect, 95 % CI, verdict): claims.md, claims.json
  track    upload runs and sweeps to MLflow after the fact (idempotent; logger=mlflow tracks live)

examples:
  quantlab train                                   # the embedded default: digits, small_cnn, float
  quantlab train model=lenet5 schedule.epochs=5
  quantlab train -m method=float seed=0,1,2        # a multirun grid
  quantlab train resume=outputs/train/<run>        # continue an interrupted run
  quantlab train -m hydra.sweep.dir=<sweep> resume=auto   # continue an interrupted sweep
  quantlab ptq run=outputs/train/<run> bitwidth.sweep=[[8,4],[6,4],[4,4]]
  quantlab export run=outputs/train/<run> bits=w8a8
  quantlab bench --model resnet18 --methods float
  quantlab bench data --model resnet18 --method float
  quantlab table outputs/train/multirun/<date> --rows method --cols ptq
  quantlab table outputs/tables/md_t1 --paper md_t1
  quantlab plot outputs/train/multirun/<date> --rows method
  quantlab claims outputs/claims --paper md_t1:cifar10/resnet18,waveq_t6:svhn
  quantlab train logger=mlflow                     # also an MLflow run (sqlite:///outputs/mlflow.db)
  quantlab track outputs/train/multirun/<date>     # upload a sweep to MLflow afterwards
"""

COMMANDS = {
    "train": "quantlab.commands.train",
    "ptq": "quantlab.commands.ptq",
    "export": "quantlab.commands.export",
    "bench": "quantlab.commands.bench",
    "bench ptq": "quantlab.commands.bench_ptq",
    "bench data": "quantlab.commands.bench_data",
    "table": "quantlab.commands.table",
    "plot": "quantlab.commands.plot",
    "claims": "quantlab.commands.claims",
    "track": "quantlab.commands.track",
}


def main(argv: list[str] | None = None) -> None:
    """`quantlab <command> [args]`: the command's module's main(args); nothing else happens here."""
    import importlib

    from quantlab.engine.console import fail

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command == "bench" and rest[:1] in (["ptq"], ["data"]):  # the cost of a PTQ sweep; data vs compute
        command, rest = f"bench {rest[0]}", rest[1:]
    if command not in COMMANDS:
        fail(
            "quantlab",
            f"unknown command {command!r}; choose one of: {', '.join(c for c in COMMANDS if ' ' not in c)}",
        )
    try:
        importlib.import_module(COMMANDS[command]).main(rest)
    except BrokenPipeError:  # e.g. `quantlab table ... | head`: the reader left; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
