"""Finding runs for a report: every results.json below the given directories (and job directories that
never wrote one), read into `Run`s that tables and plots group by their overrides."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantlab.engine import lock, rundir
from quantlab.engine.rundir import RunDir

IGNORED_KEYS = ("seed", "hydra.", "hydra/")


@dataclass
class Run:
    """One run as the table sees it: its status, its overrides, its final numbers."""

    path: Path
    status: str  # completed | failed | running | missing | unreadable
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    choices: dict[str, str] = field(default_factory=dict)
    _config: dict | None = field(default=None, repr=False)

    @property
    def seed(self) -> str:
        return self.overrides.get("seed", "0")

    def value(self, key: str) -> Any:
        """A config group's choice (method, dataset, ...) or a dotted key of the run's resolved
        config.yaml (its overrides where the run never wrote one); None when unset."""
        if key in self.choices:
            return self.choices[key]
        if self._config is None:
            self._config = _read_config(RunDir(self.path).config)
        node: Any = self._config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                node = _MISSING
                break
            node = node[part]
        if node is _MISSING:
            raw = self.overrides.get(key)
            return None if raw in (None, "null") else raw
        return node


_MISSING = object()


def _read_config(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _overrides(items: list[str]) -> dict[str, str]:
    pairs = (item.lstrip("+~").split("=", 1) for item in items if "=" in item)
    return {key: value for key, value in pairs}


def malformed(data: Any) -> str | None:
    """What makes a parsed results.json unusable, or None when it is a well-formed object."""
    if not isinstance(data, dict):
        return f"not a JSON object (a {type(data).__name__})"
    kinds = {"metrics": dict, "ptq": list, "overrides": list, "choices": dict, "status": str}
    for key, kind in kinds.items():
        if key in data and not isinstance(data[key], kind):
            return f"{key} is not a {kind.__name__} ({data[key]!r:.40})"
    if not all(isinstance(o, str) for o in data.get("overrides", [])):
        return "overrides holds something other than strings"
    return None


def number(value: Any) -> float | None:
    """A metric's value as results.json holds it: a number, or "nan" / "inf" / "-inf" (json_safe)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def read_run(results: Path) -> Run:
    """One run from its results.json; a file that is not a well-formed results object counts as an
    unreadable run (shown, never dropped, never averaged)."""
    try:
        data = json.loads(results.read_text())
    except (OSError, ValueError) as e:
        return Run(results.parent, "unreadable", error=f"{type(e).__name__}: {e}")
    problem = malformed(data)
    if problem:
        return Run(results.parent, "unreadable", error=f"{results}: {problem}")
    metrics = {k: number(v) for k, v in data.get("metrics", {}).items() if number(v) is not None}
    for entry in data.get("ptq", []):
        if isinstance(entry, dict) and "pair" in entry and isinstance(entry.get("acc"), (int, float)):
            metrics.setdefault(f"ptq/acc_{entry['pair']}", entry["acc"])
    status, error = data.get("status", "unreadable"), data.get("error")
    if status == "running" and lock.holder(results.parent) is None:
        status, error = "killed", "its process ended without recording how (resume it)"
    return Run(
        results.parent,
        status,
        _overrides(data.get("overrides", [])),
        metrics,
        error,
        {k: str(v) for k, v in data.get("choices", {}).items()},
    )


def _missing_run(job: Path) -> Run:
    """A job directory without results.json (killed before it wrote one): its overrides from .hydra."""
    from omegaconf import OmegaConf

    try:
        listed = list(OmegaConf.load(RunDir(job).overrides) or [])
    except Exception:  # unreadable or not YAML: the job is still shown, without its overrides
        listed = []
    return Run(job, "missing", _overrides([str(item) for item in listed]))


def planned_jobs(sweep_dir: Path) -> list[Run]:
    """The jobs a sweep planned (its sweep.json), each as a "not started" run in <sweep dir>/<num>."""
    record = RunDir(sweep_dir).read_sweep_record()
    if record is None:
        return []
    return [
        Run(sweep_dir / str(job["num"]), "not started", _overrides([str(o) for o in job["overrides"]]))
        for job in record["jobs"]
    ]


def find_runs(dirs: list[Path]) -> list[Run]:
    """Every run under `dirs`: results.json files, job directories (.hydra/) without one ("missing"),
    and the jobs a sweep planned (sweep.json) that have no directory yet ("not started")."""
    runs: dict[Path, Run] = {}
    for root in dirs:
        if not root.is_dir():
            raise ValueError(f"{root}: not a directory")
        for results in sorted(root.rglob(rundir.RESULTS)):
            runs.setdefault(results.parent.resolve(), read_run(results))
        for hydra in sorted(root.rglob(rundir.HYDRA)):
            job = hydra.parent.resolve()
            if job not in runs and RunDir(job).overrides.is_file():
                runs[job] = _missing_run(hydra.parent)
        for record in sorted(root.rglob(rundir.SWEEP_RECORD)):
            for planned in planned_jobs(record.parent):
                runs.setdefault(planned.path.resolve(), planned)
    return list(runs.values())


def left_out(runs: list[Run]) -> str:
    """The runs a table or figure cannot average, counted by status ("" when every run completed):
    e.g. "left out: 1 failed, 1 unreadable (runs/3/results.json: ...)"."""
    others = [r for r in runs if r.status != "completed"]
    if not others:
        return ""
    counts: dict[str, int] = {}
    for r in others:
        counts[r.status] = counts.get(r.status, 0) + 1
    first = next((r for r in others if r.status == "unreadable"), others[0])
    why = f" ({first.path}: {first.error})" if first.error else f" ({first.path})"
    return "left out: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + why


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value differs between runs (a key a run lacks counts as a value)."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys and not k.startswith(IGNORED_KEYS)]
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]
