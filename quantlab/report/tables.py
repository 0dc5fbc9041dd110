"""Tables of runs: cells of mean ± std over seeds with every run's status counted, grouped by the
overrides that vary (`build_table`) or laid out as a paper's table beside its numbers
(`build_paper_table`); rendered as markdown, CSV, LaTeX and a rich table."""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from quantlab.engine.files import write_text_atomic
from quantlab.report.collect import IGNORED_KEYS, Run, varying_keys
from quantlab.report.paper import PaperTable, matches, row_of


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def add(self, status: str, value: object) -> None:
        """Count one run; its number counts where the run completed and has a finite one. A completed
        run whose number is NaN or infinite is counted apart ("non-finite"), never as completed."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if status == "completed" and number and not math.isfinite(value):  # type: ignore[arg-type]
            status = "non-finite"
        self.statuses[status] += 1
        if status == "completed" and number:
            self.values.append(float(value))  # type: ignore[arg-type]

    @property
    def incomplete(self) -> bool:
        return any(s != "completed" and n for s, n in self.statuses.items())

    def text(self, digits: int = 2) -> str:
        not_done = {s: n for s, n in self.statuses.items() if s != "completed" and n}
        notes = ", ".join(f"{n} {s}" for s, n in sorted(not_done.items()))
        if not self.values:
            return notes or "—"
        value = f"{self.mean:.{digits}f}"
        if self.std is not None:
            value += f" ± {self.std:.{digits}f}"
        return f"{value} ({notes})" if notes else value


@dataclass
class Table:
    row_keys: list[str]
    rows: list[tuple[str, ...]]
    columns: list[str]
    cells: dict[tuple[tuple[str, ...], str], Cell]
    title: str = ""
    paper: dict[tuple[tuple[str, ...], str], float | None] | None = None  # --paper: its numbers
    notes: list[str] = field(default_factory=list)

    def cell(self, row: tuple[str, ...], column: str) -> Cell:
        return self.cells.get((row, column), Cell())

    def paper_value(self, row: tuple[str, ...], column: str) -> float | None:
        return None if self.paper is None else self.paper.get((row, column))

    def text(self, row: tuple[str, ...], column: str) -> str:
        """The cell as shown: ours, and with --paper "ours / paper (ours − paper)"."""
        ours, theirs = self.cell(row, column), self.paper_value(row, column)
        if theirs is None:
            return ours.text()
        text = f"{ours.text()} / {theirs:.2f}"
        if ours.mean is not None:
            text += f" ({ours.mean - theirs:+.2f})".replace("-", "−")
        return text


def _natural(value: str) -> tuple:
    """Sort numbers as numbers (1e-4 < 1e-3), everything else as text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _pair_order(name: str) -> tuple:
    bits = [int(b) for b in name.replace("w", " ").replace("a", " ").split() if b.isdigit()]
    return tuple(-b for b in bits)


def build_table(runs: list[Run], rows: list[str] | None, cols: str, metrics: list[str]) -> Table:
    """Group `runs` into rows (values of the `rows` keys) and columns (`cols`: "metric" = one
    column per metric, "ptq" = one per PTQ bit pair, or an override key)."""
    if not runs:
        raise ValueError("no runs found (no results.json and no .hydra/ job directory below the given paths)")
    varying = varying_keys(runs)
    row_keys = rows if rows is not None else [k for k in varying if k != cols]
    columns: list[str] = []
    cells: dict[tuple[tuple[str, ...], str], Cell] = defaultdict(Cell)
    for run in runs:
        row = tuple(run.overrides.get(k, "—") for k in row_keys)
        if cols == "metric":
            entries = [(m, run.metrics.get(m)) for m in metrics]
        elif cols == "ptq":
            entries = [
                (k.removeprefix("ptq/acc_"), v) for k, v in run.metrics.items() if k.startswith("ptq/acc_")
            ]
            if "float" not in [e[0] for e in entries] and metrics[0] in run.metrics:
                entries.insert(0, ("float", run.metrics[metrics[0]]))
            if not entries and run.status != "completed":
                entries = [("float", None)]
        else:
            entries = [(run.overrides.get(cols, "—"), run.metrics.get(metrics[0]))]
        for column, value in entries:
            if column not in columns:
                columns.append(column)
            cells[row, column].add(run.status, value)
    if cols == "ptq":
        columns.sort(key=lambda c: (c != "float", _pair_order(c)))
    elif cols != "metric":
        columns.sort(key=_natural)
    ordered = sorted({key for key, _ in cells}, key=lambda r: tuple(_natural(v) for v in r))
    return Table(row_keys, ordered, columns, dict(cells))


def build_paper_table(runs: list[Run], paper: PaperTable) -> tuple[Table, list[Run]]:
    """`runs` in the layout of a paper table, its numbers beside ours; also the runs that fall in
    none of its cells."""
    specs = paper.cells()
    labels = [paper.label(setting, column) for setting, column, _, _ in specs]
    cells: dict[tuple[tuple[str, ...], str], Cell] = defaultdict(Cell)
    outside: list[Run] = []
    for run in runs:
        row = row_of(paper, run.value)
        placed = False
        for (_, _, selector, metric), label in zip(specs, labels, strict=True):
            if row is None or not matches(selector, run.value):
                continue
            placed = True
            cells[(row,), label].add(run.status, run.metrics.get(metric))
        if not placed:
            outside.append(run)
    values = {
        ((row,), label): value
        for row, row_values in paper.values.items()
        for label, value in zip(labels, row_values, strict=True)
    }
    rows = [(row,) for row in paper.rows]
    table = Table([paper.row_header], rows, labels, dict(cells), paper=values, notes=list(paper.notes))
    return table, outside


def outside_notes(runs: list[Run], metric: str) -> list[str]:
    """One line per group of runs that fall in no cell of a paper table: its overrides and `metric`."""
    groups: dict[str, Cell] = defaultdict(Cell)
    for run in runs:
        label = " ".join(f"{k}={v}" for k, v in run.overrides.items() if not k.startswith(IGNORED_KEYS))
        groups[label or str(run.path)].add(run.status, run.metrics.get(metric))
    return [
        f"In no cell of the paper's table: {label}: {cell.text()} ({metric})"
        for label, cell in groups.items()
    ]


# -- renderers ------------------------------------------------------------------------------------------


def to_markdown(table: Table) -> str:
    head = [*table.row_keys, *table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = [table.text(row, c) for c in table.columns]
        lines.append("| " + " | ".join([*row, *cells]) + " |")
    lines += [f"\n{note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    paper = ["paper", "diff"] if table.paper is not None else []
    writer.writerow([*table.row_keys, "column", "mean", "std", "n", "completed", "failed", "other", *paper])
    for row in table.rows:
        for column in table.columns:
            cell = table.cell(row, column)
            done, failed = cell.statuses.get("completed", 0), cell.statuses.get("failed", 0)
            other = sum(cell.statuses.values()) - done - failed
            mean, std = cell.mean, cell.std
            theirs = table.paper_value(row, column)
            diff = mean - theirs if mean is not None and theirs is not None else None
            writer.writerow(
                [*row, column, "" if mean is None else mean, "" if std is None else std, len(cell.values)]
                + [done, failed, other]
                + ([_blank(theirs), _blank(diff)] if paper else [])
            )
    return out.getvalue()


def _blank(value: float | None) -> float | str:
    return "" if value is None else value


_TEX = {
    "\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "$": r"\$", "±": r"$\pm$", "—": "--", "−": "-",
    "λ": r"$\lambda$",
}  # fmt: skip


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    head = [*table.row_keys, *table.columns]
    lines = [
        r"\begin{tabular}{" + "l" * len(table.row_keys) + "r" * len(table.columns) + "}",
        r"\hline",
        " & ".join(_tex(h) for h in head) + r" \\",
        r"\hline",
    ]
    for row in table.rows:
        cells = [table.text(row, c) for c in table.columns]
        lines.append(" & ".join(_tex(x) for x in [*row, *cells]) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def print_table(table: Table) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    shown = RichTable(title=table.title or None)
    for key in table.row_keys:
        shown.add_column(escape(key), no_wrap=True)
    for column in table.columns:
        shown.add_column(escape(column), justify="right", no_wrap=True)
    for row in table.rows:
        cells = []
        for column in table.columns:
            text = escape(table.text(row, column))
            cells.append(f"[red]{text}[/red]" if table.cell(row, column).incomplete else text)
        shown.add_row(*(escape(k) for k in row), *cells)
    if table.notes:
        shown.caption = "\n".join(escape(note) for note in table.notes)
    # stdout (the logging console writes to stderr); off a terminal at the table's natural width
    Console(width=None if sys.stdout.isatty() else 1000).print(shown)


def write_outputs(table: Table, out_dir: Path, name: str, appendix: str = "") -> list[Path]:
    """<name>.md (with `appendix`, e.g. the claims, below the table), <name>.csv and <name>.tex."""
    paths = []
    for suffix, render in ((".md", to_markdown), (".csv", to_csv), (".tex", to_latex)):
        path = out_dir / f"{name}{suffix}"
        text = render(table)
        write_text_atomic(path, text + f"\n{appendix}" if suffix == ".md" and appendix else text)
        paths.append(path)
    return paths
