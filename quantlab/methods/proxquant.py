"""ProxQuant (Bai, Wang & Liberty 2019), the MD paper's PQ baseline."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from quantlab.errors import ConfigError
from quantlab.methods.weights import BINARY, TERNARY, WeightQuantizer
from quantlab.quant.projections import hard_nearest


def prox_binary(w: Tensor, strength: float) -> Tensor:
    """Prox of strength·R with the W-shaped R(w) = ||w| − 1| (public ProxQuant code), then clip to [−1, 1].

    sign(w)·(1 + sign(|w| − 1)·max(||w| − 1| − strength, 0)): |w| moves towards 1 by `strength`.
    """
    dist = w.abs() - 1.0
    out = torch.sign(w) * (torch.relu(dist.abs() - strength) * torch.sign(dist) + 1.0)
    return out.clamp(-1.0, 1.0)


def prox_nearest(w: Tensor, strength: float, levels: Tensor) -> Tensor:
    """Prox of strength·½ dist(w, Q)²: (w + strength·T(w)) / (1 + strength), T the nearest level, then
    clipped to [−1, 1] like every prox of the public code (its `bin_op.clip()` after each one)."""
    return ((w + strength * hard_nearest(w, levels)) / (1.0 + strength)).clamp(-1.0, 1.0)


def ternarize_adaptive(w: Tensor) -> Tensor:
    """ProxQuant's `ternarize` (public code, reg.py), per tensor: Δ = 0.7·mean|w|; 0 where |w| < Δ;
    the weights ≥ Δ take the mean of the weights ≥ Δ (α₊) and those ≤ −Δ the mean of those (α₋ < 0):
    two levels, not one symmetric α. A side with no weight beyond Δ has nothing to take its mean."""
    delta = 0.7 * w.abs().mean()
    pos, neg = w >= delta, w <= -delta
    alpha_pos = w[pos].mean() if pos.any() else w.new_zeros(())
    alpha_neg = w[neg].mean() if neg.any() else w.new_zeros(())
    return torch.where(pos, alpha_pos, torch.where(neg, alpha_neg, w.new_zeros(())))


def prox_adaptive(w: Tensor, strength: float) -> Tensor:
    """The public code's ternary prox: (w + strength·ternarize(w)) / (1 + strength), then clip to [−1, 1]."""
    return ((w + strength * ternarize_adaptive(w)) / (1.0 + strength)).clamp(-1.0, 1.0)


#: PQ*'s float layers, as the MD paper describes the original ProxQuant setup: Table 1 (binary) keeps
#: the biases, the fully-connected layers and the shortcuts in float; Table 5 (ternary) the first
#: conv, the fully-connected layers and the shortcuts (the captions' "fully-connected layers": all
#: three of VGG-16's). A scope flag left null (pq_star's YAML) takes these.
ORIGINAL_SCOPE = {
    BINARY: {"first": True, "fc": False, "bias": False, "shortcut": False},
    TERNARY: {"first": False, "fc": False, "bias": True, "shortcut": False},
}


class PQ(WeightQuantizer):
    """ProxQuant — Eq. 24: x̃ = x − η g (Adam), x = prox(x̃) after every optimizer step.

    The regularization strength grows during training: λ_t = reg_rate · epoch, and the prox step
    size is the current learning rate times λ_t. Binary: the W-shaped regularizer's prox
    (`prox_binary`); ternary: the prox of the squared distance to Q = {−1, 0, 1} (`prox_nearest`,
    the MD paper's fully quantized "PQ"), or with `ternary_levels: adaptive` the public code's
    per-tensor levels {α₋, 0, α₊} (`prox_adaptive`, ProxQuant's own setup, "PQ*"; exported tensors
    then hold two nonzero values per tensor, the means of the weights beyond ±Δ). As in the public
    code, the weights are clipped to [−1, 1] after every prox.
    From `freeze_epoch` on, the weights are hard-quantized after every step (ProxQuant's final
    hard-quantization phase). Export: the nearest level (sign / thresholds ±0.5).
    """

    name = "pq"

    def __init__(
        self,
        *args: Any,
        reg_rate: float,
        freeze_epoch: int | None,
        ternary_levels: str,
        name: str,
        **kwargs: Any,
    ) -> None:
        self.name = name  # pq or pq_star: how its messages call it
        super().__init__(*args, **kwargs)
        if reg_rate < 0:
            raise ConfigError(f"method.reg_rate={reg_rate}: must be >= 0")
        if ternary_levels not in ("fixed", "adaptive"):
            raise ConfigError(f"method.ternary_levels={ternary_levels!r}: must be fixed or adaptive")
        self.adaptive = ternary_levels == "adaptive" and self.ternary
        unset = {k: v for k, v in ORIGINAL_SCOPE[self.levels_tuple].items() if getattr(self.scope, k) is None}
        self.scope = replace(self.scope, **unset)
        self.reg_rate, self.freeze_epoch = float(reg_rate), freeze_epoch
        self._opt: torch.optim.Optimizer | None = None

    def attach(self, module: nn.Module, name: str) -> None:
        self.attach_scale_only(module, name)

    def hard(self, aux: Tensor) -> Tensor:
        if self.adaptive:
            return ternarize_adaptive(aux)
        return hard_nearest(aux, self.levels.to(aux.device))

    def optimizer(self, model: nn.Module, schedule: DictConfig) -> torch.optim.Optimizer:
        self._opt = super().optimizer(model, schedule)
        return self._opt

    def strength(self, epoch: int) -> float:
        lr = self._opt.param_groups[0]["lr"] if self._opt is not None else 0.0
        return lr * self.reg_rate * epoch

    def on_step(self, model: nn.Module, step: int, epoch: int) -> dict[str, float]:
        strength = self.strength(epoch)
        frozen = self.freeze_epoch is not None and epoch >= self.freeze_epoch
        with torch.no_grad():
            for aux in self.aux_tensors(model):
                if frozen:
                    aux.copy_(self.hard(aux))
                elif self.adaptive:
                    aux.copy_(prox_adaptive(aux, strength))
                elif self.ternary:
                    aux.copy_(prox_nearest(aux, strength, self.levels.to(aux.device)))
                else:
                    aux.copy_(prox_binary(aux, strength))
        return {"reg": strength / max(self._opt.param_groups[0]["lr"], 1e-30) if self._opt else 0.0}
