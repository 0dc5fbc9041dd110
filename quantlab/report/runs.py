"""Finding runs for a report: every results.json below the given directories (and job directories that
never wrote one), read into `Run`s that tables and plots group by their overrides."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
            self._config = _read_config(self.path / "config.yaml")
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


def read_run(results: Path) -> Run:
    try:
        data = json.loads(results.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return Run(results.parent, "unreadable", error=f"{type(e).__name__}: {e}")
    metrics = {k: v for k, v in data.get("metrics", {}).items() if isinstance(v, (int, float))}
    for entry in data.get("ptq") or []:
        if "pair" in entry and isinstance(entry.get("acc"), (int, float)):
            metrics.setdefault(f"ptq/acc_{entry['pair']}", entry["acc"])
    return Run(
        results.parent,
        str(data.get("status", "unreadable")),
        _overrides(data.get("overrides", [])),
        metrics,
        data.get("error"),
        {k: str(v) for k, v in (data.get("choices") or {}).items()},
    )


def _missing_run(job: Path) -> Run:
    """A job directory without results.json (killed before it wrote one): its overrides from .hydra."""
    from omegaconf import OmegaConf

    try:
        listed = list(OmegaConf.load(job / ".hydra" / "overrides.yaml") or [])
    except Exception:  # unreadable or not YAML: the job is still shown, without its overrides
        listed = []
    return Run(job, "missing", _overrides([str(item) for item in listed]))


def find_runs(dirs: list[Path]) -> list[Run]:
    """Every run under `dirs`: results.json files, and job directories (.hydra/) without one."""
    runs: dict[Path, Run] = {}
    for root in dirs:
        if not root.is_dir():
            raise ValueError(f"{root}: not a directory")
        for results in sorted(root.rglob("results.json")):
            runs.setdefault(results.parent.resolve(), read_run(results))
        for hydra in sorted(root.rglob(".hydra")):
            job = hydra.parent.resolve()
            if job not in runs and (hydra / "overrides.yaml").is_file():
                runs[job] = _missing_run(hydra.parent)
    return list(runs.values())


def varying_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value differs between runs (a key a run lacks counts as a value)."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys and not k.startswith(IGNORED_KEYS)]
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]
