"""results.json: the contract between a run and `quantlab table` / `quantlab ptq`.

Fields: status ("running" while training, then "completed" or "failed"), error (when failed),
metrics (final values under the TensorBoard names: test/acc, test/acc_exported, val/acc, ...),
ptq (one entry per swept bit pair), timing (seconds), overrides (the command-line overrides that
made the run), and run facts (method, model, dataset, best checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from quantlab.engine.files import write_json_atomic


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


def read_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "results.json").read_text())
