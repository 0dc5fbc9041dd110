"""Quantization-aware fine-tuning with the straight-through estimator (gradient-L1 paper, Sec. 4.1).

Weights and activations are fake-quantized in the forward pass on a symmetric uniform grid at
`bitwidth.weight_bits` / `bitwidth.act_bits`, and the backward pass goes straight through:
- weights: per-output-channel symmetric round-to-nearest with the min–max scale — the very quantizer
  the PTQ sweep applies, so evaluating at more bits by "ignoring the higher-order bits" reproduces
  the trained grid exactly (quant.sweep; `traits.trained_bits`); ∂ŵ/∂w = 1 (Bengio et al. 2013);
- activations: the input of every conv / linear layer (PTQ's default placement), per tensor, on the
  grid of quant.uniform.activation_grid over a range tracked as an exponential moving average of the
  batch min / max (momentum 0.9; frozen in eval mode); the gradient is 1 inside the range, 0 outside
  (the clipped straight-through estimator of Jacob et al. 2018).
The export is the network with its weights on the grid; activations are quantized by the PTQ sweep.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from quantlab.errors import ConfigError
from quantlab.methods.base import Method, Traits
from quantlab.methods.weights import plain_copy
from quantlab.quant.layers import conv_linear_layers
from quantlab.quant.pairs import check_bits
from quantlab.quant.uniform import activation_grid, fake_quantize_activation, quantize_tensor


class STEWeight(nn.Module):
    """Parametrization: w ↦ w + (Q_b(w) − w).detach(), Q_b per-channel symmetric (straight-through)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: Tensor) -> Tensor:
        return w + (quantize_tensor(w.detach(), self.bits, True, axis=0) - w).detach()


def ste_activation(x: Tensor, lo: float, hi: float, bits: int) -> Tensor:
    """Fake-quantize on the symmetric grid of [lo, hi]; gradient 1 inside the grid's range, 0 outside."""
    grid = activation_grid(lo, hi, bits, True)
    scale, _, q_min, q_max = grid
    # the grid's range: [q_min·s, q_max·s]; the 1-bit signed grid {−s, s} is returned as q ∈ [−1, 0]
    low, high = (-scale, scale) if (q_min, q_max) == (-1, 0) else (q_min * scale, q_max * scale)
    clipped = x.clamp(low, high)
    return clipped + (fake_quantize_activation(clipped.detach(), grid) - clipped).detach()


class STE(Method):
    """Quantization-aware fine-tuning with the STE at (bitwidth.weight_bits, bitwidth.act_bits)."""

    momentum = 0.9

    def __init__(self, *, bitwidth: Any, grad_norms_every: int) -> None:
        name = bitwidth.get("name", "?") if hasattr(bitwidth, "get") else "?"
        w_bits = bitwidth.get("weight_bits") if hasattr(bitwidth, "get") else None
        a_bits = bitwidth.get("act_bits") if hasattr(bitwidth, "get") else None
        if w_bits is None:
            raise ConfigError(f"bitwidth={name}: method=ste needs integer weight bits, e.g. bitwidth=w8a4")
        check_bits(w_bits, "bitwidth.weight_bits", low=1, high=16)
        check_bits(a_bits, "bitwidth.act_bits", low=1, high=16, allow_none=True)
        self.weight_bits, self.act_bits = int(w_bits), (None if a_bits is None else int(a_bits))
        self.traits = Traits(
            exported_differs=True,
            trained_bits=(self.weight_bits, self.act_bits),
            grad_norms_every=int(grad_norms_every),
        )
        self.ranges: dict[str, list[float]] = {}  # layer name -> [lo, hi] (EMA of batch min / max)
        self.layers: list[str] = []

    def prepare(self, model: nn.Module) -> nn.Module:
        self.layers = [n for n, _ in conv_linear_layers(model)]
        if not self.layers:
            raise ConfigError("method=ste: the model has no conv or linear layer")
        for name in self.layers:
            module = model.get_submodule(name)
            parametrize.register_parametrization(module, "weight", STEWeight(self.weight_bits))
            if self.act_bits is not None:
                module.register_forward_pre_hook(self._input_hook(name))
        return model

    def _input_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            if module.training:
                with torch.no_grad():
                    lo, hi = float(x.min()), float(x.max())
                if name not in self.ranges:
                    self.ranges[name] = [lo, hi]
                else:
                    r, m = self.ranges[name], self.momentum
                    self.ranges[name] = [m * r[0] + (1 - m) * lo, m * r[1] + (1 - m) * hi]
            if name not in self.ranges:
                return args
            lo, hi = self.ranges[name]
            return (ste_activation(x, lo, hi, self.act_bits), *args[1:])  # type: ignore[arg-type]

        return hook

    def export(self, model: nn.Module) -> nn.Module:
        """A plain copy with every weight on its w-bit grid and no activation hooks."""
        with torch.no_grad():
            exported = plain_copy(model, {name: model.get_submodule(name).weight for name in self.layers})
        for name in self.layers:
            exported.get_submodule(name)._forward_pre_hooks.clear()
        return exported

    def state_dict(self) -> dict[str, Any]:
        return {"ranges": {k: list(v) for k, v in self.ranges.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ranges = {k: list(v) for k, v in state.get("ranges", {}).items()}
