"""`quantlab track`: upload finished (or stopped) runs to MLflow, after the fact.

    quantlab track <run, sweep or outputs dir> [...] [--tracking-uri URI] [--experiment NAME]

For runs whose store was unreachable while they ran, runs trained with the TensorBoard logger only,
or a copy of runs into a shared tracking server. Every run directory under each path is uploaded
(runs.tracking: params, metric history, PTQ rows, tags, artifacts, status); its results.json
records the MLflow run. Idempotent: a run already in the store gets only what it lacks. A run that a
live process holds is passed over (its own tracker writes it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quantlab.engine import lock
from quantlab.engine.console import fail
from quantlab.report.plots import write_run_plots
from quantlab.runs.config import compose
from quantlab.runs.mlflow_store import EXTRA, installed
from quantlab.runs.tracking import one_line, run_dirs_under, track_dir, track_settings


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quantlab track", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run, sweep or outputs directories")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="the MLflow store; default: MLFLOW_TRACKING_URI, else the one each run recorded, else "
        "logger.tracking_uri (sqlite:///outputs/mlflow.db)",
    )
    parser.add_argument(
        "--experiment", default=None, help="default: the run's own (train, or train/<sweep name>)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not installed():
        fail("quantlab track", f"MLflow is not installed; install the extra: {EXTRA}", 2)
    runs = []
    for path in args.dirs:
        if not path.is_dir():
            fail("quantlab track", f"{path}: not a directory", 2)
        found = run_dirs_under(path)
        if not found:
            fail("quantlab track", f"{path}: no quantlab run under it (results.json or export.json)", 2)
        runs += found
    default_uri = str(compose(["logger=mlflow"]).logger.tracking_uri)
    failed = 0
    for run in runs:
        pid = lock.holder(run)
        if pid is not None:
            print(
                f"quantlab track: {run}: in use by PID {pid} (it tracks itself); passed over", file=sys.stderr
            )
            continue
        settings = track_settings(run, args.tracking_uri, args.experiment, default_uri)
        try:
            if (run / "metrics.jsonl").is_file() and not (run / "plots").is_dir():
                write_run_plots(run)
            opened, new = track_dir(settings, run)
        except Exception as e:  # noqa: BLE001 - one line per run that could not be uploaded
            failed += 1
            print(
                f"quantlab track: {run}: not tracked ({settings.tracking_uri}): {one_line(e)}",
                file=sys.stderr,
            )
            continue
        print(
            f"tracked {run}: MLflow run {opened.run_id} in experiment {opened.experiment!r} "
            f"({new} new metric points) at {opened.store.uri}"
        )
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
