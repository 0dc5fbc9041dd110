"""`quantlab plot`: PNG figures of runs and multiruns.

    quantlab plot <dir> [<dir> ...]                  # both figures, beside the runs
    quantlab plot <dir> --kind ptq --rows method     # accuracy against PTQ bit pair, one line per method
    quantlab plot <dir> --kind curves                # validation accuracy and beta / lambda over steps
    quantlab plot <dir> --paper md_t1:cifar10/resnet18   # also claims.png: the paper's claims measured

`ptq.png`: test top-1 % of the float network and of every PTQ pair of the sweep, highest bits left,
mean ± std over seeds, one line per group of runs (the overrides that vary, as in `quantlab table`).
`curves.png`: from each run's metrics.jsonl, validation accuracy (of the exported network where the
method exports something else) and the method's annealed hyperparameter (method/beta, method/lambda,
...) against the optimizer step, one line per run, one colour per group.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quantlab.engine.console import fail
from quantlab.errors import WriteFailed
from quantlab.report.claims import measure, print_claims
from quantlab.report.collect import find_runs, left_out
from quantlab.report.paper import load_paper
from quantlab.report.plots import plot_claims, plot_curves, plot_ptq

KINDS = ("ptq", "curves")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quantlab plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--kind", help="comma-separated: ptq, curves (default: each the runs have data for)")
    parser.add_argument("--rows", help="override keys naming the lines (default: those that vary)")
    parser.add_argument("--metric", default="test/acc", help="the PTQ plot's float point (default test/acc)")
    parser.add_argument("--out", type=Path, help="where to write the PNG files (default: the first dir)")
    parser.add_argument("--name", default="", help="file name prefix (<name>ptq.png, <name>curves.png)")
    parser.add_argument(
        "--paper",
        metavar="NAME[:SETTING]",
        help="also <name>claims.png: the claims of that paper table measured on the runs (effect, 95 %% CI)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    kinds = [k for k in (args.kind or ",".join(KINDS)).split(",") if k]
    out = args.out or args.dirs[0]
    try:
        if not kinds or any(k not in KINDS for k in kinds):
            raise ValueError(f"--kind {args.kind!r}: choose from {', '.join(KINDS)}")
        runs = find_runs(args.dirs)
        note = left_out(runs)
        if note:
            print(f"quantlab plot: {note}", file=sys.stderr)
        rows = [k for k in args.rows.split(",") if k] if args.rows else None
        skipped = []
        for kind in kinds:
            try:
                if kind == "ptq":
                    path = plot_ptq(runs, rows, args.metric, out / f"{args.name}ptq.png")
                else:
                    path = plot_curves(runs, rows, out / f"{args.name}curves.png")
                print(f"wrote {path}")
            except ValueError as e:
                if args.kind:  # asked for by name: an error; by default: skipped, and said so
                    raise
                skipped.append(f"no {kind}.png: {e}")
        if args.paper:
            measured = measure(load_paper(args.paper), runs)
            print_claims(measured, f"{args.paper}: the paper's claims on these runs")
            print(f"wrote {plot_claims(measured, out / f'{args.name}claims.png')}")
        elif len(skipped) == len(kinds):
            raise ValueError("nothing to plot: " + "; ".join(skipped))
        for message in skipped:
            print(f"quantlab plot: {message}", file=sys.stderr)
    except ValueError as e:
        fail("quantlab plot", e)
    except WriteFailed as e:
        fail("quantlab plot", f"{e}; give --out <a writable directory>")


if __name__ == "__main__":
    main()
