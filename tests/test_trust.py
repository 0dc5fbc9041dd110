"""Runs you can trust (issue 14): nothing a user ran is lost or silently wrong. One test (or more)
per failure the issue lists, each reproducing it through the command a user types; and exact resume
after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, REPO, cli_env, quantlab, results, run_dirs

# 19 steps per epoch on digits; checkpoints every 7 steps, so a stop lands mid-epoch.
RUN = [
    "schedule.epochs=15",
    "trainer.checkpoint_every_steps=7",
    "trainer.checkpoint_every=1000",
    "trainer.log_every=5",
    "trainer.eval_unit=step",
    "trainer.eval_every=30",
]


def start(*args: str, cwd: Path, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "quantlab", *args],
        cwd=cwd,
        env=env or cli_env(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if last.exists() and torch.load(last, weights_only=True)["clock"]["step"] >= step:
                return
        except (RuntimeError, EOFError, OSError):
            pass  # replaced while read
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step >= {step} (process ended: {proc.poll()})")


def stopped(signum: int, run_dir: Path, cwd: Path, args: list[str] = RUN, step: int = 60):
    """Start a run, send `signum` once it has a checkpoint at `step`; returns (exit code, stderr)."""
    proc = start("train", *args, f"hydra.run.dir={run_dir}", cwd=cwd)
    wait_for_checkpoint(proc, run_dir, step)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if ": error:" in line or ": interrupted:" in line]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of RUN."""
    cwd = tmp_path_factory.mktemp("reference")
    quantlab("train", *RUN, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    return cwd / "run"


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, int, str]:
    """A run of RUN stopped by SIGTERM mid-way: (its directory, exit code, stderr). Tests copy it."""
    cwd = tmp_path_factory.mktemp("interrupted")
    code, err = stopped(signal.SIGTERM, cwd / "run", cwd)
    return cwd / "run", code, err


def copy_run(source: Path, to: Path) -> Path:
    shutil.copytree(source, to, ignore=shutil.ignore_patterns(".lock"))
    return to


def snapshot(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}


# -- exact resume (kept from before issue 14) ---------------------------------------------------------------


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_sigkill_then_resume_equals_uninterrupted(workdir, reference):
    killed = workdir / "killed"
    proc = start("train", *RUN, f"hydra.run.dir={killed}", cwd=workdir)
    wait_for_checkpoint(proc, killed, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = killed / "checkpoints" / "last.pt"
    assert results(killed)["status"] == "running", "the run finished before it could be killed"
    state = torch.load(last, weights_only=True)
    assert 0 < state["clock"]["step"] < 15 * 19

    quantlab("train", f"resume={killed}", cwd=workdir)
    done, ref = results(killed), results(reference)
    assert done["status"] == "completed"
    assert done["metrics"] == ref["metrics"]  # exactly equal, every final metric
    assert done["overrides"] == ref["overrides"] == RUN
    # The logged history is the same too: lines written after the last checkpoint were dropped.
    assert (killed / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    a = torch.load(killed / "checkpoints" / "best.pt", weights_only=True)["model"]
    b = torch.load(reference / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [s["status"] for s in done["sessions"]] == ["killed", "completed"]


def test_resume_refuses_changed_settings(workdir):
    run = workdir / "run"
    quantlab("train", "schedule.epochs=1", f"hydra.run.dir={run}", cwd=workdir)
    stopped = json.loads((run / "results.json").read_text())
    stopped["status"] = "interrupted"  # a completed run is not resumed at all (test below)
    (run / "results.json").write_text(json.dumps(stopped))
    proc = quantlab("train", "schedule.epochs=1", "seed=3", f"resume={run}", cwd=workdir, check=False)
    assert proc.returncode != 0 and "seed" in proc.stderr


# -- 1. a resume never destroys what a completed run recorded ----------------------------------------------


def test_resume_of_a_completed_run_is_refused_and_changes_nothing(workdir, finished):
    run = copy_run(finished, workdir / "run")
    before = snapshot(run)
    proc = quantlab("train", f"resume={run}", cwd=workdir, check=False)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert "completed" in line and f"quantlab ptq run={run}" in line and f"init_from={run}" in line
    assert snapshot(run) == before


def test_an_error_during_a_resume_keeps_what_was_recorded(workdir, interrupted):
    """A truncated last.pt: one line naming it, and the run's record stays as it was."""
    run = copy_run(interrupted[0], workdir / "run")
    earlier = results(run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:2000])
    proc = quantlab("train", f"resume={run}", cwd=workdir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert str(last) in line and "truncated or corrupt" in line
    assert results(run) == earlier  # refused before the run is touched (issue 27): still interrupted
    assert earlier["overrides"] == RUN and [s["status"] for s in earlier["sessions"]] == ["interrupted"]


# -- 2. divergence is a failure, never a result ------------------------------------------------------------


def test_divergence_fails_the_run_in_one_line_and_no_table_averages_it(workdir):
    run = workdir / "diverged"
    args = ["schedule.optimizer.name=sgd", "schedule.optimizer.lr=1e30", "schedule.epochs=5"]
    proc = quantlab("train", *args, f"hydra.run.dir={run}", cwd=workdir, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "train/loss became nan at step" in line and "trainer.grad_clip" in line
    res = results(run)
    assert res["status"] == "failed" and "became nan" in res["error"] and res["metrics"] == {}
    table = quantlab("table", str(run), cwd=workdir).stdout
    assert "1 failed" in table


def test_no_checkpoint_with_non_finite_weights_replaces_a_finite_one(tmp_path):
    from quantlab.engine.settings import TrainerSettings
    from quantlab.engine.trainer import Trainer
    from quantlab.errors import Diverged
    from quantlab.methods.floating import Float
    from quantlab.runs.config import compose
    from quantlab.runs.runlog import RunLog

    class Poison(Float):
        """A weight becomes NaN after step 7 (as a too-large step would make it)."""

        def on_step(self, model, step, epoch):
            if step == 7:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("nan")
            return {}

    cfg = compose(["trainer.log_every=5", "trainer.checkpoint_every_steps=5", "schedule.epochs=2"])
    from hydra.utils import instantiate

    with RunLog(tmp_path) as runlog:
        trainer = Trainer(
            instantiate(cfg.model),
            Poison(),
            instantiate(cfg.dataset),
            TrainerSettings.from_config(cfg),
            tmp_path,
            runlog,
        )
        with pytest.raises(Diverged, match=r"at step 10 .*checkpoints/last.pt, step 5"):
            trainer.fit()
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["clock"]["step"] == 5
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# -- 3. one writer per run directory ------------------------------------------------------------------------


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_a_second_writer_or_a_resume_of_a_live_run_fails_at_once_naming_the_holder(workdir):
    run = workdir / "run"
    first = start("train", *RUN, "schedule.epochs=100", f"hydra.run.dir={run}", cwd=workdir)
    try:
        wait_for_checkpoint(first, run, 7)
        before = results(run)
        for args in (["schedule.epochs=100", "seed=1", f"hydra.run.dir={run}"], [f"resume={run}"]):
            proc = quantlab("train", *args, cwd=workdir, check=False)
            assert proc.returncode == 2
            (line,) = error_lines(proc.stderr)
            assert (
                f"in use by another quantlab process (PID {first.pid} on " in line
                or "already holds a run" in line
            )
        assert results(run)["overrides"] == before["overrides"]  # the second writer wrote nothing
        assert (run / ".lock").read_text().split()[0] == str(first.pid)
    finally:
        first.kill()
        first.wait()


def test_two_runs_started_together_into_one_directory_one_wins(workdir):
    run = workdir / "run"
    procs = [start("train", *FAST, f"seed={seed}", f"hydra.run.dir={run}", cwd=workdir) for seed in (0, 1)]
    outcomes = [(p.communicate(timeout=300)[1], p.returncode) for p in procs]
    outcomes = [(code, err) for err, code in outcomes]
    assert sorted(code for code, _ in outcomes) == [0, 2]
    (err,) = [err for code, err in outcomes if code == 2]
    assert "in use by another quantlab process" in err or "already holds a run" in err
    res, config = results(run), (run / "config.yaml").read_text()
    assert res["status"] == "completed" and f"seed: {res['overrides'][-1].split('=')[1]}" in config
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(
        set((run / "metrics.jsonl").read_text().splitlines())
    )


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    from quantlab.engine import lock
    from quantlab.errors import ConfigError

    (tmp_path / ".lock").write_text("999999\n")  # left by a process that died without a word
    assert lock.hold(tmp_path) and (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    code = f"from quantlab.engine import lock; lock.hold({str(tmp_path)!r})"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert (
        other.returncode != 0 and f"in use by another quantlab process (PID {os.getpid()} on " in other.stderr
    )
    lock.release(tmp_path)
    assert lock.holder(tmp_path) is None

    holding = subprocess.Popen([sys.executable, "-c", code + "; input()"], stdin=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.time() + 60
        while lock.holder(tmp_path) != holding.pid and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(ConfigError, match=f"PID {holding.pid} on "):
            lock.hold(tmp_path)
    finally:
        holding.kill()
        holding.wait()
    assert lock.holder(tmp_path) is None and lock.hold(tmp_path)  # the dead holder's lock is taken over
    lock.release(tmp_path)


# -- 4. status after signals and full disks -----------------------------------------------------------------


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_sigterm_then_resume_auto_equals_uninterrupted(workdir, reference, interrupted):
    source, code, err = interrupted
    assert code == 143 and "Traceback" not in err
    (line,) = error_lines(err)
    assert "stopped by SIGTERM at step" in line and f"continue with: quantlab train resume={source}" in line
    run = copy_run(source, workdir / "run")
    stopped_at = results(run)
    assert stopped_at["status"] == "interrupted" and stopped_at["sessions"][0]["status"] == "interrupted"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < state["clock"]["step"] < 15 * 19

    quantlab("train", *RUN, "resume=auto", f"hydra.run.dir={run}", cwd=workdir)
    done, ref = results(run), results(reference)
    assert done["status"] == "completed" and done["metrics"] == ref["metrics"]
    assert done["ptq"] == ref["ptq"] and done["overrides"] == ref["overrides"] == RUN
    # 9. the history is logged once, and time adds up over the two sessions
    assert (run / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    assert [s["status"] for s in done["sessions"]] == ["interrupted", "completed"]
    t = done["timing"]
    assert t["step_ms"] == pytest.approx(1000 * t["train_s"] / t["steps"]) and t["steps"] == 15 * 19
    assert done["sessions"][1]["wall_s"] < t["total_s"] <= sum(s["wall_s"] for s in done["sessions"]) + 1e-6
    # resume=auto of the completed run: nothing to do, successfully
    again = quantlab("train", "resume=auto", f"hydra.run.dir={run}", cwd=workdir)
    assert "nothing to do" in again.stderr and results(run) == done


def test_sigint_is_one_line_with_the_resume_command(workdir):
    run = workdir / "run"
    code, err = stopped(signal.SIGINT, run, workdir, step=14)
    assert code == 130 and "Traceback" not in err
    (line,) = error_lines(err)
    assert "stopped by SIGINT" in line and f"quantlab train resume={run}" in line
    assert results(run)["status"] == "interrupted"


def _file_size_limit(limit: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_checkpoint_that_cannot_be_written_is_one_line_naming_it(workdir):
    """Files over 150 kB cannot be written (RLIMIT_FSIZE: the kernel's EFBIG, as a full disk's ENOSPC)."""
    run = workdir / "run"
    proc = start("train", *FAST, f"hydra.run.dir={run}", cwd=workdir, preexec_fn=_file_size_limit(150_000))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err and "enforce fail" not in err
    (line,) = error_lines(err)
    assert "checkpoints/best.pt: cannot write it: File too large" in line
    res = results(run)
    assert res["status"] == "failed" and "File too large" in res["error"]
    assert not list((run / "checkpoints").glob("*.tmp")) and not list((run / "checkpoints").glob(".*"))


FULL_AT_PTQ = """
import sys
from quantlab.runs import runlog
write = runlog.MetricsLog.write
def full_from_the_sweep_on(self, step, epoch, values):
    if any(k.startswith("ptq/") for k in values):
        self._file = open("/dev/full", "a")  # from here on the disk is full
    write(self, step, epoch, values)
runlog.MetricsLog.write = full_from_the_sweep_on
from quantlab.cli import main
main(sys.argv[1:])
"""


def test_a_full_disk_during_the_final_ptq_fails_the_run(workdir):
    run = workdir / "run"
    proc = subprocess.run(
        [sys.executable, "-c", FULL_AT_PTQ, "train", *FAST, f"hydra.run.dir={run}"],
        cwd=workdir,
        env=cli_env(workdir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "metrics.jsonl: cannot write it: No space left on device" in line
    assert results(run)["status"] == "failed"


# -- 5. one line, exit 2, before anything is created -------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("device=cuda", "device=cuda: CUDA is not available"),
        ("seed=abc", "seed='abc': must be an integer"),
        ("method=nope", "method=nope: no such option; choose one of: bc,"),
        ("schedule.foo=1", "Could not override 'schedule.foo'"),
        ("bitwidth=w8a8 method=md_tanh", "method=md_tanh supports bitwidth=binary"),
        ("init_from=/no/such/run", "init_from=/no/such/run: no such run directory or checkpoint file"),
    ],
)
def test_user_errors_are_one_line_exit_2_and_create_nothing(workdir, override, says):
    if override.startswith("device=cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = quantlab("train", *override.split(), cwd=workdir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert says in line
    assert not (workdir / "outputs").exists()


def test_a_multirun_with_a_bad_job_runs_nothing(workdir):
    proc = quantlab("train", "-m", "seed=0,abc", cwd=workdir, check=False)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert "job 1 (seed=abc)" in line
    assert not (workdir / "outputs").exists()


def test_cifar_files_that_fail_their_checksum_or_are_truncated_are_named(tmp_path):
    from quantlab.data.vision import DatasetMissing
    from quantlab.runs.components import build
    from quantlab.runs.config import compose
    from tests.fakedata import write_cifar10

    root = write_cifar10(tmp_path / "data")

    def cifar10(*extra: str):
        return build(compose(["dataset=cifar10", f"dataset.root={root}", *extra]).dataset, "dataset")

    batch = root / "cifar-10-batches-py" / "data_batch_1"
    with pytest.raises(DatasetMissing, match=f"{batch} fails torchvision's md5 checksum"):
        cifar10()  # the test-written files are not the real ones: their md5 differs
    third = root / "cifar-10-batches-py" / "data_batch_3"
    third.write_bytes(third.read_bytes()[:100])
    with pytest.raises(DatasetMissing, match=f"{third} cannot be read .*truncated or corrupt"):
        cifar10("dataset.verify=false")


# -- 6. data that moved can be resumed; the experiment cannot change ---------------------------------------


def test_resume_takes_the_new_data_root_and_refuses_experiment_changes(tmp_path, monkeypatch):
    from quantlab.engine.rundir import RunDir
    from quantlab.errors import ConfigError
    from quantlab.runs.config import compose, resume_config

    run = tmp_path / "run"
    run.mkdir()
    RunDir(run).config.write_text(
        __import__("omegaconf").OmegaConf.to_yaml(
            compose(["dataset=cifar10", "dataset.root=/old/place", "seed=1"]), resolve=True
        )
    )
    # what the guard composes: the run's own overrides, then the command line's
    moved = ["dataset.root=/scratch/data", "device=cpu", "trainer.num_workers=2"]
    cfg, _ = resume_config(compose(["dataset=cifar10", "seed=1", *moved]), run, moved)
    assert (cfg.dataset.root, cfg.device, cfg.trainer.num_workers, cfg.seed) == ("/scratch/data", "cpu", 2, 1)
    monkeypatch.setenv("QUANTLAB_DATA", "/node/local")
    cfg, _ = resume_config(compose(["dataset=cifar10", "seed=1"]), run, ["dataset=cifar10", "seed=1"])
    assert cfg.dataset.root == "/node/local"
    with pytest.raises(ConfigError, match=r"seed, schedule.optimizer.lr differ from the run's settings"):
        changed = ["seed=2", "schedule.optimizer.lr=0.1", "dataset.root=/x"]
        resume_config(compose(["dataset=cifar10", *changed]), run, changed)


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_a_run_whose_data_moved_resumes_on_the_command_line(workdir):
    from tests.fakedata import write_cifar10

    old = write_cifar10(workdir / "old")
    args = [
        "dataset=cifar10",
        "dataset.verify=false",
        "dataset.val_size=10",
        "schedule.batch_size=8",
        "schedule.epochs=40",
        "trainer.checkpoint_every_steps=5",
    ]
    run = workdir / "run"
    code, _ = stopped(signal.SIGTERM, run, workdir, [*args, f"dataset.root={old}"], step=10)
    assert code == 143
    new = workdir / "new"
    old.rename(new)  # the data moved (e.g. to node-local scratch)
    quantlab("train", f"resume={run}", f"dataset.root={new}", cwd=workdir)
    assert results(run)["status"] == "completed"


# -- 7. quantlab ptq of a run that did not complete ---------------------------------------------------------


def test_ptq_refuses_an_unfinished_run_unless_asked(workdir, interrupted):
    run = interrupted[0]
    proc = quantlab("ptq", f"run={run}", cwd=workdir, check=False)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert "its status is interrupted" in line and "allow_incomplete=true" in line
    assert not (workdir / "outputs").exists()
    quantlab("ptq", f"run={run}", "allow_incomplete=true", "bitwidth.sweep=[[8,8]]", cwd=workdir)
    (out,) = run_dirs(workdir / "outputs")
    res = results(out)
    assert res["status"] == "completed" and res["source_status"] == "interrupted"
    assert res["source_step"] == torch.load(run / "checkpoints" / "best.pt", weights_only=True)["step"]


# -- 8. table and plot read any results.json without crashing ----------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed FAST run (tests copy it)."""
    cwd = tmp_path_factory.mktemp("finished")
    quantlab("train", *FAST, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    return cwd / "run"


@pytest.mark.parametrize("content", ["[]", "null", '{"status": "completed", "metrics": null}', '"text"'])
def test_table_and_plot_count_a_malformed_results_json_as_unreadable(workdir, finished, content):
    copy_run(finished, workdir / "runs" / "good")
    bad = workdir / "runs" / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(content)
    table = quantlab("table", str(workdir / "runs"), cwd=workdir)
    assert "1 unreadable" in table.stdout
    plot = quantlab("plot", str(workdir / "runs"), cwd=workdir, check=False)
    assert plot.returncode == 0 and "Traceback" not in plot.stderr


# -- 9. no metrics.jsonl line twice ------------------------------------------------------------------------


def test_resuming_after_the_last_checkpoint_logs_nothing_twice(workdir, finished):
    """Stopped after its final checkpoint (during the test or the PTQ sweep), a run logs the final
    lines once when resumed: the log is cut back to where the checkpoint was written."""
    run = copy_run(finished, workdir / "run")
    log = (run / "metrics.jsonl").read_text()
    res = results(run)
    res["status"] = "interrupted"  # as if stopped during the sweep: everything after last.pt is redone
    (run / "results.json").write_text(json.dumps(res))
    quantlab("train", f"resume={run}", cwd=workdir)
    assert (run / "metrics.jsonl").read_text() == log
    assert results(run)["metrics"] == res["metrics"]


# -- 10. checkpoints are loaded safely ---------------------------------------------------------------------


class Payload:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_a_checkpoint_whose_pickle_would_run_code_is_refused(workdir, interrupted):
    run = copy_run(interrupted[0], workdir / "run")
    witness = workdir / "pwned"
    for path in (run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt", workdir / "evil.pt"):
        torch.save({"model": Payload(witness), "clock": {"step": 1}}, path)
    runs = [
        ("train", f"resume={run}"),
        ("train", *FAST, f"init_from={workdir / 'evil.pt'}"),
        ("ptq", f"run={run}", "allow_incomplete=true"),
    ]
    for args in runs:
        proc = quantlab(*args, cwd=workdir, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        (line,) = error_lines(proc.stderr)
        assert "refused: not a checkpoint quantlab wrote (it would load posix.system" in line
    assert not witness.exists()


# -- 11. an interrupted sweep resumes ----------------------------------------------------------------------


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_kill_a_sweep_during_job_2_then_resume_it_equals_an_uninterrupted_sweep(workdir):
    grid = ["-m", "seed=0,1,2,3", "schedule.epochs=4", "trainer.checkpoint_every_steps=5"]
    reference = workdir / "reference"
    quantlab("train", *grid, f"hydra.sweep.dir={reference}", cwd=workdir)

    sweep = workdir / "sweep"
    proc = start("train", *grid, f"hydra.sweep.dir={sweep}", cwd=workdir)
    wait_for_checkpoint(proc, sweep / "2", 10)
    proc.kill()
    proc.wait()
    killed = quantlab("table", str(sweep), cwd=workdir).stdout
    assert "1 not started" in killed and "1 killed" in killed  # job 3 was planned, job 2 was killed
    refused = quantlab("train", *grid, f"hydra.sweep.dir={sweep}", cwd=workdir, check=False)
    assert refused.returncode == 2 and "resume=auto" in refused.stderr

    quantlab("train", "-m", f"hydra.sweep.dir={sweep}", "resume=auto", cwd=workdir)
    for name in (reference, sweep):
        quantlab("table", str(name), "--name", "final", cwd=workdir)
    assert (sweep / "final.csv").read_text() == (reference / "final.csv").read_text()
    statuses = [[s["status"] for s in results(sweep / str(j))["sessions"]] for j in range(4)]
    assert statuses == [["completed"], ["completed"], ["killed", "completed"], ["completed"]]
