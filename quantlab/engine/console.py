"""One rich Console for log lines, progress bars and tables (so they never tear each other)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Collection
from typing import Any, NoReturn

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


def fail(prefix: str, message: object, code: int = 2, label: str = "error") -> NoReturn:
    """The one exit path for an error a user can act on: one line on stderr, then exit `code`
    (2: bad input; 1: a run that failed; 130 / 143: a run stopped by SIGINT / SIGTERM)."""
    text = " ".join(str(message).split())
    print(f"{prefix}: {label}: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


def print_rows(
    title: str,
    columns: dict[str, Callable[[dict[str, Any]], str]],
    rows: list[dict],
    left: Collection[str] = (),
) -> None:
    """A rich table of `rows`: one column per entry of `columns`, its text from the row by the
    column's function; numbers right-aligned, the columns named in `left` left-aligned."""
    from rich.table import Table

    table = Table(title=title)
    for name in columns:
        table.add_column(name, justify="left" if name in left else "right")
    for row in rows:
        table.add_row(*(text(row) for text in columns.values()))
    console.print(table)
