"""`quantlab export`: a finished run at one PTQ pair as ONNX, verified in onnxruntime, into a new directory.

    quantlab export run=outputs/train/<run> bits=w8a8

The run is read, never written: its config.yaml rebuilds dataset, model and method, its
checkpoints/best.pt (or last.pt with checkpoint=last) gives the network, and the method's export is
quantized at the pair exactly as the run's PTQ sweep quantizes it (its ptq settings, its calibration
batches; ptq.* keys given here change them) and written as QDQ ONNX (runs.export). The new directory
holds model.onnx, export.json (pair, sites, ranges, weight storage, verification, throughput) and
export.log. The export is `verified` when onnxruntime computes the pair's int32-bias variant within
`tolerance` (runs.export says how), else `mismatch` (exit 1, naming the check that failed).
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from quantlab.engine import lock
from quantlab.engine.checkpoint import seed_everything
from quantlab.engine.console import console
from quantlab.engine.rundir import RunDir
from quantlab.errors import ConfigError
from quantlab.quant.pairs import parse_pair
from quantlab.quant.sweep import PTQSettings
from quantlab.runs.cmdline import CommandLine
from quantlab.runs.components import FinishedRun, build
from quantlab.runs.config import config_dir
from quantlab.runs.export import Tolerance, check_network, export_network, export_settings, require_extra
from quantlab.runs.job import Job, launch, run_command
from quantlab.runs.preflight import compose_checked, settled_dir
from quantlab.runs.summary import print_export
from quantlab.runs.tracking import derived_logger, require_extra_for, uploaded_after
from quantlab.runs.training import StopOnSignals


class Mismatch(ConfigError):
    """The ONNX model's predictions differ from the fake-quantized network's beyond the tolerance."""

    exit_code = 1


def run(cfg: DictConfig) -> dict[str, Any]:
    """The body of `quantlab export`; returns what export.json holds."""
    import torch

    job = Job.current()
    source = FinishedRun.open(cfg.run, str(cfg.checkpoint), allow_incomplete=True)  # checked before Hydra
    run_cfg = source.config
    pair = parse_pair(OmegaConf.to_container(cfg.bits) if OmegaConf.is_config(cfg.bits) else cfg.bits)
    settings = PTQSettings.from_config(export_settings(run_cfg, cfg, job.overrides))
    seed = int(cfg.seed if cfg.get("seed") is not None else run_cfg.seed)
    batch = source.eval_batch_size(cfg.get("batch_size"))
    seed_everything(seed)
    data = build(run_cfg.dataset)
    network, method, step = source.network(torch.device("cpu"))
    tolerance = Tolerance.from_config(cfg.tolerance)
    logger = derived_logger(cfg.get("logger"), source.results)  # MLflow: a run nested under the source's
    with StopOnSignals(), uploaded_after(logger, job.dir):  # Ctrl-C / SIGTERM: exit 130 / 143
        record = export_network(
            network,
            method,
            data,
            pair,
            settings,
            job.dir,
            seed=seed,
            batch_size=batch,
            tolerance=tolerance,
            source=source.origin(step),
        )
    print_export(
        [record], f"quantlab export — {source.files.path.name} ({source.which} checkpoint, step {step})"
    )
    console.print(f"written: {job.files.onnx}, {job.files.export_record}")
    if record["status"] != "verified":
        raise Mismatch(f"{record['pair']}: {'; '.join(record['failed'])}; see {job.files.export_record}")
    return record


def export_args(args: list[str]) -> list[str]:
    """`quantlab export` arguments, checked before anything is written: the extra is installed, `run=`
    is a completed run, `bits=` is a pair in 1..16, the ptq settings are valid, the network has only
    exportable operators, and the output directory is new (then locked)."""
    line = CommandLine.parse(args)
    if line.runs_nothing:
        return args
    require_extra_for(line)
    require_extra()
    if line.multirun:
        raise ConfigError("quantlab export: one run and one pair per command (no -m)")
    allow = str(line.text("allow_incomplete") or "false").lower() == "true"
    source = FinishedRun.open(line.text("run"), line.text("checkpoint") or "best", allow_incomplete=allow)
    cfg = compose_checked(line.task(), "export")
    bits = cfg.get("bits")
    parse_pair(OmegaConf.to_container(bits) if OmegaConf.is_config(bits) else bits)
    Tolerance.from_config(cfg.tolerance)
    check_network(source.config, PTQSettings.from_config(export_settings(source.config, cfg, line.task())))
    out = RunDir(settled_dir(line, "hydra.run.dir", "export"))
    if out.path.exists() and any(out.path.iterdir()):
        raise ConfigError(f"hydra.run.dir={out}: not empty; pick a new directory")
    lock.hold(out.path)
    return line.with_value("hydra.run.dir", str(out.path)).args()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def hydra_app(cfg: DictConfig) -> float | None:
    record = run_command(run, cfg, "quantlab export")
    return record["verification"]["onnx_acc"] if record else None


def main(argv: list[str] | None = None) -> None:
    """`quantlab export run=<dir> bits=<pair>`: the guards (a completed run, a valid pair, an
    exportable network, the extra installed, a new output directory), then the Hydra app."""
    launch("export", export_args, hydra_app, argv)


if __name__ == "__main__":
    main()
