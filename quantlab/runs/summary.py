"""What a command prints at its end: the summary of a training run and the table of a PTQ sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantlab.engine.console import console
from quantlab.quant.sweep import SweepResult


def print_summary(results: dict[str, Any], run_dir: Path) -> None:
    """The final metrics of a training run (test/, val/, train/, best/), its wall time and directory."""
    from rich.table import Table

    table = Table(title=f"quantlab train — {results['status']}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results["metrics"].items():
        if key.startswith(("test/", "val/", "train/", "best/")):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("wall time (s)", f"{results['timing']['total_s']:.1f}")
    table.add_row("run dir", str(run_dir))
    console.print(table)


def print_sweep(result: SweepResult, title: str) -> None:
    """The sweep as a rich table: top-1, Δ against the unquantized network, top-5, KL."""
    from rich.table import Table

    has_top5 = "acc5" in result.reference
    has_modes = any("modes" in e for e in result.entries)
    table = Table(title=title)
    columns = ["pair", "top-1 %", "Δ vs float", *(["top-5 %"] if has_top5 else []), "KL(float‖quant)"]
    for name in [*columns, *(["mode (other)"] if has_modes else [])]:
        table.add_column(name, justify="left" if name in ("pair", "mode") else "right")
    ref = result.reference
    table.add_row("float", f"{ref['acc']:.2f}", "", *([f"{ref['acc5']:.2f}"] if has_top5 else []), "0")
    for e in result.entries:
        mode = e["mode"]
        if "modes" in e:
            other = {m: v["acc"] for m, v in e["modes"].items() if m != mode}
            mode += "".join(f" ({m}: {acc:.2f})" for m, acc in other.items())
        table.add_row(
            e["pair"],
            f"{e['acc']:.2f}",
            f"{e['acc'] - ref['acc']:+.2f}",
            *([f"{e['acc5']:.2f}"] if has_top5 else []),
            f"{e['kl']:.4g}",
            *([mode] if has_modes else []),
        )
    console.print(table)


def print_export(records: list[dict[str, Any]], title: str) -> None:
    """One row per export: accuracies in onnxruntime and in quantlab, agreement, throughputs."""
    from rich.table import Table

    table = Table(
        title=title, caption="ORT: the ONNX model in onnxruntime (CPU); ours: quantlab's fake quantization"
    )
    columns = ("pair", "mode", "ORT top-1", "ours top-1", "agree %", "max Δlogit", "ORT img/s", "ours img/s")
    for column in (*columns, "status"):
        table.add_column(column, justify="left" if column in ("pair", "mode", "status") else "right")
    for r in records:
        v = r["verification"]
        table.add_row(
            r["pair"],
            r["mode"],
            f"{v['onnx_acc']:.2f}",
            f"{v['fake_quant_acc']:.2f}",
            f"{v['agreement']:.2f}",
            f"{v['max_logit_diff']:.3g}",
            f"{v['onnxruntime_images_per_s']:,.0f}",
            f"{v['fake_quant_images_per_s']:,.0f}",
            r["status"],
        )
    console.print(table)
