"""The checks a command line passes before Hydra creates a directory or any data is loaded: the config
of every job composes (Hydra's own errors become one line), its values are in range, its method and
PTQ settings build, its device exists; and the directory a command will write into, settled before
Hydra would resolve `${now:...}` itself. Each failure is one ConfigError (exit code 2). The commands'
own guards (commands/train_checks.py, ptq.py, export.py) are made of these."""

from __future__ import annotations

import re
from pathlib import Path

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from quantlab.data.vision import check_present
from quantlab.engine import distributed
from quantlab.engine.evaluate import resolve_device
from quantlab.errors import ConfigError
from quantlab.quant.pairs import sweep_pairs
from quantlab.quant.sweep import PTQSettings
from quantlab.runs.cmdline import CommandLine
from quantlab.runs.components import build, load_init, not_taken, takes
from quantlab.runs.config import compose, group_options, prepare_train_config
from quantlab.runs.mlflow_store import require_extra
from quantlab.runs.sweep import wants_sweep
from quantlab.runs.tracking import LoggerSettings


def hydra_error_line(error: Exception) -> str:
    """One line for an error of Hydra's composition (an unknown option lists the group's options)."""
    text = str(error)
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if missing:
        group, option = missing.groups()
        try:
            options = ", ".join(group_options(group))
        except OSError:
            options = "?"
        return f"{group}={option}: no such option; choose one of: {options}"
    lines = [line.strip() for line in text.split("Config search path")[0].splitlines() if line.strip()]
    return "; ".join(line.rstrip(".") for line in lines) or type(error).__name__


def compose_checked(overrides: list[str], config_name: str = "train", keep_hydra: bool = False) -> DictConfig:
    """compose(), with Hydra's and OmegaConf's errors as one-line ConfigErrors."""
    from hydra.errors import HydraException

    try:
        return compose(overrides, config_name, keep_hydra=keep_hydra)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(hydra_error_line(e)) from None


def check_train(overrides: list[str]) -> DictConfig:
    """Everything about a `quantlab train` job that can be checked without its data: returns its
    resolved config."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_checked(overrides)
    choices = {k: str(v) for k, v in HydraConfig.get().runtime.choices.items()}
    check_added_keys(overrides, cfg)
    cfg = prepare_train_config(cfg, choices, write_to=None)
    settings, pairs = PTQSettings.from_config(cfg.get("ptq")), sweep_pairs(cfg.bitwidth.get("sweep"))
    resolve_device(str(cfg.device))
    check_devices(cfg.trainer.get("devices", 1))
    check_exports(cfg, settings)
    if LoggerSettings.from_config(cfg.logger).mlflow:  # e.g. an experiment preset that asks for it
        require_extra("logger.mlflow=true")
    wants_sweep(settings, build(cfg.method, "method").traits, pairs)
    check_dataset_files(cfg.dataset)
    if cfg.get("init_from"):  # read now (safely), so that a refused checkpoint creates no run
        load_init(build(cfg.model), str(cfg.init_from), quiet=True)
    return cfg


FREE_NODES = ("hydra", "preset")  # preset.*: an experiment's free parameters, read by interpolation


def check_added_keys(overrides: list[str], cfg: DictConfig) -> None:
    """A key added with `+key=` (or `++key=`) that nothing reads is refused in one line. Keys under a
    `_target_` node are checked against its callable's parameters when it is built; any other key
    must be one the configs define (conf/ is the schema)."""
    line = CommandLine.parse(overrides)
    for o in line.overrides:
        key = o.key_or_group
        if not (o.is_add() or o.is_force_add()) or "." not in key or key.startswith(FREE_NODES):
            continue
        parts = key.split(".")
        node = OmegaConf.select(cfg, ".".join(parts[:-1]), default=None)
        if isinstance(node, DictConfig) and "_target_" in node:  # a builder's parameter
            field = parts[0] if len(parts) == 2 else ".".join(parts[:-1])
            if takes(get_method(str(node["_target_"])), parts[-1]) is False:
                raise not_taken(field, str(node["_target_"]), parts[-1])
            continue
        if any(
            isinstance(up := OmegaConf.select(cfg, ".".join(parts[:i]), default=None), DictConfig)
            and "_target_" in up
            for i in range(1, len(parts) - 1)
        ):
            continue  # inside a builder's parameter (e.g. method.scope.fc): the builder checks it
        base = compose(line.without(key).task())
        if OmegaConf.select(base, key, default=_ABSENT) is _ABSENT:
            parent = OmegaConf.select(base, ".".join(parts[:-1]), default=None)
            known = f"; known: {', '.join(map(str, parent.keys()))}" if isinstance(parent, DictConfig) else ""
            raise ConfigError(f"{key}: no such setting (nothing reads it){known}")


_ABSENT = object()


def check_dataset_files(node: DictConfig) -> None:
    """The dataset's files are where dataset.root says, before a run directory is created."""
    target = str(node.get("_target_", ""))
    if target.startswith("quantlab.data.vision."):
        check_present(target.rsplit(".", 1)[1], node.get("root"), bool(node.get("download", False)))


def check_devices(value: object) -> None:
    """trainer.devices: the number of processes this command runs (quantlab starts torchrun for a
    trainer.devices=N on the command line; a torchrun command gives its own --nproc_per_node)."""
    world = distributed.ranks().world
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"trainer.devices={value!r}: must be an integer >= 1 (processes for this run)")
    if value not in (1, world):
        raise ConfigError(
            f"trainer.devices={value}: this command runs {world} process(es); give trainer.devices={value} "
            f"on the command line (quantlab starts torchrun) or run torchrun --nproc_per_node={value}"
        )


def check_exports(cfg: DictConfig, settings: PTQSettings) -> None:
    """`export=[...]`: pairs in 1..16 bits, the export extra installed, an exportable network."""
    from quantlab.runs.export import check_network, export_pairs, require_extra

    if export_pairs(cfg.get("export")):
        require_extra()
        check_network(cfg, settings)


def settled_dir(line: CommandLine, key: str, config_name: str = "train") -> Path:
    """`hydra.run.dir` / `hydra.sweep.dir` as given, or as the config resolves it now (the
    directory the command will write into, whatever the clock says later)."""
    given = line.text(key)
    if given:
        return Path(given).expanduser().resolve()
    cfg = compose_checked(line.hydra(), config_name, keep_hydra=True)
    return Path(str(cfg.hydra.run.dir if key == "hydra.run.dir" else cfg.hydra.sweep.dir)).resolve()
