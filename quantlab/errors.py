"""The errors a user can fix, and the value checks every layer shares. Imports nothing of quantlab.

A `QuantlabError` is printed as one line without a traceback and ends the command with exit code 2;
a `ConfigError` is one whose message names the config field and what is allowed there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

#: (weight bits, activation bits); activation bits None: weights only.
Pair = tuple[int, "int | None"]


class QuantlabError(Exception):
    """An error the user can fix; printed as one line, without a traceback."""

    #: the command's exit status: 2 for bad input (the default), 1 for a run that failed, 128 + N
    #: for a run stopped by signal N
    exit_code: int = 2
    #: what results.json records when this error ends a run
    status: str = "failed"


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


def check_bits(value: Any, field: str, low: int = 1, high: int = 32, allow_none: bool = False) -> None:
    """A bit-width must be an integer in [low, high] (None allowed where `allow_none`)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{field}={value!r}: bits must be an integer in {low}..{high}{extra}")


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


def _is_sequence(value: Any) -> bool:
    # ListConfig is a Sequence; str is excluded on purpose
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def parse_sweep(sweep: Iterable[Any] | None, field: str = "bitwidth.sweep", high: int = 32) -> list[Pair]:
    """A PTQ sweep: a list of [weight_bits, act_bits] pairs; act_bits null means weights only."""
    if sweep is None:
        return []
    if not _is_sequence(sweep):
        raise ConfigError(f"{field}={sweep!r}: must be a list of [weight_bits, act_bits] pairs")
    pairs: list[Pair] = []
    for i, pair in enumerate(sweep):
        if not _is_sequence(pair) or len(pair) != 2:
            raise ConfigError(f"{field}[{i}]={pair!r}: must be a pair [weight_bits, act_bits]")
        w, a = pair
        check_bits(w, f"{field}[{i}][0]", high=high)
        check_bits(a, f"{field}[{i}][1]", high=high, allow_none=True)
        pairs.append((int(w), None if a is None else int(a)))
    return pairs


def parse_pair(value: Any, field: str = "bits") -> Pair:
    """One (weight bits, activation bits) pair: `w8a8`, `w4afp` (activations in float) or [8, 8];
    bits in 1..16."""
    text = str(value).strip().lower()
    match = re.fullmatch(r"w(\d+)a(\d+|fp)", text)
    if match:
        value = [int(match[1]), None if match[2] == "fp" else int(match[2])]
    if not _is_sequence(value) or len(value) != 2:
        raise ConfigError(f"{field}={value!r}: must be a pair such as w8a8, w4afp or [8,8]")
    w, a = value
    check_bits(w, f"{field}[0] (weight bits)", high=16)
    check_bits(a, f"{field}[1] (activation bits)", high=16, allow_none=True)
    return int(w), None if a is None else int(a)


def sweep_pairs(sweep: Any) -> list[Pair]:
    """`bitwidth.sweep` as (weight bits, activation bits) pairs; bits must be in 1..16."""
    return parse_sweep(sweep, "bitwidth.sweep", high=16)
