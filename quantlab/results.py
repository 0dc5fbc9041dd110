"""results.json: the contract between a run and `quantlab table` / `quantlab ptq`.

Fields: status ("running" while training, then "completed" or "failed"), error (when failed),
metrics (final values under the TensorBoard names: test/acc, test/acc_exported, val/acc, ...),
ptq (one entry per swept bit pair), timing (seconds), overrides (the command-line overrides that
made the run), and run facts (method, model, dataset, best checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file beside `path`, renamed into place)."""
    write_text_atomic(path, json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def recorded(path: Path, results: dict[str, Any], started: float) -> Iterator[dict[str, Any]]:
    """Write `results` (status "running") to `path`; if the body raises anything (KeyboardInterrupt
    too), rewrite it as "failed" with the error and the total time, then re-raise."""
    write_json_atomic(path, results)
    try:
        yield results
    except BaseException as e:
        results.update(status="failed", error=f"{type(e).__name__}: {e}")
        results.setdefault("timing", {})["total_s"] = time.perf_counter() - started
        write_json_atomic(path, results)
        raise


RUN_MARKERS = ("results.json", "checkpoints")


def existing_run(run_dir: str | os.PathLike) -> bool:
    """A directory that already holds a run (never overwritten except by resume)."""
    return any((Path(run_dir) / m).exists() for m in RUN_MARKERS)


def read_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "results.json").read_text())


class MetricsLog:
    """metrics.jsonl: one JSON object per logging event, each with its `step`."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            # Drop what an interrupted run logged after its last checkpoint: it will be logged again.
            kept = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_step
            ]
            path.write_text("".join(line + "\n" for line in kept))
        self._file = open(path, "a")  # noqa: SIM115 - kept open for the whole run

    def write(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self._file.write(json.dumps(_clean({"step": step, "epoch": epoch, **values})) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
