"""MLflow tracking (issue 29), read back from a real SQLite store through MlflowClient (and, in one test,
from `mlflow server` over its REST API, as the UI reads it). The end-to-end runs of a grid, a stop and
resume, an unreachable store, the server, torchrun and a parallel grid are marked slow: CI runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import FAST, cli_env, quantlab, results
from tests.test_trust import RUN, start, wait_for_checkpoint

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def store_uri(root: Path) -> str:
    return f"sqlite:///{root / 'outputs' / 'mlflow.db'}"


def client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=store_uri(root))


def runs_of(c: MlflowClient, experiment: str) -> list:
    found = c.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}: {[e.name for e in c.search_experiments()]}"
    return c.search_runs([found.experiment_id])


def jsonl_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        for key, value in entry.items():
            if key not in ("step", "epoch"):
                series.setdefault(key, []).append((entry["step"], float(value)))
    return series


def history(c: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))


def artifacts(c: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    out = set()
    for entry in c.list_artifacts(run_id, folder):
        out |= artifacts(c, run_id, entry.path) if entry.is_dir else {entry.path}
    return out


def env_without_store(root: Path) -> dict[str, str]:
    env = cli_env(root)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    """One default run (digits, float, its PTQ sweep, its ONNX export at w8a8) with logger=mlflow."""
    root = tmp_path_factory.mktemp("tracked")
    run = root / "outputs" / "run"
    args = ["logger=mlflow", *FAST, "export=[w8a8]"]
    quantlab("train", *args, f"hydra.run.dir={run}", cwd=root, env=env_without_store(root))
    return run


def test_a_run_is_one_mlflow_run_with_its_params_metrics_ptq_rows_and_artifacts(tracked_run):
    root = tracked_run.parent.parent
    res = results(tracked_run)
    c = client(root)
    (mlrun,) = runs_of(c, "train")
    assert res["tracking"]["mlflow"]["run_id"] == mlrun.info.run_id and res["tracking"]["mlflow"]["tracked"]
    assert mlrun.info.status == "FINISHED"
    params = mlrun.data.params
    assert params["schedule.epochs"] == "3" and params["trainer.histogram_every"] == "1"
    assert params["choice.method"] == "float" and params["choice.model"] == "small_cnn"
    assert params["choice.dataset"] == "digits" and params["choice.bitwidth"] == "w8a8"
    assert params["overrides"] == "logger=mlflow schedule.epochs=3 trainer.histogram_every=1 export=[w8a8]"
    # every metrics.jsonl series, point for point, at the same steps
    series = jsonl_points(tracked_run)
    assert {"train/loss", "val/acc", "lr"} <= set(series)
    for key, points in series.items():
        assert history(c, mlrun.info.run_id, key) == sorted(points), key
    # the final test metrics and each PTQ row
    metrics = mlrun.data.metrics
    assert metrics["test/acc"] == pytest.approx(res["metrics"]["test/acc"])
    for entry in res["ptq"]:
        assert metrics[f"ptq/{entry['pair']}/acc"] == pytest.approx(entry["acc"])
        assert metrics[f"ptq/{entry['pair']}/kl"] == pytest.approx(entry["kl"])
    assert "ptq/w4a4/acc" in metrics
    tags = mlrun.data.tags
    assert tags["quantlab.status"] == "completed" and tags["quantlab.run_dir"] == str(tracked_run)
    assert tags["host"] == socket.gethostname() and tags.get("mlflow.source.git.commit")
    held = artifacts(c, mlrun.info.run_id)
    assert {"results.json", "config.yaml", "plots/curves.png", "plots/ptq.png"} <= held
    assert {"export/w8a8/model.onnx", "export/w8a8/export.json"} <= held
    local = c.download_artifacts(mlrun.info.run_id, "results.json", str(root / "dl"))
    assert json.loads(Path(local).read_text())["tracking"]["mlflow"]["run_id"] == mlrun.info.run_id
    assert not (root / "mlruns").exists()  # artifacts beside the store, not in the working directory
    assert (root / "outputs" / "mlartifacts").is_dir()


def test_quantlab_ptq_and_export_of_a_tracked_run_are_nested_under_it(tracked_run, tmp_path):
    root = tracked_run.parent.parent
    out = tmp_path / "ptq"
    quantlab(
        "ptq", f"run={tracked_run}", "bitwidth.sweep=[[4,4]]", f"hydra.run.dir={out}", cwd=root,
        env=env_without_store(root),
    )  # fmt: skip
    c = client(root)
    parent = results(tracked_run)["tracking"]["mlflow"]["run_id"]
    (child,) = [r for r in runs_of(c, "train") if r.data.tags.get("quantlab.command") == "ptq"]
    assert child.data.tags["mlflow.parentRunId"] == parent and child.info.status == "FINISHED"
    assert child.data.metrics["ptq/w4a4/acc"] == pytest.approx(results(out)["ptq"][0]["acc"])
    assert child.data.tags["quantlab.source_run_dir"] == str(tracked_run)
    exported = tmp_path / "export"
    quantlab(
        "export", f"run={tracked_run}", "bits=w4a4", f"hydra.run.dir={exported}", cwd=root,
        env=env_without_store(root),
    )  # fmt: skip
    (child,) = [r for r in runs_of(c, "train") if r.data.tags.get("quantlab.command") == "export"]
    assert child.data.tags["mlflow.parentRunId"] == parent and child.info.status == "FINISHED"
    record = json.loads((exported / "export.json").read_text())
    assert child.data.metrics["export/onnx_acc"] == pytest.approx(record["verification"]["onnx_acc"])
    assert child.data.params["pair"] == "w4a4" and {"model.onnx", "export.json"} <= artifacts(
        c, child.info.run_id
    )


def test_track_again_adds_nothing(tracked_run):
    root = tracked_run.parent.parent
    c = client(root)
    experiment = c.get_experiment_by_name("train").experiment_id

    def state() -> dict:
        found = c.search_runs([experiment])
        return {r.info.run_id: (r.data.metrics, r.data.params, r.info.status, r.info.end_time) for r in found}

    before = state()
    proc = quantlab("track", str(tracked_run), cwd=root, env=env_without_store(root))
    assert "(0 new metric points)" in proc.stdout
    assert state() == before  # nothing added, nothing changed: not even the end time
    run_id = results(tracked_run)["tracking"]["mlflow"]["run_id"]
    assert history(c, run_id, "train/loss") == sorted(jsonl_points(tracked_run)["train/loss"])


@pytest.mark.slow  # CI runs it (.ci/run)
def test_a_two_job_grid_is_one_experiment_of_two_comparable_runs(tmp_path):
    sweep = tmp_path / "outputs" / "grid"
    quantlab(
        "train", "-m", "logger=mlflow", "schedule.epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, env=env_without_store(tmp_path),
    )  # fmt: skip
    c = client(tmp_path)
    runs = runs_of(c, "train/grid")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    by_seed = {r.data.params["seed"]: r for r in runs}
    assert set(by_seed) == {"0", "1"}
    a, b = by_seed["0"].data.params, by_seed["1"].data.params
    assert set(a) == set(b) and {k for k in a if a[k] != b[k]} == {"seed", "overrides"}
    assert by_seed["1"].info.run_name == "1: logger=mlflow schedule.epochs=1 seed=1"
    for num in ("0", "1"):
        assert results(sweep / num)["tracking"]["mlflow"]["experiment"] == "train/grid"


@pytest.mark.slow  # CI runs it (.ci/run)
def test_sigterm_then_resume_auto_is_one_finished_run_without_a_duplicate_step(tmp_path):
    run = tmp_path / "outputs" / "run"
    env = env_without_store(tmp_path)
    proc = start("train", "logger=mlflow", *RUN, f"hydra.run.dir={run}", cwd=tmp_path, env=env)
    wait_for_checkpoint(proc, run, 60)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    c = client(tmp_path)
    (stopped,) = runs_of(c, "train")
    assert stopped.info.status == "KILLED" and stopped.data.tags["quantlab.status"] == "interrupted"
    logged_before = {k: history(c, stopped.info.run_id, k) for k in jsonl_points(run)}
    # the resume replays from the mid-epoch checkpoint: steps the stopped session logged come again
    quantlab("train", "logger=mlflow", *RUN, "resume=auto", f"hydra.run.dir={run}", cwd=tmp_path, env=env)
    (mlrun,) = runs_of(c, "train")
    assert mlrun.info.run_id == stopped.info.run_id and mlrun.info.status == "FINISHED"
    assert "SIGTERM" in stopped.data.tags["quantlab.error"] and "quantlab.error" not in mlrun.data.tags
    assert mlrun.data.tags["quantlab.status"] == "completed"
    for key, points in jsonl_points(run).items():
        steps = [m.step for m in c.get_metric_history(mlrun.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice"
        assert history(c, mlrun.info.run_id, key) == sorted(points), key
        assert set(logged_before.get(key, [])) <= set(points)
    assert [s["status"] for s in results(run)["sessions"]] == ["interrupted", "completed"]


def test_a_diverged_run_is_failed_in_mlflow(tmp_path):
    run = tmp_path / "outputs" / "diverged"
    args = ["logger=mlflow", "schedule.optimizer.name=sgd", "schedule.optimizer.lr=1e30", "schedule.epochs=2"]
    proc = quantlab(
        "train", *args, f"hydra.run.dir={run}", cwd=tmp_path, check=False, env=env_without_store(tmp_path)
    )
    assert proc.returncode == 1
    (mlrun,) = runs_of(client(tmp_path), "train")
    assert mlrun.info.status == "FAILED" and mlrun.data.tags["quantlab.status"] == "failed"
    assert "became nan" in mlrun.data.tags["quantlab.error"]


@pytest.mark.slow  # CI runs it (.ci/run)
def test_an_unreachable_store_costs_nothing_and_track_uploads_the_run_later(tmp_path):
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store's directory should be\n")
    uri = f"sqlite:///{blocked / 'mlflow.db'}"
    run = tmp_path / "outputs" / "run"
    env = {**env_without_store(tmp_path), "MLFLOW_TRACKING_URI": uri}
    proc = quantlab(
        "train", "logger=tensorboard_mlflow", *FAST, f"hydra.run.dir={run}", cwd=tmp_path, env=env
    )
    res = results(run)
    assert res["status"] == "completed" and res["metrics"]["test/acc"] > 0 and res["ptq"]
    assert (run / "tb").is_dir()
    record = res["tracking"]["mlflow"]
    assert record["tracked"] is False and record["tracking_uri"] == uri and record["error"]
    warnings = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "not tracked" in line]
    assert len(warnings) == 1 and f"quantlab track {run}" in warnings[0]
    # the store comes back: `quantlab track` uploads the run (to the store it recorded), twice = once
    blocked.unlink()
    del env["MLFLOW_TRACKING_URI"]
    first = quantlab("track", str(run), cwd=tmp_path, env=env)
    second = quantlab("track", str(tmp_path / "outputs"), cwd=tmp_path, env=env)
    assert "(0 new metric points)" in second.stdout and "(0 new metric points)" not in first.stdout
    c = MlflowClient(tracking_uri=uri)
    (mlrun,) = runs_of(c, "train")
    assert (
        mlrun.info.status == "FINISHED" and results(run)["tracking"]["mlflow"]["run_id"] == mlrun.info.run_id
    )
    for key, points in jsonl_points(run).items():
        assert history(c, mlrun.info.run_id, key) == sorted(points), key
    assert mlrun.data.metrics["ptq/w4a4/acc"] == pytest.approx(res["ptq"][2]["acc"])
    assert {"results.json", "config.yaml", "plots/curves.png"} <= artifacts(c, mlrun.info.run_id)


def test_logger_mlflow_without_the_extra_is_one_line_and_exit_2_before_anything_is_created(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['mlflow'] = None  # not installed\n")
    env = cli_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(hide), env["PYTHONPATH"]])
    for args in (["train", "logger=mlflow"], ["track", str(tmp_path)]):
        proc = quantlab(*args, cwd=tmp_path, env=env, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
        assert "pip install 'quantlab[mlflow]'" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()
    # the default logger needs nothing of MLflow
    quantlab("train", "schedule.epochs=1", cwd=tmp_path, env=env)


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "logger=tensorboard,mlflow", "seed=0,1"],
        ["logger=tensorboard_mlflow", "resume=auto", "hydra.run.dir=RUN"],
        ["logger.mlflow=true"],
    ],
)
def test_every_way_to_ask_for_mlflow_is_checked_before_anything_is_created(tmp_path, monkeypatch, args):
    from quantlab.commands.export import export_args
    from quantlab.commands.ptq import ptq_args
    from quantlab.commands.train_checks import train_args
    from quantlab.errors import ConfigError
    from quantlab.runs import mlflow_store

    monkeypatch.setattr(mlflow_store, "installed", lambda: False)
    monkeypatch.setenv("QUANTLAB_OUTPUTS", str(tmp_path / "outputs"))
    given = [a.replace("RUN", str(tmp_path / "run")) for a in args]
    for guard, extra in (
        (train_args, []),
        (ptq_args, [f"run={tmp_path / 'run'}"]),
        (export_args, ["bits=w8a8"]),
    ):
        with pytest.raises(ConfigError, match=r"pip install 'quantlab\[mlflow\]'") as refused:
            guard([*extra, *given])
        assert refused.value.exit_code == 2
    assert not any(tmp_path.iterdir())


def test_an_old_run_without_a_logger_resumes_with_tensorboard_only(tmp_path):
    from omegaconf import OmegaConf

    from quantlab.runs.config import with_legacy_settings
    from quantlab.runs.tracking import LoggerSettings

    cfg = OmegaConf.create({"seed": 0, "trainer": {"amp": False}})
    settings = LoggerSettings.from_config(with_legacy_settings(cfg).logger)
    assert settings.tensorboard and not settings.mlflow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(base: str, path: str, body: dict | None = None, **query: str) -> dict:
    url = f"{base}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow  # CI runs it (.ci/run)
def test_mlflow_server_serves_the_run_over_rest_as_the_ui_reads_it(tracked_run, tmp_path):
    root = tracked_run.parent.parent
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri(root),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runners
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers are one process group, stopped together
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        experiment = rest(base, "experiments/get-by-name", experiment_name="train")["experiment"]
        found = rest(
            base, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 10}
        )
        run_id = results(tracked_run)["tracking"]["mlflow"]["run_id"]
        (row,) = [r for r in found["runs"] if r["info"]["run_id"] == run_id]
        assert row["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in row["data"]["params"]}
        assert params["choice.method"] == "float" and params["schedule.epochs"] == "3"
        metrics = {m["key"]: m["value"] for m in row["data"]["metrics"]}
        assert metrics["test/acc"] == pytest.approx(results(tracked_run)["metrics"]["test/acc"])
        got = rest(base, "metrics/get-history", run_id=run_id, metric_key="val/acc")["metrics"]
        assert sorted((int(m["step"]), m["value"]) for m in got) == sorted(
            jsonl_points(tracked_run)["val/acc"]
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.slow
def test_under_torchrun_only_rank_0_tracks(tmp_path):
    run = tmp_path / "outputs" / "ddp"
    env = env_without_store(tmp_path)
    quantlab(
        "train", "logger=mlflow", "schedule.epochs=2", f"hydra.run.dir={run}", cwd=tmp_path, env=env, nproc=2
    )
    c = client(tmp_path)
    (mlrun,) = runs_of(c, "train")
    assert mlrun.info.status == "FINISHED"
    for key, points in jsonl_points(run).items():
        assert history(c, mlrun.info.run_id, key) == sorted(points), key


def test_a_resumed_session_logs_only_the_points_the_store_lacks(tmp_path):
    """A killed session logged steps past its last checkpoint; the resume replays them (the same
    values, an exact resume) and MLflow keeps one point per step."""
    from quantlab.runs.tracking import LoggerSettings, Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = LoggerSettings(False, True, uri, "resumes", None)
    first: dict = {}
    killed = Tracker(settings, tmp_path / "run")
    killed.open(first)
    for step in range(0, 50, 5):
        killed.log({"train/loss": 1.0 / (step + 1), "train/acc": float(step)}, step)
    killed.flush()  # what it sent before it was killed
    assert first["tracking"]["mlflow"]["tracked"]
    resumed = Tracker(settings, tmp_path / "run")
    second = json.loads(json.dumps(first))  # results.json as the next session reads it
    resumed.open(second)  # from a checkpoint at step 30
    for step in range(30, 80, 5):
        resumed.log({"train/loss": 1.0 / (step + 1), "train/acc": float(step)}, step)
    resumed.flush()
    assert second["tracking"]["mlflow"]["run_id"] == first["tracking"]["mlflow"]["run_id"]
    c = MlflowClient(tracking_uri=uri)
    run_id = first["tracking"]["mlflow"]["run_id"]
    assert history(c, run_id, "train/loss") == [(s, 1.0 / (s + 1)) for s in range(0, 80, 5)]
    assert [s for s, _ in history(c, run_id, "train/acc")] == list(range(0, 80, 5))
    assert c.get_run(run_id).info.status == "RUNNING"


def test_a_failure_while_logging_turns_tracking_off_in_one_line(tmp_path, caplog):
    from quantlab.runs.tracking import LoggerSettings, Tracker

    settings = LoggerSettings(False, True, f"sqlite:///{tmp_path / 'mlflow.db'}", "e", None)
    results: dict = {}
    tracker = Tracker(settings, tmp_path / "run")
    tracker.open(results)
    (tmp_path / "mlflow.db").unlink()  # the store goes away under the run
    (tmp_path / "mlflow.db").mkdir()
    with caplog.at_level("WARNING", logger="quantlab"):
        for step in range(3):
            tracker.log({"train/loss": 1.0}, step + 1)
    assert not tracker.active and results["tracking"]["mlflow"]["tracked"] is False
    (warning,) = [r.message for r in caplog.records if "not tracked" in r.message]
    assert f"quantlab track {tmp_path / 'run'}" in warning


@pytest.mark.slow
def test_a_parallel_grid_of_four_jobs_is_four_runs_of_one_experiment(tmp_path):
    """Four joblib workers open a store that does not exist yet: one creates it, all are tracked."""
    sweep = tmp_path / "outputs" / "grid"
    proc = quantlab(
        "train", "-m", "logger=mlflow", "hydra/launcher=local", "schedule.epochs=1", "seed=0,1,2,3",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env_without_store(tmp_path),
    )  # fmt: skip
    assert "not tracked" not in proc.stderr + proc.stdout
    runs = runs_of(client(tmp_path), "train/grid")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_tracking_server_that_does_not_answer_is_unavailable_at_once(tmp_path):
    from quantlab.runs.mlflow_store import MlflowStore, TrackingUnavailable

    with pytest.raises(TrackingUnavailable, match="does not answer"):  # not MLflow's minutes of retries
        MlflowStore(f"http://127.0.0.1:{free_port()}")
