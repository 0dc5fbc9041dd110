"""Figures of runs: accuracy against PTQ bit pair (`plot_ptq`, the `--cols ptq` table drawn) and
validation accuracy with the annealed β or λ over training (`plot_curves`, from metrics.jsonl)."""

from __future__ import annotations

from pathlib import Path

from quantlab.engine.files import atomic_write
from quantlab.engine.rundir import RunDir
from quantlab.report.collect import Run, find_runs, left_out, varying_keys
from quantlab.report.tables import build_table

ANNEALED = ("method/beta", "method/lambda", "method/lambda_q", "method/lam")


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Render to a temporary file beside `path`, then rename it into place."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))


def _label(keys: list[str], row: tuple[str, ...]) -> str:
    """`k=v, ...` of the keys a group sets (a run without the key shows as "—" and is left out)."""
    return ", ".join(f"{k}={v}" for k, v in zip(keys, row, strict=True) if v != "—") or "runs"


def _note_left_out(fig, runs: list[Run]) -> None:
    """Below the axes: the runs the figure could not use (failed, unreadable, ...), in red."""
    note = left_out(runs)
    if note:
        fig.text(0.5, -0.02, note[:160], ha="center", va="top", fontsize=8, color="tab:red")


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
    _note_left_out(fig, runs)
    save_png(fig, path)
    plt.close(fig)
    return path


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every numeric series of a run's metrics.jsonl, as (step, value) pairs."""
    series: dict[str, list[tuple[int, float]]] = {}
    for key, value, step in RunDir(run_dir).metric_points():
        series.setdefault(key, []).append((step, value))
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
    _note_left_out(fig, runs)
    save_png(fig, path)
    plt.close(fig)
    return path


def plot_claims(measured: list, path: Path) -> Path:
    """The claims of a paper table measured on runs (quantlab.report.claims.Measured): each claim's
    effect with its 95 % confidence interval, coloured by verdict, against 0."""
    from quantlab.report.claims import HOLDS, REVERSED

    if not measured:
        raise ValueError("the paper table lists no claims")
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(measured) + 1.2))
    colour = {HOLDS: "tab:green", REVERSED: "tab:red"}
    for y, m in enumerate(reversed(measured)):
        effect, interval = m.effect, m.interval
        if effect is None:
            continue
        low, high = interval if interval is not None else (effect, effect)
        c = colour.get(m.verdict, "tab:orange")
        ax.errorbar([effect], [y], xerr=[[effect - low], [high - effect]], fmt="o", color=c, capsize=3)
    labels = [f"{m.claim.claim[:70]} [{m.setting}]: {m.verdict}" for m in reversed(measured)]
    ax.set_yticks(range(len(measured)), labels, fontsize=7)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("effect (points; > 0: as the paper claims), 95 % Welch t interval over seeds")
    ax.grid(alpha=0.3, axis="x")
    save_png(fig, path)
    plt.close(fig)
    return path


def write_run_plots(run_dir: Path) -> list[Path]:
    """One run's figures in <run>/plots/ (what MLflow keeps as the run's plots): curves.png (validation
    accuracy, β or λ over steps) and ptq.png (accuracy against PTQ bit-width) where the run has them."""
    runs = find_runs([Path(run_dir)])
    written = []
    for draw in (
        lambda: plot_curves(runs, [], Path(run_dir) / "plots" / "curves.png"),
        lambda: plot_ptq(runs, [], "acc", Path(run_dir) / "plots" / "ptq.png"),
    ):
        try:
            written.append(draw())
        except ValueError:  # nothing of that kind in the run
            continue
    return written
