"""The papers' tables as data, and our runs laid out beside them (`quantlab table --paper <name>`).

A paper table (quantlab/papers/<name>.yaml) names its rows and its column groups ("settings", e.g. a
dataset and model) and, within each setting, its columns; each of them carries a *selector*, the
config values of the runs it describes:

    rows:     {MD-tanh-s: {method: md_tanh_s}, PMF: null}       # null: the paper's number only
    settings: {cifar10/vgg16: {dataset: cifar10, model: vgg16}}
    columns:  {top-1: {}, (8,4): {metric: ptq/acc_w8a4}}        # `metric`: which of our numbers
    values:   {MD-tanh-s: [91.53, ...]}                          # settings outer, columns inner

Under `claims:` it lists what the paper claims, each a comparison of two groups of runs that
quantlab.report.claims measures (effect, confidence interval, verdict).

A selector key is a config group (method, dataset, model, bitwidth, ...: the run's Hydra choices) or
a dotted config key (method.strength, init_from, preset.bits: the run's resolved config.yaml);
a value of null asks for the key to be unset, "*" for any value. A run belongs to the most specific
row whose selector it matches, and to every column whose setting and column selectors it matches.
`--paper NAME:SETTING` keeps one setting and compares every run with it whatever its dataset and
model: the smoke scale, digits runs beside a CIFAR column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

ANY = "*"


@dataclass(frozen=True)
class Side:
    """One group of a claim's comparison: a table row (and column), or a selector of its own."""

    row: str | None = None
    column: str | None = None
    select: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A paper's claim that `better` beats `than` on `metric` (quantlab.report.claims measures it)."""

    claim: str
    source: str
    better: Side
    than: Side
    metric: str | None = None
    lower_is_better: bool = False
    tolerance: float = 0.0


@dataclass
class PaperTable:
    name: str
    title: str
    source: str
    metric: str
    row_header: str
    rows: dict[str, dict[str, Any] | None]
    settings: dict[str, dict[str, Any]]
    columns: dict[str, dict[str, Any]]
    values: dict[str, list[float | None]]
    notes: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)  # the paper's claims (quantlab.report.claims)

    def cells(self) -> list[tuple[str, str, dict[str, Any], str]]:
        """(setting, column, selector, metric) for every paper column, settings outer."""
        out = []
        for setting, setting_selector in self.settings.items():
            for column, spec in self.columns.items():
                selector = {**setting_selector, **{k: v for k, v in spec.items() if k != "metric"}}
                out.append((setting, column, selector, spec.get("metric", self.metric)))
        return out

    def label(self, setting: str, column: str) -> str:
        if len(self.columns) == 1:
            return setting
        return column if len(self.settings) == 1 else f"{setting} {column}"

    def only(self, setting: str) -> PaperTable:
        """This table reduced to one setting, whose selector is dropped (any dataset and model)."""
        if setting not in self.settings:
            raise ValueError(
                f"--paper {self.name}:{setting}: no such setting; one of {', '.join(self.settings)}"
            )
        index, n = list(self.settings).index(setting), len(self.columns)
        values = {row: v[index * n : (index + 1) * n] for row, v in self.values.items()}
        return replace(self, settings={setting: {}}, values=values)


def paper_dir() -> Path:
    return Path(str(resources.files("quantlab.report") / "papers"))


def available() -> list[str]:
    return sorted(p.stem for p in paper_dir().glob("*.yaml"))


def load_paper(spec: str) -> PaperTable:
    """`name` or `name:setting` (see the module docstring), checked against its own layout."""
    import yaml

    name, _, setting = spec.partition(":")
    path = paper_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"--paper {name}: no such paper table; one of {', '.join(available())}")
    data = yaml.safe_load(path.read_text())
    table = PaperTable(
        name=name,
        title=data["title"],
        source=data["source"],
        metric=data["metric"],
        row_header=data.get("row_header", "row"),
        rows=dict(data["rows"]),
        settings={k: dict(v or {}) for k, v in data["settings"].items()},
        columns={k: dict(v or {}) for k, v in data["columns"].items()},
        values={str(k): list(v) for k, v in data["values"].items()},
        notes=list(data.get("notes", [])),
    )
    width = len(table.settings) * len(table.columns)
    for row in table.rows:
        if len(table.values.get(row, [])) != width:
            raise ValueError(f"paper table {path}: row {row!r} needs {width} values")
    table.claims = parse_claims(data.get("claims"), table)
    return table.only(setting) if setting else table


def parse_claims(data: list[dict[str, Any]] | None, table: PaperTable) -> list[Claim]:
    """The `claims:` list of a paper YAML, checked against its table's rows and columns."""
    claims = []
    for i, item in enumerate(data or []):
        where = f"paper table {table.name}: claim {i + 1}"
        try:
            sides = [_side(item[key], table, f"{where}: {key}") for key in ("better", "than")]
            claims.append(
                Claim(
                    claim=str(item["claim"]),
                    source=str(item["source"]),
                    better=sides[0],
                    than=sides[1],
                    metric=item.get("metric"),
                    lower_is_better=bool(item.get("lower_is_better", False)),
                    tolerance=float(item.get("tolerance", 0.0)),
                )
            )
        except KeyError as e:
            raise ValueError(f"{where}: needs {e.args[0]!r}") from None
    return claims


def _side(spec: dict[str, Any], table: PaperTable, where: str) -> Side:
    side = Side(spec.get("row"), spec.get("column"), dict(spec.get("select") or {}))
    if side.row is None and not side.select:
        raise ValueError(f"{where}: give a row of the table or a select: {{...}}")
    if side.row is not None and table.rows.get(side.row) is None:
        raise ValueError(f"{where}: {side.row!r} is not a row of the table with runs")
    if side.column is not None and side.column not in table.columns:
        raise ValueError(f"{where}: {side.column!r} is not a column of the table")
    return side


# -- matching runs ----------------------------------------------------------------------------------------


def _same(wanted: Any, have: Any) -> bool:
    if wanted is None:
        return have is None
    if have is None:
        return False
    if wanted == ANY:
        return True
    if isinstance(have, bool) or isinstance(wanted, bool):
        return str(have).lower() == str(wanted).lower()
    try:
        a, b = float(wanted), float(have)
    except (TypeError, ValueError):
        return str(wanted) == str(have)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def matches(selector: dict[str, Any], lookup) -> bool:
    """True when every key of `selector` has its value in the run (`lookup(key)` gives the run's)."""
    return all(_same(wanted, lookup(key)) for key, wanted in selector.items())


def row_of(table: PaperTable, lookup) -> str | None:
    """The most specific row whose selector the run matches (None: none does)."""
    best, best_size = None, -1
    for row, selector in table.rows.items():
        if selector is not None and len(selector) > best_size and matches(selector, lookup):
            best, best_size = row, len(selector)
    return best
