"""Kill a run with SIGKILL mid-way, resume it, and get exactly the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from tests.conftest import cli_env, quantlab, results

# Checkpoints every 7 steps (19 steps per epoch), so the kill usually lands mid-epoch too.
RUN = [
    "schedule.epochs=15",
    "trainer.checkpoint_every_steps=7",
    "trainer.checkpoint_every=1000",
    "trainer.log_every=5",
    "trainer.eval_unit=step",
    "trainer.eval_every=30",
]


def test_sigkill_then_resume_equals_uninterrupted(workdir):
    reference, killed = workdir / "reference", workdir / "killed"
    quantlab("train", *RUN, f"hydra.run.dir={reference}", cwd=workdir)

    proc = subprocess.Popen(
        [sys.executable, "-m", "quantlab", "train", *RUN, f"hydra.run.dir={killed}"],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, weights_only=False)["clock"]["step"] >= 60:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert results(killed)["status"] == "running", "the run finished before it could be killed"
    state = torch.load(last, weights_only=False)
    assert 0 < state["clock"]["step"] < 15 * 19

    quantlab("train", f"resume={killed}", cwd=workdir)
    done, ref = results(killed), results(reference)
    assert done["status"] == "completed"
    assert done["metrics"] == ref["metrics"]  # exactly equal, every final metric
    assert done["overrides"] == ref["overrides"] == RUN
    # The logged history is the same too: lines written after the last checkpoint were dropped.
    assert (killed / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    a = torch.load(killed / "checkpoints" / "best.pt", weights_only=False)["model"]
    b = torch.load(reference / "checkpoints" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_settings(workdir):
    run = workdir / "run"
    quantlab("train", "schedule.epochs=1", f"hydra.run.dir={run}", cwd=workdir)
    stopped = json.loads((run / "results.json").read_text())
    stopped["status"] = "interrupted"  # a completed run is not resumed at all (tests/test_trust.py)
    (run / "results.json").write_text(json.dumps(stopped))
    proc = quantlab("train", "schedule.epochs=1", "seed=3", f"resume={run}", cwd=workdir, check=False)
    assert proc.returncode != 0 and "seed" in proc.stderr
