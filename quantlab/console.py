"""One rich Console for log lines, progress bars and tables (so they never tear each other)."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


def interactive() -> bool:
    """Progress bars on a terminal; one log line per epoch elsewhere (CI, files, pipes)."""
    return console.is_terminal and not console.is_dumb_terminal


def rich_handler(level: int | str = logging.NOTSET) -> logging.Handler:
    """Factory for Hydra's job_logging (conf/hydra/job_logging/rich.yaml).

    On a terminal: a RichHandler on the shared console. Elsewhere: plain, unwrapped lines, so that
    logs stay greppable and one event is one line.
    """
    if interactive():
        handler: logging.Handler = RichHandler(
            console=console, level=level, show_path=False, markup=False, rich_tracebacks=False
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S"))
    return handler


def error_line(prefix: str, message: object) -> None:
    """A user-fixable error: one plain line on stderr, never wrapped."""
    text = " ".join(str(message).split())
    print(f"{prefix}: error: {text}", file=sys.stderr, flush=True)
