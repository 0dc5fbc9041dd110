"""Where a run's numbers go: TensorBoard (tb/), metrics.jsonl, and the terminal."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from quantlab.results import MetricsLog

log = logging.getLogger("quantlab")


def flatten_config(cfg: DictConfig | dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Flatten a config to `a.b.c: scalar` pairs (lists become strings), for the HParams tab."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, bool | int | float | str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class RunLog:
    """Scalars to TensorBoard and metrics.jsonl; histograms and hparams to TensorBoard."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events an interrupted run wrote after its last checkpoint.
        purge = None if resume_step is None else resume_step + 1
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge)
        self.jsonl = MetricsLog(run_dir / "metrics.jsonl", resume_step)

    def scalars(self, values: dict[str, float], step: int, epoch: int) -> None:
        for name, value in values.items():
            self.tb.add_scalar(name, value, step)
        self.jsonl.write(step, epoch, values)

    def histograms(self, model: nn.Module, step: int, bins: int = 64) -> None:
        """Weight histograms with explicit equal-width bins (quantized weights pile up on few values)."""
        for name, param in model.named_parameters():
            values = param.detach().float().cpu()
            if values.numel() > 1 and torch.isfinite(values).all():
                self.tb.add_histogram(f"weights/{name}", values, step, bins=bins)

    def hparams(self, cfg: DictConfig, metrics: dict[str, Any]) -> None:
        final = {f"hparam/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.tb.add_hparams(flatten_config(cfg), final, run_name=".")

    def close(self) -> None:
        self.tb.close()
        self.jsonl.close()
