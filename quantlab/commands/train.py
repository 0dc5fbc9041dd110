"""`quantlab train`: compose the config, build dataset / model / method, train, test, write results.

After the test, the post-training quantization sweep of `bitwidth.sweep` (runs.sweep) runs on the
exported network, for float-weight methods or when `ptq.enabled=true`.
The run directory holds .hydra/ (the composed config), config.yaml (resolved), tb/,
checkpoints/{last,best}.pt, exported.pt, metrics.jsonl, train.log and results.json (runs.results).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

import hydra
from omegaconf import DictConfig

from quantlab.commands.train_checks import train_args
from quantlab.engine import distributed
from quantlab.engine.checkpoint import seed_everything
from quantlab.engine.console import console
from quantlab.engine.lock import locked
from quantlab.errors import Interrupted
from quantlab.quant.pairs import sweep_pairs
from quantlab.quant.sweep import PTQSettings
from quantlab.report.plots import write_run_plots
from quantlab.runs.components import build, load_init
from quantlab.runs.config import config_dir, prepare_train_config, resume_config
from quantlab.runs.export import export_pairs, export_trained
from quantlab.runs.job import Job, launch, run_command
from quantlab.runs.results import continued, recorded
from quantlab.runs.summary import print_summary, print_sweep
from quantlab.runs.sweep import record_sweep, sweep_network, wants_sweep
from quantlab.runs.tracking import LoggerSettings, Tracker, tracked
from quantlab.runs.training import (
    StopOnSignals,
    record_report,
    requeued,
    resume_hint,
    start_mode,
    training,
)

log = logging.getLogger("quantlab")


def run(cfg: DictConfig) -> dict[str, Any]:
    """The body of `quantlab train`; returns the results written to results.json."""
    job, here = Job.current(), distributed.start()  # start: the tasks of a multi-GPU SLURM job
    if not here.main:
        quiet_logging()
    with locked(job.dir) if here.main else contextlib.nullcontext(), StopOnSignals() as signals:
        asked = requeued(cfg.get("resume"), job.dir, job.multirun) if here.main else None
        mode = distributed.broadcast(start_mode(asked, job.dir) if here.main else None)
        if mode == "done":  # a sweep resume passing a job that completed
            log.info(f"{job.dir}: completed already; skipped")
            return job.files.read_results()
        resume = mode == "resume"
        cfg, overrides = resume_config(cfg, job.dir, job.overrides) if resume else (cfg, job.overrides)
        fresh = job.new_results(overrides, choices=job.choices)
        before = job.files.read_results() if resume else {}
        results = {**continued(before or fresh), "run_dir": str(job.dir)} if resume else fresh
        if not here.main:  # trains its part of every batch; rank 0 writes, tests and sweeps
            with distributed.peers_watched():
                return train(cfg, job, results, resume, signals)
        watched = distributed.peers_watched()
        logger = LoggerSettings.from_config(cfg.logger)
        plots = functools.partial(write_run_plots, job.dir)  # MLflow's artifacts, drawn as the run ends
        with (
            tracked(logger, job.dir, results, before_upload=plots) as tracker,
            recorded(job.files.results, results, job.started),
            hinted(job, overrides),
            watched,
        ):
            return train(cfg, job, results, resume, signals, tracker)


def train(
    cfg: DictConfig,
    job: Job,
    results: dict[str, Any],
    resume: bool,
    signals: StopOnSignals,
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Build, train, test, sweep; fill `results` (written by the caller)."""
    main = distributed.ranks().main
    cfg = prepare_train_config(cfg, job.choices, write_to=None if resume or not main else job.files.config)
    ptq_settings, pairs = PTQSettings.from_config(cfg.get("ptq")), sweep_pairs(cfg.bitwidth.get("sweep"))
    seed_everything(int(cfg.seed))
    data, model, method = build(cfg.dataset), build(cfg.model), build(cfg.method, "method")
    if cfg.get("init_from") and not resume:
        load_init(model, str(cfg.init_from))
    run_ptq, sweep = wants_sweep(ptq_settings, method.traits, pairs), None
    session = training(model, method, data, cfg, job.dir, resume, job.started, signals, tracker)
    with session as (trainer, runlog):
        trainer.fit()
        trainer.end_parallel()
        if not main:
            return results
        test = trainer.test()
        report = method.report(trainer.model)
        metrics = {**test.metrics, **record_report(results, report, runlog, test.step, test.epoch)}
        if run_ptq:
            seed = int(cfg.seed)
            sweep = sweep_network(
                test.exported, pairs, ptq_settings, data, test.loader, method, seed, test.reference
            )
            metrics.update(record_sweep(results, sweep, ptq_settings, pairs, runlog, test.step, test.epoch))
        runlog.hparams(cfg, metrics)
    exports = export_pairs(cfg.get("export"))
    if exports:
        batch = int(test.loader.batch_size)
        kept = export_trained(
            test.exported, method, data, exports, ptq_settings, job.dir, seed=int(cfg.seed), batch_size=batch
        )
        results["export"] = kept
    timing = {**trainer.times(), "total_s": trainer.wall_s()}
    if sweep is not None:
        timing["ptq_s"] = sweep.timing["total_s"]
    results.update(status="completed", metrics=metrics, timing=timing)
    print_summary(results, job.dir)
    if sweep is not None:
        print_sweep(sweep, "post-training quantization of the trained network")
    for entry in results.get("export", []):
        console.print(f"export {entry['pair']}: {entry['status']} — {entry.get('dir', entry.get('error'))}")
    return results


def quiet_logging() -> None:
    """Ranks other than 0 log nothing but errors (rank 0 speaks for the run)."""
    logging.getLogger("quantlab").setLevel(logging.ERROR)
    root = logging.getLogger()
    for handler in list(root.handlers):  # e.g. the train.log file of every task of a SLURM job
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)


@contextlib.contextmanager
def hinted(job: Job, overrides: list[str]) -> Iterator[None]:
    """An interruption's one line ends with the exact command that continues the run."""
    try:
        yield
    except Interrupted as e:
        raise Interrupted(
            f"{e}; {resume_hint(job.dir, job.multirun, overrides)}", e.exit_code - 128
        ) from None


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_app(cfg: DictConfig) -> float | None:
    record = run_command(run, cfg, "quantlab train")
    return record["metrics"].get("test/acc_exported") if record else None


def main(argv: list[str] | None = None) -> None:
    """`quantlab train [overrides]`: the run directory guards, then the Hydra app."""
    launch("train", train_args, hydra_app, argv)


if __name__ == "__main__":
    main()
