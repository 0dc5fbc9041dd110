"""Regularizers for robustness to post-training quantization (gradient-L1 paper and its baselines).

- `GradL1`: Eq. 3, λ_w·‖∇_W L‖₁ + λ_y·‖∇_y L‖₁ over the weights W of every conv / linear layer (the
  tensors PTQ quantizes) and the outputs y of every activation module (ReLU, ...), by double
  backpropagation (`estimator: exact`) or by a finite-difference Hessian–vector product
  (`estimator: fd`, see `GradientPenalty._finite_difference`).
- `GradL2`: the same with the ℓ2 norm (the paper's "L2 regularization" baseline, after Gulrajani
  et al. 2017).
- `DefensiveQuantization`: β·Σ_l ‖W_lᵀW_l − I‖²_F (Lin et al. 2019; Appendix C of the paper).

The strength is `strength × schedule.lam(step, epoch)`, optionally only in the last `last_epochs`
epochs (the paper's choice: the last 15); fine-tuning from a trained run is `init_from=<run dir>`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantlab import collective
from quantlab.errors import ConfigError
from quantlab.methods.base import Method, Traits, surrogate_term
from quantlab.quant.layers import conv_linear_layers
from quantlab.schedules import Constant, Schedule

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardtanh, nn.Hardswish)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def quantized_weights(model: nn.Module) -> list[Tensor]:
    """The weight of every conv / linear layer (what post-training quantization rounds)."""
    return [m.weight for _, m in conv_linear_layers(model)]


def norm_of(grads: list[Tensor], p: int) -> Tensor:
    """‖g‖_p of the concatenation of `grads` (p = 1 or 2), one fused reduction per tensor."""
    norms = torch.stack([torch.linalg.vector_norm(g, ord=p) for g in grads])
    return norms.sum() if p == 1 else torch.linalg.vector_norm(norms, ord=2)


def norm_direction_(grads: list[Tensor], p: int, factor: float, total: Tensor | None = None) -> list[Tensor]:
    """factor · ∂‖g‖_p / ∂g (factor · sign(g) for p = 1, factor · g / ‖g‖₂ for p = 2), in place;
    `total`: ‖g‖₂ when g is part of a longer vector (the activations of one rank's samples)."""
    if p == 1:
        return [g.sign_().mul_(factor) for g in grads]
    total = norm_of(grads, 2) if total is None else total
    scale = factor / float(total.clamp_min(torch.finfo(torch.float32).tiny))
    return [g.mul_(scale) for g in grads]


def global_norms(g_w: list[Tensor], g_y: list[Tensor], p: int) -> tuple[list[Tensor], Tensor, Tensor]:
    """The global batch's gradients from this rank's (detached; the identity with one process).

    Data parallel over R ranks the loss is L = (1/R)·Σ_r L_r: ∇_W L is the mean of the ranks'
    ∇_W L_r, and ∇_y L over rank r's samples is ∇_y L_r / R. Returns ∇_W L, ‖∇_y L‖_p over the
    samples of every rank, and ‖(∇_y L_r)_r‖_p (the ranks' gradients side by side: what normalises
    rank r's part of the ℓ2 direction, ∇_y L_r / ‖(∇_y L_r)_r‖₂)."""
    g_w = collective.mean_over_ranks(g_w)
    n = collective.world()
    if not g_y:
        return g_w, torch.zeros(()), torch.zeros(())
    local = torch.stack([g.abs().sum() if p == 1 else g.square().sum() for g in g_y]).sum()
    total = collective.sum_over_ranks(local) ** (1.0 / p)  # ‖concat_r ∇_y L_r‖_p
    return g_w, total / n, total


class ActivationTap:
    """Forward hooks on every activation module: collect their outputs (y of Eq. 3) in training
    mode, optionally adding a perturbation to each (the finite-difference pass); and the RNG state
    at the start of each forward pass, so that a second pass can replay the same randomness."""

    def __init__(self, model: nn.Module) -> None:
        self.outputs: list[Tensor] = []
        self.enabled = False
        self.perturb: list[Tensor] | None = None
        self.rng_state: Tensor | None = None
        self.modules = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
        model.register_forward_pre_hook(self._start)
        for module in self.modules:
            module.register_forward_hook(self._collect)

    def _start(self, model: nn.Module, args: Any) -> None:
        self.outputs = []
        if self.enabled and model.training:
            self.rng_state = torch.random.get_rng_state()

    def _collect(self, module: nn.Module, args: Any, out: Tensor) -> Tensor | None:
        if not (self.enabled and module.training):
            return None
        if self.perturb is not None:
            out = out + self.perturb[len(self.outputs)]
        self.outputs.append(out)
        return out


class GradientPenalty(Method):
    """λ_w·‖∇_W L‖_p + λ_y·‖∇_y L‖_p (gradient-L1 paper, Eq. 3, with p = 1; p = 2 for the baseline).

    estimator "exact": double backpropagation — ∇L by autograd.grad(create_graph=True), the penalty
    added to the loss, one backward through both.
    estimator "fd": the penalty's gradient H·v, v = (λ_w ∂‖g_W‖/∂g_W, λ_y ∂‖g_y‖/∂g_y), by a forward
    difference (∇_θ L(W + εv_W, y + εv_y) − ∇_θ L(W, y)) / ε: one extra forward/backward at the
    perturbed point (weights shifted in place, activations shifted by the hooks) instead of double
    backprop; the step is ε·max(λ_w, λ_y)/‖v‖∞ (`fd_step`): the largest shift is ε·λ for either
    norm. Besides its O(ε) error (and float32 rounding of order 1e-7·|∇L|/ε), a ReLU whose input
    crosses zero between the two points adds a jump of order 1/ε that double backprop (which sees
    ReLU as locally linear) does not have; so ε must be small: the tests require the penalty
    gradients to agree within 1 % (relative ℓ2; measured 0.1 % for ℓ1, 0.4 % for ℓ2) at the default
    ε = 1e-4 on a small conv net in float32, where ε = 1e-3 already gives a 28x difference for ℓ1.
    """

    norm = 1
    name = "grad_l1"

    def __init__(
        self,
        *,
        strength: float,
        act_strength: float | None,
        lam: Schedule | None,
        last_epochs: int | None,
        epochs: int | None,
        estimator: str,
        fd_eps: float,
        grad_norms_every: int,
    ) -> None:
        for key, value in (("strength", strength), ("act_strength", act_strength)):
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"method.{key}={value!r}: must be a number >= 0")
        if estimator not in ("exact", "fd"):
            raise ConfigError(f"method.estimator={estimator!r}: must be exact (double backprop) or fd")
        if not isinstance(fd_eps, (int, float)) or fd_eps <= 0:
            raise ConfigError(f"method.fd_eps={fd_eps!r}: must be a number > 0")
        if last_epochs is not None:
            if not isinstance(last_epochs, int) or last_epochs <= 0:
                raise ConfigError(f"method.last_epochs={last_epochs!r}: must be an integer > 0 or null")
            if epochs is None:
                raise ConfigError("method.last_epochs: needs schedule.epochs (not schedule.iterations)")
        self.strength = float(strength)
        self.act_strength = float(strength if act_strength is None else act_strength)
        self.schedule = lam if lam is not None else Constant(1.0)
        self.start_epoch = (int(epochs) - last_epochs) if last_epochs is not None else 0
        self.estimator, self.fd_eps = estimator, float(fd_eps)
        self.traits = Traits(
            grad_norms_every=int(grad_norms_every),
            double_backward=estimator == "exact",
            backward_twice=True,  # fd: ∇L by autograd.grad, then the trainer's backward
        )
        self.factor = self._factor(0, 0)
        self.weights: list[Tensor] = []
        self.tap: ActivationTap | None = None

    def _factor(self, step: int, epoch: int) -> float:
        return 0.0 if epoch < self.start_epoch else float(self.schedule(step, epoch))

    def strengths(self) -> tuple[float, float]:
        """(λ_w, λ_y) for the current step."""
        return self.strength * self.factor, self.act_strength * self.factor

    def active(self) -> bool:
        return any(s > 0 for s in self.strengths())

    # -- protocol ------------------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        self.weights = quantized_weights(model)
        if not self.weights:
            raise ConfigError(f"method={self.name}: the model has no conv or linear layer")
        self.tap = ActivationTap(model)
        self.tap.enabled = self.active()
        return model

    def export(self, model: nn.Module) -> nn.Module:
        return model  # a float network: PTQ rounds it afterwards

    def penalty(self, model: nn.Module, loss: Tensor, batch: Any) -> dict[str, Tensor]:
        if not self.active():
            return {}
        if self.estimator == "fd":
            return {self.name: self._finite_difference(model, loss, batch)}
        acts = self.tap.outputs if self.tap is not None else []
        grads = torch.autograd.grad(loss, [*self.weights, *acts], create_graph=True)
        g_w, g_y = list(grads[: len(self.weights)]), list(grads[len(self.weights) :])
        value, v_w, v_y = self._directions([g.detach() for g in g_w], [g.detach().clone() for g in g_y])
        # d value / dθ = (∂value/∂g)ᵀ ∂g/∂θ: the direction (fixed) against the differentiable gradient
        inner = sum((v * g).sum() for v, g in zip([*v_w, *v_y], [*g_w, *g_y], strict=True))
        return {self.name: value + inner - inner.detach()}

    def _directions(self, g_w: list[Tensor], g_y: list[Tensor]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """The penalty's value for the global batch, and its gradient with respect to this rank's
        ∇_W L_r and ∇_y L_r (v_w, v_y: DistributedDataParallel's mean of the ranks' H_r·v is then the
        one-process H·v); `g_y` is overwritten."""
        lam_w, lam_y = self.strengths()
        g_w, act_norm, act_scale = global_norms(g_w, g_y, self.norm)
        value = lam_w * norm_of(g_w, self.norm) + lam_y * act_norm.to(g_w[0].device)
        v_w = norm_direction_([g.clone() for g in g_w], self.norm, lam_w)
        v_y = norm_direction_(g_y, self.norm, lam_y, act_scale) if g_y else []
        return value, v_w, v_y

    def on_step(self, model: nn.Module, step: int, epoch: int) -> dict[str, float]:
        self.factor = self._factor(step + 1, epoch)
        if self.tap is not None:
            self.tap.enabled = self.active()
        return {"lambda": self.strength * self.factor}

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.factor = float(state["factor"])
        if self.tap is not None:
            self.tap.enabled = self.active()

    # -- the finite-difference Hessian–vector product --------------------------------------------------

    def _finite_difference(self, model: nn.Module, loss: Tensor, batch: Any) -> Tensor:
        """The penalty's value, as a term whose gradient is the forward difference of ∇_θ L (the
        trainer's backward of the loss adds ∇_θ L itself, so the total is ∇L + H·v)."""
        assert self.tap is not None
        lam_w, lam_y = self.strengths()
        params = [p for p in model.parameters() if p.requires_grad]
        acts = list(self.tap.outputs)
        first = torch.autograd.grad(loss, [*params, *acts], allow_unused=True, retain_graph=True)
        g_params = [
            g if g is not None else torch.zeros_like(p)
            for g, p in zip(first[: len(params)], params, strict=True)
        ]
        g_y = [g.detach() for g in first[len(params) :] if g is not None]
        by_id = {id(p): g for p, g in zip(params, g_params, strict=True)}
        value, v_w, v_y = self._directions([by_id[id(w)] for w in self.weights], g_y)
        eps = fd_step(self.fd_eps * max(lam_w, lam_y), [*v_w, *v_y])
        v_y = [v.mul_(eps) for v in v_y] or None
        saved = [w.detach().clone() for w in self.weights]
        bn_state = {id(m): [b.clone() for b in m.buffers()] for m in model.modules() if isinstance(m, _BN)}
        rng_after = torch.random.get_rng_state()
        try:
            # through .data: the loss graph the trainer backpropagates next saved these tensors, and
            # values restored bit for bit must not count as an in-place change there
            for w, v in zip(self.weights, v_w, strict=True):
                w.data.add_(v, alpha=eps)
            if self.tap.rng_state is not None:
                torch.random.set_rng_state(self.tap.rng_state)
            self.tap.perturb = v_y
            x, y = batch
            shifted = F.cross_entropy(model(x).float(), y)
            second = torch.autograd.grad(shifted, params, allow_unused=True)
        finally:
            self.tap.perturb = None
            torch.random.set_rng_state(rng_after)
            for w, original in zip(self.weights, saved, strict=True):
                w.data.copy_(original)
            for m in model.modules():
                if isinstance(m, _BN):
                    for b, original in zip(m.buffers(), bn_state[id(m)], strict=True):
                        b.data.copy_(original)
        hvp = [
            ((g2 if g2 is not None else torch.zeros_like(g)) - g) / eps
            for g, g2 in zip(g_params, second, strict=True)
        ]
        return surrogate_term(value, params, hvp)


def fd_step(largest_shift: float, direction: list[Tensor]) -> float:
    """The finite-difference step h for the shift h·v: h = largest_shift / ‖v‖∞, so that the entry
    that moves most moves by `largest_shift` whatever the norm's direction looks like.

    For p = 1, v = λ·sign(g) and ‖v‖∞ = λ: h = ε, the plain step. For p = 2, v = λ·g/‖g‖₂ has
    entries far below λ (‖g‖∞ ≪ ‖g‖₂ over many weights): a plain ε would move them by ~1e-9 and
    leave the difference to float32 rounding (1.6 % error at ε = 1e-4 on the tests' net, 5 % on
    larger ones); scaled, ℓ2 agrees with double backprop to 0.4 % there (ℓ1: 0.1 %).
    """
    maxima = [v.abs().amax() for v in direction if v.numel()]
    largest = torch.stack(maxima).max() if maxima else torch.zeros(())
    vmax = float(collective.max_over_ranks(largest))  # the same step on every rank; one host sync
    return largest_shift / vmax if vmax > 0 else largest_shift


class GradL1(GradientPenalty):
    """Gradient-L1 regularization (Eq. 3): λ_w‖∇_W L‖₁ + λ_y‖∇_y L‖₁."""

    norm = 1
    name = "grad_l1"


class GradL2(GradientPenalty):
    """The ℓ2 baseline: λ_w‖∇_W L‖₂ + λ_y‖∇_y L‖₂ (Gulrajani et al. 2017, without the target 1)."""

    norm = 2
    name = "grad_l2"


class DefensiveQuantization(Method):
    """Defensive Quantization (Lin et al. 2019): β·Σ_l ‖W_lᵀW_l − I‖²_F over conv / linear layers.

    W_l is the layer's (fan_in × out) matrix (a conv kernel reshaped to 2-D), so WᵀW is out × out and
    the penalty is Σ_i (σ_i² − 1)² over its singular values (plus 1 per missing one): the 4th-power
    constraint of the gradient-L1 paper's Appendix C. The strength is β × schedule.lam(step, epoch).
    """

    name = "dq"

    def __init__(self, *, strength: float, lam: Schedule | None, grad_norms_every: int) -> None:
        if not isinstance(strength, (int, float)) or strength < 0:
            raise ConfigError(f"method.strength={strength!r}: must be a number >= 0")
        self.strength = float(strength)
        self.schedule = lam if lam is not None else Constant(1.0)
        self.factor = float(self.schedule(0, 0))
        self.traits = Traits(grad_norms_every=int(grad_norms_every))
        self.weights: list[Tensor] = []

    def prepare(self, model: nn.Module) -> nn.Module:
        self.weights = quantized_weights(model)
        return model

    def export(self, model: nn.Module) -> nn.Module:
        return model

    def penalty(self, model: nn.Module, loss: Tensor, batch: Any) -> dict[str, Tensor]:
        beta = self.strength * self.factor
        if beta == 0:
            return {}
        return {self.name: beta * sum(orthogonality_gap(w) for w in self.weights)}

    def on_step(self, model: nn.Module, step: int, epoch: int) -> dict[str, float]:
        self.factor = float(self.schedule(step + 1, epoch))
        return {"beta": self.strength * self.factor}

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.factor = float(state["factor"])


def orthogonality_gap(weight: Tensor) -> Tensor:
    """‖WᵀW − I‖²_F with W = weight.reshape(out, −1)ᵀ, i.e. ‖M Mᵀ − I‖²_F for the (out × fan_in) M."""
    m = weight.reshape(weight.shape[0], -1)
    gram = m @ m.t()
    return (gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)).square().sum()
