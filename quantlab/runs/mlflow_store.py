"""An MLflow tracking store as quantlab writes to it (`MlflowClient`; the `mlflow` extra).

Every write is idempotent, so that a run can be uploaded again and again (a resume, `quantlab track`):
a metric point goes in only where the run has no point of that key at that step, a param only where
the run has none of that name, artifacts replace their earlier copies. The MLflow errors reach the
caller (runs.tracking), which turns any of them into "not tracked" without stopping the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from quantlab.errors import ConfigError

EXTRA = "pip install 'quantlab[mlflow]'"
BATCH_METRICS, BATCH_PARAMS = 1000, 100  # MLflow's limits on one log_batch call
TAG_VALUE_LENGTH = 5000


class TrackingUnavailable(Exception):
    """The store cannot be written (the extra is missing, the store is unreachable or locked)."""


def installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


def require_extra(what: str) -> None:
    """A ConfigError (exit 2) naming the extra, for a command line that asks for MLflow without it."""
    if not installed():
        raise ConfigError(f"{what}: MLflow is not installed; install the extra: {EXTRA}")


def absolute_uri(uri: str) -> str:
    """A SQLite store's relative path made absolute (the run may be resumed or tracked from another
    directory); its folder created. Any other URI as it is."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = Path(uri[len(prefix) :]).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}{path}"


def artifacts_beside(uri: str) -> str | None:
    """Where a SQLite store's experiments keep their artifacts: `mlartifacts/` beside the database
    (MLflow's own default is ./mlruns of whatever directory a run starts in). None for a server,
    which has its own artifact root."""
    prefix = "sqlite:///"
    return str(Path(uri[len(prefix) :]).parent / "mlartifacts") if uri.startswith(prefix) else None


def probe_server(uri: str, timeout: float = 10.0) -> None:
    """A tracking server that does not answer its /health at once is unavailable now: MLflow's own
    client would retry each request with back-off for minutes before the run could go on."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            if response.status == 200:
                return
            raise TrackingUnavailable(f"{uri}/health answered {response.status}")
    except (OSError, urllib.error.URLError) as e:
        reason = getattr(e, "reason", None) or e
        raise TrackingUnavailable(f"the tracking server does not answer ({reason})") from None


@contextlib.contextmanager
def created_once(uri: str) -> Iterator[None]:
    """For a SQLite store: one process at a time creates or upgrades its tables (MLflow runs its
    schema migrations on first use; two processes doing it at once collide), under an flock on
    <database>.lock. Nothing for a server."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield
        return
    with open(f"{uri[len(prefix) :]}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class MlflowStore:
    """One tracking URI, opened; the runs of one process write through it."""

    def __init__(self, uri: str) -> None:
        if not installed():
            raise TrackingUnavailable(f"MLflow is not installed ({EXTRA})")
        for name in ("mlflow", "alembic"):  # the database set-up talks at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow import MlflowClient

        self.uri = absolute_uri(uri)
        probe_server(self.uri)
        with created_once(self.uri):  # the jobs of a parallel sweep would all create the database
            self.client = MlflowClient(tracking_uri=self.uri)
            self.client.search_experiments(max_results=1)

    def experiment(self, name: str, artifact_location: str | None) -> str:
        """The id of experiment `name`, created (or restored) if needed; two jobs of a sweep creating it
        at once both get it."""
        from mlflow.exceptions import MlflowException

        for attempt in range(3):
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    self.client.restore_experiment(found.experiment_id)
                return str(found.experiment_id)
            try:
                location = artifact_location or artifacts_beside(self.uri)
                return str(self.client.create_experiment(name, artifact_location=location))
            except MlflowException:
                if attempt == 2:
                    raise
                time.sleep(0.2 + random.random())  # created by another job meanwhile (or the DB set up)
        raise AssertionError("unreachable")

    def run_exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage != "deleted"
        except MlflowException:
            return False

    def find_run(self, experiment_id: str, run_dir: str) -> str | None:
        """The run of `experiment_id` tagged with this run directory (an upload whose id was not
        recorded: results.json could not be written, or another store)."""
        if "'" in run_dir:
            return None
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`quantlab.run_dir` = '{run_dir}'", max_results=1
        )
        return found[0].info.run_id if found else None

    def create_run(self, experiment_id: str, name: str, tags: Mapping[str, str]) -> str:
        return self.client.create_run(experiment_id, run_name=name, tags=dict(tags)).info.run_id

    def reopen(self, run_id: str) -> None:
        """A run that continues (a resume): RUNNING again until it ends."""
        self.client.update_run(run_id, status="RUNNING")

    def experiment_of(self, run_id: str) -> str:
        return str(self.client.get_run(run_id).info.experiment_id)

    def experiment_name(self, experiment_id: str) -> str:
        return str(self.client.get_experiment(experiment_id).name)

    def known_points(self, run_id: str) -> set[tuple[str, int]]:
        """Every (metric, step) the run holds."""
        keys = self.client.get_run(run_id).data.metrics.keys()
        return {(key, int(m.step)) for key in keys for m in self.client.get_metric_history(run_id, key)}

    def log_points(
        self, run_id: str, points: Iterable[tuple[str, float, int]], known: set[tuple[str, int]]
    ) -> int:
        """(key, value, step) points the run does not hold yet; `known` is updated. Returns how many."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        new = []
        for key, value, step in points:
            if (key, step) not in known:
                known.add((key, step))
                new.append(Metric(key, float(value), now, int(step)))
        for start in range(0, len(new), BATCH_METRICS):
            self.client.log_batch(run_id, metrics=new[start : start + BATCH_METRICS])
        return len(new)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Params the run does not hold yet (an MLflow param is written once)."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        held = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items() if k not in held]
        for start in range(0, len(new), BATCH_PARAMS):
            self.client.log_batch(run_id, params=new[start : start + BATCH_PARAMS])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:TAG_VALUE_LENGTH]) for k, v in tags.items()]
        if items:
            self.client.log_batch(run_id, tags=items)

    def delete_tag(self, run_id: str, key: str) -> None:
        """Remove tag `key` where the run has it."""
        if key in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, key)

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def end(self, run_id: str, status: str) -> None:
        """FINISHED, FAILED or KILLED (end time now); RUNNING leaves the run open. A run that has that
        status already is left as it is."""
        info = self.client.get_run(run_id).info
        if info.status == status and (status == "RUNNING" or info.end_time):
            return  # ended so already (an upload again): its end time stays
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status)
