"""Shared helpers: run the `quantlab` CLI in a subprocess as a user would, and find run dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Small and fast: a few epochs of the digits default.
FAST = ["schedule.epochs=3", "trainer.histogram_every=1"]


def cli_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["QUANTLAB_OUTPUTS"] = str(tmp / "outputs")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("QUANTLAB_DATA", None)
    env["COLUMNS"] = "200"
    return env


def quantlab(
    *args: str, cwd: Path, check: bool = True, timeout: float = 300, env: dict | None = None, nproc: int = 1
):
    """Run `python -m quantlab ARGS` from `cwd` (with nproc > 1: `torchrun --standalone
    --nproc_per_node=N -m quantlab ARGS`, as the README says); outputs go under cwd/outputs."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    launcher = torchrun if nproc > 1 else []
    proc = subprocess.run(
        [sys.executable, *launcher, "-m", "quantlab", *args],
        cwd=cwd,
        env=env or cli_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"quantlab {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("results.json"))


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def make_trainer(overrides: list[str], run_dir: Path, runlog=None):
    """A Trainer for the train config composed with `overrides` (built with seed 0), writing into run_dir."""
    from quantlab.runs.components import trainer_for

    return trainer_for(overrides, run_dir, runlog)


def train_in_process(run_dir: Path, overrides: list[str]):
    """Compose the train config with `overrides`, fit a Trainer in-process (seed 0) writing into
    run_dir; return the trainer and the metrics.jsonl lines."""
    from quantlab.runs.runlog import RunLog

    with RunLog(run_dir) as runlog:
        trainer = make_trainer(overrides, run_dir, runlog)
        trainer.fit()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer, lines


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def yaml_method(name: str, *overrides: str, **given):
    """The method `method=<name>` builds, its settings from conf/method/<name>.yaml (the one source of
    its defaults) with `overrides` composed in and `given` Python values (e.g. a schedule object)
    replacing keys; a refusal raises the method's own error."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from quantlab.runs.config import compose

    cfg = compose([f"method={name}", *overrides])
    try:
        return instantiate(cfg.method, **given)
    except InstantiationException as e:
        if e.__cause__ is not None:
            raise e.__cause__ from None
        raise
