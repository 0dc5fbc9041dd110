"""The method protocol: everything a quantization method may do, as hooks the trainer calls.

Call order, per run:
    model = method.prepare(model)                  # once, before the optimizer exists
    opt = method.optimizer(model, schedule_cfg)    # once
    for each step:
        loss = task loss (cross-entropy)
        terms = method.penalty(model, loss, batch)  # named terms; the trainer backpropagates
                                                    # loss + Σ terms (with AMP scaling, DDP, clipping)
        optimizer step
        logged = method.on_step(model, step, epoch) # projections, prox steps, β updates
    exported = method.export(model)                 # hard-quantized copy, evaluated beside the model
    report = method.report(model)                   # e.g. learned bit-widths -> results.json "method"
    method.state_dict() / load_state_dict()         # saved in every checkpoint (exact resume)

`penalty` is the one way a method adds to the gradient: the trainer owns the backward pass (so AMP
scaling, gradient clipping and, later, data-parallel reduction see every contribution), and a
gradient that is not the derivative of a computed scalar (the finite-difference Hessian-vector
product of gradient-L1) is a term built with `surrogate_term`. What describes a method (does its
export differ, does it get a PTQ sweep by default, on which grid was it trained) is its `traits`.

Every value returned by `penalty` and `on_step` is logged under `method/<name>`. The trainer never
names a method: a new method is a subclass here plus conf/method/<name>.yaml.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn


@dataclass(frozen=True)
class Traits:
    """What the trainer and the PTQ sweep need to know about a method, in one place."""

    #: `export` changes the network: the exported model is evaluated on validation too, selects the
    #: best checkpoint (trainer.select_by=auto) and is swept without folding batch norm (fold_bn=auto).
    exported_differs: bool = False
    #: `quantlab train` runs the PTQ sweep after training (ptq.enabled=auto) only for such methods:
    #: binary and ternary methods skip it unless asked (ptq.enabled=true).
    ptq_by_default: bool = True
    #: (weight bits, activation bits) of the grid the exported network was trained on, or None; the
    #: PTQ sweep evaluates wider pairs also by ignoring the higher-order bits (quant.sweep).
    trained_bits: tuple[int | None, int | None] | None = None
    #: every N steps the trainer logs the ℓ1, ℓ2, ℓ∞ norms of the task loss's gradient with respect to
    #: the weight tensors (train/grad_norm_*; 0: only when trainer.grad_norms_every asks).
    grad_norms_every: int = 0
    #: the penalty differentiates through a gradient (autograd.grad with create_graph=True: double
    #: backpropagation), which torch.compile's graphs do not support: trainer.compile refuses it.
    double_backward: bool = False
    #: the penalty backpropagates the task loss itself (autograd.grad with retain_graph=True) before
    #: the trainer's backward: a compiled graph must keep what it saved for the second pass
    backward_twice: bool = False


#: What a method that quantizes weights to a fixed set of levels is (MD, BC, PQ, PMF, ...).
QUANTIZED = Traits(exported_differs=True, ptq_by_default=False)


def surrogate_term(
    value: torch.Tensor, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
) -> torch.Tensor:
    """A penalty term whose forward value is `value` and whose gradient with respect to params[i] is
    grads[i]: value.detach() + s − s.detach() with s = Σ_i <grads[i].detach(), params[i]>. It hands a
    gradient the method computed itself (e.g. a finite-difference Hessian-vector product) to the
    trainer's one backward pass."""
    inner = sum((g.detach() * p).sum() for p, g in zip(params, grads, strict=True))
    return value.detach() + inner - inner.detach()


class Method:
    """Base class with the defaults of full-precision training; subclasses override what they need."""

    traits: Traits = Traits()

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
        """Named regularization terms added to the task loss (the trainer backpropagates
        loss + Σ terms and logs each term's mean as method/<name>). Default: none."""
        return {}

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
