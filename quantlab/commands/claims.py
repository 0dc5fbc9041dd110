"""`quantlab claims`: the papers' claims measured on runs, with their tables, as claims.md and claims.json.

    quantlab claims <dir> [<dir> ...] --paper md_t1,gl1_t1:vgg_small,waveq_t6:svhn [--out <dir>]

For each paper table (NAME or NAME:SETTING, as `quantlab table --paper`) it lays the runs out as
that table and measures every claim the table lists (quantlab.report.claims: the effect, a 95 %
Welch t interval over seeds, and the verdict holds / not shown / reversed). It prints them, and
writes into --out (default: the first dir):

- claims.md: each table, then its claims;
- claims.json: `claims`, one entry per claim and setting (paper, table, setting, claim, source,
  metric, effect, ci_low, ci_high, n, n_better, n_than, n_failed, means, verdict), and `calibration`
  (float_acc, binary_gap, ptq_w4a4_drop: how hard the runs' data is, from the same runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quantlab.engine.console import fail
from quantlab.engine.files import write_text_atomic
from quantlab.report.claims import calibration, measure, print_claims, to_markdown
from quantlab.report.collect import find_runs
from quantlab.report.paper import load_paper
from quantlab.report.tables import build_paper_table
from quantlab.report.tables import to_markdown as table_markdown


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quantlab claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument(
        "--paper",
        required=True,
        help="comma-separated paper tables, NAME or NAME:SETTING (quantlab table --paper)",
    )
    parser.add_argument(
        "--out", type=Path, help="where to write claims.md and claims.json (default: the first dir)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        runs = find_runs(args.dirs)
        papers = [load_paper(spec) for spec in args.paper.split(",") if spec]
    except ValueError as e:
        fail("quantlab claims", e)
    sections, records = [], []
    for paper in papers:
        table, _ = build_paper_table(runs, paper)
        measured = measure(paper, runs)
        print_claims(measured, f"{paper.title}: claims")
        sections.append(f"## {paper.title}\n\n({paper.source}; ours / paper (ours − paper))\n\n")
        sections[-1] += table_markdown(table) + "\n" + (to_markdown(measured) or "No claims listed.\n")
        records += [m.record() for m in measured]
    calibrated = calibration(runs)
    counts = {v: sum(r["verdict"] == v for r in records) for v in ("holds", "not shown", "reversed")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    head = f"# The papers' claims on {len(runs)} runs: {summary}\n\n" + _calibration_text(calibrated) + "\n"
    out = args.out or args.dirs[0]
    write_text_atomic(out / "claims.md", head + "\n".join(sections))
    write_text_atomic(
        out / "claims.json", json.dumps({"claims": records, "calibration": calibrated}, indent=2)
    )
    print(f"{summary}\nwrote {out / 'claims.md'}\nwrote {out / 'claims.json'}")


def _calibration_text(c: dict) -> str:
    def num(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    n = c["n"]
    return (
        f"Calibration (means over seeds): float test accuracy {num(c['float_acc'])} % (n={n['float']}); "
        f"fully binary MD-tanh-S {num(c['binary_gap'])} points below it (n={n['binary']}); "
        f"PTQ w4a4 of the float network {num(c['ptq_w4a4_drop'])} points below it (n={n['ptq_w4a4']}).\n"
    )


if __name__ == "__main__":
    main()
