"""The Hydra job a command runs as: its run directory, overrides and choices, the results.json it
starts with, and the one place a user-fixable error becomes exit code 2 (or, in a multirun, a failed
job that Hydra records while the others run)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from quantlab.engine.console import fail
from quantlab.errors import Interrupted, QuantlabError


@dataclass
class Job:
    """One run of a Hydra command, as seen from inside it."""

    dir: Path
    overrides: list[str]
    choices: dict[str, str]
    multirun: bool
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def current(cls) -> Job:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return cls(
            dir=Path(hc.runtime.output_dir),
            # resume=... says how this process runs, not what the run is
            overrides=[o for o in hc.overrides.task if not o.startswith("resume=")],
            # the groups a user picks (method, model, ...), not Hydra's own nor a config's inner defaults
            choices={
                k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and "/" not in k
            },
            multirun=hc.mode == RunMode.MULTIRUN,
        )

    @property
    def results_path(self) -> Path:
        return self.dir / "results.json"

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def new_results(self, overrides: list[str] | None = None, **facts: Any) -> dict[str, Any]:
        """results.json as a run starts: status running, no metrics yet."""
        return {
            "status": "running",
            "run_dir": str(self.dir),
            **facts,
            "overrides": list(self.overrides if overrides is None else overrides),
            "metrics": {},
            "ptq": [],
            "timing": {},
        }


def run_command(run: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig, command: str) -> dict[str, Any]:
    """`run(cfg)` for a Hydra command. A user-fixable QuantlabError is one plain line on stderr and
    exit 2; in a multirun it goes on to Hydra, which records the job as failed and runs the others."""
    try:
        return run(cfg)
    except QuantlabError as e:
        if Job.current().multirun and not isinstance(e, Interrupted):
            raise  # Hydra records the job as failed and goes on with the others
        logging.getLogger("quantlab").debug("stopped", exc_info=True)
        fail(command, e, e.exit_code, "interrupted" if isinstance(e, Interrupted) else "error")


def launch(
    command: str, guard: Callable[[list[str]], list[str]], app: Callable[[], Any], argv: list[str] | None
) -> None:
    """`quantlab <command> [overrides]`: the directory guards on the overrides (runs.guards), before
    Hydra creates anything, then the command's Hydra app."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = guard(args)
    except QuantlabError as e:
        if e.exit_code == 0:  # e.g. resume=auto of a completed run
            print(f"quantlab {command}: {e}", file=sys.stderr)
            return
        fail(f"quantlab {command}", e, e.exit_code)
    sys.argv = [f"quantlab {command}", *args]
    app()
