"""Weight-shaping regularizers (Foothill paper): L1, L2, Foothill, and their shifted binary forms.

Plain form (Sec. 4.2, Table 3):  J = L + λ Σ_l Σ_i f(w_i)  over every conv / linear weight, with
    l1: f(x) = |x|,  l2: f(x) = x²,  foothill: f(x) = p_{α,β}(x) = α·x·tanh(βx/2)   (Eq. 1).
Binary form (Sec. 3.1, Table 2):  J = L + λ(t) Σ_h Σ_i f(w_i − μ·sign(w_i)) = λ(t) Σ f(|w_i| − μ)
(f symmetric), with a trainable μ per filter (conv) or per neuron (linear):
    bnn_r1: |‖x| − μ|  (Eq. 5),  bnn_r2: (|x| − μ)²  (Eq. 6),  foothill binary: p̃_{α,β}  (Eq. 7),
and λ(t) = λ₀·log(t), t the epoch (Sec. 3.1, 4.1: λ = 10⁻⁶·log t). The scale μ multiplies the
layer's binary weights, i.e. the output of the xnor-popcount layer ("applied after the layer"); it
is learned by backpropagation, through the regularizer and, with `forward: binary`, the task loss.

`forward: binary` (BNN+, the Table 2 setting) computes the training forward pass with μ·sign(w)
and passes the gradient straight through to w (∂(μ·sign w)/∂w := μ, cancelled where |w| > 1, as
BinaryConnect);
`forward: latent` trains the float weights and relies on the regularizer alone. Either way the
export is sign(w)·μ. Options: `first_last: false` keeps the first and last layers in full
precision (the paper's setting; they are then not regularized either), `binarize_acts: true`
replaces every activation module by sign (straight-through, clipped to |x| ≤ 1), except the one
feeding a full-precision last layer.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import Function
from torch.nn.utils import parametrize

from quantlab.errors import ConfigError
from quantlab.methods.base import QUANTIZED, Method, Traits
from quantlab.methods.gradreg import ACTIVATIONS
from quantlab.methods.weights import Scope, plain_copy, weight_layers
from quantlab.quant.projections import binary_connect_sign, hard_sign
from quantlab.schedules import Constant, LogEpoch, Schedule

QUANTIZED_1BIT = replace(QUANTIZED, trained_bits=(1, None))

FORWARDS = ("binary", "latent")


# -- the foothill function (Sec. 2) ---------------------------------------------------------------------


def foothill(x: Tensor, alpha: float, beta: float) -> Tensor:
    """Eq. 1: p_{α,β}(x) = α·x·tanh(βx/2)."""
    return alpha * x * torch.tanh(0.5 * beta * x)


def foothill_grad(x: Tensor, alpha: float, beta: float) -> Tensor:
    """Sec. 2.1: dp/dx = α·tanh(βx/2) + ½αβx·sech²(βx/2)."""
    t = torch.tanh(0.5 * beta * x)
    return alpha * t + 0.5 * alpha * beta * x * (1.0 - t * t)


def foothill_hess(x: Tensor, alpha: float, beta: float) -> Tensor:
    """Sec. 2.1: d²p/dx² = ½αβ·sech²(βx/2)·(2 − βx·tanh(βx/2))."""
    t = torch.tanh(0.5 * beta * x)
    return 0.5 * alpha * beta * (1.0 - t * t) * (2.0 - beta * x * t)


def foothill_saddle(tol: float = 1e-14) -> float:
    """z > 0 with z·tanh(z/2) = 2 (Property 3: the inflection points are x₀ = ±z/β), by Newton."""
    z = 2.4
    for _ in range(50):
        t = math.tanh(z / 2)
        step = (z * t - 2.0) / (t + 0.5 * z * (1.0 - t * t))
        z -= step
        if abs(step) < tol:
            break
    return z


# -- binary machinery ------------------------------------------------------------------------------------


class ScaledSign(nn.Module):
    """Parametrization of a binarized layer: the trainable scale μ (one per output channel) and the
    training forward — μ·sign(w) with the straight-through gradient, or w itself (`latent`)."""

    def __init__(self, weight: Tensor, binarize: bool) -> None:
        super().__init__()
        shape = (weight.shape[0],) + (1,) * (weight.ndim - 1)
        self.mu = nn.Parameter(weight.detach().abs().reshape(weight.shape[0], -1).mean(1).reshape(shape))
        self.binarize = binarize

    def forward(self, w: Tensor) -> Tensor:
        return self.mu * binary_connect_sign(w) if self.binarize else w


class _SignActivation(Function):
    """Forward sign(x) (sign(0) = +1); backward g·1{|x| ≤ 1} (Hubara et al. 2016)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class SignActivation(nn.Module):
    """A binary activation: sign in the forward pass, the clipped straight-through gradient."""

    def forward(self, x: Tensor) -> Tensor:
        return _SignActivation.apply(x)


def binarize_activations(model: nn.Module, keep_last: bool) -> list[str]:
    """Replace every activation module by SignActivation (all but the last with `keep_last`)."""
    names = [n for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)]
    if keep_last:
        names = names[:-1]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, SignActivation())
    return names


# -- the methods ------------------------------------------------------------------------------------------


class WeightShaping(Method):
    """λ(t)·Σ f(w) (plain) or λ(t)·Σ f(|w| − μ) (binary) over the conv / linear weights; see the module."""

    name = "shaping"
    binary_default = False

    def __init__(
        self,
        *,
        strength: float,
        lam: Schedule | None,
        binary: bool | None,
        forward: str,
        first_last: bool | None,
        binarize_acts: bool,
        mu_lr: float | None,
    ) -> None:
        if not isinstance(strength, (int, float)) or strength < 0:
            raise ConfigError(f"method.strength={strength!r}: must be a number >= 0")
        if forward not in FORWARDS:
            raise ConfigError(f"method.forward={forward!r}: must be one of {', '.join(FORWARDS)}")
        self.binary = self.binary_default if binary is None else bool(binary)
        if binarize_acts and not self.binary:
            raise ConfigError("method.binarize_acts=true: needs the binary form (method.binary=true)")
        self.strength, self.forward = float(strength), forward
        self.binarize_acts, self.mu_lr = bool(binarize_acts), mu_lr
        # λ(t): the paper's λ₀·log t for the binary form, a constant λ for the plain one
        self.schedule = lam if lam is not None else (LogEpoch(1.0) if self.binary else Constant(1.0))
        self.factor = float(self.schedule(0, 0))
        # plain: every layer is regularized; binary: first / last kept in float unless asked (Table 2)
        keep_all = (not self.binary) if first_last is None else bool(first_last)
        self.scope = Scope(first=keep_all, last=keep_all, bias=False)
        self.layers: list[str] = []
        # binary: the export is sign(w)·scale, the 1-bit grid; plain: a float network PTQ sweeps
        self.traits = QUANTIZED_1BIT if self.binary else Traits()

    def shape(self, x: Tensor) -> Tensor:
        """f of the module docstring, elementwise."""
        raise NotImplementedError  # abstract: every concrete method defines it

    def prepare(self, model: nn.Module) -> nn.Module:
        self.layers = weight_layers(model, self.scope)
        if not self.layers:
            raise ConfigError(f"method={self.name}: the model has no conv or linear layer in scope")
        if self.binary:
            for path in self.layers:
                module = model.get_submodule(path)
                binarize = self.forward == "binary"
                parametrize.register_parametrization(module, "weight", ScaledSign(module.weight, binarize))
            if self.binarize_acts:
                binarize_activations(model, keep_last=not self.scope.last)
        return model

    def own_parameters(self, model: nn.Module) -> tuple[list[nn.Parameter], float | None]:
        return [self._scale(model, path).mu for path in self.layers] if self.binary else [], self.mu_lr

    def penalty(self, model: nn.Module, loss: Tensor, batch: Any) -> dict[str, Tensor]:
        lam = self.strength * self.factor
        if lam == 0:
            return {}
        total = sum(self.shape(self._deviation(model, path)).sum() for path in self.layers)
        return {self.name: lam * total}

    def on_step(self, model: nn.Module, step: int, epoch: int) -> dict[str, Any]:
        self.factor = float(self.schedule(step + 1, epoch))
        logged: dict[str, Any] = {"lambda": self.strength * self.factor}
        if self.binary:
            with torch.no_grad():
                mus = torch.cat([self._scale(model, p).mu.reshape(-1) for p in self.layers])
                logged["mu_mean"] = mus.mean()
        return logged

    def export(self, model: nn.Module) -> nn.Module:
        """Binary: a plain copy with sign(w)·μ in every binarized layer. Plain: the network itself."""
        if not self.binary:
            return model
        with torch.no_grad():
            binary = {
                path: self._scale(model, path).mu
                * hard_sign(model.get_submodule(path).parametrizations.weight.original)
                for path in self.layers
            }
        return plain_copy(model, binary)

    def report(self, model: nn.Module) -> dict[str, Any]:
        if not self.binary:
            return {}
        return {"mu_mean": {p: float(self._scale(model, p).mu.mean()) for p in self.layers}}

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.factor = float(state["factor"])

    # -- helpers ------------------------------------------------------------------------------------------

    def _deviation(self, model: nn.Module, path: str) -> Tensor:
        """The argument of f: w (plain) or |w| − μ (binary, per output channel)."""
        module = model.get_submodule(path)
        if not self.binary:
            return module.weight
        return module.parametrizations.weight.original.abs() - self._scale(model, path).mu

    @staticmethod
    def _scale(model: nn.Module, path: str) -> ScaledSign:
        return model.get_submodule(path).parametrizations.weight[0]


class L1(WeightShaping):
    """f(x) = |x| (lasso); binary: BNN+'s R₁ = |‖x| − μ| (Eq. 5)."""

    name = "l1"

    def shape(self, x: Tensor) -> Tensor:
        return x.abs()


class L2(WeightShaping):
    """f(x) = x² (ridge); binary: BNN+'s R₂ = (|x| − μ)² (Eq. 6)."""

    name = "l2"

    def shape(self, x: Tensor) -> Tensor:
        return x.square()


class BNNR1(L1):
    """BNN+ R₁(x) = |‖x| − μ| (Eq. 5 of the Foothill paper): L1 in its binary form."""

    name = "bnn_r1"
    binary_default = True


class BNNR2(L2):
    """BNN+ R₂(x) = (|x| − μ)² (Eq. 6): L2 in its binary form."""

    name = "bnn_r2"
    binary_default = True


class Foothill(WeightShaping):
    """Foothill p_{α,β}(x) = α·x·tanh(βx/2) (Eq. 1); binary: p̃_{α,β}(x) = p_{α,β}(x − μ·sign x) (Eq. 7)."""

    name = "foothill"

    def __init__(self, *, alpha: float, beta: float, **kwargs: Any) -> None:
        for field, value in (("alpha", alpha), ("beta", beta)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"method.{field}={value!r}: must be a number > 0")
        super().__init__(**kwargs)
        self.alpha, self.beta = float(alpha), float(beta)

    def shape(self, x: Tensor) -> Tensor:
        return foothill(x, self.alpha, self.beta)
