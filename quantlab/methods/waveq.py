"""WaveQ: sinusoidal regularization with a learnable bit-width per layer (WaveQ paper, appendix B, F).

Each conv / linear weight is reparametrized as DoReFa's continuous normalization times a learnable
layer scale α (the `c = α` of Eq. B.2):

    w = α · u,   u = tanh(v) / max|tanh(V)| ∈ [−1, 1]        (v: the tensor the optimizer updates)

and a learnable continuous bit-width b per layer enters the loss as

    L = CE + λ_w·λ_q(epoch) · Σ_l mean_i sin²(π(u_i + s_l/2) / s_l) + λ_β · Σ_l b_l,
    s_l = 1 / (2^(b_l − 1) − ½),   λ_q(epoch) = ½(1 + tanh((epoch − 0.2·E) / 20))

(the public WaveQ code's regularizer, step and ramp; its B is our b − 1, see below). The zeros of
sin²(π(u + s/2)/s) are exactly the 2^b levels 2j/(2^b − 1) − 1 of the b-bit DoReFa quantizer of
Eq. B.1 — the "(b + 1) bits, the extra bit the sign bit" of appendix B counts the same grid with
B = b − 1 magnitude bits — so a weight the regularizer has driven to a zero is exported unchanged.

Export (Eqs. B.1, B.2; B.2's text is garbled in our copy, "c = α = 2^b/2β": we read c = α, the
learned layer scale): w_q = α · (2·quantize_b(tanh(v) / (2 max|tanh V|) + ½) − 1) at each layer's
learned bit-width rounded to an integer. The bit-widths are clamped to [min_bits, max_bits] after
every step; with `learn_bits: false` they stay at `init_bits` (training at a fixed bit-width, Table 6).
Training from scratch and fine-tuning (`init_from=<run>`) share one code path: the reparametrization
is initialized to reproduce the layer's current weights exactly (α = max|w|, v = atanh(tanh(1)·w/α)).

Choices where the papers are silent, all options: the public code initializes its B at 8.0 (9 bits
in our count); we start at `init_bits` = 8. λ_w (`strength`) multiplies the ramp (1 in the public
code); λ_β (`bit_strength`) = 0.03. Biases stay in float; activations are left to the PTQ sweep.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from quantlab.errors import ConfigError
from quantlab.methods.base import QUANTIZED, Method
from quantlab.methods.weights import Scope, plain_copy, weight_layers
from quantlab.quant.dorefa import dorefa_quantize, tanh_normalize
from quantlab.schedules import TanhRamp

_TANH_ONE = math.tanh(1.0)


def waveq_step(bits: Tensor) -> Tensor:
    """The grid step of the regularizer in u-space: 1 / (2^(b − 1) − ½) (public code: 1/(2^B − 0.5))."""
    return 1.0 / (torch.pow(2.0, bits - 1.0) - 0.5)


def waveq_term(u: Tensor, bits: Tensor) -> Tensor:
    """mean_i sin²(π(u_i + s/2)/s), s = waveq_step(b): zero exactly on the b-bit DoReFa levels."""
    step = waveq_step(bits)
    return torch.sin(math.pi * (u + 0.5 * step) / step).square().mean()


class DoReFaWeight(nn.Module):
    """Parametrization w = α · tanh(v) / max|tanh(v)|, with the layer's scale α and bit-width b."""

    def __init__(self, weight: Tensor, init_bits: float, learn_bits: bool) -> None:
        super().__init__()
        scale = weight.detach().abs().amax().clamp_min(1e-8)
        self.scale = nn.Parameter(scale.clone())
        self.bits = nn.Parameter(torch.tensor(float(init_bits), device=weight.device), learn_bits)

    def forward(self, v: Tensor) -> Tensor:
        return self.scale * tanh_normalize(v)

    def right_inverse(self, w: Tensor) -> Tensor:
        """v with α · tanh(v)/max|tanh(v)| = w for the current α: tanh(v) = tanh(1) · w / max|w|."""
        u = w / w.abs().amax().clamp_min(1e-12)
        with torch.no_grad():
            self.scale.copy_(w.abs().amax().clamp_min(1e-8))
        return torch.atanh(_TANH_ONE * u)


class WaveQ(Method):
    """WaveQ (sinusoidal regularizer, learnable per-layer bit-width; export: DoReFa Eq. B.1, B.2)."""

    #: the export is already quantized (DoReFa levels at learned bits, which PTQ's symmetric grid does
    #: not contain): no PTQ sweep unless asked (ptq.enabled=true re-quantizes on PTQ's grid)
    traits = QUANTIZED
    name = "waveq"

    def __init__(
        self,
        *,
        strength: float,
        bit_strength: float,
        init_bits: float,
        learn_bits: bool,
        min_bits: int,
        max_bits: int,
        bits_lr: float | None,
        epochs: int,
        ramp_center: float,
        ramp_width: float,
        scope: dict | None,
    ) -> None:
        for field, value in (("strength", strength), ("bit_strength", bit_strength)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"method.{field}={value!r}: must be a number >= 0")
        if not (isinstance(min_bits, int) and isinstance(max_bits, int) and 1 <= min_bits <= max_bits <= 16):
            raise ConfigError(
                f"method.min_bits={min_bits!r}, method.max_bits={max_bits!r}: "
                "need integers 1 <= min_bits <= max_bits <= 16"
            )
        if not min_bits <= float(init_bits) <= max_bits:
            raise ConfigError(
                f"method.init_bits={init_bits!r}: must lie in [min_bits, max_bits] = [{min_bits}, {max_bits}]"
            )
        if bits_lr is not None and (not isinstance(bits_lr, (int, float)) or bits_lr <= 0):
            raise ConfigError(f"method.bits_lr={bits_lr!r}: must be a number > 0, or null (the optimizer's)")
        self.strength, self.bit_strength = float(strength), float(bit_strength)
        self.init_bits, self.learn_bits = float(init_bits), bool(learn_bits)
        self.min_bits, self.max_bits, self.bits_lr = min_bits, max_bits, bits_lr
        self.ramp = TanhRamp(1.0, center=ramp_center * epochs, width=ramp_width)
        self.factor = self.ramp(0, 0)
        self.scope = Scope(**{"bias": False, **(dict(scope) if scope else {})})
        self.layers: list[str] = []

    # -- protocol -----------------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        self.layers = weight_layers(model, self.scope)
        if not self.layers:
            raise ConfigError("method=waveq: the model has no conv or linear layer in scope")
        for path in self.layers:
            module = model.get_submodule(path)
            parametrize.register_parametrization(
                module, "weight", DoReFaWeight(module.weight, self.init_bits, self.learn_bits)
            )
        return model

    def own_parameters(self, model: nn.Module) -> tuple[list[nn.Parameter], float | None]:
        params = []
        for p in self._parametrizations(model):
            params += [p.scale, p.bits] if self.learn_bits else [p.scale]
        return params, self.bits_lr

    def penalty(self, model: nn.Module, loss: Tensor, batch: Any) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        weight = self.strength * self.factor
        if weight:
            total = sum(
                waveq_term(tanh_normalize(self._latent(model, path)), p.bits)
                for path, p in zip(self.layers, self._parametrizations(model), strict=True)
            )
            terms["waveq"] = weight * total
        if self.bit_strength and self.learn_bits:
            bits = torch.stack([p.bits for p in self._parametrizations(model)])
            terms["bits"] = self.bit_strength * bits.sum()
        return terms

    def on_step(self, model: nn.Module, step: int, epoch: int) -> dict[str, Any]:
        """Clamp each bit-width to [min_bits, max_bits]; λ_q for the next step; the bit-widths to log."""
        params = self._parametrizations(model)
        with torch.no_grad():
            for p in params:
                p.bits.clamp_(self.min_bits, self.max_bits)
            bits = torch.stack([p.bits.detach() for p in params])
        self.factor = self.ramp(step + 1, epoch)
        logged: dict[str, Any] = {"lambda": self.strength * self.factor, "bits_mean": bits.mean()}
        logged.update({f"bits/{path}": b for path, b in zip(self.layers, bits, strict=True)})
        return logged

    def export(self, model: nn.Module) -> nn.Module:
        """A plain copy with each layer's weight α · DoReFa_b(v), b = its rounded learned bit-width."""
        with torch.no_grad():
            hard = {
                path: dorefa_quantize(self._latent(model, path), self.rounded(p.bits), p.scale)
                for path, p in zip(self.layers, self._parametrizations(model), strict=True)
            }
        return plain_copy(model, hard)

    def report(self, model: nn.Module) -> dict[str, Any]:
        """The learned per-layer bit-widths (continuous and rounded), scales and their averages."""
        params = self._parametrizations(model)
        pairs = list(zip(self.layers, params, strict=True))
        bits = {path: self.rounded(p.bits) for path, p in pairs}
        sizes = {path: model.get_submodule(path).weight.numel() for path in self.layers}
        return {
            "bits": bits,
            "bits_continuous": {path: float(p.bits.detach()) for path, p in pairs},
            "scale": {path: float(p.scale.detach()) for path, p in pairs},
            "mean_bits": sum(bits.values()) / len(bits),
            "weighted_bits": sum(bits[k] * sizes[k] for k in bits) / sum(sizes.values()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.factor = float(state["factor"])

    # -- helpers --------------------------------------------------------------------------------------

    def rounded(self, bits: Tensor) -> int:
        return int(min(max(round(float(bits.detach())), self.min_bits), self.max_bits))

    @staticmethod
    def _latent(model: nn.Module, path: str) -> Tensor:
        """v, the tensor the optimizer updates."""
        return model.get_submodule(path).parametrizations.weight.original

    def _parametrizations(self, model: nn.Module) -> list[DoReFaWeight]:
        return [model.get_submodule(path).parametrizations.weight[0] for path in self.layers]
