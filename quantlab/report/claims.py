"""The papers' qualitative claims as data, measured on runs: effect, 95 % confidence interval, verdict.

A paper table (quantlab/report/papers/<name>.yaml) lists under `claims:` what its paper says, each
with where it says it, as a comparison of two groups of runs:

    claims:
      - claim: "MD-tanh-S is more accurate than BC (fully binary)"
        source: "Sec. 4.1, Table 1"
        better: {row: MD-tanh-s}                      # a row of the table (its runs), and optionally
        than: {row: BC}                                # a column: {row: ..., column: (4,4)}
        metric: test/acc - ptq/acc_w4a4                # optional: a metric or a difference of two
        lower_is_better: true                          # optional: e.g. an accuracy drop, a KL
        tolerance: 1.0                                 # optional: "better ≥ than − tolerance"

A side is `{row, column}` of the table (the runs that its row takes, as in the table: the most
specific row) or `{select: {...}}`, a selector of its own (quantlab.report.paper's language). Its
metric is the claim's `metric`, else the column's, else the table's. Each setting of the table
(dataset and model) is measured on its own; `--paper NAME:SETTING` compares every run with one.

Per claim and setting: effect = mean(better) − mean(than) (negated for lower-is-better metrics,
plus the tolerance), so that a positive effect is what the paper says; its 95 % confidence interval
is Welch's t interval (two independent groups of runs, one per seed, unequal variances). The
verdict is **holds** (the interval lies above 0), **reversed** (below 0) or **not shown** (it spans
0, or a side has fewer than two completed runs). Runs that did not complete count in `n_failed`
and in the line that shows the claim, never in the means.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlab.report.collect import Run
from quantlab.report.paper import Claim, PaperTable, Side, matches, row_of

HOLDS, NOT_SHOWN, REVERSED = "holds", "not shown", "reversed"
CONFIDENCE = 0.95


@dataclass
class Measured:
    """A claim measured on runs for one setting of its table."""

    paper: str
    table: str
    setting: str
    claim: Claim
    metric: str
    better: list[float]
    than: list[float]
    failed: int = 0  # runs of either side that did not complete (not in the means)

    @property
    def n(self) -> int:
        """Completed runs of the smaller side (each a seed)."""
        return min(len(self.better), len(self.than))

    @property
    def effect(self) -> float | None:
        if not self.better or not self.than:
            return None
        diff = statistics.fmean(self.better) - statistics.fmean(self.than)
        return (-diff if self.claim.lower_is_better else diff) + self.claim.tolerance

    @property
    def interval(self) -> tuple[float, float] | None:
        effect = self.effect
        if effect is None:
            return None
        half = welch_half_width(self.better, self.than)
        return None if half is None else (effect - half, effect + half)

    @property
    def verdict(self) -> str:
        return verdict(self.interval)

    def record(self) -> dict[str, Any]:
        """The claims.json entry."""
        interval = self.interval
        return {
            "paper": self.paper,
            "table": self.table,
            "setting": self.setting,
            "claim": self.claim.claim,
            "source": self.claim.source,
            "metric": self.metric,
            "effect": self.effect,
            "ci_low": interval[0] if interval else None,
            "ci_high": interval[1] if interval else None,
            "n": self.n,
            "n_better": len(self.better),
            "n_than": len(self.than),
            "n_failed": self.failed,
            "mean_better": statistics.fmean(self.better) if self.better else None,
            "mean_than": statistics.fmean(self.than) if self.than else None,
            "verdict": self.verdict,
        }


def welch_half_width(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> float | None:
    """Half the width of Welch's t interval for mean(a) − mean(b); None with fewer than 2 runs a side.

    se² = s_a²/n_a + s_b²/n_b, with the Welch–Satterthwaite degrees of freedom
    (s_a²/n_a + s_b²/n_b)² / ((s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1)); two identical
    constant groups have a zero-width interval."""
    from scipy.stats import t

    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    if se2 == 0:
        return 0.0
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2)


def verdict(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return NOT_SHOWN
    low, high = interval
    if low > 0:
        return HOLDS
    if high < 0:
        return REVERSED
    return NOT_SHOWN


def metric_value(run: Run, metric: str) -> float | None:
    """A metric of a run, or the difference `a - b` of two of its metrics."""
    names = [part.strip() for part in metric.split(" - ")]
    values = [run.metrics.get(name) for name in names]
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        return None
    return values[0] - sum(values[1:])


def _members(table: PaperTable, side: Side, setting: dict[str, Any], runs: list[Run]) -> list[Run]:
    chosen = []
    for run in runs:
        if not matches(setting, run.value) or not matches(side.select, run.value):
            continue
        if side.row is not None and row_of(table, run.value) != side.row:
            continue
        if side.column is not None:
            column = {k: v for k, v in table.columns[side.column].items() if k != "metric"}
            if not matches(column, run.value):
                continue
        chosen.append(run)
    return chosen


def _metric_of(table: PaperTable, claim: Claim, side: Side) -> str:
    if claim.metric:
        return claim.metric
    if side.column is not None:
        return table.columns[side.column].get("metric", table.metric)
    return table.metric


def measure(table: PaperTable, runs: list[Run]) -> list[Measured]:
    """Every claim of `table` on `runs`, one entry per claim and setting."""
    out = []
    for claim in table.claims:
        for setting, selector in table.settings.items():
            groups, failed = [], 0
            for side in (claim.better, claim.than):
                metric = _metric_of(table, claim, side)
                values = []
                for run in _members(table, side, selector, runs):
                    value = metric_value(run, metric) if run.status == "completed" else None
                    if value is None or not math.isfinite(value):  # NaN / inf: not a result
                        failed += run.status != "completed" or value is not None
                        continue
                    values.append(value)
                groups.append(values)
            metric = _metric_of(table, claim, claim.better)
            paper = Path(table.source.split(",")[0]).stem  # papers/<paper>.md, Table N
            out.append(Measured(paper, table.name, setting, claim, metric, *groups, failed=failed))
    return out


# -- rendering -----------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:+.{digits}f}".replace("-", "−")


def line(m: Measured, with_source: bool = True) -> tuple[str, ...]:
    """(claim, setting, effect, 95 % CI, n, verdict) as shown; the claim with its source or alone."""
    interval = m.interval
    ci = "—" if interval is None else f"[{_num(interval[0])}, {_num(interval[1])}]"
    n = f"{len(m.better)} vs {len(m.than)}" + (f" ({m.failed} not completed)" if m.failed else "")
    claim = f"{m.claim.claim} ({m.claim.source})" if with_source else m.claim.claim
    return (claim, m.setting, _num(m.effect), ci, n, m.verdict)


HEADER = ("claim (source)", "setting", "effect", "95 % CI (Welch t)", "runs", "verdict")


def to_markdown(measured: list[Measured]) -> str:
    if not measured:
        return ""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(line(m)) + " |" for m in measured]
    note = (
        "effect: mean(better) − mean(than) over completed runs (points; negated for a lower-is-better "
        "metric, plus any tolerance), positive when the paper's claim goes the stated way; 95 % CI: "
        "Welch's t interval over seeds; holds: the CI lies above 0, reversed: below 0, not shown: it spans 0."
    )
    return "\n".join(lines) + f"\n\n{note}\n"


def print_claims(measured: list[Measured], title: str = "claims") -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    where = "each claim's source (table, section) is in the markdown written beside the runs"
    shown = Table(title=title, caption=where)
    for name in ("claim", *HEADER[1:]):
        shown.add_column(name, justify="left" if name in ("claim", "setting") else "right")
    colour = {HOLDS: "green", REVERSED: "red", NOT_SHOWN: "yellow"}
    for m in measured:
        cells = [escape(c) for c in line(m, with_source=False)]
        cells[-1] = f"[{colour[m.verdict]}]{cells[-1]}[/]"
        shown.add_row(*cells)
    Console(width=None if sys.stdout.isatty() else 1000).print(shown)


# -- calibration -----------------------------------------------------------------------------------------


def calibration(runs: list[Run]) -> dict[str, Any]:
    """How hard the runs' data is for the claims (issue 26's calibration), from the runs themselves:
    the float network's test accuracy, and how much fully binary MD-tanh-S (every parameter
    binarized) and 4-bit PTQ of the float network (w4a4) lose against it; means over seeds."""

    def mean(selector: dict[str, Any], metric: str) -> tuple[float | None, int]:
        values = [
            v
            for run in runs
            if run.status == "completed" and matches(selector, run.value)
            for v in [metric_value(run, metric)]
            if v is not None
        ]
        return (statistics.fmean(values) if values else None), len(values)

    float_acc, n_float = mean({"method": "float"}, "test/acc")
    full_binary = {"method": "md_tanh_s", "bitwidth": "binary", "init_from": None}
    full_binary.update({f"method.scope.{k}": True for k in ("first", "last", "bias", "fc")})
    binary_acc, n_binary = mean(full_binary, "test/acc_exported")
    w4a4_acc, n_w4a4 = mean({"method": "float"}, "ptq/acc_w4a4")

    def gap(other: float | None) -> float | None:
        return None if float_acc is None or other is None else float_acc - other

    return {
        "float_acc": float_acc,
        "binary_gap": gap(binary_acc),
        "ptq_w4a4_drop": gap(w4a4_acc),
        "binary_acc": binary_acc,
        "ptq_w4a4_acc": w4a4_acc,
        "n": {"float": n_float, "binary": n_binary, "ptq_w4a4": n_w4a4},
    }
