"""`quantlab export`: a finished run at one PTQ pair as ONNX, verified in onnxruntime, into a new directory.

    quantlab export run=outputs/train/<run> bits=w8a8

The run is read, never written: its config.yaml rebuilds dataset, model and method, its
checkpoints/best.pt (or last.pt with checkpoint=last) gives the network, and the method's export is
quantized at the pair exactly as the run's PTQ sweep quantizes it (its ptq settings, its calibration
batches; ptq.* keys given here change them) and written as QDQ ONNX (runs.export). The new directory
holds model.onnx, export.json (pair, sites, ranges, weight storage, verification, throughput) and
export.log. The export is `verified` within `tolerance`, else `mismatch` (exit 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from quantlab.engine.checkpoint import seed_everything
from quantlab.engine.console import console
from quantlab.errors import ConfigError
from quantlab.quant.pairs import parse_pair
from quantlab.quant.sweep import PTQSettings
from quantlab.runs.components import build, load_exported
from quantlab.runs.config import config_dir
from quantlab.runs.export import Tolerance, export_network, export_settings
from quantlab.runs.guards import export_args
from quantlab.runs.job import Job, launch, run_command
from quantlab.runs.results import read_results
from quantlab.runs.summary import print_export


class Mismatch(ConfigError):
    """The ONNX model's predictions differ from the fake-quantized network's beyond the tolerance."""

    exit_code = 1


def run(cfg: DictConfig) -> dict[str, Any]:
    """The body of `quantlab export`; returns what export.json holds."""
    import torch

    job = Job.current()
    source, which = Path(str(cfg.run)).expanduser().resolve(), str(cfg.checkpoint)
    run_cfg = OmegaConf.load(source / "config.yaml")
    pair = parse_pair(OmegaConf.to_container(cfg.bits) if OmegaConf.is_config(cfg.bits) else cfg.bits)
    settings = PTQSettings.from_config(export_settings(run_cfg, cfg, job.overrides))
    seed = int(cfg.seed if cfg.get("seed") is not None else run_cfg.seed)
    batch = cfg.get("batch_size") or run_cfg.trainer.get("eval_batch_size")
    batch = int(batch or 2 * int(run_cfg.schedule.batch_size))
    seed_everything(seed)
    data = build(run_cfg.dataset)
    network, method, step = load_exported(source, which, run_cfg, torch.device("cpu"))
    tolerance = Tolerance(float(cfg.tolerance.acc_points), float(cfg.tolerance.agreement))
    source_results = read_results(source)
    origin = {
        "run": str(source),
        "checkpoint": which,
        "step": step,
        "status": source_results.get("status", "unknown"),
        "choices": source_results.get("choices", {}),
    }
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
        source=origin,
    )
    print_export([record], f"quantlab export — {source.name} ({which} checkpoint, step {step})")
    console.print(f"written: {job.dir / 'model.onnx'}, {job.dir / 'export.json'}")
    if record["status"] != "verified":
        v = record["verification"]
        exact = v["float_kernels"]
        cause = (
            f"with float kernels it agrees on {exact['agreement']:.2f} %: "
            "the gap is onnxruntime's integer arithmetic"
            if exact["within_tolerance"]
            else f"with float kernels too ({exact['agreement']:.2f} %): the exported graph differs"
        )
        raise Mismatch(
            f"{record['pair']}: onnxruntime top-1 {v['onnx_acc']:.2f}, fake-quant {v['fake_quant_acc']:.2f}, "
            f"argmax agreement {v['agreement']:.2f} % (tolerance: {tolerance.acc_points} points, "
            f"{tolerance.agreement} %); {cause}; see {job.dir / 'export.json'}"
        )
    return record


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def hydra_app(cfg: DictConfig) -> float | None:
    return run_command(run, cfg, "quantlab export")["verification"]["onnx_acc"]


def main(argv: list[str] | None = None) -> None:
    """`quantlab export run=<dir> bits=<pair>`: the guards (a completed run, a valid pair, an
    exportable network, the extra installed, a new output directory), then the Hydra app."""
    launch("export", export_args, hydra_app, argv)


if __name__ == "__main__":
    main()
