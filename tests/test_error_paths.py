"""The last error paths (issue 27): each reproduced through the command a user types. A refusal is one
line and changes nothing; a failure says what failed, once."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, cli_env, quantlab, results
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_resume_of_a_live_run_before_its_first_checkpoint_names_the_holder(workdir):
    run = workdir / "run"
    proc = start(
        "train",
        "schedule.epochs=50",
        "trainer.checkpoint_every=1000",
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


# -- 5. ptq stopped by Ctrl-C or SIGTERM ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("trained")
    quantlab("train", *ONE_EPOCH, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    return cwd / "run"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ptq_stopped_by_a_signal_is_interrupted_in_one_line(workdir, trained, signum, code):
    out = workdir / "ptq"
    pairs = "[" + ",".join(f"[{w},{a}]" for w in range(2, 9) for a in (4, 6, 8)) + "]"
    proc = start(
        "ptq",
        f"run={trained}",
        f"bitwidth.sweep={pairs}",
        "ptq.act_range=mse",
        "ptq.calibration_batches=64",
        f"hydra.run.dir={out}",
        cwd=workdir,
    )
    deadline = time.time() + 60
    while not (out / "results.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err, err
    (line,) = error_lines(err)
    assert line.startswith("quantlab ptq: interrupted:") and signal.Signals(signum).name in line
    r = results(out)
    assert r["status"] == "interrupted" and signal.Signals(signum).name in r["error"]


# -- 10. the data is checked before a run directory exists --------------------------------------------------


@pytest.mark.parametrize(
    "dataset",
    [
        "cifar10",
        "imagenet",
        *(pytest.param(d, marks=pytest.mark.slow) for d in ("cifar100", "svhn", "mnist", "tinyimagenet")),
    ],
)
def test_a_dataset_missing_from_its_root_creates_no_run(workdir, dataset):
    empty = workdir / "empty"
    empty.mkdir()
    proc = quantlab("train", f"dataset={dataset}", f"dataset.root={empty}", cwd=workdir, check=False)
    (line,) = _lines(proc.stderr)
    assert proc.returncode == 2 and f"{dataset}: files not found under {empty}" in line, proc.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["empty"]


# -- 11. runs a table or figure cannot use are said, on the console and in the figure ----------------------


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("grid")
    quantlab("train", "-m", "seed=0,1,2", *ONE_EPOCH, f"hydra.sweep.dir={cwd / 'sweep'}", cwd=cwd)
    return cwd / "sweep"


def test_plot_says_which_runs_it_left_out(workdir, grid):
    import shutil

    sweep = workdir / "sweep"
    shutil.copytree(grid, sweep)
    (sweep / "2" / "results.json").write_text("{ cut short")
    proc = quantlab("plot", str(sweep), "--kind", "ptq", cwd=workdir)
    (note,) = [line for line in proc.stderr.splitlines() if "left out" in line]
    assert "1 unreadable" in note and str(sweep / "2") in note
    full = quantlab("plot", str(grid), "--kind", "ptq", "--out", str(workdir / "full"), cwd=workdir)
    assert "left out" not in full.stderr
    # the figure carries the note: it differs from the same figure drawn without one
    from PIL import Image

    with_note, without = Image.open(sweep / "ptq.png"), Image.open(workdir / "full" / "ptq.png")
    assert with_note.size[1] > without.size[1]


def test_a_non_finite_metric_is_never_counted_as_a_completed_run(workdir, grid):
    import shutil

    sweep = workdir / "sweep"
    shutil.copytree(grid, sweep)
    path = sweep / "1" / "results.json"
    record = json.loads(path.read_text())
    record["metrics"]["test/acc"] = float("nan")
    path.write_text(json.dumps(record))
    proc = quantlab("table", str(sweep), "--metric", "test/acc", cwd=workdir)
    assert "1 non-finite" in proc.stdout, proc.stdout
    from quantlab.report.collect import find_runs
    from quantlab.report.tables import build_table

    table = build_table(find_runs([sweep]), None, "metric", ["test/acc"])
    (cell,) = table.cells.values()
    assert cell.statuses == {"completed": 2, "non-finite": 1} and len(cell.values) == 2 and cell.incomplete


# -- 3. read-only locations ----------------------------------------------------------------------------------


@contextlib.contextmanager
def read_only(path: Path):
    """`path` read-only for the commands run inside: a read-only bind mount as root (who ignores
    permissions), the write bits removed otherwise."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    bound = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"no read-only location can be made here: {bound.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _one_line_exit_2(proc, *words: str) -> None:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [x for x in _lines(proc.stderr) if ": error:" in x]
    assert all(w in line for w in words), line


@pytest.mark.slow
def test_read_only_locations_are_one_line(workdir, trained, interrupted):  # noqa: F811
    runs = workdir / "ro"
    runs.mkdir()
    done = copy_run(trained, runs / "done")
    stopped = copy_run(interrupted[0], runs / "stopped")
    outputs = workdir / "outputs_ro"
    outputs.mkdir()
    env = cli_env(workdir)
    env["QUANTLAB_OUTPUTS"] = str(outputs)
    with read_only(runs), read_only(outputs):
        _one_line_exit_2(quantlab("table", str(done), cwd=workdir, check=False), "--out")
        _one_line_exit_2(quantlab("plot", str(done), cwd=workdir, check=False), "--out")
        _one_line_exit_2(quantlab("train", f"resume={stopped}", cwd=workdir, check=False), "cannot write")
        commands = [("train", *ONE_EPOCH), ("ptq", f"run={done}")]
        if _has_export():
            commands.append(("export", f"run={done}", "bits=w8a8"))
        for args in commands:
            _one_line_exit_2(quantlab(*args, cwd=workdir, check=False, env=env), "cannot write", str(outputs))
        assert list(outputs.iterdir()) == []
    table = quantlab("table", str(done), "--out", str(workdir / "tables"), cwd=workdir)
    assert "wrote" in table.stdout


def _hooked(workdir: Path, code: str) -> dict[str, str]:
    """The CLI's environment with `code` run at interpreter start (a sitecustomize module): how the
    tests put a fault where only the operating system could (a signal inside fsync, a full disk)."""
    hook = workdir / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(code)
    env = cli_env(workdir)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    return env


# -- 6. a second Ctrl-C inside atomic_write's fsync ----------------------------------------------


def test_a_second_ctrl_c_inside_fsync_is_one_line(workdir):
    """The first SIGINT (sent from inside an fsync) asks the trainer to stop at the next step; the
    second lands inside the fsync of the stop's own writes: one line, exit 130, every file whole."""
    env = _hooked(
        workdir,
        "import os, signal\n"
        "_fsync, _calls = os.fsync, [0]\n"
        "def fsync(fd):\n"
        "    _fsync(fd)\n"
        "    _calls[0] += 1\n"
        "    if _calls[0] >= 3:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "os.fsync = fsync\n",
    )
    run = workdir / "run"
    proc = quantlab(
        "train",
        *FAST,
        "trainer.checkpoint_every_steps=7",
        f"hydra.run.dir={run}",
        cwd=workdir,
        check=False,
        env=env,
    )
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "interrupted" in line
    assert json.loads((run / "results.json").read_text())["status"] in ("interrupted", "running")
    for pt in (run / "checkpoints").glob("*.pt"):
        torch.load(pt, weights_only=True)  # whole
    assert not list(run.rglob("*.tmp"))


# -- 4. the disk fills while Hydra writes .hydra/ ------------------------------------------------


def test_a_full_disk_while_hydra_starts_the_run_is_one_line_and_recorded(workdir):
    env = _hooked(
        workdir,
        "import errno, os\n"
        "import hydra.core.utils as u\n"
        "def _save_config(cfg, filename, output_dir):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(output_dir / filename))\n"
        "u._save_config = _save_config\n",
    )
    run = workdir / "run"
    proc = quantlab("train", *FAST, f"hydra.run.dir={run}", cwd=workdir, check=False, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [x for x in _lines(proc.stderr) if ": error:" in x]
    assert str(run / ".hydra" / "config.yaml") in line and "No space left on device" in line
    record = results(run)
    assert record["status"] == "failed" and "No space left" in record["error"]


# -- 7. trainer.devices=2: Ctrl-C and a killed rank -----------------------------------------------

DEVICES = ["trainer.devices=2", "schedule.epochs=15", "trainer.checkpoint_every_steps=7"]


def _ranks_of(run: Path) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(run) in text and "torch.distributed" not in text and str(os.getpid()) != cmdline.parent.name:
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.slow
def test_ctrl_c_of_a_multi_process_run_is_exit_130_without_torchrun_tracebacks(workdir):
    run = workdir / "run"
    proc = start("train", *DEVICES, f"hydra.run.dir={run}", cwd=workdir, start_new_session=True)
    wait_for_checkpoint(proc, run, 14)
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SignalException" not in err, err
    assert results(run)["status"] == "interrupted"


@pytest.mark.slow
def test_a_rank_killed_with_sigkill_is_one_line_without_torchrun_reports(workdir):
    run = workdir / "run"
    proc = start("train", *DEVICES, f"hydra.run.dir={run}", cwd=workdir, start_new_session=True)
    wait_for_checkpoint(proc, run, 14)
    ranks = [pid for pid in _ranks_of(run) if pid != proc.pid]
    assert len(ranks) == 2, ranks
    os.kill(max(ranks), signal.SIGKILL)  # the later-started rank: rank 1
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "ChildFailedError" not in err and "Traceback" not in err, err
    assert any("killed by SIGKILL" in line for line in error_lines(err)), err


def test_a_stop_signal_that_surfaces_as_another_error_is_an_interruption(tmp_path):
    """A Ctrl-C that lands inside an import Hydra wraps (or any library that re-raises) still ends the
    command as interrupted: results.json says so and the error raised is the Interrupted."""
    from quantlab.errors import STOP_SIGNAL, Interrupted
    from quantlab.runs.results import recorded

    path, record = tmp_path / "results.json", {}
    STOP_SIGNAL[:] = [signal.SIGINT]
    try:
        with (
            pytest.raises(Interrupted, match="stopped by SIGINT") as raised,
            recorded(path, record, time.perf_counter()),
        ):
            raise ImportError("module 'quantlab.data' has no attribute 'embedded'")
    finally:
        STOP_SIGNAL.clear()
    assert raised.value.exit_code == 130
    assert json.loads(path.read_text())["status"] == "interrupted"
    with pytest.raises(ImportError), recorded(path, record, time.perf_counter()):  # no signal: a failure
        raise ImportError("a real one")
    assert json.loads(path.read_text())["status"] == "failed"
