"""Building what a run's config names: dataset, model, method (Hydra `_target_`s), a network to start
from (`init_from=`), and a finished run's exported network (what `quantlab ptq` sweeps)."""

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
from quantlab.errors import ConfigError, QuantlabError
from quantlab.methods.base import Method

log = logging.getLogger("quantlab")


def build(node: DictConfig) -> Any:
    """instantiate(), with a builder's own check (a ValueError or QuantlabError) as a one-line error."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, QuantlabError):
            raise cause from None
        if isinstance(cause, ValueError):
            raise ConfigError(str(cause)) from None
        raise


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
