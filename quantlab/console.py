"""One rich Console for log lines, progress bars and tables (so they never tear each other)."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


def rich_handler(level: int | str = logging.NOTSET) -> RichHandler:
    """Factory for Hydra's job_logging (conf/hydra/job_logging/rich.yaml)."""
    return RichHandler(console=console, level=level, show_path=False, markup=False, rich_tracebacks=False)


def interactive() -> bool:
    """Progress bars on a terminal; one log line per epoch elsewhere (CI, files, pipes)."""
    return console.is_terminal and not console.is_dumb_terminal
