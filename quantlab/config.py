"""Where the configs live, and the checks that turn bad input into one-line errors."""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


class QuantlabError(Exception):
    """An error the user can fix; printed as one line, without a traceback."""


class ConfigError(QuantlabError):
    """A config value outside what is allowed; the message names the field."""


def config_dir() -> str:
    """The Hydra search path for quantlab's configs.

    An installed quantlab ships conf/ as the package ``quantlab.conf``; a plain checkout that was
    never installed reads the top-level ``conf/`` folder next to the package.
    """
    if importlib.util.find_spec("quantlab.conf") is not None:
        return "pkg://quantlab.conf"
    checkout_conf = Path(__file__).resolve().parent.parent / "conf"
    if not checkout_conf.is_dir():
        raise QuantlabError(
            f"quantlab's configs are missing: expected {checkout_conf} or the package quantlab.conf"
        )
    return str(checkout_conf)


def group_options(group: str) -> list[str]:
    """The options of a config group (the YAML files of conf/<group>/), sorted."""
    root = config_dir()
    if root.startswith("pkg://"):
        from importlib.resources import files

        folder = files("quantlab.conf").joinpath(group)
        names = [p.name for p in folder.iterdir()]
    else:
        names = [p.name for p in (Path(root) / group).iterdir()]
    return sorted(n[: -len(".yaml")] for n in names if n.endswith(".yaml"))


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _check_positive(cfg: DictConfig, key: str, integer: bool) -> None:
    value = _get(cfg, key)
    if value is None:
        return
    kind = "an integer" if integer else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        raise ConfigError(f"{key}={value!r}: must be {kind} > 0")
    if value <= 0:
        raise ConfigError(f"{key}={value}: must be {kind} > 0")


def check_bits(value: Any, field: str, low: int = 1, high: int = 32, allow_none: bool = False) -> None:
    """A bit-width must be an integer in [low, high] (None allowed where `allow_none`)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{field}={value!r}: bits must be an integer in {low}..{high}{extra}")


def parse_sweep(sweep: Iterable[Any] | None, field: str = "bitwidth.sweep", high: int = 32) -> list[tuple]:
    """A PTQ sweep: a list of [weight_bits, act_bits] pairs; act_bits null means weights only."""
    if sweep is None:
        return []
    if not isinstance(sweep, (list, tuple, ListConfig)):
        raise ConfigError(f"{field}={sweep!r}: must be a list of [weight_bits, act_bits] pairs")
    pairs = []
    for i, pair in enumerate(sweep):
        if not isinstance(pair, (list, tuple, ListConfig)) or len(pair) != 2:
            raise ConfigError(f"{field}[{i}]={pair!r}: must be a pair [weight_bits, act_bits]")
        w, a = pair
        check_bits(w, f"{field}[{i}][0]", high=high)
        check_bits(a, f"{field}[{i}][1]", high=high, allow_none=True)
        pairs.append((int(w), None if a is None else int(a)))
    return pairs


def validate_train_config(cfg: DictConfig) -> None:
    """Reject out-of-range values before anything is built; each error names its field."""
    epochs, iterations = _get(cfg, "schedule.epochs"), _get(cfg, "schedule.iterations")
    if epochs is None and iterations is None:
        raise ConfigError("schedule.epochs / schedule.iterations: set one of them to an integer > 0")
    _check_positive(cfg, "schedule.epochs", integer=True)
    _check_positive(cfg, "schedule.iterations", integer=True)
    _check_positive(cfg, "schedule.batch_size", integer=True)
    _check_positive(cfg, "schedule.optimizer.lr", integer=False)
    if _get(cfg, "schedule.batch_size") is None:
        raise ConfigError("schedule.batch_size: must be an integer > 0")
    if _get(cfg, "schedule.optimizer.lr") is None:
        raise ConfigError("schedule.optimizer.lr: must be a number > 0")
    for key in ("bitwidth.weight_bits", "bitwidth.act_bits"):
        check_bits(_get(cfg, key), key, allow_none=True)
    parse_sweep(_get(cfg, "bitwidth.sweep"), high=16)
    for key in ("trainer.eval_every", "trainer.log_every"):
        _check_positive(cfg, key, integer=True)
    norms_every = _get(cfg, "trainer.grad_norms_every")
    if norms_every is not None and (
        isinstance(norms_every, bool) or not isinstance(norms_every, int) or norms_every < 0
    ):
        raise ConfigError(f"trainer.grad_norms_every={norms_every!r}: must be an integer >= 0 or null")
    device = _get(cfg, "device")
    if device is not None and str(device).split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
        raise ConfigError(f"device={device!r}: must be auto, cpu, cuda, cuda:N or mps")
    unit = _get(cfg, "trainer.eval_unit")
    if unit not in (None, "epoch", "step"):
        raise ConfigError(f"trainer.eval_unit={unit!r}: must be epoch or step")


def compose(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose a config outside a Hydra app (tests, benchmarks), with the same search path.

    Hydra's runtime facts (`${hydra:runtime.choices.method}`, used by the paper presets) resolve as
    in a run: the composed Hydra config is installed as the current one.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    root = config_dir()
    if root.startswith("pkg://"):
        ctx = initialize_config_module(root[len("pkg://") :], version_base="1.3")
    else:
        ctx = initialize_config_dir(root, version_base="1.3")
    with ctx:
        cfg = hydra_compose(
            config_name=config_name, overrides=list(overrides or []), return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def check_preset_row(cfg: DictConfig, method: str | None, experiment: str | None) -> None:
    """A paper preset picks its hyperparameters by method: the method must have a row there."""
    rows = OmegaConf.select(cfg, "preset.rows", default=None)
    if rows is not None and method not in rows:
        raise ConfigError(
            f"method={method}: experiment={experiment} has no row for it; its table has: {', '.join(rows)}"
        )


def check_missing(cfg: DictConfig) -> None:
    """Mandatory values (???) and the keys a preset requires (`preset.requires`) must be set."""
    for key in OmegaConf.select(cfg, "preset.requires", default=None) or []:
        if OmegaConf.select(cfg, key, default=None) is None:
            raise ConfigError(f"{key}: this experiment needs it (set {key}=...)")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]}: a value is required here (set {missing[0]}=...)")


def run_command(run: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig, command: str) -> dict[str, Any]:
    """`run(cfg)` for a Hydra command. A user-fixable QuantlabError is one plain line on stderr and
    exit 2; in a multirun it goes on to Hydra, which records the job as failed and runs the others."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from quantlab.console import error_line

    try:
        return run(cfg)
    except QuantlabError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        logging.getLogger("quantlab").debug("failed", exc_info=True)
        error_line(command, e)
        sys.exit(2)
