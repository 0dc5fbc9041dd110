"""Experiment tracking in MLflow (`logger=mlflow` or `logger=tensorboard_mlflow`; the `mlflow` extra).

One quantlab run is one MLflow run, in experiment `logger.experiment` (default: the command's name,
`train`; for a job of a multirun `train/<sweep directory's name>`, so that a sweep is one experiment
and its compare view lays out the grid). What a run directory holds is what MLflow gets (`upload`):
    params     the resolved config flattened (`schedule.optimizer.lr`, ...), `choice.<group>` for the
               Hydra choices (method, model, dataset, bitwidth, schedule, ...), `overrides`
    metrics    every metrics.jsonl point at its step; the final metrics of results.json (test/acc,
               best/..., ...) and each PTQ row (`ptq/w4a4/acc`, `ptq/w4a4/acc5`, `ptq/w4a4/kl`) at the
               run's last step
    tags       quantlab.status (and quantlab.error), quantlab.run_dir, quantlab.command, host,
               mlflow.source.git.commit (when the code is in a git checkout), mlflow.parentRunId
               (a `quantlab ptq` / `export` of a tracked run: a nested run under it)
    artifacts  results.json, config.yaml, plots/*.png, the ONNX exports (model.onnx, export.json)
The MLflow status follows results.json: completed → FINISHED, failed (diverged included) → FAILED,
interrupted or killed → KILLED. results.json's `tracking.mlflow` keeps the store, the experiment and
the run id: a resume (resume=, resume=auto, a sweep resume, a requeued SLURM job) continues that MLflow
run, and points it holds already are never logged again (mid-epoch resumes replay steps).

Tracking never costs a run: when the store is unreachable or locked, or MLflow is missing, one warning
line says so, training goes on, results.json records `tracked: false` and the error, and
`quantlab track <run or sweep>` uploads the run later (idempotent: it can run any number of times).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quantlab.engine import lock
from quantlab.engine.files import write_json_atomic
from quantlab.engine.rundir import RunDir
from quantlab.runs.cmdline import CommandLine
from quantlab.runs.mlflow_store import MlflowStore, TrackingUnavailable, absolute_uri, require_extra
from quantlab.runs.runlog import flatten, numbers

log = logging.getLogger("quantlab")

STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "killed": "KILLED"}
ENV_URI = "MLFLOW_TRACKING_URI"
FLUSH_SECONDS = 5.0  # live metric points go to MLflow in batches at least this far apart
PTQ_ROW = ("acc", "acc5", "loss", "kl")  # a PTQ sweep's row, as ptq/<pair>/<key>


@dataclass(frozen=True)
class LoggerSettings:
    """The `logger` config group: TensorBoard (tb/), MLflow, or both."""

    tensorboard: bool
    mlflow: bool
    tracking_uri: str | None
    experiment: str | None
    artifact_location: str | None

    @classmethod
    def from_config(cls, node: DictConfig | dict[str, Any]) -> LoggerSettings:
        """The MLflow keys are read when MLflow is on; `MLFLOW_TRACKING_URI` in the environment wins
        over `logger.tracking_uri`."""
        data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        mlflow = bool(data["mlflow"])
        if not mlflow:
            return cls(bool(data["tensorboard"]), False, None, None, None)
        uri = os.environ.get(ENV_URI) or str(data["tracking_uri"])
        experiment, location = data["experiment"], data["artifact_location"]
        return cls(
            bool(data["tensorboard"]),
            True,
            uri,
            None if experiment is None else str(experiment),
            None if location is None else str(location),
        )


def default_experiment(command: str, run_dir: Path) -> str:
    """The command's name; for a job of a multirun, `<command>/<sweep directory's name>`."""
    sweep = Path(run_dir).resolve().parent
    if (sweep / "multirun.yaml").is_file() or RunDir(sweep).sweep_record.is_file():
        return f"{command}/{sweep.name}"
    return command


def git_commit() -> str | None:
    """The commit of the code that ran: quantlab's own checkout, else the working directory's."""
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(
                ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."


# -- what a directory holds ----------------------------------------------------------------------------


@dataclass
class RunFiles:
    """A run (train or ptq: results.json) or an export (export.json) directory, read for upload."""

    path: Path
    command: str
    status: str
    record: dict[str, Any]
    params: dict[str, Any]
    points: list[tuple[str, float, int]]
    final: list[tuple[str, float, int]]
    artifacts: list[tuple[Path, str | None]]
    source_run: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def read_run(path: Path) -> RunFiles:
    """What `upload` sends of the directory `path`; ValueError when it holds no quantlab run."""
    files = RunDir(path)
    if files.export_record.is_file() and not files.results.is_file():
        return read_export(files)
    results = files.read_results()
    if not results:
        raise ValueError(f"{files}: no results.json (not a quantlab run directory)")
    config = files.config if files.config.is_file() else files.path / ".hydra" / "config.yaml"
    params: dict[str, Any] = flatten(OmegaConf.load(config)) if config.is_file() else {}
    choices = results.get("choices") or results.get("source_choices") or {}
    params.update({f"choice.{k.split('@')[0]}": v for k, v in choices.items()})
    params["overrides"] = " ".join(results.get("overrides", [])) or "(none)"
    points = files.metric_points()
    last = max((step for _, _, step in points), default=0)
    logged = {key for key, _, _ in points}
    final = [(k, v, last) for k, v in numbers(results.get("metrics", {})).items() if k not in logged]
    for entry in results.get("ptq") or []:
        row = numbers({k: entry[k] for k in PTQ_ROW if k in entry})
        final += [(f"ptq/{entry['pair']}/{k}", v, last) for k, v in row.items()]
    artifacts: list[tuple[Path, str | None]] = [(files.results, None)]
    artifacts += [(files.config, None)] if files.config.is_file() else []
    artifacts += [(p, "plots") for p in sorted((files.path / "plots").glob("*.png"))]
    for export in sorted((files.path / "export").glob("*/export.json")):
        folder = f"export/{export.parent.name}"
        artifacts += [(p, folder) for p in (export, export.parent / "model.onnx") if p.is_file()]
    command = "ptq" if "source_run" in results else "train"
    status = str(results.get("status", "unknown"))
    if status == "running" and lock.holder(files.path) is None:  # its process died without a word
        status = "killed"
    sessions = [s for s in results.get("sessions", []) if isinstance(s, dict)]
    tags = {"host": str(sessions[-1].get("host", ""))} if sessions else {}
    return RunFiles(
        files.path,
        command,
        status,
        results,
        params,
        points,
        final,
        artifacts,
        results.get("source_run"),
        tags,
    )


def read_export(files: RunDir) -> RunFiles:
    """A `quantlab export` directory: the pair and its verification."""
    record = json.loads(files.export_record.read_text())
    source = record.get("source") or {}
    params = {"pair": record.get("pair"), "mode": record.get("mode"), "bias": record.get("bias")}
    params.update(flatten(record.get("tolerance") or {}, "tolerance."))
    params.update(flatten(record.get("ptq") or {}, "ptq."))
    params.update({f"choice.{k.split('@')[0]}": v for k, v in (source.get("choices") or {}).items()})
    params.update({"source.run": source.get("run"), "source.checkpoint": source.get("checkpoint")})
    final = [(f"export/{k}", v, 0) for k, v in numbers(record.get("verification") or {}).items()]
    artifacts = [(p, None) for p in (files.export_record, files.onnx) if p.is_file()]
    status = "completed" if record.get("status") == "verified" else "failed"
    tags = {"quantlab.export": str(record.get("status")), "host": socket.gethostname()}
    return RunFiles(
        files.path, "export", status, record, params, [], final, artifacts, source.get("run"), tags
    )


# -- one MLflow run ------------------------------------------------------------------------------------


@dataclass
class Opened:
    """A run's MLflow run, opened for writing."""

    store: MlflowStore
    experiment: str
    experiment_id: str
    run_id: str
    known: set[tuple[str, int]]

    def record(self, git: str | None) -> dict[str, Any]:
        """results.json's `tracking.mlflow`."""
        return {
            "tracked": True,
            "tracking_uri": self.store.uri,
            "experiment": self.experiment,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
            **({"git_commit": git} if git else {}),
        }


def parent_of(store: MlflowStore, source_run: str | None) -> tuple[str | None, str | None]:
    """The MLflow run (and its experiment) of the run a ptq / export came from, when it was tracked in
    this store: the derived run is nested under it."""
    if not source_run:
        return None, None
    tracked = (RunDir(source_run).read_results().get("tracking") or {}).get("mlflow") or {}
    run_id = tracked.get("run_id")
    if not run_id or absolute_uri(str(tracked.get("tracking_uri", ""))) != store.uri:
        return None, None
    if not store.run_exists(run_id):
        return None, None
    return run_id, store.experiment_of(run_id)


def open_run(
    store: MlflowStore,
    run: RunFiles,
    experiment: str | None,
    artifact_location: str | None,
    live: bool = False,
) -> Opened:
    """The MLflow run of `run`: the one results.json records (in this store), else the one tagged with
    its directory, else a new one (nested under its source run's, for a ptq / export). `live`: a
    session that continues the run (a resume) sets it RUNNING again; an upload after the fact does not."""
    recorded = (run.record.get("tracking") or {}).get("mlflow") or {}
    run_id = recorded.get("run_id")
    same_store = absolute_uri(str(recorded.get("tracking_uri", ""))) == store.uri
    if run_id and same_store and store.run_exists(run_id):
        experiment_id = store.experiment_of(run_id)
        name = store.experiment_name(experiment_id)
        if live:
            store.reopen(run_id)
        return Opened(store, name, experiment_id, run_id, store.known_points(run_id))
    parent, parent_experiment = parent_of(store, run.source_run)
    name = experiment or default_experiment(run.command, run.path)
    if parent_experiment is not None and experiment is None:  # nested: in its parent's experiment
        experiment_id, name = parent_experiment, store.experiment_name(parent_experiment)
    else:
        experiment_id = store.experiment(name, artifact_location)
    found = store.find_run(experiment_id, str(run.path))
    if found:
        if live:
            store.reopen(found)
        return Opened(store, name, experiment_id, found, store.known_points(found))
    tags = {
        "quantlab.run_dir": str(run.path),
        "quantlab.command": run.command,
        **({"mlflow.parentRunId": parent} if parent else {}),
        **({"quantlab.source_run_dir": run.source_run} if run.source_run else {}),
    }
    run_id = store.create_run(experiment_id, run_name(run), tags)
    return Opened(store, name, experiment_id, run_id, set())


def run_name(run: RunFiles) -> str:
    """The directory's name; for a job of a sweep its number and overrides (`3: method=bc seed=1`)."""
    name = run.path.name
    if name.isdigit() and run.command == "train":
        name = f"{name}: {' '.join(run.record.get('overrides', []))}"
    return name if len(name) <= 200 else name[:197] + "..."


def upload(opened: Opened, run: RunFiles, git: str | None) -> int:
    """Everything `run` holds into its MLflow run (what it holds already is skipped), and its MLflow
    status set from results.json's. Returns the number of new metric points."""
    store, run_id = opened.store, opened.run_id
    store.log_params(run_id, run.params)
    new = store.log_points(run_id, run.points, opened.known)
    new += store.log_points(run_id, run.final, opened.known)
    error = str(run.record.get("error", ""))
    tags = {"quantlab.status": run.status, **run.tags, **({"quantlab.error": error} if error else {})}
    git = git or ((run.record.get("tracking") or {}).get("mlflow") or {}).get("git_commit")
    if git:
        tags["mlflow.source.git.commit"] = git
    store.set_tags(run_id, tags)
    if not error:  # a resume completed what an earlier session left with an error
        store.delete_tag(run_id, "quantlab.error")
    for path, folder in run.artifacts:
        if path.is_file():
            store.log_artifact(run_id, path, folder)
    store.end(run_id, STATUS.get(run.status, "RUNNING"))
    return new


# -- a live run: `quantlab train` ------------------------------------------------------------------------


class Tracker:
    """A training run's MLflow run, written as the run goes: metric points as RunLog logs them, the
    rest (params, final metrics, PTQ rows, artifacts, status) when the run ends. The first failure
    turns it off for the rest of the process: one warning line, and results.json says `tracked: false`
    with the error and the command that uploads the run later."""

    def __init__(self, settings: LoggerSettings, run_dir: Path, command: str = "train") -> None:
        self.settings, self.run_dir, self.command = settings, Path(run_dir), command
        self.opened: Opened | None = None
        self.state: dict[str, Any] = {}
        self.results: dict[str, Any] | None = None  # the run's results (its `tracking.mlflow` entry)
        self.pending: list[tuple[str, float, int]] = []
        self.flushed = 0.0  # time.monotonic() of the last batch sent
        self.git = git_commit()

    @property
    def active(self) -> bool:
        return self.opened is not None

    def open(self, results: dict[str, Any]) -> None:
        """Open (or reopen, for a resume) the run's MLflow run; its id goes into `results`."""
        uri, self.results = str(self.settings.tracking_uri), results
        try:
            store = MlflowStore(uri)
            run = RunFiles(self.run_dir, self.command, "running", results, {}, [], [], [])
            location = self.settings.artifact_location
            self.opened = open_run(store, run, self.settings.experiment, location, live=True)
            self.state = self.opened.record(self.git)
            store.set_tags(self.opened.run_id, {"quantlab.status": "running"})
        except Exception as e:  # noqa: BLE001 - any failure of the store: the run goes on untracked
            self.fail(e, uri)
        results.setdefault("tracking", {})["mlflow"] = self.state

    def log(self, values: dict[str, float], step: int) -> None:
        """Points are sent in batches (one database commit or request each): a call FLUSH_SECONDS or more
        after the last batch sends what is pending, and so does the run's end. Whatever a killed
        process had not sent is in metrics.jsonl, which the next upload (a resume, `track`) reads."""
        if self.opened is None:
            return
        self.pending += [(k, v, step) for k, v in numbers(values).items()]
        if time.monotonic() - self.flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.opened is None:
            return
        points, self.pending, self.flushed = self.pending, [], time.monotonic()
        try:
            self.opened.store.log_points(self.opened.run_id, points, self.opened.known)
        except Exception as e:  # noqa: BLE001
            self.fail(e, self.opened.store.uri)

    def finish(self, results: dict[str, Any]) -> None:
        """The run ended (results.json written with its status): upload the rest and end the MLflow run.
        On a failure here results.json is written again, saying so."""
        self.flush()
        if self.opened is None:
            return
        try:
            upload(self.opened, read_run(self.run_dir), self.git)
        except Exception as e:  # noqa: BLE001
            self.fail(e, self.opened.store.uri)
            with contextlib.suppress(Exception):
                write_json_atomic(RunDir(self.run_dir).results, results)

    def fail(self, error: BaseException, uri: str) -> None:
        self.opened = None
        reason = one_line(error)
        if isinstance(error, TrackingUnavailable):
            reason = str(error)
        self.state = {
            **self.state,
            "tracked": False,
            "tracking_uri": absolute_uri_or_same(uri),
            "error": reason,
            **({"git_commit": self.git} if self.git else {}),
        }
        if self.results is not None:
            self.results.setdefault("tracking", {})["mlflow"] = self.state
        log.warning(
            f"MLflow ({uri}): {reason}; this run is not tracked there (it goes on); upload it later with: "
            f"quantlab track {self.run_dir}"
        )


def absolute_uri_or_same(uri: str) -> str:
    with contextlib.suppress(OSError):
        return absolute_uri(uri)
    return uri


@contextlib.contextmanager
def tracked(
    settings: LoggerSettings,
    run_dir: Path,
    results: dict[str, Any],
    before_upload: Callable[[], Any] | None = None,
) -> Iterator[Tracker | None]:
    """A Tracker for a run when MLflow is on (None otherwise), opened before the body and finished
    after it, however the body ends (`before_upload` first, e.g. to draw the run's plots)."""
    if not settings.mlflow:
        yield None
        return
    tracker = Tracker(settings, run_dir)
    tracker.open(results)
    try:
        yield tracker
    finally:
        if tracker.active and before_upload is not None:
            with contextlib.suppress(Exception):
                before_upload()
        tracker.finish(results)


# -- after the fact: `quantlab track`, `quantlab ptq`, `quantlab export` ---------------------------------


def track_dir(settings: LoggerSettings, path: Path) -> tuple[Opened, int]:
    """Upload the run (or export) in `path`; its results.json records the MLflow run (before the
    upload, which sends results.json as an artifact). Returns the MLflow run and the number of metric
    points it did not hold yet; raises the store's errors and ValueError for a directory without a run."""
    run = read_run(path)
    store = MlflowStore(str(settings.tracking_uri))
    opened = open_run(store, run, settings.experiment, settings.artifact_location)
    git = ((run.record.get("tracking") or {}).get("mlflow") or {}).get("git_commit")
    if run.command != "export":
        results = RunDir(path).read_results()
        previous = (results.get("tracking") or {}).get("mlflow") or {}
        state = opened.record(git or previous.get("git_commit"))
        if previous != state:
            results.setdefault("tracking", {})["mlflow"] = state
            write_json_atomic(RunDir(path).results, results)
    return opened, upload(opened, run, git)


def require_extra_for(line: CommandLine) -> None:
    """`logger=mlflow` (or tensorboard_mlflow, `logger.mlflow=true`) without the extra: one line naming
    it, exit 2, before anything is created."""
    asked = [f"logger={v}" for v in line.values("logger") if "mlflow" in v]
    asked += [f"logger.mlflow={v}" for v in line.values("logger.mlflow") if v.lower() == "true"]
    if asked:
        require_extra(asked[0])


def derived_logger(node: DictConfig | None, source_results: dict[str, Any]) -> LoggerSettings:
    """The logger of a `quantlab ptq` / `export` of a run: `logger=` when given; otherwise as the run it
    reads: MLflow, in the store that run recorded, when that run was sent to MLflow (tracked or not)."""
    if node is not None:
        return LoggerSettings.from_config(node)
    source = (source_results.get("tracking") or {}).get("mlflow") or {}
    if not source.get("tracking_uri"):
        return LoggerSettings(True, False, None, None, None)
    uri = os.environ.get(ENV_URI) or str(source["tracking_uri"])
    return LoggerSettings(True, True, uri, None, None)


@contextlib.contextmanager
def uploaded_after(settings: LoggerSettings, run_dir: Path) -> Iterator[None]:
    """A `quantlab ptq` / `export` directory uploaded once the command wrote it, however it ended (a
    nested run under its source run's MLflow run). A failure is one warning line, never the command's."""
    try:
        yield
    finally:
        if settings.mlflow and (RunDir(run_dir).results.is_file() or RunDir(run_dir).export_record.is_file()):
            try:
                opened, _ = track_dir(settings, Path(run_dir))
                log.info(
                    f"MLflow: run {opened.run_id} in experiment {opened.experiment!r} ({opened.store.uri})"
                )
            except Exception as e:  # noqa: BLE001 - the command's own outcome stands
                uri = settings.tracking_uri
                log.warning(
                    f"MLflow ({uri}): {one_line(e)}; {run_dir} is not tracked there; upload it later with: "
                    f"quantlab track {run_dir}"
                )


def track_settings(
    run_dir: Path, uri: str | None, experiment: str | None, default_uri: str
) -> LoggerSettings:
    """Where `quantlab track` sends a run: `--tracking-uri`, else MLFLOW_TRACKING_URI, else the store
    the run recorded, else its config's logger.tracking_uri, else `default_uri` (conf/logger/mlflow.yaml);
    the experiment: `--experiment`, else the one the run recorded (open_run), else its config's, else
    the default (default_experiment)."""
    files = RunDir(run_dir)
    recorded = (files.read_results().get("tracking") or {}).get("mlflow") or {}
    node: dict[str, Any] = {}
    if files.config.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(files.config))
        node = (loaded.get("logger") or {}) if isinstance(loaded, dict) else {}
    configured = node.get("tracking_uri") if node.get("mlflow") else None
    chosen = uri or os.environ.get(ENV_URI) or recorded.get("tracking_uri") or configured or default_uri
    named = experiment or (node.get("experiment") if node.get("mlflow") else None)
    return LoggerSettings(bool(node.get("tensorboard", True)), True, str(chosen), named, None)


def run_dirs_under(path: Path) -> list[Path]:
    """The runs to track under `path`: itself when it holds one (results.json or export.json), else every
    directory below that holds one (a sweep's jobs, a tree of runs), not descending into a run."""
    files = RunDir(path)
    if files.results.is_file() or files.export_record.is_file():
        return [files.path]
    found: list[Path] = []
    for child in sorted(p for p in files.path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += run_dirs_under(child)
    return found
