"""Building what a run's config names: dataset, model, method (Hydra `_target_`s), a network to start
from (`init_from=`), a finished run's exported network (what `quantlab ptq` sweeps), and a Trainer from
overrides alone (tests, benchmarks)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from quantlab.engine import checkpoint
from quantlab.engine.rundir import CHECKPOINTS, RunDir
from quantlab.engine.settings import TrainerSettings
from quantlab.engine.trainer import Trainer
from quantlab.errors import ConfigError, MissingSetting, QuantlabError
from quantlab.methods.base import Method
from quantlab.runs.config import compose, with_legacy_settings

log = logging.getLogger("quantlab")


def build(node: DictConfig, field: str | None = None) -> Any:
    """instantiate(), with a builder's own check (a ValueError or QuantlabError) as a one-line error,
    and a setting its class does not take as a MissingSetting naming it (`field`: the node's key in
    the config, e.g. "method", and so the choice, e.g. method=float)."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, QuantlabError):
            raise cause from None
        if isinstance(cause, ValueError):
            raise ConfigError(str(cause)) from None
        extra = _settings_not_taken(node) if isinstance(cause, TypeError) and field else []
        if extra:
            raise not_taken(field, str(node.get("_target_", "?")), extra[0]) from None  # type: ignore[arg-type]
        raise


def not_taken(field: str, target: str, key: str) -> MissingSetting:
    """The one line for a setting `key` of the `field` node (method, dataset, ...) its builder lacks."""
    return MissingSetting(
        f"{field}.{key}: {field}={_choice(field) or target} has no such setting ({target} takes none "
        f"called {key!r}); drop it for this {field}"
    )


def takes(target: Any, key: str) -> bool | None:
    """Whether a function, or a class's __init__ chain (followed through **kwargs), has a parameter
    `key`; None when the signature cannot be read."""
    import inspect

    chain = (
        [c.__init__ for c in inspect.getmro(target) if "__init__" in vars(c)]
        if inspect.isclass(target)
        else [target]
    )
    try:
        for fn in chain:
            params = inspect.signature(fn).parameters
            if key in params:
                return True
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                return False
    except (ValueError, TypeError):
        return None
    return False


def _settings_not_taken(node: DictConfig) -> list[str]:
    """The keys of a `_target_` node that its callable does not accept."""
    from hydra.utils import get_method

    try:
        target = get_method(str(node["_target_"]))
    except (ImportError, KeyError, ValueError):
        return []
    return [k for k in node if not str(k).startswith("_") and takes(target, str(k)) is False]


def _choice(group: str) -> str | None:
    """The option Hydra chose for a config group (None outside a composed config)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.choices.get(group))
    except ValueError:
        return None


def load_init(model: nn.Module, source: str, quiet: bool = False) -> None:
    """Start from another run's network (fine-tuning): its best float weights, or its export when
    that run was quantized; a .pt file with a "model" entry or a plain state dict works too."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = RunDir(path)
        if not files.best.exists():
            raise ConfigError(f"init_from={source}: no checkpoints/best.pt in that run directory")
        state = checkpoint.load(files.best)["model"]
        if any("parametrizations" in k for k in state) and files.exported.exists():
            state = checkpoint.load(files.exported)["model"]
    elif path.is_file():
        state = checkpoint.load(path)
        state = state.get("model", state)
    else:
        raise ConfigError(f"init_from={source}: no such run directory or checkpoint file")
    result = model.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise ConfigError(f"init_from={source}: none of its tensors fit this model")
    if quiet:
        return
    log.info(
        f"init_from {source}: {loaded} tensors loaded; missing {len(result.missing_keys)}, "
        f"ignored {len(result.unexpected_keys)}"
    )


@dataclass
class FinishedRun:
    """A `quantlab train` run read back (never written): its files, its resolved config and its
    results; it rebuilds the run's network from a checkpoint. What `quantlab ptq` and `quantlab
    export` start from."""

    files: RunDir
    config: DictConfig
    results: dict[str, Any]
    which: str  # the checkpoint: best or last
    state: dict[str, Any]  # that checkpoint, read once (safely) when the run is opened

    @classmethod
    def open(cls, run: Any, which: str = "best", allow_incomplete: bool = False) -> FinishedRun:
        """The run directory `run=` names, checked: config.yaml and checkpoints/<which>.pt are there,
        and it completed (unless `allow_incomplete`: then any network it holds is read, and the
        results say so). Each refusal is one ConfigError."""
        if which not in CHECKPOINTS:
            raise ConfigError(f"checkpoint={which!r}: must be one of {', '.join(CHECKPOINTS)}")
        if run is None or str(run).strip() == "":
            raise ConfigError("run: give the run directory to read, e.g. run=outputs/train/<date>_<time>")
        files = RunDir(str(run))
        if not files.path.is_dir():
            raise ConfigError(f"run={run}: no such directory")
        wanted = (files.config, files.checkpoint(which))
        missing = [str(p.relative_to(files.path)) for p in wanted if not p.is_file()]
        if missing:
            raise ConfigError(
                f"run={run}: no {' and no '.join(missing)} there (not a finished quantlab train run)"
            )
        results = files.read_results()
        status = results.get("status", "unknown")
        if status != "completed" and not allow_incomplete:
            raise ConfigError(
                f"run={run}: its status is {status}, not completed, so its network is not the run's "
                "result; resume it first, or read it anyway with allow_incomplete=true"
            )
        state = checkpoint.load(files.checkpoint(which))  # readable and safe, before anything is created
        return cls(files, with_legacy_settings(files.load_config()), results, which, state)

    def eval_batch_size(self, given: int | None = None) -> int:
        """The evaluation batch: `given`, else the run's trainer.eval_batch_size, else twice its
        training batch (the trainer's rule)."""
        size = given or self.config.trainer.get("eval_batch_size")
        return int(size or 2 * int(self.config.schedule.batch_size))

    def network(self, device: torch.device) -> tuple[nn.Module, Method, int | None]:
        """The run's model and method rebuilt, checkpoints/<which>.pt loaded: the export (in eval
        mode), the method and the checkpoint's step."""
        cfg = self.config
        model, method = build(cfg.model), build(cfg.method)
        state = self.state
        model = method.prepare(model.to(device))
        model.load_state_dict(state["model"])
        method.load_state_dict(state.get("method", {}))
        step = state.get("step", (state.get("clock") or {}).get("step"))
        return method.export(model).eval(), method, step

    def origin(self, step: int | None) -> dict[str, Any]:
        """What a derived result (a PTQ sweep, an export) records of the run it came from."""
        return {
            "run": str(self.files.path),
            "checkpoint": self.which,
            "step": step,
            "status": self.results.get("status", "unknown"),
            "choices": self.results.get("choices", {}),
        }


def trainer_for(overrides: list[str], run_dir: Path, runlog: Any | None = None, seed: int = 0) -> Trainer:
    """A Trainer for the train config composed with `overrides` (model, method, data built with
    torch seeded with `seed`), writing into `run_dir`; no run directory is set up or locked."""
    cfg = compose(overrides)
    torch.manual_seed(seed)
    model, method, data = instantiate(cfg.model), instantiate(cfg.method), instantiate(cfg.dataset)
    return Trainer(model, method, data, TrainerSettings.from_config(cfg), Path(run_dir), runlog)


def method_overrides(spec: str) -> list[str]:
    """`name[:bitwidth][,key=value...]` (e.g. `md_tanh_s:ternary`, `grad_l1,estimator=fd`) -> the
    overrides selecting it; the bit-width defaults to binary (float ignores it). A key is the
    method's (`estimator=fd` -> `method.estimator=fd`) unless it is dotted: `float,trainer.compile=true`
    passes `trainer.compile=true` as it is."""
    head, *options = spec.split(",")
    name, _, bitwidth = head.partition(":")
    settings = [o if "." in o.partition("=")[0] else f"method.{o}" for o in options]
    return [f"method={name}", f"bitwidth={bitwidth or 'binary'}", *settings]
