"""Building what a run's config names: dataset, model, method (Hydra `_target_`s), a network to start
from (`init_from=`), a finished run's exported network (what `quantlab ptq` sweeps), and a Trainer from
overrides alone (tests, benchmarks)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from quantlab.engine import checkpoint
from quantlab.engine.settings import TrainerSettings
from quantlab.engine.trainer import Trainer
from quantlab.errors import ConfigError, MissingSetting, QuantlabError
from quantlab.methods.base import Method
from quantlab.runs.config import compose

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
            target = str(node.get("_target_", "?"))
            raise MissingSetting(
                f"{field}.{extra[0]}: {field}={_choice(field) or target} has no such setting ({target} "
                f"takes none called {extra[0]!r}); drop it for this {field}"
            ) from None
        raise


def _settings_not_taken(node: DictConfig) -> list[str]:
    """The keys of a `_target_` node that its callable does not accept."""
    import inspect

    from hydra.utils import get_method

    try:
        params = inspect.signature(get_method(str(node["_target_"]))).parameters.values()
    except (ValueError, TypeError, ImportError, KeyError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []
    names = {p.name for p in params}
    return [k for k in node if not str(k).startswith("_") and k not in names]


def _choice(group: str) -> str | None:
    """The option Hydra chose for a config group (None outside a composed config)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.choices.get(group))
    except ValueError:
        return None


def load_init(model: nn.Module, source: str) -> None:
    """Start from another run's network (fine-tuning): its best float weights, or its export when
    that run was quantized; a .pt file with a "model" entry or a plain state dict works too."""
    path = Path(source).expanduser()
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        if not best.exists():
            raise ConfigError(f"init_from={source}: no checkpoints/best.pt in that run directory")
        state = checkpoint.load(best)["model"]
        if any("parametrizations" in k for k in state) and (path / "exported.pt").exists():
            state = checkpoint.load(path / "exported.pt")["model"]
    elif path.is_file():
        state = checkpoint.load(path)
        state = state.get("model", state)
    else:
        raise ConfigError(f"init_from={source}: no such run directory or checkpoint file")
    result = model.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise ConfigError(f"init_from={source}: none of its tensors fit this model")
    log.info(
        f"init_from {source}: {loaded} tensors loaded; missing {len(result.missing_keys)}, "
        f"ignored {len(result.unexpected_keys)}"
    )


def load_exported(
    source: Path, which: str, run_cfg: DictConfig, device: torch.device
) -> tuple[nn.Module, Method, int | None]:
    """Rebuild a finished run's model and method, load checkpoints/<which>.pt; return the export,
    the method and the checkpoint's step."""
    model = build(run_cfg.model)
    method = build(run_cfg.method)
    state = checkpoint.load(source / "checkpoints" / f"{which}.pt", device)
    model = method.prepare(model.to(device))
    model.load_state_dict(state["model"])
    method.load_state_dict(state.get("method", {}))
    step = state.get("step", (state.get("clock") or {}).get("step"))
    return method.export(model).eval(), method, step


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
