"""Optimizers by name, so that one schedule config (and one preset row) can pick Adam or SGD."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from quantlab.config import ConfigError


def optimizer(
    params: Iterable[Any],
    name: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] | list[float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """adam (Adam; weight decay as L2), adamw, or sgd (with momentum)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    raise ConfigError(f"schedule.optimizer.name={name!r}: must be adam, adamw or sgd")
