"""results.json: the contract between a run and `quantlab table` / `plot` / `ptq`.

Fields: status, error (when not completed), metrics (final values under the TensorBoard names:
test/acc, test/acc_exported, val/acc, ...), ptq (one entry per swept bit pair), timing (seconds,
summed over every session of the run), sessions (one entry per process that worked on the run:
when it started, the steps it covered, how it ended), overrides (the command-line overrides that made
the run) and run facts (choices, source run, ...).

Status is a small state machine, always written atomically:
    running ──► completed | failed | interrupted        (interrupted, failed ──► running: a resume)
A session that was killed (SIGKILL, a lost node) leaves `running` behind; the next resume marks that
session `killed`. A resume never destroys what an earlier session recorded: it starts from the
previous results.json, and an error during it changes only `status` and `error`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from quantlab.engine import distributed
from quantlab.engine.files import write_json_atomic
from quantlab.errors import QuantlabError, WriteFailed, as_interruption


def new_session(start_step: int | None = None) -> dict[str, Any]:
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **({"processes": world} if (world := distributed.ranks().world) > 1 else {}),
        "status": "running",
        **({} if start_step is None else {"from_step": start_step}),
    }


def continued(previous: dict[str, Any]) -> dict[str, Any]:
    """The results of a run a new session continues: everything recorded so far kept, an earlier
    session still marked running (its process died without a word) marked killed."""
    results = dict(previous)
    sessions = [dict(s) for s in results.get("sessions") or [] if isinstance(s, dict)]
    for session in sessions:
        if session.get("status") == "running":
            session["status"] = "killed"
    results["sessions"] = sessions
    results.pop("error", None)
    return results


@contextlib.contextmanager
def recorded(path: Path, results: dict[str, Any], started: float) -> Iterator[dict[str, Any]]:
    """Write `results` (status "running", a new session appended) to `path`, run the body (which
    fills in metrics and sets status "completed"), and write it again at the end. If the body raises,
    record how it ended: a QuantlabError's own status (failed, interrupted) with its one-line
    message, Ctrl-C as interrupted, anything else as failed; then re-raise. When even that write
    fails (the disk is full), the original error goes on."""
    session = new_session()
    results["status"] = "running"
    results.setdefault("sessions", []).append(session)
    try:  # a signal that lands while the first write is finishing is recorded too
        write_json_atomic(path, results)
        yield results
    except BaseException as raised:
        e = as_interruption(raised) or raised  # a stop signal that surfaced as another error
        if isinstance(e, QuantlabError):
            status, error = e.status, str(e)
        elif isinstance(e, KeyboardInterrupt):
            status, error = "interrupted", "KeyboardInterrupt"
        else:
            status, error = "failed", f"{type(e).__name__}: {e}"
        results.update(status=status, error=error)
        session.update(status=status, wall_s=time.perf_counter() - started)
        with contextlib.suppress(WriteFailed):
            write_json_atomic(path, results)
        if e is not raised:
            raise e from None
        raise
    session.update(status=results["status"], wall_s=time.perf_counter() - started)
    write_json_atomic(path, results)
