"""`quantlab ptq`: re-sweep post-training quantization on a finished run, into a new directory.

    quantlab ptq run=outputs/train/<run> bitwidth.sweep=[[8,4],[6,4],[4,4]]
    quantlab ptq -m run=<run> ptq.act_range=bn,minmax,percentile,mse

The run is read, never written: its config.yaml rebuilds dataset, model and method, its
checkpoints/best.pt (or last.pt with checkpoint=last) gives the network, and the method's export is
swept (runs.sweep). The new directory holds results.json (`ptq`: one entry per pair, `reference`: the
unquantized network), tb/ (`ptq/acc_w8a4`, ...), metrics.jsonl and ptq.log.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from quantlab.data import make_loader
from quantlab.engine import lock
from quantlab.engine.checkpoint import seed_everything
from quantlab.engine.console import console
from quantlab.engine.evaluate import resolve_device
from quantlab.engine.lock import locked
from quantlab.engine.rundir import RunDir
from quantlab.errors import ConfigError
from quantlab.quant.pairs import parse_sweep, sweep_pairs
from quantlab.quant.sweep import PTQSettings
from quantlab.runs.cmdline import CommandLine
from quantlab.runs.components import FinishedRun, build
from quantlab.runs.config import config_dir
from quantlab.runs.job import Job, launch, run_command
from quantlab.runs.preflight import compose_checked, settled_dir
from quantlab.runs.results import recorded
from quantlab.runs.runlog import RunLog
from quantlab.runs.summary import print_sweep
from quantlab.runs.sweep import record_sweep, sweep_network
from quantlab.runs.tracking import derived_logger, require_extra_for, uploaded_after
from quantlab.runs.training import StopOnSignals


def run(cfg: DictConfig) -> dict[str, Any]:
    """The body of `quantlab ptq`; returns the results written to results.json."""
    job = Job.current()
    source = FinishedRun.open(cfg.run, str(cfg.checkpoint), allow_incomplete=True)  # checked before
    results = job.new_results(
        source_run=str(source.files),
        checkpoint=source.which,
        source_status=source.results.get("status", "unknown"),
        source_choices=source.results.get("choices", {}),
    )
    logger = derived_logger(cfg.get("logger"), source.results)
    upload = uploaded_after(logger, job.dir)  # MLflow: a run nested under the source run's
    with locked(job.dir), StopOnSignals(), upload, recorded(job.files.results, results, job.started):
        settings = PTQSettings.from_config(OmegaConf.to_container(cfg.ptq, resolve=True))
        run_cfg = source.config
        sweep = cfg.bitwidth.sweep if cfg.bitwidth.get("sweep") is not None else run_cfg.bitwidth.get("sweep")
        pairs = sweep_pairs(OmegaConf.to_container(sweep) if sweep is not None else None)
        if not pairs:
            raise ConfigError(
                "bitwidth.sweep: empty (the run has none); give pairs, e.g. bitwidth.sweep=[[8,8],[4,4]]"
            )
        device = resolve_device(str(cfg.device))
        seed_everything(int(cfg.seed))
        data = build(run_cfg.dataset)
        network, method, step = source.network(device)
        results["source_step"] = step
        test_loader = make_loader(
            data.test, source.eval_batch_size(cfg.get("eval_batch_size")), train=False, device=device
        )
        with RunLog(job.dir, tensorboard=logger.tensorboard) as runlog:
            result = sweep_network(network, pairs, settings, data, test_loader, method, int(cfg.seed))
            swept = record_sweep(results, result, settings, pairs, runlog)
        metrics = {**{f"reference/{k}": v for k, v in result.reference.items()}, **swept}
        timing = {f"ptq_{k}": v for k, v in result.timing.items()}
        results.update(status="completed", metrics=metrics, timing={"total_s": job.elapsed(), **timing})
    print_sweep(result, f"quantlab ptq — {source.files.path.name} ({source.which} checkpoint, step {step})")
    console.print(f"results: {job.files.results}")
    return results


def ptq_args(args: list[str]) -> list[str]:
    """`quantlab ptq` arguments, checked before anything is written: every `run=` is a completed run
    (or allow_incomplete=true), the sweep settings are valid, the output directory is new (then
    locked)."""
    line = CommandLine.parse(args)
    if line.runs_nothing:
        return args
    require_extra_for(line)
    which = line.text("checkpoint") or "best"
    allow = str(line.text("allow_incomplete") or "false").lower() == "true"
    for run in line.values("run") or [None]:
        FinishedRun.open(run, which, allow)
    if line.multirun:
        return args
    cfg = compose_checked(line.task(), "ptq")
    PTQSettings.from_config(cfg.get("ptq"))
    parse_sweep(cfg.bitwidth.get("sweep"), "bitwidth.sweep", high=16)
    out = RunDir(settled_dir(line, "hydra.run.dir", "ptq"))
    if out.holds_run():
        raise ConfigError(f"hydra.run.dir={out}: already holds a run; pick a new directory")
    lock.hold(out.path)
    return line.with_value("hydra.run.dir", str(out.path)).args()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="ptq")
def hydra_app(cfg: DictConfig) -> float | None:
    record = run_command(run, cfg, "quantlab ptq")
    entries = record["ptq"] if record else []
    return entries[-1]["acc"] if entries else None


def main(argv: list[str] | None = None) -> None:
    """`quantlab ptq run=<dir> [overrides]`: the run directory guards, then the Hydra app."""
    launch("ptq", ptq_args, hydra_app, argv)


if __name__ == "__main__":
    main()
