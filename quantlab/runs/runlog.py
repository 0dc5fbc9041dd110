"""Where a run's numbers go: metrics.jsonl always, TensorBoard (tb/) and MLflow as `logger` says."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from quantlab.engine.files import json_safe, write_text_atomic
from quantlab.engine.rundir import RunDir
from quantlab.errors import WriteFailed

log = logging.getLogger("quantlab")


def flatten(tree: DictConfig | dict, prefix: str = "", sep: str = ".") -> dict[str, bool | int | float | str]:
    """A nested config or dict as `a<sep>b<sep>c: scalar` pairs; other leaves (lists, None) as strings."""
    data = OmegaConf.to_container(tree, resolve=True) if isinstance(tree, DictConfig) else tree
    flat: dict[str, bool | int | float | str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}{sep}", sep))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def numbers(flat: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a flat dict (bools excluded), as floats."""
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricsLog:
    """metrics.jsonl: one JSON object per logging event, each with its `step`.

    A resumed run continues the file from the checkpoint it resumes: cut back to `position` (the
    byte offset the checkpoint recorded), or, for a checkpoint without one, to the lines logged at
    or before `resume_step`; so nothing is logged twice and nothing is lost."""

    def __init__(self, path: Path, resume_step: int | None = None, position: int | None = None) -> None:
        self.path = path
        if path.exists() and position is not None:
            with open(path, "r+b") as f:
                f.truncate(position)
        elif path.exists() and resume_step is not None:
            kept = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_step
            ]
            write_text_atomic(path, "".join(line + "\n" for line in kept))
        self._file = open(path, "a")  # noqa: SIM115 - kept open for the whole run

    def write(self, step: int, epoch: int, values: dict[str, float]) -> None:
        try:
            self._file.write(json.dumps(json_safe({"step": step, "epoch": epoch, **values})) + "\n")
            self._file.flush()
        except OSError as e:
            raise WriteFailed(f"{self.path}: cannot write it: {e.strerror or e}") from e

    def position(self) -> int:
        """The byte offset after the last line written (what a checkpoint records)."""
        return self._file.tell()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


class RunLog:
    """Scalars to metrics.jsonl, to TensorBoard (unless `tensorboard` is false) and to a tracker
    (runs.tracking.Tracker: `log(values, step)`; MLflow) when given; histograms and hparams to
    TensorBoard."""

    def __init__(
        self,
        run_dir: Path,
        resume_step: int | None = None,
        position: int | None = None,
        tensorboard: bool = True,
        tracker: Any | None = None,
    ) -> None:
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events an interrupted run wrote after its last checkpoint.
            purge = None if resume_step is None else resume_step + 1
            self.tb = SummaryWriter(str(RunDir(run_dir).tensorboard), purge_step=purge)
        self.jsonl = MetricsLog(RunDir(run_dir).metrics, resume_step, position)
        self.tracker = tracker

    def position(self) -> int:
        return self.jsonl.position()

    def scalars(self, values: dict[str, float], step: int, epoch: int) -> None:
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(name, value, step)
        self.jsonl.write(step, epoch, values)
        if self.tracker is not None:
            self.tracker.log(values, step)

    def histograms(self, model: nn.Module, step: int, bins: int = 64) -> None:
        """Weight histograms with explicit equal-width bins (quantized weights pile up on few values)."""
        if self.tb is None:
            return
        for name, param in model.named_parameters():
            values = param.detach().float().cpu()
            if values.numel() > 1 and torch.isfinite(values).all():
                self.tb.add_histogram(f"weights/{name}", values, step, bins=bins)

    def hparams(self, cfg: DictConfig, metrics: dict[str, Any]) -> None:
        if self.tb is None:
            return
        final = {f"hparam/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.tb.add_hparams(flatten(cfg), final, run_name=".")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        self.jsonl.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
