"""A toy method that uses every hook of the protocol and records how the trainer drives it."""

from __future__ import annotations

import copy

import torch
from torch import nn

from quantlab.methods.base import Method, Traits


class ToyMethod(Method):
    """prepare: adds a learnable output scale; penalty: weight·Σw²; on_step: counts; export: sign(w)."""

    traits = Traits(exported_differs=True)

    def __init__(self, weight: float = 0.0, lr: float = 0.05) -> None:
        self.weight, self.lr = weight, lr
        self.calls: list[str] = []
        self.steps_seen: list[tuple[int, int]] = []
        self.counter = 0

    def prepare(self, model: nn.Module) -> nn.Module:
        self.calls.append("prepare")
        model.toy_scale = nn.Parameter(torch.ones(()))
        model.register_forward_hook(lambda mod, inp, out: out * mod.toy_scale)
        return model

    def optimizer(self, model: nn.Module, schedule) -> torch.optim.Optimizer:
        self.calls.append("optimizer")
        self.param_names = [n for n, _ in model.named_parameters()]
        return torch.optim.SGD(model.parameters(), lr=self.lr)

    def penalty(self, model: nn.Module, loss: torch.Tensor, batch) -> dict[str, torch.Tensor]:
        self.calls.append("penalty")
        assert loss.requires_grad and len(batch) == 2
        return {
            "l2": self.weight * sum((p**2).sum() for n, p in model.named_parameters() if n != "toy_scale")
        }

    def on_step(self, model: nn.Module, step: int, epoch: int) -> dict[str, float]:
        self.calls.append("on_step")
        self.steps_seen.append((step, epoch))
        self.counter += 1
        return {"counter": float(self.counter)}

    def export(self, model: nn.Module) -> nn.Module:
        self.calls.append("export")
        exported = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in exported.named_parameters():
                if name != "toy_scale" and p.ndim > 1:
                    p.copy_(p.sign() * p.abs().mean())
        return exported

    def state_dict(self) -> dict:
        return {"counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        self.counter = state["counter"]
