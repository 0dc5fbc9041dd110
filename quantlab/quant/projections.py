"""Projections onto the quantization levels Q and their hard counterparts (MD paper, Sec. 3).

Soft projections, annealed by β (β → ∞ gives the hard step functions):
- `tanh_projection`: w = tanh(β w̃), binary Q = {-1, 1} (Eq. 12);
- `shifted_tanh`: w = ½[tanh(β(w̃ + ½)) + tanh(β(w̃ − ½))], ternary Q = {-1, 0, 1} (Eq. 21);
- `softmax_projection`: u = softmax(β ũ) over the d levels, w = u·q (Eqs. 8, 16-18).

Each has a straight-through variant (forward: the projection; backward: the identity Jacobian),
which makes gradient descent on the auxiliary variables the numerically stable form of mirror
descent, Eq. 23 / Algorithm 2. `binary_connect_sign` is BinaryConnect's sign with the gradient
cancelled where |w| > 1. The `hard_*` functions give the exported (rounded) values.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd import Function

#: β: a float, or a 0-d tensor (what the methods pass: a compiled graph reads it without recompiling)
Beta = float | Tensor


def tanh_projection(x: Tensor, beta: Beta) -> Tensor:
    """Eq. 12: tanh(β x), differentiable (GD-tanh multiplies gradients by β(1 − tanh²(β x)))."""
    return torch.tanh(beta * x)


def shifted_tanh(x: Tensor, beta: Beta) -> Tensor:
    """Eq. 21: ½[tanh(β(x + ½)) + tanh(β(x − ½))], the ternary projection onto [-1, 1]."""
    return 0.5 * (torch.tanh(beta * (x + 0.5)) + torch.tanh(beta * (x - 0.5)))


def shifted_tanh_grad(x: Tensor, beta: Beta) -> Tensor:
    """d/dx of Eq. 21: ½β[2 − tanh²(β(x + ½)) − tanh²(β(x − ½))]."""
    return 0.5 * beta * (2.0 - torch.tanh(beta * (x + 0.5)) ** 2 - torch.tanh(beta * (x - 0.5)) ** 2)


def level_softmax(z: Tensor) -> Tensor:
    """softmax over the last dimension when it is short (the d levels): the same values as
    `torch.softmax(z, -1)` to float32 rounding, computed level by level with elementwise ops over
    the long dimensions (about 2x faster on the CPU, whose softmax kernel is slow for d = 2 or 3);
    for two levels softmax(z)₀ = σ(z₀ − z₁), softmax(z)₁ = σ(z₁ − z₀)."""
    if z.shape[-1] == 2:
        z0, z1 = z.unbind(-1)
        return torch.stack((torch.sigmoid(z0 - z1), torch.sigmoid(z1 - z0)), -1)
    levels = z.movedim(-1, 0)
    top = functools.reduce(torch.maximum, levels.unbind(0))
    e = torch.exp(levels - top)
    return e.div_(functools.reduce(torch.add, e.unbind(0))).movedim(0, -1).contiguous()


class _SoftmaxProjection(Function):
    """w = softmax(β ũ)·q with the exact Jacobian in closed form: ∂L/∂ũ_λ = β u_λ (q_λ − w) ∂L/∂w
    (since ∂w/∂(βũ_λ) = u_λ (q_λ − w)); a few fused passes instead of autograd through softmax."""

    @staticmethod
    def forward(ctx, u_tilde: Tensor, beta: Beta, levels: Tensor) -> Tensor:  # type: ignore[override]
        u = level_softmax(beta * u_tilde)
        w = u @ levels
        beta = torch.as_tensor(beta, dtype=u.dtype, device=u.device)
        ctx.save_for_backward(u, w, levels, beta)
        return w

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        u, w, levels, beta = ctx.saved_tensors
        return (levels - w.unsqueeze(-1)).mul_(u).mul_((beta * grad).unsqueeze(-1)), None, None


def softmax_projection(u_tilde: Tensor, beta: Beta, levels: Tensor) -> Tensor:
    """Eqs. 16-18 and 8: w = softmax(β ũ)·q over the last dimension (the d levels), differentiable
    with the softmax's exact Jacobian (PMF; `level_softmax` computes the softmax)."""
    return _SoftmaxProjection.apply(u_tilde, beta, levels)


class _StraightThrough(Function):
    """Forward: `fn(x, beta)`; backward: the identity (the Jacobian replaced by I, Eq. 23)."""

    @staticmethod
    def forward(ctx, x: Tensor, beta: Beta, fn) -> Tensor:  # type: ignore[override]
        return fn(x, beta)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None, None


def tanh_ste(x: Tensor, beta: Beta) -> Tensor:
    """MD-tanh-S (Algorithm 2): forward tanh(β w̃), gradient passed to w̃ unchanged."""
    return _StraightThrough.apply(x, beta, tanh_projection)


def shifted_tanh_ste(x: Tensor, beta: Beta) -> Tensor:
    """Ternary MD-tanh-S: forward Eq. 21, gradient passed to w̃ unchanged."""
    return _StraightThrough.apply(x, beta, shifted_tanh)


class _SoftmaxStraightThrough(Function):
    """Forward w = softmax(β ũ)·q; backward ∂L/∂ũ_λ = ∂L/∂u_λ = (∂L/∂w)·q_λ (softmax Jacobian → I)."""

    @staticmethod
    def forward(ctx, u_tilde: Tensor, beta: Beta, levels: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(levels)
        return level_softmax(beta * u_tilde) @ levels

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (levels,) = ctx.saved_tensors
        return grad.unsqueeze(-1) * levels, None, None


def softmax_ste(u_tilde: Tensor, beta: Beta, levels: Tensor) -> Tensor:
    """MD-softmax-S: Eq. 23 in the lifted u-space."""
    return _SoftmaxStraightThrough.apply(u_tilde, beta, levels)


class _SoftmaxPMFCode(Function):
    """PMF's public code: backward through the softmax with β(I − u uᵀ) instead of β(diag(u) − u uᵀ)."""

    @staticmethod
    def forward(ctx, u_tilde: Tensor, beta: Beta, levels: Tensor) -> Tensor:  # type: ignore[override]
        u = level_softmax(beta * u_tilde)
        beta = torch.as_tensor(beta, dtype=u.dtype, device=u.device)
        ctx.save_for_backward(u, levels, beta)
        return u @ levels

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        u, levels, beta = ctx.saved_tensors
        grad_u = grad.unsqueeze(-1) * levels
        return beta * (grad_u - u * (u * grad_u).sum(-1, keepdim=True)), None, None


def softmax_pmf_code(u_tilde: Tensor, beta: Beta, levels: Tensor) -> Tensor:
    return _SoftmaxPMFCode.apply(u_tilde, beta, levels)


class _BinaryConnect(Function):
    """BinaryConnect: forward sign(w) (sign(0) = +1); backward g·1{|w| ≤ 1} (Courbariaux et al. 2015)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x.abs() <= 1)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside


def binary_connect_sign(x: Tensor, beta: Beta = 1.0) -> Tensor:
    return _BinaryConnect.apply(x)


# -- hard (exported) values ----------------------------------------------------------------------------


def hard_sign(x: Tensor) -> Tensor:
    """sign with sign(0) = +1, so that every value lands on {-1, 1}."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def hard_ternary(x: Tensor, threshold: float = 0.5) -> Tensor:
    """Round to {-1, 0, 1} with thresholds ±0.5 (the limit of Eq. 21 as β → ∞)."""
    return torch.where(x > threshold, 1.0, torch.where(x < -threshold, -1.0, 0.0)).to(x.dtype)


def hard_argmax(u_tilde: Tensor, levels: Tensor) -> Tensor:
    """Argmax rounding in the lifted space: w = q[argmax_λ ũ_λ]."""
    return levels[u_tilde.argmax(dim=-1)]


def hard_nearest(x: Tensor, levels: Tensor) -> Tensor:
    """Nearest level of a sorted Q (binary: sign; {-1, 0, 1}: thresholds ±0.5)."""
    if levels.numel() == 2 and torch.equal(levels, torch.tensor([-1.0, 1.0], dtype=levels.dtype)):
        return hard_sign(x)
    return levels[(x.unsqueeze(-1) - levels).abs().argmin(dim=-1)]
