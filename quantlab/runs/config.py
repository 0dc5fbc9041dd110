"""The Hydra side of a run: where the configs live, composing them, and the checks that turn a
composed config's bad values into one-line errors before anything is built."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from quantlab.data.bundle import check_val_split
from quantlab.data.resident import check_loader
from quantlab.engine.rundir import RunDir
from quantlab.engine.settings import amp_setting
from quantlab.errors import ConfigError, QuantlabError, check_positive
from quantlab.quant.pairs import check_bits, parse_sweep


def config_dir() -> str:
    """The Hydra search path for quantlab's configs.

    An installed quantlab ships conf/ as the package ``quantlab.conf``; a plain checkout that was
    never installed reads the top-level ``conf/`` folder next to the package.
    """
    if importlib.util.find_spec("quantlab.conf") is not None:
        return "pkg://quantlab.conf"
    checkout_conf = Path(__file__).resolve().parents[2] / "conf"  # quantlab/runs/config.py -> conf/
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


def validate_train_config(cfg: DictConfig) -> None:
    """Reject out-of-range values before anything is built; each error names its field."""
    seed = _get(cfg, "seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: must be an integer")
    epochs, iterations = _get(cfg, "schedule.epochs"), _get(cfg, "schedule.iterations")
    if epochs is None and iterations is None:
        raise ConfigError("schedule.epochs / schedule.iterations: set one of them to an integer > 0")
    check_positive(_get(cfg, "schedule.epochs"), "schedule.epochs", integer=True)
    check_positive(_get(cfg, "schedule.iterations"), "schedule.iterations", integer=True)
    check_positive(_get(cfg, "schedule.batch_size"), "schedule.batch_size", integer=True)
    check_positive(_get(cfg, "schedule.optimizer.lr"), "schedule.optimizer.lr", integer=False)
    if _get(cfg, "schedule.batch_size") is None:
        raise ConfigError("schedule.batch_size: must be an integer > 0")
    if _get(cfg, "schedule.optimizer.lr") is None:
        raise ConfigError("schedule.optimizer.lr: must be a number > 0")
    for key in ("bitwidth.weight_bits", "bitwidth.act_bits"):
        check_bits(_get(cfg, key), key, allow_none=True)
    parse_sweep(_get(cfg, "bitwidth.sweep"), high=16)
    for key in ("trainer.eval_every", "trainer.log_every"):
        check_positive(_get(cfg, key), key, integer=True)
    eval_batch = _get(cfg, "trainer.eval_batch_size")
    if eval_batch is not None:
        check_positive(eval_batch, "trainer.eval_batch_size", integer=True)
    norms_every = _get(cfg, "trainer.grad_norms_every")
    if norms_every is not None and (
        isinstance(norms_every, bool) or not isinstance(norms_every, int) or norms_every < 0
    ):
        raise ConfigError(f"trainer.grad_norms_every={norms_every!r}: must be an integer >= 0 or null")
    device = _get(cfg, "device")
    if device is not None and str(device).split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
        raise ConfigError(f"device={device!r}: must be auto, cpu, cuda, cuda:N or mps")
    unit = _get(cfg, "trainer.eval_unit")
    if unit not in (None, "epoch", "step", "batch"):
        raise ConfigError(f"trainer.eval_unit={unit!r}: must be epoch, step or batch")
    ties = _get(cfg, "trainer.select_ties")
    if ties not in (None, "loss", "keep"):
        raise ConfigError(f"trainer.select_ties={ties!r}: must be loss or keep")
    amp_setting(_get(cfg, "trainer.amp"))
    channels_last = _get(cfg, "trainer.channels_last")
    if channels_last not in (None, "auto", True, False):
        raise ConfigError(f"trainer.channels_last={channels_last!r}: must be auto, true or false")
    if _get(cfg, "trainer.compile") not in (None, True, False):
        raise ConfigError(f"trainer.compile={_get(cfg, 'trainer.compile')!r}: must be true or false")
    workers = _get(cfg, "trainer.num_workers")
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"trainer.num_workers={workers!r}: must be auto or an integer >= 0")
    if _get(cfg, "dataset.loader") is not None:
        check_loader(_get(cfg, "dataset.loader"))
    if _get(cfg, "dataset.val_split") is not None:
        check_val_split(_get(cfg, "dataset.val_split"))


def compose(
    overrides: list[str] | None = None, config_name: str = "train", keep_hydra: bool = False
) -> DictConfig:
    """Compose a config outside a Hydra app (the command-line checks, tests, benchmarks), with the
    same search path; `keep_hydra` keeps the `hydra` node (e.g. to read hydra.run.dir).

    Hydra's runtime facts (`${hydra:runtime.choices.method}`, used by the paper presets) resolve as
    in a run: the composed Hydra config is installed as the current one.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

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
    if not keep_hydra:
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


#: Where a run reads its data and what machine it runs on: a resume may change them (data copied to
#: node-local scratch, another GPU); every other setting is the experiment's and is kept.
MACHINE_KEYS = (
    "dataset.root",
    "dataset.download",
    "device",
    "trainer.num_workers",
    "trainer.devices",
    "trainer.compile",
    "trainer.channels_last",
    # where the run's numbers are sent, not what it computes: a resume may switch MLflow on or move it
    "logger",
    "logger.tensorboard",
    "logger.mlflow",
    "logger.tracking_uri",
    "logger.experiment",
    "logger.artifact_location",
)


_ABSENT = object()

#: Settings added after runs could have been recorded: (node, its _target_ prefix or None, key, the
#: value that reproduces how a run recorded before the key existed ran). Applied to an old run's
#: config.yaml where it lacks the key (`with_legacy_settings`), never to a new run, whose every
#: setting comes from conf/ (the one source of defaults).
LEGACY: tuple[tuple[str, str | None, str, Any], ...] = (
    ("trainer", None, "channels_last", "auto"),
    ("trainer", None, "compile", False),
    ("trainer", None, "devices", 1),
    ("trainer", None, "sync_bn", False),
    ("trainer", None, "select_ties", "loss"),  # issue 25
    ("trainer", None, "grad_norms_every", None),
    ("dataset", "quantlab.data.vision.", "loader", "torchvision"),  # before device-resident data
    ("dataset", "quantlab.data.vision.", "val_split", "random"),  # issue 25
    ("dataset", "quantlab.data.vision.", "val_augment", False),  # issue 25
    ("dataset", "quantlab.data.embedded.digits", "val_split", "random"),  # issue 25
    ("method", "quantlab.methods.binaryconnect.BC", "clip", True),
    ("method", "quantlab.methods.mirror.MDSoftmaxS", "lift_init", "product"),
    ("method", "quantlab.methods.proxquant.PQ", "name", "pq"),
    ("ptq", None, "bias", "float"),  # issue 28
    ("ptq", None, "weight_rounding", "nearest"),  # issue 28
    ("ptq", None, "bias_correction", False),  # issue 28
    ("ptq", None, "equalize", False),  # issue 28
    ("ptq", None, "adaround", "today's"),  # issue 28: unused by such a run; conf/'s own values
    ("", None, "logger", {"tensorboard": True, "mlflow": False}),  # issue 29: TensorBoard only
)


def ptq_defaults(**given: Any) -> Any:
    """PTQSettings from conf/ptq_setup/default.yaml (the one source of its defaults), `given` replacing
    keys: for code and tests that sweep without a run's config."""
    from quantlab.quant.sweep import PTQSettings

    node = OmegaConf.to_container(compose([]).ptq, resolve=True)
    return PTQSettings.from_config({**node, **given})  # type: ignore[dict-item]


def with_legacy_settings(cfg: DictConfig) -> DictConfig:
    """An old run's config with the settings added since it ran (LEGACY), as it ran."""
    with open_dict(cfg):
        for node, target, key, value in LEGACY:
            parent = OmegaConf.select(cfg, node, default=None)
            if not isinstance(parent, DictConfig) or key in parent:
                continue
            if target is None or str(parent.get("_target_", "")).startswith(target):
                parent[key] = compose([]).ptq[key] if value == "today's" else value
    return cfg


def override_key(override: str) -> str:
    """`+a.b=1` -> `a.b`."""
    return override.lstrip("+~").split("=", 1)[0]


def _plain(value: Any) -> Any:
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    )


def resume_config(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """The config of the run being resumed (resolved when it started) and the overrides that made it.

    `cfg` is what `overrides` compose to now. Machine settings (MACHINE_KEYS) among them replace the
    run's; any other key whose value differs from the run's is refused, naming the keys. With no
    dataset.root among them, a QUANTLAB_DATA set now replaces the run's data root (the cluster
    pattern: data copied to node-local scratch by each job)."""
    files = RunDir(run_dir)
    saved = with_legacy_settings(files.load_config())
    now = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in MACHINE_KEYS:  # compared apart: a group's subtree may hold them (dataset=cifar10)
        before = OmegaConf.select(saved, key, default=_ABSENT)
        if before is not _ABSENT and OmegaConf.select(now, key, default=_ABSENT) is not _ABSENT:
            OmegaConf.update(now, key, before)
    keys = [override_key(o) for o in overrides]
    keys = [k for k in dict.fromkeys(keys) if k != "resume" and not k.startswith(("hydra.", "hydra/"))]
    differing = [
        key
        for key in keys
        if key not in MACHINE_KEYS
        and _plain(OmegaConf.select(now, key, default=None))
        != _plain(OmegaConf.select(saved, key, default=None))
    ]
    if differing:
        raise ConfigError(
            f"resume={run_dir}: {', '.join(differing)} differ from the run's settings (a resume continues "
            f"the same experiment; only {', '.join(MACHINE_KEYS)} may change); start a new run instead"
        )
    machine = {k: _plain(OmegaConf.select(cfg, k, default=None)) for k in keys if k in MACHINE_KEYS}
    data_root = os.environ.get("QUANTLAB_DATA")
    if "dataset.root" not in machine and data_root:
        machine["dataset.root"] = data_root
    with open_dict(saved):
        for key, value in machine.items():
            if OmegaConf.select(saved, key, default=_ABSENT) is not _ABSENT:  # e.g. digits has no root
                OmegaConf.update(saved, key, value)
        saved.resume = str(run_dir)
    if files.overrides.is_file():
        overrides = files.saved_overrides()
    return saved, overrides


def prepare_train_config(cfg: DictConfig, choices: dict[str, str], write_to: Path | None) -> DictConfig:
    """The checks a composed `train` config must pass, then the config fully resolved (and written to
    `write_to`, the run's config.yaml, for a new run) and its values validated."""
    check_preset_row(cfg, choices.get("method"), choices.get("experiment"))
    check_missing(cfg)
    try:
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(" ".join(str(e).split())) from None
    if write_to is not None:
        write_to.write_text(resolved)
    cfg = OmegaConf.create(resolved)
    validate_train_config(cfg)
    return cfg
