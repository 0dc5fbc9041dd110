"""Paper tables (`quantlab table --paper`), the paper-table scripts and `quantlab plot`."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from quantlab.commands.table import main
from quantlab.report.collect import Run, find_runs
from quantlab.report.paper import available, load_paper, matches, row_of
from quantlab.report.tables import build_paper_table, to_csv, to_latex, to_markdown
from quantlab.runs.config import check_missing, check_preset_row, compose, group_options
from tests.conftest import REPO, cli_env, quantlab

PAPERS = REPO.parent / "shared" / "papers"
GROUPS = ("method", "dataset", "model", "bitwidth")


def _write_run(path: Path, choices: dict, config: dict, status: str = "completed", **metrics) -> None:
    """A run directory as `quantlab train` leaves it: results.json and the resolved config.yaml."""
    path.mkdir(parents=True)
    (path / ".hydra").mkdir()
    overrides = [f"{k}={v}" for k, v in choices.items()]
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    ptq = [{"pair": k.removeprefix("ptq_"), "acc": v} for k, v in metrics.items() if k.startswith("ptq_")]
    data = {
        "status": status,
        "overrides": overrides,
        "choices": choices,
        "metrics": {k: v for k, v in metrics.items() if not k.startswith("ptq_")},
        "ptq": ptq,
    }
    (path / "results.json").write_text(json.dumps(data))
    (path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))


# -- the data files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", available())
def test_paper_table_is_well_formed_and_names_real_configs(name):
    paper = load_paper(name)
    assert paper.rows and paper.settings and paper.columns
    for row, values in paper.values.items():
        assert row in paper.rows
        assert all(v is None or 0 <= v <= 100 for v in values), row
    selectors = (
        [s for s in paper.rows.values() if s] + list(paper.settings.values()) + list(paper.columns.values())
    )
    for selector in selectors:
        for group in GROUPS:
            if group in selector:
                assert selector[group] in group_options(group), (name, group, selector[group])
    for _, _, _, metric in paper.cells():
        assert metric.startswith(("test/acc", "ptq/acc_w")), metric


@pytest.mark.skipif(not PAPERS.is_dir(), reason="../shared/papers is not beside the checkout")
@pytest.mark.parametrize("name", available())
def test_every_paper_number_is_in_the_papers_text(name):
    """The data files are transcriptions: each number occurs in the named paper."""
    paper = load_paper(name)
    text = (PAPERS / Path(paper.source.split(",")[0]).name).read_text()
    numbers = {float(x) for x in re.findall(r"\d+\.\d+", text)}
    for row, values in paper.values.items():
        for value in values:
            assert value is None or value in numbers, (name, row, value)


# -- matching ---------------------------------------------------------------------------------------------


def test_a_run_goes_to_the_most_specific_row_and_every_matching_column():
    paper = load_paper("waveq_t6")
    strength0 = {"method": "waveq", "method.strength": 0.0, "dataset": "svhn", "preset.bits": 3}
    strength1 = {**strength0, "method.strength": 1.0}
    assert row_of(paper, strength0.get) == "Training w/o WaveQ"  # both rows match; two keys beat one
    assert row_of(paper, strength1.get) == "Training w/ WaveQ"
    assert row_of(paper, {"method": "float"}.get) is None
    cells = [(s, c) for s, c, selector, _ in paper.cells() if matches(selector, strength1.get)]
    assert cells == [("svhn", "3 bits")]


def test_selector_values_null_any_numbers_and_booleans():
    assert matches({"init_from": None}, {}.get)
    assert not matches({"init_from": None}, {"init_from": "/runs/float"}.get)
    assert matches({"init_from": "*"}, {"init_from": "/runs/float"}.get)
    assert not matches({"init_from": "*"}, {}.get)
    assert matches({"method.strength": 1.0e-4}, {"method.strength": "1e-4"}.get)  # an override's text
    assert not matches({"method.strength": 1.0e-4}, {"method.strength": 1.0e-3}.get)
    assert matches({"method.scope.first": True}, {"method.scope.first": "true"}.get)
    assert matches({"method": "bc"}, {"method": "bc"}.get) and not matches(
        {"method": "bc"}, {"method": "pq"}.get
    )


def test_paper_table_cells_ours_paper_and_difference(tmp_path):
    """MD Table 1 from five fake runs: the matching setting's column gets our mean ± std, the paper's
    number and the difference; a digits run is outside the strict table; a failed run is shown."""
    cifar = {"dataset": "cifar10", "model": "resnet18", "bitwidth": "binary"}
    base = {"method": {"scope": {"first": True, "last": True}}}
    _write_run(
        tmp_path / "a", {**cifar, "method": "md_tanh_s", "seed": "0"}, base, **{"test/acc_exported": 93.0}
    )
    _write_run(
        tmp_path / "b", {**cifar, "method": "md_tanh_s", "seed": "1"}, base, **{"test/acc_exported": 92.0}
    )
    _write_run(tmp_path / "c", {**cifar, "method": "bc", "seed": "0"}, base, status="failed")
    digits = {"dataset": "digits", "model": "small_cnn", "method": "bc", "bitwidth": "binary"}
    _write_run(tmp_path / "d", digits, base, **{"test/acc_exported": 97.0})
    _write_run(tmp_path / "e", {**cifar, "method": "adam_unknown"}, base, **{"test/acc_exported": 1.0})
    runs = find_runs([tmp_path])
    table, outside = build_paper_table(runs, load_paper("md_t1"))
    assert sorted(r.path.name for r in outside) == ["d", "e"]  # digits; a method the paper has no row for
    assert table.row_keys == ["algorithm"] and table.rows[0] == ("REF (float)",) and len(table.rows) == 11
    assert table.columns == [
        "cifar10/vgg16", "cifar10/resnet18", "cifar100/vgg16", "cifar100/resnet18", "tinyimagenet/resnet18"
    ]  # fmt: skip
    assert table.text(("MD-tanh-s",), "cifar10/resnet18") == "92.50 ± 0.71 / 93.18 (−0.68)"
    assert table.text(("MD-tanh-s",), "cifar10/vgg16") == "— / 91.53"
    assert table.text(("BC",), "cifar10/resnet18") == "1 failed / 91.64"
    assert table.text(("PMF",), "cifar100/vgg16") == "— / 61.52"  # a paper-only row
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    cell = next(r for r in rows if r["algorithm"] == "MD-tanh-s" and r["column"] == "cifar10/resnet18")
    assert float(cell["mean"]) == 92.5 and float(cell["paper"]) == 93.18
    assert float(cell["diff"]) == pytest.approx(92.5 - 93.18)
    assert "| MD-tanh-s | — / 91.53 | 92.50 ± 0.71 / 93.18 (−0.68) |" in to_markdown(table)
    assert r"92.50 $\pm$ 0.71 / 93.18 (-0.68)" in to_latex(table)

    # one setting, whatever the data: the digits run now sits in the BC row beside CIFAR-10 ResNet-18
    table, outside = build_paper_table(runs, load_paper("md_t1:cifar10/resnet18"))
    assert table.columns == ["cifar10/resnet18"] and [r.path.name for r in outside] == ["e"]
    assert table.text(("BC",), "cifar10/resnet18") == "97.00 (1 failed) / 91.64 (+5.36)"


def test_rows_by_resolved_config_keys(tmp_path):
    """MD Table 3's rows differ by config values (scope, init_from) that only config.yaml holds."""
    scratch = {"method": {"scope": {"first": False, "last": False}}, "init_from": None}
    full = {"method": {"scope": {"first": True, "last": True}}, "init_from": None}
    tuned = {"method": {"scope": {"first": False, "last": False}}, "init_from": "/runs/float/0"}
    for name, config, acc in (("s", scratch, 60.0), ("f", full, 50.0), ("t", tuned, 66.0)):
        _write_run(tmp_path / name, {"method": "md_tanh_s"}, config, **{"test/acc_exported": acc})
    table, outside = build_paper_table(find_runs([tmp_path]), load_paper("md_t3:imagenet/resnet18"))
    assert outside == []
    assert table.text(("MD-tanh-s*",), "top-1") == "60.00 / 65.92 (−5.92)"
    assert table.text(("MD-tanh-s*+",), "top-1") == "50.00 / 56.67 (−6.67)"
    assert table.text(("MD-tanh-s",), "top-1") == "66.00 / 66.78 (−0.78)"
    assert table.text(("MD-tanh-s",), "top-5") == "— / 87.01"


def test_ptq_columns_of_a_paper_table(tmp_path):
    cfg = {"method": {}}
    _write_run(
        tmp_path / "r", {"method": "grad_l1"}, cfg, **{"test/acc": 92.0, "ptq_w8a4": 90.0, "ptq_w4a4": 85.0}
    )
    table, _ = build_paper_table(find_runs([tmp_path]), load_paper("gl1_t1:vgg_small"))
    assert table.columns == ["FP", "(8,4)", "(6,4)", "(4,4)"]
    row = ("L1 Regularization (Ours)",)
    assert [table.text(row, c) for c in table.columns] == [
        "92.00 / 92.63 (−0.63)", "90.00 / 89.74 (+0.26)", "— / 89.78", "85.00 / 85.99 (−0.99)"
    ]  # fmt: skip


def test_paper_option_errors_are_one_line(tmp_path, capsys):
    _write_run(tmp_path / "r", {"method": "float"}, {}, **{"test/acc_exported": 90.0})
    for spec, expected in (
        ("nope", "no such paper table; one of"),
        ("md_t1:mnist", "no such setting; one of"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([str(tmp_path), "--paper", spec])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err and spec.split(":")[0] in err


def test_paper_table_command_writes_files_and_notes(tmp_path, capsys):
    _write_run(
        tmp_path / "r", {"method": "l2"}, {"method": {"strength": 1.0e-3}}, **{"test/acc_exported": 89.0}
    )
    main([str(tmp_path), "--paper", "foothill_t3:cifar10/alexnet_bn", "--name", "t3"])
    out = capsys.readouterr().out
    assert "89.00 / 89.51 (−0.51)" in out and "88.63 %" in out  # the caption's note
    assert "88.63 %" in (tmp_path / "t3.md").read_text()
    assert (tmp_path / "t3.csv").is_file() and (tmp_path / "t3.tex").is_file()


# -- the scripts ------------------------------------------------------------------------------------------

SCRIPTS = sorted(p for p in (REPO / "scripts" / "tables").glob("*.sh") if p.stem != "lib")
FAKE = """import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def _record(script: Path, scale: str, tmp: Path) -> list[list[str]]:
    """The quantlab commands a script runs, from a stand-in `quantlab` that only writes them down."""
    fake, log = tmp / "fake.py", tmp / f"{script.stem}-{scale}.log"
    fake.write_text(FAKE)
    env = {**os.environ, "QUANTLAB": f"{sys.executable} {fake}", "FAKE_LOG": str(log), "OUT": str(tmp / "o")}
    proc = subprocess.run(["bash", str(script), scale], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def _split(value: str) -> list[str]:
    """A Hydra sweep `a,b,c` into its values (a list value such as [[8,4],[4,4]] is one value)."""
    return [value] if value.startswith("[") else value.split(",")


def _jobs(argv: list[str]) -> list[list[str]]:
    """Enough jobs of a `train -m` command that every swept value is composed at least once."""
    items = [a for a in argv[2:] if not a.startswith("hydra.sweep.dir=")]
    swept = [[f"{a.split('=', 1)[0]}={v}" for v in _split(a.split("=", 1)[1])] for a in items]
    width = max(len(values) for values in swept)
    return [[values[i % len(values)] for values in swept] for i in range(width)]


@pytest.mark.parametrize("scale", ["smoke", "full"])
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_table_script_composes_and_fills_its_paper_table(script, scale, tmp_path):
    """Every job of every grid of the script composes (its preset has a row for its method), and falls
    in a cell of the paper table that the script then asks for (the float runs of tables whose
    unregularized number is a note excepted)."""
    from hydra.core.hydra_config import HydraConfig

    calls = _record(script, scale, tmp_path)
    trains = [c for c in calls if c[:2] == ["train", "-m"]]
    tables = [c for c in calls if c[0] == "table"]
    spec = tables[0][tables[0].index("--paper") + 1]
    assert trains and len(tables) == 1 and ["plot", str(tmp_path / "o"), "--paper", spec] in calls
    paper = load_paper(spec)
    assert (scale == "full") == (":" not in tables[0][tables[0].index("--paper") + 1])
    for job in itertools.chain.from_iterable(_jobs(c) for c in trains):
        cfg = compose(job)
        choices = {k: v for k, v in HydraConfig.get().runtime.choices.items() if isinstance(v, str)}
        check_preset_row(cfg, choices.get("method"), choices.get("experiment"))
        check_missing(cfg)
        run = Run(Path("."), "completed", choices=choices)
        run._config = OmegaConf.to_container(cfg, resolve=True)
        placed = row_of(paper, run.value) is not None and any(
            matches(selector, run.value) for _, _, selector, _ in paper.cells()
        )
        in_note = choices["method"] == "float" and "method=float" in " ".join(paper.notes)
        assert placed or in_note, (script.stem, scale, job)


def test_table_script_refuses_a_bad_scale_and_an_existing_output(tmp_path):
    script = REPO / "scripts" / "tables" / "md_t1.sh"
    env = {**os.environ, "QUANTLAB": "false", "OUT": str(tmp_path)}
    for args, expected in ((["tiny"], "scale must be smoke or full"), (["smoke"], "exists")):
        proc = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 2 and expected in proc.stderr


# -- plots ------------------------------------------------------------------------------------------------


def _curves(path: Path, betas: list[float]) -> None:
    lines = [
        json.dumps({"step": 10 * (i + 1), "val/acc": 50.0 + i, "method/beta": b}) for i, b in enumerate(betas)
    ]
    (path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 99, "val/a')  # a cut-short line


def test_plot_writes_ptq_and_curve_pngs(tmp_path, monkeypatch):
    from quantlab.report.plots import plot_ptq, read_curves

    for seed, acc in ((0, 90.0), (1, 92.0)):
        for method in ("float", "grad_l1"):
            run = tmp_path / f"{method}{seed}"
            metrics = {"test/acc": acc, "ptq_w8a8": acc - 1, "ptq_w4a4": acc - 10}
            _write_run(run, {"method": method, "seed": str(seed)}, {}, **metrics)
            _curves(run, [1.0, 10.0, 1000.0])
    assert read_curves(tmp_path / "float0")["method/beta"] == [(10, 1.0), (20, 10.0), (30, 1000.0)]
    proc = quantlab(
        "plot", str(tmp_path), "--out", str(tmp_path / "figs"), cwd=tmp_path, env=cli_env(tmp_path)
    )
    for name in ("ptq.png", "curves.png"):
        data = (tmp_path / "figs" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        assert f"wrote {tmp_path / 'figs' / name}" in proc.stdout
    import matplotlib.pyplot as plt

    calls = []
    monkeypatch.setattr(
        plt.Axes,
        "errorbar",
        lambda self, x, y, yerr=None, **kw: calls.append((list(x), list(y), list(yerr), kw)),
    )
    plot_ptq(find_runs([tmp_path]), ["method"], "test/acc", tmp_path / "p.png")
    assert [c[3]["label"] for c in calls] == ["method=float", "method=grad_l1"]
    assert calls[0][:3] == ([0, 1, 2], [91.0, 90.0, 81.0], pytest.approx([1.4142135, 1.4142135, 1.4142135]))


def test_plot_errors(tmp_path):
    _write_run(tmp_path / "r", {"method": "float"}, {}, **{"test/acc": 90.0})
    env = cli_env(tmp_path)
    proc = quantlab("plot", str(tmp_path), "--kind", "ptq", cwd=tmp_path, env=env, check=False)
    assert (
        proc.returncode == 2 and "no PTQ sweep" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    )
    proc = quantlab("plot", str(tmp_path), "--kind", "bars", cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2 and "choose from ptq, curves" in proc.stderr
    proc = quantlab("plot", str(tmp_path), cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2 and "nothing to plot" in proc.stderr
    _curves(tmp_path / "r", [0.1, 0.2])  # by default, what the runs have is drawn and the rest said
    proc = quantlab("plot", str(tmp_path), cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 0 and "no ptq.png" in proc.stderr and (tmp_path / "curves.png").is_file()
