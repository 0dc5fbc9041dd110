"""A command's arguments, parsed once with Hydra's own override parser, and what every command asks
of them: a key's value, the job's own overrides, the jobs of a grid, the arguments Hydra runs with.

    line = CommandLine.parse(["-m", "method=float,l1", "seed=0,1", "hydra.sweep.dir=/runs/x"])
    line.multirun, line.value("hydra.sweep.dir"), line.jobs()   # True, "/runs/x", 4 jobs in Hydra's order

Flags (`-m`, `--cfg job`, ...) are kept as they are; everything else is an override. A path given
back to Hydra is quoted for its grammar (`hydra_quote`), and a command printed for a user to paste is
quoted for the shell (`shell_command`).
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from typing import Any

from quantlab.errors import ConfigError

#: Hydra flags that print something and run nothing: no guard applies.
INFO_FLAGS = {"-h", "--help", "--hydra-help", "-c", "--cfg", "--info", "-i", "--shell-completion", "-sc"}
MULTIRUN_FLAGS = ("-m", "--multirun")
#: flags whose value is the next argument (`--cfg job`, `--config-dir <dir>`)
VALUED_FLAGS = ("--cfg", "-c", "--config-dir", "-cd", "--config-name", "-cn", "--package", "-p")
_PLAIN = re.compile(r"[\w./:@+%-]+")


def hydra_quote(text: str) -> str:
    """`text` as a value of Hydra's override grammar: as it is when plain, else single-quoted."""
    if _PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def shell_command(*words: str) -> str:
    """A command line a user can paste into a shell: every word quoted where it needs it."""
    return " ".join(shlex.quote(w) for w in words)


def _parse(texts: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(texts)
    except HydraException as e:
        raise ConfigError(" ".join(str(e).split())) from None


@dataclass(frozen=True)
class CommandLine:
    """Flags (as given) and overrides (Hydra `Override`s, in order)."""

    flags: tuple[str, ...]
    overrides: tuple[Any, ...]

    @classmethod
    def parse(cls, args: list[str]) -> CommandLine:
        """Split flags from overrides and parse the overrides (a syntax error is one ConfigError).
        A flag's argument (`--cfg job`, `--config-dir <dir>`) stays with its flag."""
        flags, texts, expect_value = [], [], False
        for arg in args:
            if expect_value or arg.startswith("-"):
                flags.append(arg)
                expect_value = arg in VALUED_FLAGS
            else:
                texts.append(arg)
        return cls(tuple(flags), tuple(_parse(texts)))

    # -- what it says --------------------------------------------------------------------------------

    @property
    def multirun(self) -> bool:
        return any(f in MULTIRUN_FLAGS for f in self.flags)

    @property
    def runs_nothing(self) -> bool:
        """Hydra's own flags (--help, --cfg, --config-dir, ...): Hydra handles them, no guard applies."""
        return any(f not in MULTIRUN_FLAGS for f in self.flags)

    def _find(self, key: str) -> Any | None:
        found = None
        for o in self.overrides:
            if o.key_or_group == key:
                found = o  # the last one wins, as in Hydra
        return found

    def has(self, key: str) -> bool:
        return self._find(key) is not None

    def value(self, key: str) -> Any:
        """The value given for `key` (`key=`, `+key=`, `++key=`), as Hydra parses it (a string, a
        number, a list; a sweep's values as a list of strings); None when absent or null."""
        o = self._find(key)
        if o is None or o.is_delete():
            return None
        return list(o.sweep_string_iterator()) if o.is_sweep_override() else o.value()

    def text(self, key: str) -> str | None:
        """The value of `key` as text (None when absent or null)."""
        value = self.value(key)
        return None if value is None else str(value)

    def values(self, key: str) -> list[str]:
        """Every value `key` takes: those of a sweep, the one given, or none."""
        value = self.value(key)
        if value is None:
            return []
        return [str(v) for v in value] if self._find(key).is_sweep_override() else [str(value)]

    def given_keys(self) -> list[str]:
        """The keys given, in order."""
        return [o.key_or_group for o in self.overrides]

    # -- changed copies ------------------------------------------------------------------------------

    def without(self, *keys: str) -> CommandLine:
        return CommandLine(self.flags, tuple(o for o in self.overrides if o.key_or_group not in keys))

    def with_value(self, key: str, value: str) -> CommandLine:
        """`key=value` replacing any value given for `key` (the value quoted for Hydra's grammar)."""
        (added,) = _parse([f"{key}={hydra_quote(str(value))}"])
        return CommandLine(self.flags, (*self.without(key).overrides, added))

    def with_overrides(self, texts: list[str]) -> CommandLine:
        """These overrides in place of the line's own (the flags kept)."""
        return CommandLine(self.flags, tuple(_parse(list(texts))))

    def forced(self, keys: set[str]) -> CommandLine:
        """`++key=...` for the keys given (set or added, whatever the config holds)."""
        lines = []
        for o in self.overrides:
            lines.append(f"++{o.input_line.lstrip('+')}" if o.key_or_group in keys else o.input_line)
        return self.with_overrides(lines)

    def single(self) -> CommandLine:
        """The line without -m / --multirun."""
        return CommandLine(tuple(f for f in self.flags if f not in MULTIRUN_FLAGS), self.overrides)

    # -- back to arguments ---------------------------------------------------------------------------

    def task(self) -> list[str]:
        """The job's own overrides (Hydra's settings left out), as given."""
        return [o.input_line for o in self.overrides if not _is_hydra(o.key_or_group)]

    def hydra(self) -> list[str]:
        """Hydra's own overrides (hydra.*, hydra/...)."""
        return [o.input_line for o in self.overrides if _is_hydra(o.key_or_group)]

    def args(self) -> list[str]:
        """The arguments Hydra runs with: the flags, then the overrides."""
        return [*self.flags, *(o.input_line for o in self.overrides)]

    def jobs(self) -> list[list[str]]:
        """Every job of the grid the task overrides make, in Hydra's order (its basic sweeper's:
        the product of each key's values, keys in the order first given, a repeated key's last
        value): job k runs in <sweep dir>/k."""
        values: dict[str, list[str]] = {}
        for o in self.overrides:
            if _is_hydra(o.key_or_group):
                continue
            key = o.get_key_element()
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    raise ConfigError(f"{o.input_line}: an interval cannot be swept here; list the values")
                values[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            else:
                values[key] = [f"{key}={o.get_value_element_as_str()}"]
        return [list(job) for job in itertools.product(*values.values())]


def _is_hydra(key: str) -> bool:
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))
