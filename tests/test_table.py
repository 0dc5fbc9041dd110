"""`quantlab table`: grouping, mean ± std over seeds, failed / missing runs, and the written files."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from quantlab.commands.table import main
from quantlab.report.collect import find_runs
from quantlab.report.tables import build_table, to_csv, to_latex, to_markdown
from tests.conftest import cli_env, quantlab


def _write_run(path: Path, overrides: list[str], status: str = "completed", **metrics: float) -> None:
    path.mkdir(parents=True)
    (path / ".hydra").mkdir()
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    data = {"status": status, "overrides": overrides, "metrics": metrics}
    if status == "failed":
        data["error"] = "RuntimeError: boom"
    ptq = [{"pair": p.removeprefix("ptq_"), "acc": v} for p, v in metrics.items() if p.startswith("ptq_")]
    data["ptq"] = ptq
    data["metrics"] = {k: v for k, v in metrics.items() if not k.startswith("ptq_")}
    (path / "results.json").write_text(json.dumps(data))


def test_grid_with_a_failing_job_still_makes_a_table_that_marks_it(tmp_path):
    """A real multirun in which the mnist jobs fail (no data on disk): the digits row has its numbers,
    the mnist row says "2 failed"; nothing is dropped."""
    grid = tmp_path / "grid"
    env = {**cli_env(tmp_path), "QUANTLAB_DATA": str(tmp_path / "no_data")}
    quantlab(
        "train",
        "-m",
        "dataset=mnist,digits",
        "schedule.epochs=1",
        "seed=0,1",
        f"hydra.sweep.dir={grid}",
        cwd=tmp_path,
        env=env,
        check=False,
    )
    runs = find_runs([grid])
    assert sorted(r.status for r in runs) == ["completed", "completed", "failed", "failed"]
    table = build_table(runs, None, "metric", ["test/acc_exported"])
    assert table.row_keys == ["dataset"] and table.rows == [("digits",), ("mnist",)]
    digits = [r.metrics["test/acc_exported"] for r in runs if r.overrides["dataset"] == "digits"]
    assert table.cell(("digits",), "test/acc_exported").text() == (
        f"{statistics.fmean(digits):.2f} ± {statistics.stdev(digits):.2f}"
    )
    assert table.cell(("mnist",), "test/acc_exported").text() == "2 failed"
    out = quantlab("table", str(grid), cwd=tmp_path, env=env)
    assert "2 failed" in out.stdout and (grid / "table.md").is_file()
    assert "| mnist | 2 failed |" in (grid / "table.md").read_text()


def test_mean_std_over_seeds_rows_columns_and_missing_jobs(tmp_path):
    grid = tmp_path / "grid"
    values = {("l1", "1e-4"): [90.0, 92.0], ("l1", "1e-3"): [80.0, 84.0], ("l2", "1e-4"): [95.0, 97.0]}
    job = 0
    for (method, lam), accs in values.items():
        for seed, acc in enumerate(accs):
            over = [f"method={method}", f"method.strength={lam}", f"seed={seed}", "experiment=x"]
            _write_run(grid / str(job), over, **{"test/acc_exported": acc, "test/acc": acc - 1})
            job += 1
    killed = grid / str(job)  # a job killed before it wrote results.json
    (killed / ".hydra").mkdir(parents=True)
    (killed / ".hydra" / "overrides.yaml").write_text(
        "- method=l2\n- method.strength=1e-3\n- seed=0\n- experiment=x\n"
    )
    (grid / "partial").mkdir()
    (grid / "partial" / "results.json").write_text("{not json")
    runs = find_runs([grid])
    assert len(runs) == 8 and {r.status for r in runs} == {"completed", "missing", "unreadable"}
    table = build_table(
        [r for r in runs if r.status != "unreadable"], None, "method.strength", ["test/acc_exported"]
    )
    assert table.row_keys == ["method"]  # seed and the constant experiment= are not grouping keys
    assert table.columns == ["1e-4", "1e-3"]  # numeric order
    assert table.cell(("l1",), "1e-4").text() == "91.00 ± 1.41"
    assert table.cell(("l1",), "1e-3").text() == "82.00 ± 2.83"
    assert table.cell(("l2",), "1e-3").text() == "1 missing"
    two = build_table(runs, ["method", "method.strength"], "metric", ["test/acc", "test/acc_exported"])
    assert two.columns == ["test/acc", "test/acc_exported"]
    assert two.cell(("l2", "1e-4"), "test/acc").text() == "95.00 ± 1.41"
    md = to_markdown(two)
    assert md.splitlines()[0] == "| method | method.strength | test/acc | test/acc_exported |"
    rows = list(csv.DictReader(io.StringIO(to_csv(two))))
    first = next(
        r
        for r in rows
        if r["method"] == "l1" and r["method.strength"] == "1e-4" and r["column"] == "test/acc"
    )
    assert float(first["mean"]) == 90.0 and first["n"] == "2" and first["completed"] == "2"
    tex = to_latex(two)
    assert r"test/acc\_exported" in tex and r"90.00 $\pm$ 1.41" in tex  # escaped for LaTeX
    assert "-- & -- & 1 unreadable" in tex  # a broken results.json is shown, not dropped


def test_ptq_columns_in_bit_order(tmp_path):
    for seed in (0, 1):
        over = ["method=grad_l1", f"seed={seed}"]
        _write_run(
            tmp_path / f"r{seed}",
            over,
            **{"test/acc_exported": 99.0, "ptq_w4a4": 90.0 + seed, "ptq_w8a8": 98.0, "ptq_w6a6": 97.0},
        )
    table = build_table(find_runs([tmp_path]), ["method"], "ptq", ["test/acc_exported"])
    assert table.columns == ["float", "w8a8", "w6a6", "w4a4"]
    assert table.cell(("grad_l1",), "w4a4").text() == "90.50 ± 0.71"


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2 and "no runs found" in capsys.readouterr().err
