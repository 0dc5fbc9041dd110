"""`quantlab plot`: PNG figures of runs and multiruns.

    quantlab plot <dir> [<dir> ...]                  # both figures, beside the runs
    quantlab plot <dir> --kind ptq --rows method     # accuracy against PTQ bit pair, one line per method
    quantlab plot <dir> --kind curves                # validation accuracy and beta / lambda over steps

`ptq.png`: test top-1 % of the float network and of every PTQ pair of the sweep, highest bits left,
mean ± std over seeds, one line per group of runs (the overrides that vary, as in `quantlab table`).
`curves.png`: from each run's metrics.jsonl, validation accuracy (of the exported network where the
method exports something else) and the method's annealed hyperparameter (method/beta, method/lambda,
...) against the optimizer step, one line per run, one colour per group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from quantlab.table import Run, build_table, find_runs, varying_keys

KINDS = ("ptq", "curves")
ANNEALED = ("method/beta", "method/lambda", "method/lambda_q", "method/lam")


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Render to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _label(keys: list[str], row: tuple[str, ...]) -> str:
    """`k=v, ...` of the keys a group sets (a run without the key shows as "—" and is left out)."""
    return ", ".join(f"{k}={v}" for k, v in zip(keys, row, strict=True) if v != "—") or "runs"


def plot_ptq(runs: list[Run], rows: list[str] | None, metric: str, path: Path) -> Path:
    """Accuracy against PTQ bit pair (the `quantlab table --cols ptq` table, drawn)."""
    table = build_table(runs, rows, "ptq", [metric])
    if table.columns == ["float"]:
        raise ValueError("no PTQ sweep in these runs (results.json has no `ptq` entries)")
    plt = _figure()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(table.columns) + 2), 4))
    x = list(range(len(table.columns)))
    for row in table.rows:
        cells = [table.cell(row, c) for c in table.columns]
        points = [(i, c.mean, c.std or 0.0) for i, c in zip(x, cells, strict=True) if c.mean is not None]
        if not points:
            continue
        xs, means, stds = zip(*points, strict=True)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=_label(table.row_keys, row))
    ax.set_xticks(x, table.columns)
    ax.set_xlabel("PTQ bit-width (w: weights, a: activations)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title("accuracy against post-training bit-width (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save_png(fig, path)
    plt.close(fig)
    return path


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every numeric series of a run's metrics.jsonl, as (step, value) pairs."""
    series: dict[str, list[tuple[int, float]]] = {}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return series
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
        step = record.get("step")
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and step is not None:
                series.setdefault(key, []).append((int(step), float(value)))
    return series


def plot_curves(runs: list[Run], rows: list[str] | None, path: Path) -> Path:
    """Validation accuracy and the annealed hyperparameter (β or λ) over optimizer steps."""
    keys = rows if rows is not None else varying_keys(runs)
    curves = [(run, read_curves(run.path)) for run in runs]
    curves = [(run, c) for run, c in curves if c]
    if not curves:
        raise ValueError("no metrics.jsonl in these runs")
    annealed = next((k for k in ANNEALED if any(k in c for _, c in curves)), None)
    plt = _figure()
    panels = 2 if annealed else 1
    fig, axes = plt.subplots(panels, 1, figsize=(7, 3.2 * panels), sharex=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups: dict[str, str] = {}  # group label -> colour; the legend names each group once
    labelled = [(_label(keys, tuple(run.overrides.get(k, "—") for k in keys)), run, c) for run, c in curves]
    for group, _, series in sorted(labelled, key=lambda item: (item[0], item[1].seed)):
        label = None if group in groups else group
        colour = groups.setdefault(group, colours[len(groups) % len(colours)])
        val = series.get("val/acc_exported") or series.get("val/acc") or []
        if val:
            axes[0][0].plot(*zip(*val, strict=True), color=colour, alpha=0.8, label=label)
        if annealed and series.get(annealed):
            axes[1][0].plot(*zip(*series[annealed], strict=True), color=colour, alpha=0.8)
    axes[0][0].set_ylabel("val top-1 % (exported)")
    axes[0][0].set_title("validation accuracy and annealing over training (one line per run)")
    axes[0][0].legend(fontsize=8)
    if annealed:
        values = [v for _, c in curves for _, v in c.get(annealed, []) if v > 0]
        if values and max(values) / min(values) > 100:
            axes[1][0].set_yscale("log")
        axes[1][0].set_ylabel(annealed)
    for (ax,) in axes:
        ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("optimizer step")
    save_png(fig, path)
    plt.close(fig)
    return path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quantlab plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--kind", help="comma-separated: ptq, curves (default: each the runs have data for)")
    parser.add_argument("--rows", help="override keys naming the lines (default: those that vary)")
    parser.add_argument("--metric", default="test/acc", help="the PTQ plot's float point (default test/acc)")
    parser.add_argument("--out", type=Path, help="where to write the PNG files (default: the first dir)")
    parser.add_argument("--name", default="", help="file name prefix (<name>ptq.png, <name>curves.png)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    kinds = [k for k in (args.kind or ",".join(KINDS)).split(",") if k]
    out = args.out or args.dirs[0]
    try:
        if not kinds or any(k not in KINDS for k in kinds):
            raise ValueError(f"--kind {args.kind!r}: choose from {', '.join(KINDS)}")
        runs = find_runs(args.dirs)
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
        if len(skipped) == len(kinds):
            raise ValueError("nothing to plot: " + "; ".join(skipped))
        for message in skipped:
            print(f"quantlab plot: {message}", file=sys.stderr)
    except ValueError as e:
        print(f"quantlab plot: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
