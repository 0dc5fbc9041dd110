"""The method protocol: everything a quantization method may do, as hooks the trainer calls.

Call order, per run:
    model = method.prepare(model)                  # once, before the optimizer exists
    opt = method.optimizer(model, schedule_cfg)    # once
    for each step:
        loss = task loss (cross-entropy)
        terms = method.backward(model, loss, batch, scale)  # default: penalty terms summed into the
                                                    # loss, then backward; a method may fill .grad itself
        optimizer step
        logged = method.on_step(model, step, epoch) # projections, prox steps, β updates
    exported = method.export(model)                 # hard-quantized copy, evaluated beside the model
    report = method.report(model)                   # e.g. learned bit-widths -> results.json "method"
    method.state_dict() / load_state_dict()         # saved in every checkpoint (exact resume)

Every value returned by `penalty` and `on_step` is logged under `method/<name>`. The trainer never
names a method: a new method is a subclass here plus conf/method/<name>.yaml.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
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
    #: every N steps the trainer logs the ℓ1, ℓ2, ℓ∞ norms of the task loss's gradient with respect to
    #: the weight tensors (train/grad_norm_*; 0: only when trainer.grad_norms_every asks).
    grad_norms_every: int = 0

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
        Parameters the method adds (`own_parameters`: scales, bit-widths) get no weight decay and,
        where the method says so, their own learning rate.
        """
        build = instantiate(schedule.optimizer)
        own, own_lr = self.own_parameters(model)
        own_ids = {id(p) for p in own}
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in own_ids]
        if schedule.get("no_decay_norm_and_bias", False):
            groups = [{"params": [p for p in params if p.ndim > 1]}]
            groups.append({"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0})
        else:
            groups = [{"params": params}]
        if own:
            groups.append({"params": own, "weight_decay": 0.0, **({"lr": own_lr} if own_lr else {})})
        return build([g for g in groups if g["params"]])

    def own_parameters(self, model: nn.Module) -> tuple[list[nn.Parameter], float | None]:
        """The trainable parameters the method added to the model (per-layer scales, bit-widths) and
        their learning rate (None: the optimizer's). They get no weight decay. Default: none."""
        return [], None

    def penalty(self, model: nn.Module, loss: torch.Tensor, batch: Any) -> dict[str, torch.Tensor]:
        """Named regularization terms added to the task loss. Default: none."""
        return {}

    def backward(
        self, model: nn.Module, loss: torch.Tensor, batch: Any, scale: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Fill the parameters' .grad for this step and return the named penalty terms (for logging).

        Default: (loss + Σ penalty terms) scaled by `scale` (the AMP grad scaler), then backward.
        A method whose gradient is not the backward of a scalar (e.g. a finite-difference
        Hessian-vector product) overrides this and writes `scale(grad)` into each .grad itself.
        """
        terms = self.penalty(model, loss, batch)
        total = loss + sum(terms.values()) if terms else loss
        scale(total).backward()
        return terms

    def on_step(self, model: nn.Module, step: int, epoch: int) -> dict[str, float]:
        """Called after each optimizer step (`step` counts steps before it, from 0). Default: nothing."""
        return {}

    def export(self, model: nn.Module) -> nn.Module:
        """A hard-quantized copy of the network. Default: an identical copy."""
        return copy.deepcopy(model)

    def report(self, model: nn.Module) -> dict[str, Any]:
        """Facts about the trained network for results.json's `method` entry (e.g. learned per-layer
        bit-widths), called on the best checkpoint after the test. Default: none."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but the checkpoint has {sorted(state)}")

    def describe(self) -> str:
        return type(self).__name__
