"""Mirror-descent quantization (Ajanthan et al., "Mirror Descent View for Neural Network Quantization").

Stable forms (Sec. 3.2, Eq. 23, Algorithm 2), auxiliary variables updated with the gradient
taken at the projected point (straight-through), any optimizer from the schedule (Adam in the paper):
- `MDTanhS`    w = tanh(β w̃) (Eq. 12), ternary: the shifted tanh (Eq. 21);
- `MDSoftmaxS` u = softmax(β ũ) over Q, w = u·q (Eqs. 16-18, 8).

Projected gradient descent through the projection (the paper's baselines):
- `GDTanh`     the same projections with their true Jacobian β(1 − tanh²(β w̃));
- `PMF`        Proximal Mean-Field: softmax projection with the gradient through the softmax.

Exact mirror descent (Algorithm 1), the optimizer updates the primal variables in place:
- `MDTanh`     w ← tanh(atanh(w) − η β d) — Eq. 15 (binary);
- `MDSoftmax`  u_λ ← u_λ exp(−η β d_λ) / Σ_μ u_μ exp(−η β d_μ) — Eq. 20, exponentiated gradient;
  with d the Adam direction m̂/(√v̂ + ε) of the gradient at the current point ("Adam based gradients").

Note on Eq. 15: its closed form [r·e^{−2βηg} − 1]/[r·e^{−2βηg} + 1] with r = (1+w)/(1−w) equals
tanh(atanh(w) − βηg) exactly (since r = e^{2 atanh w}); `md_tanh_update` computes that stable form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from quantlab.errors import ConfigError
from quantlab.methods.weights import BINARY, TERNARY, WeightQuantizer, init_md
from quantlab.quant.projections import (
    hard_argmax,
    hard_sign,
    hard_ternary,
    level_softmax,
    shifted_tanh,
    shifted_tanh_ste,
    softmax_pmf_code,
    softmax_projection,
    softmax_ste,
    tanh_projection,
    tanh_ste,
)

# -- w-space: tanh projections ------------------------------------------------------------------------


class _TanhFamily(WeightQuantizer):
    """tanh (binary) or shifted tanh (ternary) on auxiliary w̃; export: sign / thresholds ±0.5."""

    straight_through = True

    def attach(self, module: nn.Module, name: str) -> None:
        if self.straight_through:
            project = shifted_tanh_ste if self.ternary else tanh_ste
        else:
            project = shifted_tanh if self.ternary else tanh_projection
        self.parametrize(module, name, project)

    def hard(self, aux: Tensor) -> Tensor:
        return hard_ternary(aux) if self.ternary else hard_sign(aux)


class MDTanhS(_TanhFamily):
    """MD-tanh-S — Algorithm 2 / Eq. 23: w^k = P(w̃^k), w̃^{k+1} = w̃^k − η g^k with g^k = ∇_w L(w^k).

    P is tanh(β w̃) (Eq. 12) for Q = {-1, 1} and the shifted tanh (Eq. 21) for Q = {-1, 0, 1}; the
    gradient reaches w̃ through the identity (straight-through). Export: sign(w̃), or ±0.5 thresholds.
    """

    name = "md_tanh_s"


class GDTanh(_TanhFamily):
    """GD-tanh — gradient descent on f(P(w̃)) with the true Jacobian of P: β(1 − tanh²(β w̃)) for
    Eq. 12, ½β[2 − tanh²(β(w̃+½)) − tanh²(β(w̃−½))] for Eq. 21 (the MD paper's PGD baseline)."""

    name = "gd_tanh"
    straight_through = False


# -- u-space: softmax projections over the levels ------------------------------------------------------


def _lift(w: Tensor, levels: Tensor) -> Tensor:
    """Initial lifted variables ũ_λ = w·q_λ: for Q = {-1, 1}, softmax(ũ)·q = tanh(w) — the tanh init."""
    return w.unsqueeze(-1) * levels.to(w.device, w.dtype)


def _independent_lift(w: Tensor, levels: Tensor, gain: float) -> Tensor:
    """Initial lifted variables as md-bnn draws them: its `SLinear` / `SConv2d` is one layer with
    out·d outputs (d = |Q|; output channel o·d + λ holds level λ of weight o), initialised as a whole
    by the MD init: xavier_uniform with bound gain·√(6/(fan_in + d·fan_out)) for ≥ 2-D tensors
    (fan_in, fan_out those of w), normal(0, 0.1·gain) for 1-D ones; every level's draw independent.
    Returns ũ shaped w.shape + (d,)."""
    d = len(levels)
    layer = torch.empty((w.shape[0] * d, *w.shape[1:]), dtype=w.dtype, device=w.device)
    init_md(layer, gain)
    return layer.view(w.shape[0], d, *w.shape[1:]).movedim(1, -1).contiguous()


LIFT_INITS = ("product", "independent")


class _Lifted(WeightQuantizer):
    """Methods whose variables live in the lifted space of one coordinate per level (ũ or u).

    `lift_init` sets ũ⁰: `product` lifts the network's initial weights, ũ_λ = w·q_λ (for binary,
    softmax(ũ)·q = tanh(w): the same start as the tanh methods); `independent` draws ũ as md-bnn
    does for MD-softmax, MD-softmax-S and PMF*: the MD init of one layer with d times the outputs
    (`_independent_lift`). `independent` ignores the network's weights, so it needs
    method.init=xavier.
    """

    def __init__(self, *args: Any, lift_init: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if lift_init not in LIFT_INITS:
            raise ConfigError(
                f"method.lift_init={lift_init!r}: must be product (w·q) or independent (md-bnn)"
            )
        if lift_init == "independent" and self.init != "xavier":
            raise ConfigError(
                "method.lift_init=independent: draws a fresh init, so it needs method.init=xavier, "
                f"not {self.init}"
            )
        self.lift_init = lift_init

    def lift(self, w: Tensor) -> Tensor:
        """ũ⁰ from the layer's initial tensor w (see `lift_init`)."""
        if self.lift_init == "independent":
            return _independent_lift(w, self.levels, self.init_gain)
        return _lift(w, self.levels)


class _SoftmaxFamily(_Lifted):
    """softmax(β ũ) over any level set Q; export: q[argmax ũ]."""

    supported = (BINARY, TERNARY)
    #: (ũ, β, q) -> w: the projection, with the backward pass that defines the method
    project: Callable[[Tensor, float, Tensor], Tensor] = staticmethod(softmax_ste)

    def attach(self, module: nn.Module, name: str) -> None:
        levels = self.levels
        fn = self.project
        self.parametrize(module, name, lambda u, beta: fn(u, beta, levels), self.lift)

    def hard(self, aux: Tensor) -> Tensor:
        return hard_argmax(aux, self.levels.to(aux.device))


class MDSoftmaxS(_SoftmaxFamily):
    """MD-softmax-S — Eq. 23 in the lifted space: u = softmax(β ũ), w = u·q, ũ ← ũ − η ∂L/∂u.

    The softmax Jacobian is replaced by the identity: ∂L/∂ũ_λ = (∂L/∂w)·q_λ. Export: argmax.
    ũ⁰: `lift_init` (product w·q by default; independent per level as md-bnn, set by the MD presets).
    """

    name = "md_softmax_s"
    project = staticmethod(softmax_ste)


class PMF(_SoftmaxFamily):
    """Proximal Mean-Field (Ajanthan et al. 2019) — softmax(β ũ)·q with the gradient through the softmax.

    `jacobian: exact` backpropagates β(diag(u) − u uᵀ); `jacobian: pmf_code` uses β(I − u uᵀ) like the
    public PMF code (which reports it "works slightly better"). Export: argmax.
    """

    name = "pmf"

    def __init__(self, *args: Any, jacobian: str, **kwargs: Any) -> None:
        if jacobian not in ("exact", "pmf_code"):
            raise ConfigError(f"method.jacobian={jacobian!r}: must be exact or pmf_code")
        super().__init__(*args, **kwargs)
        self.jacobian = jacobian
        self.project = softmax_projection if jacobian == "exact" else softmax_pmf_code


# -- exact mirror descent: the optimizer updates the primal point -------------------------------------


def md_tanh_update(w: Tensor, direction: Tensor, lr: float, beta: float, eps: float = 1e-7) -> Tensor:
    """Eq. 15 in its stable form tanh(atanh(w) − η β d); w is clamped to ±(1 − eps) first."""
    limit = 1.0 - eps
    return torch.tanh(torch.atanh(w.clamp(-limit, limit)) - lr * beta * direction)


def md_softmax_update(u: Tensor, direction: Tensor, lr: float, beta: float, tiny: float = 1e-30) -> Tensor:
    """Eq. 20 (exponentiated gradient) along the last dimension, computed in log space."""
    return level_softmax(torch.log(u.clamp_min(tiny)) - lr * beta * direction)


class MirrorAdam(torch.optim.Optimizer):
    """Adam directions d = m̂/(√v̂ + ε); groups with `mirror` = "tanh" or "softmax" take the mirror step
    (Eq. 15 / Eq. 20) with the current β, other groups the plain Adam step. `direction="sgd"` uses the
    raw gradient d = g instead (the textbook MD update).

    Each group's tensors are updated together with foreach ops, in place: m ← β₁m + (1−β₁)g,
    v ← β₂v + (1−β₂)g², then the step z − ηβ·m̂/(√v̂+ε) in one addcdiv on the mirror point z
    (atanh w, log u, or the parameter itself) and the map back (tanh, softmax over the levels).
    """

    def __init__(
        self,
        params: Any,
        beta: Callable[[], float],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        direction: str = "adam",
    ) -> None:
        if direction not in ("adam", "sgd"):
            raise ConfigError(f"method.direction={direction!r}: must be adam or sgd")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.beta_fn, self.direction = beta, direction

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        beta = self.beta_fn()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._group_step(group, params, beta)
        return loss

    def _group_step(self, group: dict, params: list[Tensor], beta: float) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        mirror = group.get("mirror")
        grads = [p.grad for p in params]
        if wd and mirror is None:
            grads = torch._foreach_add(grads, params, alpha=wd)
        step_size = lr * beta if mirror else lr
        if mirror == "tanh":
            limit = 1.0 - 1e-7
            points = [p.clamp(-limit, limit).atanh_() for p in params]
        elif mirror == "softmax":
            points = [p.clamp_min(1e-30).log_() for p in params]
        else:
            points = params
        if self.direction == "sgd":
            torch._foreach_add_(points, grads, alpha=-step_size)
        else:
            states = [self.state[p] for p in params]
            for p, state in zip(params, states, strict=True):
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
            ms, vs = [st["m"] for st in states], [st["v"] for st in states]
            if _fused_adam_applies(points):
                # the same update in one fused pass per tensor (torch.optim.Adam's fused kernel)
                steps = [float(st["step"]) for st in states]
                count = torch.tensor(steps, dtype=torch.float32, device=points[0].device)
                torch._fused_adam_(
                    points,
                    grads,
                    ms,
                    vs,
                    [],
                    list(count.unbind()),
                    amsgrad=False,
                    lr=step_size,
                    beta1=b1,
                    beta2=b2,
                    weight_decay=0.0,  # already in the gradients of the groups that have it
                    eps=eps,
                    maximize=False,
                )
            else:
                self._foreach_adam(points, grads, ms, vs, [st["step"] for st in states], group, step_size)
        if mirror == "tanh":
            for p, z in zip(params, points, strict=True):
                torch.tanh(z, out=p)
        elif mirror == "softmax":
            for p, z in zip(params, points, strict=True):
                p.copy_(level_softmax(z))

    @staticmethod
    def _foreach_adam(
        points: list[Tensor],
        grads: list[Tensor],
        ms: list[Tensor],
        vs: list[Tensor],
        steps: list[int],
        group: dict,
        step_size: float,
    ) -> None:
        """m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², z ← z − η·m̂/(√v̂ + ε), with foreach ops."""
        (b1, b2), eps = group["betas"], group["eps"]
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, grads, alpha=1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        # m̂/(√v̂ + ε) = (m / (1 − β₁ᵗ)) / (√v / √(1 − β₂ᵗ) + ε)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, [math.sqrt(1 - b2**t) for t in steps])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(points, ms, denom, [-step_size / (1 - b1**t) for t in steps])


def _fused_adam_applies(tensors: list[Tensor]) -> bool:
    """torch's fused Adam kernel takes tensors of one floating dtype on one CPU or CUDA device."""
    kinds = {(t.device, t.dtype) for t in tensors}
    if len(kinds) != 1 or not hasattr(torch, "_fused_adam_"):
        return False
    device, dtype = kinds.pop()
    return device.type in ("cpu", "cuda") and dtype.is_floating_point


class _ExactMirror(WeightQuantizer):
    """Shared optimizer construction of MD-tanh and MD-softmax."""

    mirror = ""

    def __init__(self, *args: Any, direction: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direction = direction

    def optimizer(self, model: nn.Module, schedule: DictConfig) -> torch.optim.Optimizer:
        opt = schedule.optimizer
        if opt.get("name", "adam") not in ("adam", "adamw"):
            raise ConfigError(
                f"schedule.optimizer.name={opt.get('name')!r}: {self.name} brings its own Adam-based mirror "
                "optimizer (Algorithm 1); use adam"
            )
        mirrored = {id(t) for t in self.aux_tensors(model)}
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if id(p) in mirrored], "mirror": self.mirror},
            {"params": [p for p in params if id(p) not in mirrored]},
        ]
        return MirrorAdam(
            [g for g in groups if g["params"]],
            beta=lambda: self.beta.value,
            lr=float(opt.lr),
            betas=tuple(opt.get("betas", (0.9, 0.999))),
            eps=float(opt.get("eps", 1e-8)),
            weight_decay=float(opt.get("weight_decay", 0.0)),
            direction=self.direction,
        )


class MDTanh(_ExactMirror):
    """MD-tanh — Algorithm 1: w^0 = tanh(β w^0), then w ← Eq. 15 with Adam directions; export sign(w).

    The layer holds w ∈ (−1, 1) itself (the primal point); binary only — the mirror map of the
    shifted tanh has no closed form (the paper uses the stable MD-tanh-S for ternary).
    """

    name = "md_tanh"
    supported = (BINARY,)
    mirror = "tanh"

    def attach(self, module: nn.Module, name: str) -> None:
        with torch.no_grad():
            tensor = getattr(module, name)
            tensor.copy_(torch.tanh(self.beta.value * tensor))  # Algorithm 1, line 2
        self.attach_scale_only(module, name)

    def hard(self, aux: Tensor) -> Tensor:
        return hard_sign(aux)


class MDSoftmax(_ExactMirror, _Lifted):
    """MD-softmax — exponentiated gradient (Eq. 20) on u ∈ Δ per weight, w = u·q; export: argmax u.

    u^0 = softmax(β ũ^0) with ũ^0 = w^0·q (so that binary starts at w = tanh(β w^0)), or with
    `lift_init: independent` each ũ^0_λ drawn on its own (see `_Lifted`).
    """

    name = "md_softmax"
    mirror = "softmax"

    def attach(self, module: nn.Module, name: str) -> None:
        levels = self.levels

        def to_simplex(w: Tensor) -> Tensor:
            return torch.softmax(self.beta.value * self.lift(w), dim=-1)

        self.parametrize(module, name, lambda u, beta: u @ levels, to_simplex)

    def hard(self, aux: Tensor) -> Tensor:
        return hard_argmax(aux, self.levels.to(aux.device))
