"""The errors a user can fix, and the value checks every layer shares. Imports nothing of quantlab.

A `QuantlabError` is printed as one line without a traceback and ends the command with exit code 2;
a `ConfigError` is one whose message names the config field and what is allowed there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: (weight bits, activation bits); activation bits None: weights only.
Pair = tuple[int, "int | None"]


class QuantlabError(Exception):
    """An error the user can fix; printed as one line, without a traceback."""


class ConfigError(QuantlabError):
    """A config value outside what is allowed; the message names the field."""


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


def sweep_pairs(sweep: Any) -> list[Pair]:
    """`bitwidth.sweep` as (weight bits, activation bits) pairs; bits must be in 1..16."""
    return parse_sweep(sweep, "bitwidth.sweep", high=16)
