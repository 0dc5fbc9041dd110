"""The errors a user can fix, and the one value check every layer shares. Imports nothing of quantlab.

A `QuantlabError` is printed as one line without a traceback and ends the command with exit code 2;
a `ConfigError` is one whose message names the config field and what is allowed there.
"""

from __future__ import annotations

from typing import Any


class QuantlabError(Exception):
    """An error the user can fix; printed as one line, without a traceback."""

    #: the command's exit status: 2 for bad input (the default), 1 for a run that failed, 128 + N
    #: for a run stopped by signal N
    exit_code: int = 2
    #: what results.json records when this error ends a run
    status: str = "failed"


class NothingToDo(QuantlabError):
    """A command with nothing left to do (resume=auto of a run that completed): it says so and ends
    successfully."""

    exit_code = 0


class ConfigError(QuantlabError):
    """A config value outside what is allowed; the message names the field."""


class MissingSetting(ConfigError):
    """A setting given to a config node (e.g. method.strength) that its class does not take."""


class RunFailed(QuantlabError):
    """A run that cannot go on (it diverged, a write failed); results.json says `failed`."""

    exit_code = 1


class Diverged(RunFailed):
    """The loss or the weights became non-finite."""


class WriteFailed(RunFailed):
    """A file could not be written (disk full, quota, file too large, read-only); names the file."""


class CheckpointError(QuantlabError):
    """A checkpoint that cannot be read (truncated, corrupt, or not quantlab's); names the file."""


class Interrupted(QuantlabError):
    """A run stopped by SIGINT or SIGTERM at a step boundary, its last.pt written; results.json says
    `interrupted` and the message gives the exact command that continues it."""

    status = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


#: The stop signal this process received while a command ran (runs.training.StopOnSignals sets it):
#: an error raised after it is how the stop surfaced (e.g. inside an import that Hydra wraps), so it
#: is reported as the interruption it is (`as_interruption`).
STOP_SIGNAL: list[int] = []


def as_interruption(error: BaseException) -> Interrupted | None:
    """`error` as the Interrupted it stands for, when a stop signal arrived; else None."""
    if isinstance(error, Interrupted):
        return error
    if not STOP_SIGNAL:
        return None
    import signal

    signum = STOP_SIGNAL[-1]
    return Interrupted(f"stopped by {signal.Signals(signum).name}", signum)


def check_positive(value: Any, field: str, integer: bool) -> None:
    """A count or rate must be an integer (or a number) > 0; None passes (unset)."""
    if value is None:
        return
    kind = "an integer" if integer else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        raise ConfigError(f"{field}={value!r}: must be {kind} > 0")
    if value <= 0:
        raise ConfigError(f"{field}={value}: must be {kind} > 0")
