"""The method protocol: everything a quantization method may do, as hooks the trainer calls.

Call order, per run:
    model = method.prepare(model)                  # once, before the optimizer exists
    opt = method.optimizer(model, schedule_cfg)    # once
    for each step:
        loss = task loss (cross-entropy)
        terms = method.penalty(model, loss, batch)  # named regularization terms, summed into the loss
        backward, optimizer step
        logged = method.on_step(model, step, epoch) # projections, prox steps, β updates
    exported = method.export(model)                 # hard-quantized copy, evaluated beside the model
    method.state_dict() / load_state_dict()         # saved in every checkpoint (exact resume)

Every value returned by `penalty` and `on_step` is logged under `method/<name>`. The trainer never
names a method: a new method is a subclass here plus conf/method/<name>.yaml.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn


class Method:
    """Base class with the defaults of full-precision training; subclasses override what they need."""

    #: True when `export` changes the network (then the exported model is evaluated on validation too).
    exported_differs: bool = False
    #: `quantlab train` runs the PTQ sweep after training (ptq.enabled=auto) only for such methods:
    #: binary and ternary methods skip it unless asked (ptq.enabled=true).
    ptq_by_default: bool = True

    @property
    def trained_bits(self) -> tuple[int | None, int | None] | None:
        """(weight bits, activation bits) of the grid the exported network was trained on, or None.
        The PTQ sweep evaluates wider pairs also by ignoring the higher-order bits (quant.ptq)."""
        return None

    def prepare(self, model: nn.Module) -> nn.Module:
        """Reparametrize weights, add scales or hooks. Default: the model unchanged."""
        return model

    def optimizer(self, model: nn.Module, schedule: DictConfig) -> torch.optim.Optimizer:
        """Build the optimizer from `schedule.optimizer` (a `_partial_` optimizer config).

        With `schedule.no_decay_norm_and_bias`, 1-D tensors (batch-norm parameters, biases) get no
        weight decay.
        """
        build = instantiate(schedule.optimizer)
        params = [p for p in model.parameters() if p.requires_grad]
        if schedule.get("no_decay_norm_and_bias", False):
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            return build([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        return build(params)

    def penalty(self, model: nn.Module, loss: torch.Tensor, batch: Any) -> dict[str, torch.Tensor]:
        """Named regularization terms added to the task loss. Default: none."""
        return {}

    def on_step(self, model: nn.Module, step: int, epoch: int) -> dict[str, float]:
        """Called after each optimizer step (`step` counts steps before it, from 0). Default: nothing."""
        return {}

    def export(self, model: nn.Module) -> nn.Module:
        """A hard-quantized copy of the network. Default: an identical copy."""
        return copy.deepcopy(model)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but the checkpoint has {sorted(state)}")

    def describe(self) -> str:
        return type(self).__name__
