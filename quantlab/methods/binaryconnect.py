"""BinaryConnect (Courbariaux et al. 2015), the MD paper's BC baseline."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from quantlab.methods.weights import BINARY, WeightQuantizer
from quantlab.quant.projections import binary_connect_sign, hard_sign


class BC(WeightQuantizer):
    """BinaryConnect: the forward pass uses sign(w) (straight-through, gradient cancelled where |w| > 1),
    the optimizer updates the latent float weights. Export: sign(w). Binary only.

    `clip: true` (the default) clips the latent weights to [−1, 1] after every step, as the original
    BinaryConnect (Courbariaux et al. 2015, Algorithm 1) does; `clip: false` only masks the gradient
    where |w| > 1, as md-bnn's BC does, which produced the MD tables' BC row (the MD presets set it).
    """

    name = "bc"
    supported = (BINARY,)

    def __init__(self, *args: Any, clip: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clip = bool(clip)

    def attach(self, module: nn.Module, name: str) -> None:
        self.parametrize(module, name, binary_connect_sign)

    def hard(self, aux: Tensor) -> Tensor:
        return hard_sign(aux)

    def on_step(self, model: nn.Module, step: int, epoch: int) -> dict[str, float]:
        if not self.clip:
            return {}
        with torch.no_grad():
            for aux in self.aux_tensors(model):
                aux.clamp_(-1.0, 1.0)
        return {}
