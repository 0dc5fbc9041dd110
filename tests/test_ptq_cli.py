"""`quantlab ptq` and the sweep at the end of `quantlab train`, as a user runs them."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import FAST, quantlab, results, run_dirs


def _tree_digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ptq")
    quantlab("train", *FAST, "bitwidth=w8a4", cwd=workdir)
    (run,) = run_dirs(workdir / "outputs" / "train")
    return workdir, run


def test_train_sweeps_its_bitwidth_pairs(finished_run):
    _, run = finished_run
    res = results(run)
    assert [e["pair"] for e in res["ptq"]] == ["w8a4", "w6a4", "w4a4"]
    info = res["ptq_info"]
    assert info["reference"]["acc"] == pytest.approx(res["metrics"]["test/acc_exported"])
    assert info["settings"]["act_range"] == "bn" and "ptq_s" in res["timing"]
    for entry in res["ptq"]:
        assert entry["kl"] >= 0 and 0 <= entry["acc"] <= 100


def test_ptq_resweeps_into_a_new_directory_and_never_touches_the_run(finished_run):
    workdir, run = finished_run
    before = _tree_digest(run)
    proc = quantlab(
        "ptq", f"run={run}", "bitwidth.sweep=[[8,8],[4,null]]", "ptq.act_range=minmax", cwd=workdir
    )
    assert _tree_digest(run) == before
    (out,) = run_dirs(workdir / "outputs" / "ptq")
    res = results(out)
    assert res["status"] == "completed" and res["source_run"] == str(run)
    assert [e["pair"] for e in res["ptq"]] == ["w8a8", "w4afp"]
    reference = res["ptq_info"]["reference"]["acc"]
    assert reference == pytest.approx(results(run)["metrics"]["test/acc_exported"])
    assert abs(res["ptq"][0]["acc"] - reference) <= 1.0  # 8 bits: within a point of float
    assert "w8a8" in proc.stderr + proc.stdout  # the table
    assert (out / "tb").is_dir() and (out / "ptq.log").is_file()


def test_ptq_multirun_over_range_estimators(finished_run):
    workdir, run = finished_run
    quantlab(
        "ptq",
        "-m",
        f"run={run}",
        "ptq.act_range=bn,percentile",
        "bitwidth.sweep=[[6,4]]",
        "hydra.sweep.dir=outputs/ptq_grid",
        cwd=workdir,
    )
    runs = run_dirs(workdir / "outputs" / "ptq_grid")
    assert len(runs) == 2
    assert {results(r)["ptq_info"]["settings"]["act_range"] for r in runs} == {"bn", "percentile"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bitwidth.sweep=[[0,4]]"], "bitwidth.sweep[0][0]=0: bits must be an integer in 1..16"),
        (["bitwidth.sweep=[[8,17]]"], "bitwidth.sweep[0][1]=17"),
        (["bitwidth.sweep=[[8]]"], "bitwidth.sweep[0]=[8]: must be a pair"),
        (["bitwidth.sweep=[8,4]"], "bitwidth.sweep[0]=8: must be a pair"),
        (["checkpoint=final"], "checkpoint='final'"),
    ],
)
def test_ptq_bad_input_one_line(finished_run, args, message):
    workdir, run = finished_run
    proc = quantlab("ptq", f"run={run}", *args, cwd=workdir, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_ptq_needs_a_run_with_a_checkpoint(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("seed: 0\n")
    for run in ("run=half", "run=missing", "run="):
        proc = quantlab("ptq", run, cwd=tmp_path, check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "run" in proc.stderr
    proc = quantlab("ptq", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "run=" in proc.stderr
    assert not (tmp_path / "outputs").exists()  # nothing was created


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_binary_methods_skip_the_sweep_unless_asked(tmp_path):
    quantlab("train", *FAST, "method=md_tanh_s", "bitwidth=binary", "bitwidth.sweep=[[8,8]]", cwd=tmp_path)
    (run,) = run_dirs(tmp_path / "outputs")
    assert results(run)["ptq"] == []
    proc = quantlab(
        "train", *FAST, "method=md_tanh_s", "bitwidth=binary", "ptq.enabled=true", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2 and "ptq.enabled=true: bitwidth.sweep is empty" in proc.stderr
