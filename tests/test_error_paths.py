"""The last error paths (issue 27): each reproduced through the command a user types. A refusal is one
line and changes nothing; a failure says what failed, once."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, quantlab, results
from tests.test_trust import (
    copy_run,
    error_lines,
    interrupted,  # noqa: F401  (a fixture)
    snapshot,
    start,
    wait_for_checkpoint,
)

ONE_EPOCH = ["schedule.epochs=1", "bitwidth.sweep=[[8,8]]"]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# -- 1. a grid over methods sets a key only some of them have ----------------------------------------------


def test_a_grid_over_methods_sets_a_key_every_method_has(workdir):
    """`-m method=foothill,l1 method.strength=...`: both have it, both runs take it (the sweep's own
    config, composed with the default method, does not)."""
    sweep = workdir / "sweep"
    quantlab(
        "train",
        "-m",
        "method=foothill,l1",
        "method.strength=1e-6",
        *ONE_EPOCH,
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
    )
    for job in ("0", "1"):
        r = results(sweep / job)
        assert r["status"] == "completed"
        from omegaconf import OmegaConf

        assert OmegaConf.load(sweep / job / "config.yaml").method.strength == pytest.approx(1e-6)


def test_a_key_no_method_of_the_grid_has_is_one_line(workdir):
    proc = quantlab("train", "-m", "method=float,md_tanh_s", "method.strength=1e-6", cwd=workdir, check=False)
    (line,) = _lines(proc.stderr)
    assert proc.returncode == 2 and "method.strength" in line and "float, md_tanh_s" in line, proc.stderr
    assert not (workdir / "multirun").exists() and not (workdir / "outputs").exists()


# -- 2. a failed job in a multirun ---------------------------------------------------------------------------


def test_a_failed_job_in_a_multirun_is_one_line_and_a_summary(workdir):
    """The float job cannot take `method.strength`: it fails alone (one line naming it); l1 completes; the
    sweep ends with a summary and exit 1, no traceback."""
    sweep = workdir / "sweep"
    proc = quantlab(
        "train",
        "-m",
        "method=float,l1",
        "method.strength=1e-6",
        *ONE_EPOCH,
        f"hydra.sweep.dir={sweep}",
        cwd=workdir,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    failed = [line for line in proc.stderr.splitlines() if "job 0" in line and "error" in line]
    assert len(failed) == 1 and "strength" in failed[0], proc.stderr
    assert "1 completed, 1 failed" in proc.stderr.splitlines()[-1], proc.stderr
    assert results(sweep / "0")["status"] == "failed" and results(sweep / "1")["status"] == "completed"


# -- 8. printed commands are quoted for the shell ---------------------------------------------------


def test_a_printed_resume_command_pastes_into_a_shell(workdir, monkeypatch):
    run = workdir / "dir with spaces" / "run 1"
    proc = start(
        "train",
        *FAST,
        "schedule.epochs=15",
        "trainer.checkpoint_every_steps=7",
        f"hydra.run.dir={run}",
        cwd=workdir,
    )
    wait_for_checkpoint(proc, run, 14)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    (line,) = error_lines(err)
    command = line.split("continue with: ", 1)[1].strip()
    assert shlex.split(command) == ["quantlab", "train", f"resume={run}"], command


# -- 9, 12, 13. refusals change nothing; a corrupt checkpoint is corrupt; a live run is named ---------


@pytest.fixture
def stopped_run(workdir, interrupted) -> Path:  # noqa: F811
    return copy_run(interrupted[0], workdir / "run")


def test_a_refused_resume_leaves_the_run_as_it_was(workdir, stopped_run):
    """A resume refused for a changed setting leaves status, results.json and the lock as they were."""
    before = snapshot(stopped_run)
    status = results(stopped_run)["status"]
    proc = quantlab("train", f"resume={stopped_run}", "model=lenet5", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert snapshot(stopped_run) == before and results(stopped_run)["status"] == status == "interrupted"
    assert not (stopped_run / ".lock").exists()


def test_a_refused_checkpoint_creates_nothing(workdir, stopped_run):
    """Random bytes as a checkpoint: `init_from=`, `ptq`, `export` refuse it in one line that calls it
    corrupt, and create no run, ptq or export directory."""
    garbage = workdir / "garbage.pt"
    garbage.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    (stopped_run / "checkpoints" / "best.pt").write_bytes(garbage.read_bytes())
    (stopped_run / "checkpoints" / "last.pt").write_bytes(garbage.read_bytes())
    commands = [
        ("train", *FAST, f"init_from={garbage}"),
        ("ptq", f"run={stopped_run}", "allow_incomplete=true"),
        ("train", f"resume={stopped_run}"),
    ]
    if _has_export():
        commands.append(
            ("export", f"run={stopped_run}", "bits=w8a8", "checkpoint=last", "allow_incomplete=true")
        )
    before = snapshot(stopped_run)
    for args in commands:
        proc = quantlab(*args, cwd=workdir, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        (line,) = error_lines(proc.stderr)
        assert "corrupt" in line and "could run code" not in line, (args, line)
    assert not (workdir / "outputs").exists(), list((workdir / "outputs").rglob("*"))
    after = snapshot(stopped_run)
    status = json.loads(after.pop(stopped_run / "results.json"))["status"]
    before.pop(stopped_run / "results.json")
    assert after == before and status == "interrupted"


def _has_export() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def test_a_resume_of_a_live_run_before_its_first_checkpoint_names_the_holder(workdir):
    run = workdir / "run"
    proc = start(
        "train",
        "schedule.epochs=50",
        "trainer.checkpoint_every_steps=100000",
        f"hydra.run.dir={run}",
        cwd=workdir,
    )
    try:
        deadline = __import__("time").time() + 60
        while not (run / "results.json").exists() and __import__("time").time() < deadline:
            __import__("time").sleep(0.05)
        assert not (run / "checkpoints" / "last.pt").exists()
        refused = quantlab("train", f"resume={run}", cwd=workdir, check=False)
        (line,) = error_lines(refused.stderr)
        assert refused.returncode == 2 and str(proc.pid) in line, line
    finally:
        proc.kill()
        proc.communicate()
