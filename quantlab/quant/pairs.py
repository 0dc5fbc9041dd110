"""Bit-widths and (weight bits, activation bits) pairs as the configs and command lines give them:
`bitwidth.sweep`, `bits=w8a8` of `quantlab export`, the PTQ and STE settings."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from quantlab.errors import ConfigError

#: (weight bits, activation bits); activation bits None: weights only.
Pair = tuple[int, "int | None"]


def check_bits(value: Any, field: str, low: int = 1, high: int = 32, allow_none: bool = False) -> None:
    """A bit-width must be an integer in [low, high] (None allowed where `allow_none`)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{field}={value!r}: bits must be an integer in {low}..{high}{extra}")


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
