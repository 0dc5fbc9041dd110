"""End-to-end: the `quantlab` command as a user runs it (subprocesses, outputs on disk)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FAST, quantlab, results, run_dirs


def test_top_level_help(workdir):
    out = quantlab("--help", cwd=workdir).stdout
    assert "train" in out and "bench" in out and "ptq" in out


def test_train_help_lists_groups_and_options(workdir):
    out = quantlab("train", "--help", cwd=workdir).stdout
    for group, option in [
        ("dataset", "digits"),
        ("model", "resnet18"),
        ("method", "float"),
        ("bitwidth", "ternary"),
        ("schedule", "md_cifar"),
        ("experiment", "digits_float"),
    ]:
        assert group in out and option in out


def test_unknown_command(workdir):
    proc = quantlab("fly", cwd=workdir, check=False)
    assert proc.returncode != 0 and "train" in proc.stderr


def test_default_run_outputs(workdir):
    proc = quantlab("train", *FAST, cwd=workdir)
    (run,) = run_dirs(workdir / "outputs")
    assert run.parent.name == "train"
    res = results(run)
    assert res["status"] == "completed" and res["overrides"] == FAST
    # the float default sweeps bitwidth=w8a8's pairs after training
    assert [e["pair"] for e in res["ptq"]] == ["w8a8", "w6a6", "w4a4", "w3a3", "w2a2"]
    assert res["metrics"]["ptq/acc_w8a8"] == res["ptq"][0]["acc"]
    m = res["metrics"]
    for key in ("test/acc", "test/acc_exported", "val/acc", "train/loss", "train/acc"):
        assert key in m
    assert m["test/acc"] == m["test/acc_exported"]  # float: export is the network itself
    assert m["test/acc"] > 50
    assert {"train_s", "eval_s", "total_s", "steps"} <= set(res["timing"])
    for path in (
        ".hydra/config.yaml",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "metrics.jsonl",
        "train.log",
        "exported.pt",
    ):
        assert (run / path).exists(), path
    assert "test/acc" in proc.stderr + proc.stdout  # the summary table

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/acc", "val/acc", "lr"} <= set(tags["scalars"])
    assert any(t.startswith("weights/") for t in tags["histograms"])
    assert acc.PluginTagToContent("hparams"), "hparams missing from TensorBoard"
    assert "hparam/test/acc" in tags["scalars"]
    assert {"ptq/acc_w8a8", "ptq/kl_w2a2"} <= set(tags["scalars"])
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == res["timing"]["steps"]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("schedule.epochs=0", "schedule.epochs"),
        ("schedule.optimizer.lr=-1", "schedule.optimizer.lr"),
        ("schedule.batch_size=0", "schedule.batch_size"),
        ("bitwidth.weight_bits=40", "bitwidth.weight_bits"),
        ("bitwidth.sweep=[[8,17]]", "bitwidth.sweep[0][1]"),
        ("bitwidth.sweep=[[8,4,2]]", "bitwidth.sweep[0]"),
        ("ptq.act_range=best", "ptq.act_range"),
    ],
)
def test_bad_values_one_line_error(workdir, override, field):
    proc = quantlab("train", override, cwd=workdir, check=False)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert field in out and "Traceback" not in out
    error_lines = [line for line in out.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1
    # checked before anything is created: no run directory, nothing lost (tests/test_trust.py)
    assert run_dirs(workdir / "outputs") == [] and not (workdir / "outputs").exists()


def test_unknown_option_lists_choices(workdir):
    proc = quantlab("train", "method=nope", cwd=workdir, check=False)
    assert proc.returncode != 0
    assert "float" in proc.stderr and "nope" in proc.stderr


def test_missing_dataset_fails_cleanly(workdir):
    """Checked before a run directory exists (issue 27): one line, exit 2, nothing created."""
    proc = quantlab("train", "dataset=cifar10", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert "QUANTLAB_DATA" in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
    assert not (workdir / "outputs").exists()


def test_existing_run_dir_never_overwritten(workdir):
    target = workdir / "myrun"
    quantlab("train", *FAST, f"hydra.run.dir={target}", cwd=workdir)
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    proc = quantlab("train", *FAST, "seed=5", f"hydra.run.dir={target}", cwd=workdir, check=False)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr
    after = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert before == after


def test_two_job_multirun(workdir):
    quantlab("train", "-m", *FAST, "seed=0,1", cwd=workdir)
    runs = run_dirs(workdir / "outputs")
    assert len(runs) == 2 and all("multirun" in str(r) for r in runs)
    res = [results(r) for r in runs]
    assert all(r["status"] == "completed" for r in res)
    assert sorted(r["overrides"][-1] for r in res) == ["seed=0", "seed=1"]
    assert res[0]["metrics"]["train/loss"] != res[1]["metrics"]["train/loss"]


def test_resume_requires_a_run(workdir):
    proc = quantlab("train", f"resume={workdir / 'nothing'}", cwd=workdir, check=False)
    assert proc.returncode != 0 and "checkpoints/last.pt" in proc.stderr


def test_quantized_method_end_to_end(workdir):
    quantlab("train", "method=md_tanh_s", "bitwidth=binary", "schedule.epochs=2", cwd=workdir)
    (run,) = run_dirs(workdir / "outputs")
    res = results(run)
    assert res["status"] == "completed" and res["choices"]["method"] == "md_tanh_s"
    assert {"test/acc", "test/acc_exported", "val/acc_exported", "method/beta"} <= set(res["metrics"])
    assert res["metrics"]["method/beta"] == pytest.approx(1.2 ** (38 // 10))  # x1.2 every 10 steps
    exported = __import__("torch").load(run / "exported.pt", weights_only=False)["model"]
    conv = exported["0.weight"]
    assert set(conv.unique().tolist()) <= {-1.0, 1.0}


def test_paper_preset_rows_in_a_real_multirun(workdir):
    """A paper preset picks each job's row by its method (Hydra's runtime choices), on real files."""
    from tests.fakedata import write_cifar10

    root = write_cifar10(workdir / "data")
    quantlab(
        "train",
        "-m",
        "experiment=md_t1_cifar10_resnet18",
        "method=md_tanh_s,bc",
        "model=small_cnn",
        f"dataset.root={root}",
        "dataset.verify=false",
        "dataset.val_size=10",
        "schedule.iterations=3",
        "schedule.batch_size=16",
        cwd=workdir,
    )
    runs = {results(r)["choices"]["method"]: r for r in run_dirs(workdir / "outputs")}
    assert set(runs) == {"md_tanh_s", "bc"}
    import yaml

    cfgs = {m: yaml.safe_load((r / "config.yaml").read_text()) for m, r in runs.items()}
    assert cfgs["md_tanh_s"]["schedule"]["beta"]["interval"] == 200  # Table 8, CIFAR-10 ResNet-18
    assert cfgs["bc"]["schedule"]["lr"]["scale"] == 0.3
    assert cfgs["md_tanh_s"]["model"]["bn_affine"] is False


def test_a_grid_over_methods_takes_a_key_only_some_of_them_have(workdir):
    """method.strength is l1's, not float's: the l1 job runs, the float job fails alone in one line."""
    sweep = workdir / "sweep"
    proc = quantlab(
        "train", "-m", "method=l1,float", "method.strength=1e-6", *FAST, f"hydra.sweep.dir={sweep}",
        cwd=workdir, check=False,
    )  # fmt: skip
    warning = [line for line in proc.stderr.splitlines() if "warning: job 1" in line]
    assert len(warning) == 1 and "method.strength: method=float has no such setting" in warning[0]
    l1, float_ = results(sweep / "0"), results(sweep / "1")
    assert l1["status"] == "completed" and l1["choices"]["method"] == "l1"
    assert float_["status"] == "failed" and float_["error"].startswith("method.strength: method=float")
    typo = quantlab("train", "-m", "method=l1,float", "method.strenght=1", cwd=workdir, check=False)
    assert typo.returncode == 2 and "method.strenght: no method of the grid (float, l1)" in typo.stderr
