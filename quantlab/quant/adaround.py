"""AdaRound (Nagel et al., 2020): per weight, a learned choice of rounding down or up
(`ptq.weight_rounding=adaround`).

A layer's weight W on the grid of scale s (zero point z, codes in [q_min, q_max]) becomes
    W̃ = s · (clamp(⌊W/s⌋ + z + h(V), q_min, q_max) − z),   h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1),
the rectified sigmoid with ζ = 1.1, γ = −0.1 (Eq. 23). V starts where h(V) is the fractional part
of W/s (so that rounding h at ½ is round-to-nearest) and is learned with Adam to minimise the
layer's output reconstruction error on calibration data plus the regularizer (Eq. 24)
    ‖W x − W̃ x̃‖² + λ · Σ (1 − |2h(V) − 1|^β)
β annealed from `beta_start` (20) to `beta_end` (2) after a warm start (the first 20 % of the
iterations, without the regularizer), which drives every h(V) to 0 or 1; the layer then keeps
the hard codes ⌊W/s⌋ + z + 1[h(V) ≥ ½]. x̃ is the layer's input in the network being quantized
(earlier layers already rounded, activations on their grids) and x its input in the float network
(the paper's asymmetric reconstruction, Sec. 5); the error is taken before the activation function,
summed over output channels and averaged over samples and positions (BRECQ's lp_loss).
The annealing is linear (as the authors' later code, BRECQ's LinearTempDecay, and Brevitas's do).

Defaults are the paper's (Sec. 5: 10k iterations, batch 32, λ = 0.01, 1024 calibration images, Adam
with learning rate 10⁻³); conf/ptq_setup/default.yaml sets them, and documents a fast setting for
the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantlab.errors import ConfigError
from quantlab.quant.uniform import Codes, _along

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundSettings:
    """`ptq.adaround` (conf/ptq_setup/default.yaml): every value checked on creation."""

    iterations: int
    batch_size: int
    reg: float  # λ
    beta_start: float
    beta_end: float
    warm_start: float  # fraction of the iterations before the regularizer starts
    lr: float
    samples: int  # calibration images

    def __post_init__(self) -> None:
        for key in ("iterations", "batch_size", "samples"):
            value = getattr(self, key)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (0 if key == "iterations" else 1)
            ):
                raise ConfigError(
                    f"ptq.adaround.{key}={value!r}: must be an integer >= {0 if key == 'iterations' else 1}"
                )
        for key in ("reg", "beta_start", "beta_end", "lr"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"ptq.adaround.{key}={value!r}: must be a number >= 0")
        if not 0 <= self.warm_start < 1:
            raise ConfigError(f"ptq.adaround.warm_start={self.warm_start!r}: must be in [0, 1)")

    @classmethod
    def from_config(cls, node: Any) -> AdaRoundSettings:
        data = dict(node or {})
        known = set(cls.__dataclass_fields__)
        unknown, missing = sorted(set(data) - known), sorted(known - set(data))
        if unknown:
            raise ConfigError(
                f"ptq.adaround.{unknown[0]}: unknown setting; known: {', '.join(sorted(known))}"
            )
        if missing:
            raise ConfigError(f"ptq.adaround.{missing[0]}: missing")
        return cls(**data)


def rectified_sigmoid(v: Tensor) -> Tensor:
    """h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(rest: Tensor) -> Tensor:
    """V with h(V) = `rest` (the fractional part of W/s, in [0, 1)): σ(V) = (rest − γ)/(ζ − γ)."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def regularizer(h: Tensor, beta: float) -> Tensor:
    """Σ (1 − |2h − 1|^β): 0 exactly when every h is 0 or 1."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def beta_at(step: int, s: AdaRoundSettings) -> float | None:
    """β at iteration `step`, None during the warm start (no regularizer): linear from beta_start to
    beta_end over the rest."""
    start = s.warm_start * s.iterations
    if step < start:
        return None
    progress = (step - start) / max(s.iterations - start, 1)
    return s.beta_end + (s.beta_start - s.beta_end) * max(0.0, 1.0 - progress)


def _layer_output(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, weight, layer.bias)


def adaround_layer(
    layer: nn.Module, nearest: Codes, x_quant: Tensor, x_float: Tensor, s: AdaRoundSettings, seed: int = 0
) -> tuple[Codes, Tensor]:
    """The AdaRound codes of `layer`'s weight on the grid of `nearest` (its round-to-nearest codes),
    learned on the layer's inputs (x̃: `x_quant`, x: `x_float`, N samples each); also returns the
    final soft h(V) (for the check that it ends on {0, 1})."""
    weight = layer.weight.detach()
    scale = _along(nearest.scale, weight, nearest.axis)
    zero = _along(nearest.zero_point, weight, nearest.axis)
    ratio = weight / scale
    floor = torch.floor(ratio)
    v = initial_v(ratio - floor).requires_grad_(True)
    with torch.no_grad():
        target = _layer_output(layer, x_float, weight)
    optimizer = torch.optim.Adam([v], lr=s.lr)
    generator = torch.Generator().manual_seed(seed)
    n = x_quant.shape[0]
    for step in range(s.iterations):
        idx = torch.randint(0, n, (min(s.batch_size, n),), generator=generator).to(x_quant.device)
        h = rectified_sigmoid(v)
        q = torch.clamp(floor + zero + h, nearest.q_min, nearest.q_max)
        out = _layer_output(layer, x_quant[idx], (q - zero) * scale)
        loss = (out - target[idx]).pow(2).sum(1).mean()  # over channels; mean over samples and positions
        beta = beta_at(step, s)
        if beta is not None:
            loss = loss + s.reg * regularizer(h, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        h = rectified_sigmoid(v)
        q = torch.clamp(floor + zero + (h >= 0.5).to(weight.dtype), nearest.q_min, nearest.q_max)
    return Codes(q, nearest.scale, nearest.zero_point, nearest.q_min, nearest.q_max, nearest.axis), h
