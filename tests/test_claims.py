"""The papers' claims as data: parsing, the effect and its Welch t interval, the verdicts, the reports."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from scipy import stats

from quantlab.commands.claims import main as claims_main
from quantlab.commands.table import main as table_main
from quantlab.report.claims import HOLDS, NOT_SHOWN, REVERSED, calibration, measure, welch_half_width
from quantlab.report.collect import find_runs
from quantlab.report.paper import available, load_paper, parse_claims
from tests.test_paper import _write_run

BINARY = {"method": {"scope": {"first": True, "last": True, "fc": True, "bias": True}}, "init_from": None}


def _runs(tmp_path, method, values, bitwidth="binary", status="completed", config=None, **extra):
    for seed, value in enumerate(values):
        choices = {"method": method, "bitwidth": bitwidth, "seed": str(seed)}
        metrics = {"test/acc_exported": value, **{k: v[seed] for k, v in extra.items()}}
        path = tmp_path / f"{method}-{bitwidth}-{status}-{seed}"
        _write_run(path, choices, config or BINARY, status=status, **metrics)


def _measured(tmp_path, table, claim_text):
    paper = load_paper(table)
    return next(m for m in measure(paper, find_runs([tmp_path])) if m.claim.claim == claim_text)


MD_BC = "MD-tanh-S is more accurate than BC, fully binary"


@pytest.mark.parametrize("name", available())
def test_every_paper_table_lists_its_claims_with_sources(name):
    paper = load_paper(name)
    assert paper.claims, name
    for claim in paper.claims:
        assert claim.source and ("Table" in claim.source or "Sec." in claim.source or "App." in claim.source)


def test_welch_interval_is_scipys():
    a, b = [91.2, 92.5, 90.8, 93.0], [88.0, 90.5, 89.1]
    half = welch_half_width(a, b)
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    diff = statistics.fmean(a) - statistics.fmean(b)
    assert diff - half == pytest.approx(low) and diff + half == pytest.approx(high)
    # the Welch–Satterthwaite formula, written out
    va, vb = statistics.variance(a) / 4, statistics.variance(b) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    assert half == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(va + vb))
    assert welch_half_width([1.0], [2.0, 3.0]) is None and welch_half_width([1.0, 1.0], [2.0, 2.0]) == 0


def test_a_claim_that_holds(tmp_path):
    _runs(tmp_path, "md_tanh_s", [90.0, 91.0, 92.0])
    _runs(tmp_path, "bc", [80.0, 81.5, 82.0])
    _runs(tmp_path, "bc", [50.0], status="failed")
    m = _measured(tmp_path, "md_t1:cifar10/resnet18", MD_BC)
    assert m.effect == pytest.approx(91.0 - 81.1666667)
    low, high = m.interval
    assert 0 < low < m.effect < high and m.verdict == HOLDS
    assert (m.n, len(m.better), len(m.than), m.failed) == (3, 3, 3, 1)  # the failed run counted apart
    record = m.record()
    assert {"paper", "table", "claim", "effect", "ci_low", "ci_high", "n", "verdict"} <= set(record)
    assert record["paper"] == "mirror-descent-quantization" and record["table"] == "md_t1"


def test_a_reversed_claim_and_one_not_shown(tmp_path):
    _runs(tmp_path / "r", "md_tanh_s", [80.0, 81.0, 80.5])
    _runs(tmp_path / "r", "bc", [90.0, 91.0, 90.5])
    assert _measured(tmp_path / "r", "md_t1:cifar10/resnet18", MD_BC).verdict == REVERSED
    _runs(tmp_path / "n", "md_tanh_s", [85.0, 91.0, 88.0])
    _runs(tmp_path / "n", "bc", [86.0, 90.0, 87.0])
    m = _measured(tmp_path / "n", "md_t1:cifar10/resnet18", MD_BC)
    assert m.verdict == NOT_SHOWN and m.interval[0] < 0 < m.interval[1]
    _runs(tmp_path / "one", "md_tanh_s", [95.0])  # one seed: no interval
    _runs(tmp_path / "one", "bc", [80.0, 81.0])
    m = _measured(tmp_path / "one", "md_t1:cifar10/resnet18", MD_BC)
    assert m.effect == pytest.approx(14.5) and m.interval is None and m.verdict == NOT_SHOWN
    m = _measured(
        tmp_path / "n", "md_t1:cifar10/resnet18", "BC is more accurate than PQ (all layers binarized)"
    )
    assert m.effect is None and m.verdict == NOT_SHOWN and m.n == 0  # no PQ runs


def test_ternary_runs_stay_out_of_the_binary_rows(tmp_path):
    _runs(tmp_path, "md_tanh_s", [99.0, 99.0], bitwidth="ternary")
    _runs(tmp_path, "md_tanh_s", [70.0, 72.0])
    m = _measured(
        tmp_path, "md_t5:cifar10/resnet18", "ternary MD-tanh-S is more accurate than binary MD-tanh-S"
    )
    assert m.better == [99.0, 99.0] and m.than == [70.0, 72.0] and m.verdict == HOLDS


def test_a_drop_claim_lower_is_better_and_a_tolerance(tmp_path):
    """Gradient-L1: 'loses less' compares test/acc − ptq/acc_w4a4 (lower is better); 'costs at most
    1 point' is FP(l1) ≥ FP(float) − 1."""
    fp, w4a4 = {"test/acc": [92.8, 92.9, 92.85]}, [80.0, 81.0, 80.0]
    for method, drop_to, acc in (("float", w4a4, [93.0, 93.2, 92.9]), ("grad_l1", [90.0, 90.5, 90.4], None)):
        metrics = {"test/acc": acc or fp["test/acc"], "ptq_w4a4": drop_to}
        _runs(tmp_path, method, [0.0, 0.0, 0.0], bitwidth="w8a4", config={}, **metrics)
    paper = "gl1_t1:vgg_small"
    drop = _measured(
        tmp_path,
        paper,
        "the l1-regularized network loses less accuracy than the unregularized one under PTQ at (4,4)",
    )
    # float loses 93.033 − 80.333 = 12.7; l1 loses 92.85 − 90.3 = 2.55: the effect is the drop saved
    assert drop.effect == pytest.approx((93.0333333 - 80.3333333) - (92.85 - 90.3)) and drop.verdict == HOLDS
    cost = _measured(
        tmp_path, paper, "the l1 regularization costs at most 1 point of full-precision accuracy"
    )
    assert cost.effect == pytest.approx(92.85 - 93.0333333 + 1.0) and cost.verdict == HOLDS
    assert (
        _measured(
            tmp_path, paper, "l1 loses less accuracy than l2 gradient regularization under PTQ at (4,4)"
        ).n
        == 0
    )


def test_claims_by_row_and_column_of_the_table(tmp_path):
    """WaveQ: a side is a cell of the table (a row and a column): the 3-bit runs of each row."""
    for strength, values in ((0.0, [40.0, 42.0]), (0.1, [50.0, 52.0])):
        for bits, offset in ((3, 0.0), (4, 30.0)):
            for seed, value in enumerate(values):
                choices = {"method": "waveq", "seed": str(seed)}
                config = {"method": {"strength": strength}, "preset": {"bits": bits}}
                path = tmp_path / f"s{strength}-b{bits}-{seed}"
                _write_run(path, choices, config, **{"test/acc_exported": value + offset})
    m = _measured(tmp_path, "waveq_t6:svhn", "training with WaveQ beats training without it at 3 bits")
    assert m.better == [50.0, 52.0] and m.than == [40.0, 42.0] and m.verdict == HOLDS


def test_bad_claims_are_refused_naming_the_claim():
    table = load_paper("md_t1")
    with pytest.raises(ValueError, match="claim 1: better: 'Nope' is not a row"):
        parse_claims(
            [{"claim": "x", "source": "Table 1", "better": {"row": "Nope"}, "than": {"row": "BC"}}], table
        )
    with pytest.raises(ValueError, match="claim 1: needs 'source'"):
        parse_claims([{"claim": "x", "better": {"row": "BC"}, "than": {"row": "BC"}}], table)
    with pytest.raises(ValueError, match="PMF' is not a row of the table with runs"):
        parse_claims([{"claim": "x", "source": "s", "better": {"row": "PMF"}, "than": {"row": "BC"}}], table)


def test_table_prints_the_claims_and_claims_writes_json(tmp_path, capsys):
    _runs(tmp_path, "md_tanh_s", [90.0, 91.0, 92.0])
    _runs(tmp_path, "bc", [80.0, 81.5, 82.0])
    _runs(
        tmp_path,
        "float",
        [95.0, 95.5, 95.2],
        bitwidth="w8a8",
        config={},
        **{"test/acc": [95.0, 95.5, 95.2], "ptq_w4a4": [90.0, 90.0, 90.0]},
    )
    table_main([str(tmp_path), "--paper", "md_t1:cifar10/resnet18"])
    out = capsys.readouterr().out
    assert MD_BC in out and "holds" in out and "[+" in out
    assert "| MD-tanh-S is more accurate than BC, fully binary" in (tmp_path / "table.md").read_text()
    claims_main(
        [str(tmp_path), "--paper", "md_t1:cifar10/resnet18,md_t5:cifar10/resnet18", "--out", str(tmp_path)]
    )
    data = json.loads((tmp_path / "claims.json").read_text())
    assert len(data["claims"]) == len(load_paper("md_t1").claims) + len(load_paper("md_t5").claims)
    first = next(c for c in data["claims"] if c["claim"] == MD_BC)
    assert first["verdict"] == "holds" and first["n"] == 3 and first["ci_low"] > 0
    c = data["calibration"]
    assert c["float_acc"] == pytest.approx(95.2333333) and c["ptq_w4a4_drop"] == pytest.approx(5.2333333)
    assert c["binary_gap"] == pytest.approx(95.2333333 - 91.0)
    text = (tmp_path / "claims.md").read_text()
    assert "MD Table 1" in text and "MD Table 5" in text and "Calibration" in text and "holds" in text


def test_calibration_counts_only_the_fully_binary_network(tmp_path):
    _runs(tmp_path, "md_tanh_s", [60.0, 61.0], config={"method": {"scope": {"first": False, "last": False}}})
    assert calibration(find_runs([tmp_path]))["binary_gap"] is None


def test_claims_script_composes_every_job_and_continues_its_sweeps(tmp_path):
    """scripts/claims.sh quick: every job of every grid composes and falls in a paper table's row; the
    claims are then asked for those tables; a second run continues each sweep (resume=auto)."""
    import itertools

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from quantlab.report.collect import Run
    from quantlab.report.paper import row_of
    from quantlab.runs.config import check_missing, check_preset_row, compose
    from tests.conftest import REPO
    from tests.test_paper import _jobs, _record

    script = REPO / "scripts" / "claims.sh"
    calls = _record(script, "quick", tmp_path)
    trains = [c for c in calls if c[:2] == ["train", "-m"]]
    (claims,) = [c for c in calls if c[0] == "claims"]
    papers = [load_paper(spec) for spec in claims[claims.index("--paper") + 1].split(",")]
    assert {p.name for p in papers} == {"md_t1", "md_t5", "gl1_t1", "foothill_t2", "foothill_t3", "waveq_t6"}
    assert all("seed=0,1,2" in c and "schedule.epochs=3" in c for c in trains)
    for job in itertools.chain.from_iterable(_jobs(c) for c in trains):
        cfg = compose(job)
        choices = {k: v for k, v in HydraConfig.get().runtime.choices.items() if isinstance(v, str)}
        check_preset_row(cfg, choices.get("method"), choices.get("experiment"))
        check_missing(cfg)
        run = Run(tmp_path, "completed", choices=choices)
        run._config = OmegaConf.to_container(cfg, resolve=True)
        assert any(row_of(p, run.value) for p in papers), job
    for name in ("gradreg", "md", "md_ternary", "binary", "shaping", "waveq"):
        (tmp_path / "o" / name).mkdir(parents=True)
        (tmp_path / "o" / name / "sweep.json").write_text("{}")
    again = _record(script, "quick", tmp_path)[len(calls) :]  # the log file gathers both runs
    resumed = [c for c in again if c[:2] == ["train", "-m"]]
    assert len(resumed) == 6 and all(
        c[2:] == [f"hydra.sweep.dir={c[2][16:]}", "resume=auto"] for c in resumed
    )
