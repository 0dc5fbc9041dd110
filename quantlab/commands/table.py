"""`quantlab table`: the results.json of runs and multiruns, aggregated into one table.

    quantlab table outputs/train/multirun/<date>            # rows: the overrides that vary
    quantlab table <dir> --rows method --cols ptq          # columns: the PTQ bit pairs
    quantlab table <dir> --rows method --cols method.strength --metric test/acc
    quantlab table <dir> --paper md_t1                      # the paper's layout, its numbers beside ours

Runs are found by their results.json (a run directory, or any directory below the given ones);
a job directory with a `.hydra/` but no results.json is shown as "missing". Runs are grouped by
the command-line overrides whose values differ between them (seed excepted: cells are mean ± std
over seeds); failed, running and missing runs are counted in their cell, never dropped. The table
is printed and written beside the runs as <name>.md, <name>.csv (one line per cell, raw numbers)
and <name>.tex. With `--paper`, rows and columns are the paper table's (quantlab/paper.py) and each
cell reads "ours / paper (ours − paper)"; below it, every claim the paper table lists is measured
on the runs: effect, 95 % confidence interval over seeds and verdict (quantlab.report.claims), also
written into <name>.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

from quantlab.engine.console import fail
from quantlab.errors import WriteFailed
from quantlab.report.claims import measure, print_claims
from quantlab.report.claims import to_markdown as claims_markdown
from quantlab.report.collect import Run, find_runs, left_out
from quantlab.report.paper import load_paper
from quantlab.report.tables import build_paper_table, build_table, outside_notes, print_table, write_outputs

# -- command line -----------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="quantlab table",
        description="Aggregate the results.json of runs and multiruns into a table (mean ± std over seeds).",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--rows", help="comma-separated override keys (default: every key that varies)")
    parser.add_argument(
        "--cols", default="metric", help="metric (one column per --metric), ptq (one per bit pair), or a key"
    )
    parser.add_argument(
        "--metric", default="test/acc_exported", help="comma-separated metrics (default test/acc_exported)"
    )
    parser.add_argument(
        "--out", type=Path, help="where to write <name>.md/.csv/.tex (default: the first dir)"
    )
    parser.add_argument("--name", default="table", help="file name stem of the written tables")
    parser.add_argument(
        "--paper",
        metavar="NAME[:SETTING]",
        help="lay the runs out as a paper table with its numbers beside ours (NAME:SETTING: compare "
        "every run with that one column group, whatever its dataset and model)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        runs = find_runs(args.dirs)
        note = left_out(runs)
        if note:
            print(f"quantlab table: {note}", file=sys.stderr)
        if args.paper:
            paper = load_paper(args.paper)
            table, outside = build_paper_table(runs, paper)
        else:
            rows = [k for k in args.rows.split(",") if k] if args.rows else None
            table = build_table(runs, rows, args.cols, [m for m in args.metric.split(",") if m])
    except ValueError as e:
        fail("quantlab table", e)
    counts = defaultdict(int)
    for run in runs:
        counts[run.status] += 1
    table.title = f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    metrics = [paper.metric] if args.paper else [m for m in args.metric.split(",") if m]
    non_finite = [r for r in runs if r.status == "completed" and not all(_finite(r, m) for m in metrics)]
    if non_finite:
        table.title += f" ({len(non_finite)} of them with a non-finite {', '.join(metrics)}: not averaged)"
    if args.paper:
        table.title = f"{paper.title} ({paper.source}) — ours / paper (ours − paper); {table.title}"
        table.notes += outside_notes(outside, paper.metric)
    print_table(table)
    measured = measure(paper, runs) if args.paper else []
    if measured:
        print_claims(measured, f"{paper.name}: the paper's claims on these runs")
    try:
        written = write_outputs(table, args.out or args.dirs[0], args.name, claims_markdown(measured))
    except WriteFailed as e:
        fail("quantlab table", f"{e}; give --out <a writable directory>")
    for path in written:
        print(f"wrote {path}")


def _finite(run: Run, metric: str) -> bool:
    value = run.metrics.get(metric)
    return value is None or math.isfinite(value)


if __name__ == "__main__":
    main()
