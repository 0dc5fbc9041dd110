"""Activation ranges for post-training quantization.

- `bn_channel_range`: from batch-norm statistics, [β − n·|γ|, β + n·|γ|] per channel (Nagel et al.
  2019, "Data-free quantization", the setting of the gradient-L1 paper, Sec. 4.1): a BN output is
  roughly N(β, γ²) per channel, so n standard deviations cover it. No data is needed.
- `RangeObserver`: min–max over N calibration batches (exact), plus a fixed-seed uniform subsample
  of the values, from which `percentile_range` and `mse_range` (the clipping range that minimises
  the mean squared quantization error, searched over a grid of clipping ratios) are computed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from quantlab.quant.uniform import activation_grid, fake_quantize_activation

Range = tuple[float, float]


def bn_channel_range(bn: nn.Module, n: float) -> tuple[Tensor, Tensor]:
    """Per-channel [β − n|γ|, β + n|γ|] of a batch norm (γ = 1, β = 0 without affine parameters)."""
    mean = bn.running_mean
    gamma = bn.weight.detach() if bn.affine else torch.ones_like(mean)
    beta = bn.bias.detach() if bn.affine else torch.zeros_like(mean)
    return beta - n * gamma.abs(), beta + n * gamma.abs()


def clamp_range(value: Range, clamps: list[Range]) -> Range:
    """The range after elementwise clamps (ReLU: (0, inf), ReLU6: (0, 6)), applied in order."""
    lo, hi = value
    for c_lo, c_hi in clamps:
        lo, hi = min(max(lo, c_lo), c_hi), min(max(hi, c_lo), c_hi)
    return lo, hi


class RangeObserver:
    """Running min/max of every value seen, and a fixed-seed subsample of at most `max_samples`."""

    def __init__(self, max_samples: int, per_batch: int, seed: int = 0) -> None:
        self.lo, self.hi = float("inf"), float("-inf")
        self.max_samples, self.per_batch = int(max_samples), max(1, int(per_batch))
        self.generator = torch.Generator().manual_seed(seed)
        self.samples: list[Tensor] = []
        self.kept = 0

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        flat = x.detach().reshape(-1)
        self.lo = min(self.lo, float(flat.min()))
        self.hi = max(self.hi, float(flat.max()))
        room = self.max_samples - self.kept
        if room <= 0:
            return
        k = min(room, self.per_batch, flat.numel())
        if k < flat.numel():
            idx = torch.randint(flat.numel(), (k,), generator=self.generator).to(flat.device)
            flat = flat[idx]
        self.samples.append(flat.float().clone())
        self.kept += k

    @property
    def seen(self) -> bool:
        return self.kept > 0

    def minmax(self) -> Range:
        return self.lo, self.hi

    def values(self) -> Tensor:
        return torch.cat(self.samples)


def percentile_range(values: Tensor, percentile: float) -> Range:
    """[q(1 − p), q(p)] of the values (for p = 99.99: the 0.01 % and 99.99 % quantiles)."""
    p = percentile / 100.0
    bounds = torch.quantile(values, torch.tensor([1.0 - p, p], device=values.device, dtype=values.dtype))
    return float(bounds[0]), float(bounds[1])


@torch.no_grad()
def mse_range(values: Tensor, bits: int, symmetric: bool, candidates: int = 100) -> Range:
    """The clipping range α·[min, max], α ∈ {1/G, 2/G, …, 1}, that minimises the mean squared error
    between the values and their fake-quantized version at `bits` (ties: the widest)."""
    lo, hi = float(values.min()), float(values.max())
    best, best_err = (lo, hi), float("inf")
    for i in range(candidates, 0, -1):
        alpha = i / candidates
        clipped = (alpha * lo, alpha * hi)
        grid = activation_grid(*clipped, bits, symmetric)
        err = float((fake_quantize_activation(values, grid) - values).square().mean())
        if err < best_err:
            best, best_err = clipped, err
    return best
