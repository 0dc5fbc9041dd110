"""One run on 2 processes (torchrun, gloo on the CPU): the test of multi-GPU correctness (issue 17).

2 ranks × batch B/2 is the same training as 1 process × batch B: the same epoch order, each rank its
half of every global batch (resident augmentation drawn for the global batch), gradients averaged
by DistributedDataParallel. Only rank 0 writes; it alone evaluates, tests and sweeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_env, quantlab, run_dirs

NO_BN = ["model=mlp", "model.hidden=[64,64]", "model.batch_norm=false", "schedule.epochs=3"]


def torchrun(*args: str, cwd: Path, **kwargs):
    return quantlab(*args, cwd=cwd, nproc=2, **kwargs)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


def _metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "results.json").read_text())["metrics"]


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_two_ranks_of_half_the_batch_train_as_one_process_of_the_whole(tmp_path):
    """(a) no batch norm: the same final weights (float32 reduction order: atol 1e-5) and metrics."""
    one, two = tmp_path / "one", tmp_path / "two"
    quantlab("train", *NO_BN, f"hydra.run.dir={one}", cwd=tmp_path)
    torchrun("train", *NO_BN, f"hydra.run.dir={two}", cwd=tmp_path)
    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5, msg=key)
    m1, m2 = _metrics(one), _metrics(two)
    for key in ("test/acc", "val/acc", "train/acc"):
        assert m2[key] == pytest.approx(m1[key], abs=0.6), key  # at most one digit's sample flips
    for key in ("test/loss", "train/loss"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-3), key
    assert json.loads((two / "results.json").read_text())["status"] == "completed"


def test_only_rank_0_writes_and_one_directory_is_made(tmp_path):
    """(e) Hydra would resolve ${now:...} per process: the run directory is settled on rank 0."""
    proc = torchrun("train", "schedule.epochs=1", cwd=tmp_path)
    (run,) = run_dirs(tmp_path / "outputs")
    assert sorted(p.name for p in (tmp_path / "outputs" / "train").iterdir()) == [run.name]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and len(results["sessions"]) == 1
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/1") == 1  # one rank logged
    assert proc.stderr.count("quantlab train — completed") == 1


def test_a_bad_override_under_torchrun_is_one_line_from_rank_0(tmp_path):
    proc = torchrun("train", "schedule.epochs=0", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("quantlab train: error")]
    assert len(lines) == 1 and "schedule.epochs" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()


def test_ranks_serve_the_halves_of_the_one_process_batches(tmp_path):
    """Each rank's batch is its contiguous half of the global batch, augmentation included."""
    from quantlab.data import Shard, make_loader
    from quantlab.runs.components import trainer_for
    from tests.fakedata import WRITERS

    root = WRITERS["cifar10"](tmp_path / "data")
    cifar = ["dataset=cifar10", f"dataset.root={root}", "dataset.verify=false", "dataset.val_size=6"]
    # torchvision's per-sample transforms draw from the global RNG: its order is compared unaugmented
    torchvision = [*cifar, "dataset.loader=torchvision", "dataset.augment=false", "trainer.num_workers=0"]
    for overrides in (["dataset=digits"], cifar, torchvision):
        data = trainer_for([*overrides, "model=mlp"], tmp_path / "run").data
        whole = make_loader(data.train, 16, train=True, seed=3)
        halves = [make_loader(data.train, 16, train=True, seed=3, shard=Shard(r, 2)) for r in (0, 1)]
        for (x, y), (x0, y0), (x1, y1) in zip(
            whole.iterate(1), halves[0].iterate(1), halves[1].iterate(1), strict=True
        ):
            assert len(y0) == len(y1) == 8
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y), overrides


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_kill_every_rank_then_resume_equals_an_uninterrupted_distributed_run(tmp_path):
    """(d) SIGKILL the whole torchrun group mid-run; the same command with resume= finishes it."""
    import os
    import signal
    import time

    from tests.test_trust import RUN, wait_for_checkpoint

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    torchrun("train", *RUN, f"hydra.run.dir={reference}", cwd=tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.Popen(
        [*command, "-m", "quantlab", "train", *RUN, f"hydra.run.dir={killed}"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_checkpoint(proc, killed, 60)
    # torchrun starts each rank in a session of its own: kill every process of this run, as SLURM
    # does when it preempts a job (its cgroup), then wait until they are gone
    pids = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline") if _runs(p, str(killed))]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid) for pid in pids):
        time.sleep(0.05)
    assert json.loads((killed / "results.json").read_text())["status"] == "running", "it finished first"
    torchrun("train", *RUN, f"resume={killed}", cwd=tmp_path)
    done, ref = _metrics(killed), _metrics(reference)
    assert json.loads((killed / "results.json").read_text())["status"] == "completed"
    assert done == ref
    assert (killed / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


def _runs(cmdline: Path, needle: str) -> bool:
    try:
        return needle in cmdline.read_bytes().decode(errors="replace")
    except OSError:
        return False


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


FAMILIES = [
    "float",
    "md_tanh_s",
    "md_tanh",
    "md_softmax:ternary",
    "md_softmax_s",
    "pmf",
    "bc",
    "pq",
    "grad_l1,estimator=fd",
    "grad_l1",
    "dq",
    "ste",
    "waveq",
    "foothill",
    "bnn_r1",
]


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_every_method_family_trains_on_two_ranks_and_exports_the_same_network(tmp_path):
    """(c) parametrizations, on_step projections and method state stay identical on every rank."""
    import socket

    import torch.multiprocessing as mp

    from tests.ddp_worker import train_methods

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(train_methods, args=(2, port, FAMILIES, str(tmp_path), 6), nprocs=2, join=True)
    for i, spec in enumerate(FAMILIES):
        rank0, rank1 = (torch.load(tmp_path / f"{i}-{r}.pt", weights_only=True) for r in (0, 1))
        assert rank0.keys() == rank1.keys(), spec
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"{spec}: {key} differs between the ranks"


MLP = ["model=mlp", "model.hidden=[64,64]"]
NO_BN_MLP = [*MLP, "model.batch_norm=false"]
SYNC_CNN = ["model=small_cnn", "trainer.sync_bn=true"]
# With batch norm, a bias before it (and the weight of an input pixel that is constant) has a zero
# gradient up to float32 rounding, which Adam turns into steps of ±lr: batch-norm runs use SGD.
SGD = ["schedule.optimizer.name=sgd", "schedule.optimizer.lr=0.05"]
PENALTY = ["method.strength=0.05"]
FD = ["method.estimator=fd"]
#: (b) and the penalties that are not linear in the batch: name -> (overrides, atol); rtol 1e-4
TRAIN_ALIKE = {
    "sync_bn mlp": ([*MLP, "trainer.sync_bn=true", *SGD], 1e-5),
    "sync_bn small_cnn": ([*SYNC_CNN, *SGD], 1e-5),
    "grad_l1 exact": ([*NO_BN_MLP, "method=grad_l1", *PENALTY], 1e-5),
    # the forward difference divides float32 rounding of the gradient by fd_eps = 1e-4
    "grad_l1 fd": ([*NO_BN_MLP, "method=grad_l1", *PENALTY, *FD], 5e-5),
    "grad_l2 exact": ([*NO_BN_MLP, "method=grad_l2", *PENALTY], 1e-5),
    "grad_l2 exact sync_bn": ([*SYNC_CNN, *SGD, "method=grad_l2", *PENALTY], 1e-5),
}


def _spawn(worker, *args) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port, *args), nprocs=2, join=True)
    worker(0, 1, port, *args)  # the one-process reference, here


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_sync_bn_and_gradient_penalties_on_two_ranks_train_as_one_process(tmp_path):
    """(b) batch norm with trainer.sync_bn=true (statistics of the global batch), and gradient-L1/L2
    (a norm of the global batch's gradient, not the mean of the ranks' norms): 2 ranks × 16 train
    the same weights in 8 steps as 1 process × 32 (float32 reduction order: rtol 1e-4, atol 1e-5)."""
    from tests.ddp_worker import train_runs

    _spawn(train_runs, [overrides for overrides, _ in TRAIN_ALIKE.values()], str(tmp_path), 8)
    for i, (name, (_, atol)) in enumerate(TRAIN_ALIKE.items()):
        one, two = (torch.load(tmp_path / f"{i}-{w}-0.pt", weights_only=True) for w in (1, 2))
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=atol, msg=f"{name}: {key}")


#: name -> (overrides, the largest relative ℓ2 error of the penalty's gradient)
GRADIENT_ALIKE = {
    "grad_l1 exact sync_bn": ([*SYNC_CNN, "method=grad_l1"], 1e-5),
    "grad_l2 exact sync_bn": ([*SYNC_CNN, "method=grad_l2"], 1e-5),
    "grad_l1 fd sync_bn": ([*SYNC_CNN, "method=grad_l1", *FD], 1e-3),
    "grad_l2 fd sync_bn": ([*SYNC_CNN, "method=grad_l2", *FD], 1e-2),
}


def test_gradient_penalties_under_sync_bn_have_the_one_process_gradient(tmp_path):
    """Gradient-L1/L2 through batch statistics shared by the ranks (double backprop through the
    all-reduce; the forward difference with the global direction and step): the penalty's value on
    every rank, and the mean of the ranks' gradients (what DistributedDataParallel applies), equal
    one process's on the global batch. Compared per batch: over several steps the ℓ1 norm's sign(g)
    flips where an entry of g is near 0 and rounding differs, so trajectories part by O(λ) there."""
    from tests.ddp_worker import penalty_gradients

    _spawn(penalty_gradients, [overrides for overrides, _ in GRADIENT_ALIKE.values()], str(tmp_path))
    for i, (name, (_, tolerance)) in enumerate(GRADIENT_ALIKE.items()):
        one, *ranks = (torch.load(tmp_path / f"p{i}-{w}-{r}.pt") for w, r in ((1, 0), (2, 0), (2, 1)))
        for rank in ranks:
            assert rank["value"].item() == pytest.approx(one["value"].item(), rel=1e-5), name
        mean = (ranks[0]["grad"] + ranks[1]["grad"]) / 2
        error = float((mean - one["grad"]).norm() / one["grad"].norm())
        assert error < tolerance, f"{name}: relative error {error:.2e}"


FAIL_ON_RANK_1 = """
import os

if os.environ.get("RANK") == "1":
    from quantlab.engine.trainer import Trainer

    step = Trainer.train_step

    def failing(self, x, y):
        if self.clock.step == 5:
            raise RuntimeError("rank 1 broke at step 5")
        return step(self, x, y)

    Trainer.train_step = failing
"""


def test_a_rank_that_fails_ends_every_rank_and_the_run_is_failed(tmp_path):
    """No hung rank: rank 0 ends with one line naming what happened, results.json says failed."""
    import os

    hook = tmp_path / "hook"  # a sitecustomize that breaks rank 1's training at step 5
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_ON_RANK_1)
    env = cli_env(tmp_path)
    env["PYTHONPATH"] = f"{hook}{os.pathsep}{env['PYTHONPATH']}"
    run = tmp_path / "run"
    proc = torchrun("train", f"hydra.run.dir={run}", cwd=tmp_path, env=env, check=False, timeout=120)
    assert proc.returncode != 0
    assert "rank 1 broke at step 5" in proc.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "failed", results
    assert "another process of this run stopped or failed" in results["error"]


def test_a_multi_task_slurm_job_gets_its_ranks_from_slurm(tmp_path):
    """Each task of a slurm_ddp job (submitit) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_* from SLURM."""
    env = {k: v for k, v in cli_env(tmp_path).items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        SLURM_JOB_ID="42",
        SLURM_NTASKS="4",
        SLURM_PROCID="3",
        SLURM_LOCALID="1",
        SLURM_NODEID="1",
        SLURM_JOB_NODELIST="gpu[07-08]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NNODES="2",
        SUBMITIT_EXECUTOR="slurm",
    )
    script = (
        "import os; from quantlab.engine import distributed; distributed.export_slurm_env(); "
        "print(distributed.ranks(), os.environ['MASTER_ADDR'])"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Ranks(rank=3,", "world=4,", "local_rank=1)", "gpu07"]
    # a process that submitit did not start (e.g. `sbatch -n 4` running one quantlab) is one process
    del env["SUBMITIT_EXECUTOR"]
    script = script.replace(", os.environ['MASTER_ADDR']", "")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Ranks(rank=0, world=1, local_rank=0)" and "MASTER_ADDR" not in env


@pytest.mark.slow
def test_a_preempted_submitit_job_is_requeued_and_continues_from_last_pt(tmp_path):
    """submitit's preemption signal (USR2) to a sweep job: it stops at a step boundary with last.pt,
    submitit requeues it (the local executor: the same test path as SLURM's, a restart in place),
    and the requeued job continues its run: the metrics of an uninterrupted run, two sessions, and
    one MLflow run (logger=tensorboard_mlflow), FINISHED, without a step logged twice."""
    import os
    import signal
    import time

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from tests.test_trust import RUN, wait_for_checkpoint

    reference, sweep = tmp_path / "reference", tmp_path / "sweep"
    quantlab("train", *RUN, f"hydra.run.dir={reference}", cwd=tmp_path)
    launcher = ["-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantlab", "train", *launcher, *RUN, "logger=tensorboard_mlflow"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = sweep / "0"
    wait_for_checkpoint(proc, run, 30, timeout=180)
    tasks = [p for p in Path("/proc").glob("[0-9]*/cmdline") if _runs(p, "submitit.core._submit")]
    tasks = [p for p in tasks if _runs(p, str(sweep))]
    assert len(tasks) == 1, "the job's task process"
    os.kill(int(tasks[0].parent.name), signal.SIGUSR2)
    started = time.time()
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed", (time.time() - started, output[-3000:])
    assert len(results["sessions"]) == 2
    assert results["metrics"] == _metrics(reference)
    assert (run / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    log = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*.out"))
    assert "preempted" in log and "requeued" in log.lower(), log[-3000:]
    from mlflow import MlflowClient

    store = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (tracked,) = store.search_runs([store.get_experiment_by_name("train/sweep").experiment_id])
    assert (
        tracked.info.run_id == results["tracking"]["mlflow"]["run_id"] and tracked.info.status == "FINISHED"
    )
    steps = [m.step for m in store.get_metric_history(tracked.info.run_id, "train/loss")]
    assert len(steps) == len(set(steps)) and steps


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_trainer_devices_runs_the_command_under_torchrun(tmp_path):
    """`quantlab train trainer.devices=2` is the README's torchrun command: 2 processes, one run."""
    run = tmp_path / "run"
    proc = quantlab("train", "schedule.epochs=1", "trainer.devices=2", f"hydra.run.dir={run}", cwd=tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["sessions"][0]["processes"] == 2
    assert proc.stderr.count("quantlab train — completed") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_trainer_devices_command_lines_and_refusals(tmp_path):
    from omegaconf import OmegaConf

    from quantlab.errors import ConfigError
    from quantlab.runs.job import devices_command
    from quantlab.runs.preflight import check_devices

    assert devices_command(["schedule.epochs=1"]) is None
    assert devices_command(["trainer.devices=1"]) is None
    command = devices_command(["trainer.devices=3", "seed=1"])
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m"]
    assert command[6:] == ["quantlab", "train", "trainer.devices=3", "seed=1"]
    # a resume of a run started on 2 processes is started on 2 again; another number may be given
    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(OmegaConf.create({"trainer": {"devices": 2}}), run / "config.yaml")
    assert "--nproc_per_node=2" in devices_command([f"resume={run}"])
    assert "--nproc_per_node=2" in devices_command(["resume=auto", f"hydra.run.dir={run}"])
    assert "--nproc_per_node=4" in devices_command([f"resume={run}", "trainer.devices=4"])
    for bad, field in ((["trainer.devices=0"], "devices=0"), (["trainer.devices=two"], "devices=two")):
        with pytest.raises(ConfigError, match=field):
            devices_command(bad)
    with pytest.raises(ConfigError, match="slurm_ddp"):
        devices_command(["-m", "trainer.devices=2", "seed=0,1"])
    check_devices(1)
    with pytest.raises(ConfigError, match="trainer.devices=4: this command runs 1 process"):
        check_devices(4)  # e.g. set in an experiment's YAML, with no torchrun to run it
    with pytest.raises(ConfigError, match="integer >= 1"):
        check_devices("2")
