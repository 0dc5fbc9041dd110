"""Every file of a run directory, by name: the one place that spells them.

    outputs/train/<date>_<time>/
        .hydra/overrides.yaml   the command-line overrides (Hydra writes .hydra/)
        config.yaml             the fully resolved config the run used (resume and `quantlab ptq` read it)
        results.json            status, metrics, PTQ sweep, sessions (quantlab.runs.results)
        metrics.jsonl           every logged value, one JSON object per line
        tb/                     TensorBoard
        checkpoints/last.pt     the latest state (resume), checkpoints/best.pt the best by validation
        exported.pt             the exported network's state dict
        export/<pair>/          ONNX exports: model.onnx and export.json
        .lock                   the PID of the process writing into the directory (quantlab.engine.lock)
    a sweep directory: sweep.json (its grid) and one run directory per job

A `quantlab ptq` or `quantlab export` directory holds a subset (results.json or export.json, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINTS = ("best", "last")
# the names that are looked for below a directory (quantlab table finds runs by them)
CONFIG, RESULTS, SWEEP_RECORD, HYDRA, LOCK = "config.yaml", "results.json", "sweep.json", ".hydra", ".lock"


@dataclass(frozen=True)
class RunDir:
    """A run (or sweep) directory and the names of its files."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path).expanduser().resolve())

    def __str__(self) -> str:
        return str(self.path)

    # -- the files ----------------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        """config.yaml: the fully resolved config, written when the run starts."""
        return self.path / CONFIG

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str) -> Path:
        """checkpoints/<which>.pt (best or last)."""
        return self.checkpoints / f"{which}.pt"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def exported(self) -> Path:
        return self.path / "exported.pt"

    def export(self, pair: str) -> Path:
        """export/<pair>/: the ONNX export of one PTQ pair made at the end of training."""
        return self.path / "export" / pair

    @property
    def onnx(self) -> Path:
        """model.onnx of an export directory."""
        return self.path / "model.onnx"

    @property
    def export_record(self) -> Path:
        """export.json of an export directory."""
        return self.path / "export.json"

    @property
    def overrides(self) -> Path:
        """.hydra/overrides.yaml: the overrides the run was started with."""
        return self.path / HYDRA / "overrides.yaml"

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def sweep_record(self) -> Path:
        """sweep.json of a sweep directory: the grid and every planned job."""
        return self.path / SWEEP_RECORD

    def job(self, num: int) -> RunDir:
        """The run directory of job `num` of a sweep."""
        return RunDir(self.path / str(num))

    # -- what they say ------------------------------------------------------------------------------

    def holds_run(self) -> bool:
        """A directory that already holds a run (never overwritten except by resume)."""
        return self.results.exists() or self.checkpoints.exists()

    def resumable(self) -> bool:
        """Its checkpoints/last.pt and config.yaml are there."""
        return self.last.is_file() and self.config.is_file()

    def read_results(self) -> dict[str, Any]:
        """results.json as a dict; {} when it is missing or not a well-formed JSON object."""
        try:
            data = json.loads(self.results.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def metric_points(self) -> list[tuple[str, float, int]]:
        """metrics.jsonl as (key, value, step) points, in the order logged; a line cut short by a
        killed run is passed over, and so are values that are not numbers."""
        try:
            lines = self.metrics.read_text().splitlines()
        except OSError:
            return []
        points: list[tuple[str, float, int]] = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            step = entry.get("step") if isinstance(entry, dict) else None
            if step is None:
                continue
            for key, value in entry.items():
                if key not in ("step", "epoch") and type(value) in (int, float):
                    points.append((key, float(value), int(step)))
        return points

    def status(self) -> str:
        return str(self.read_results().get("status", "unknown"))

    def read_sweep_record(self) -> dict[str, Any] | None:
        """sweep.json of a sweep directory ({"command", "overrides", "jobs": [{"num", "overrides"}]}),
        or None when it is missing or malformed."""
        try:
            record = json.loads(self.sweep_record.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("overrides"), list):
            return None
        jobs = record.get("jobs")
        if not isinstance(jobs, list) or not all(
            isinstance(j, dict) and isinstance(j.get("num"), int) and isinstance(j.get("overrides"), list)
            for j in jobs
        ):
            return None
        return record

    def saved_overrides(self) -> list[str]:
        """The overrides the run was started with (.hydra/overrides.yaml); [] when there are none."""
        from omegaconf import OmegaConf

        return [str(o) for o in OmegaConf.load(self.overrides)] if self.overrides.is_file() else []

    def load_config(self) -> Any:
        """config.yaml, as an OmegaConf DictConfig."""
        from omegaconf import OmegaConf

        return OmegaConf.load(self.config)
