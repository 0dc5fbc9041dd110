"""Evaluation and the small device helpers the trainer, the PTQ sweep and the benchmarks share."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from quantlab import collective
from quantlab.data import EpochLoader
from quantlab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA where there is one, else the CPU; a named device must exist (ConfigError)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: CUDA is not available on this machine; use device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name}: MPS is not available on this machine; use device=cpu or auto")
    return device


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: EpochLoader,
    top5: bool = False,
    amp_dtype: torch.dtype | None = None,
    outputs: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    epoch: int = 0,
) -> dict:
    """Top-1 accuracy (%), mean cross-entropy and, where asked, top-5 accuracy (%) over a loader.
    With `outputs`, each batch's (logits, labels) is appended to it (the PTQ sweep's float reference).
    `epoch` picks the draws of a loader that augments (a validation split with dataset.val_augment)."""
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for x, y in loader.iterate(epoch):
        with autocast(device, amp_dtype):
            logits = model(x)
        if outputs is not None:
            outputs.append((logits.detach().float(), y))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        if top5:
            k = min(5, logits.shape[1])
            correct5 += (logits.topk(k, 1).indices == y[:, None]).any(1).sum()
        count += len(y)
    model.train(was_training)
    out = {"acc": 100.0 * correct.item() / max(count, 1), "loss": loss_sum.item() / max(count, 1)}
    if top5:
        out["acc5"] = 100.0 * correct5.item() / max(count, 1)
    return out


def weight_gradient_norms(
    loss: torch.Tensor, weights: list[torch.Tensor], retain_graph: bool = False, over_ranks: bool = False
) -> dict:
    """ℓ1, ℓ2, ℓ∞ norms (0-d tensors) of ∇_W L over the concatenation of the tensors `weights`; with
    `over_ranks` (every rank of a data-parallel run calls it) of the global batch's gradient, the
    mean of the ranks' gradients."""
    grads = torch.autograd.grad(loss, weights, retain_graph=retain_graph, allow_unused=True)
    flat = torch.cat([g.detach().float().reshape(-1) for g in grads if g is not None])
    if over_ranks:
        (flat,) = collective.mean_over_ranks([flat])
    return {"l1": flat.abs().sum(), "l2": flat.norm(), "linf": flat.abs().max()}


def gradient_norms(model: nn.Module, loader: EpochLoader) -> dict[str, float]:
    """Mean over batches of the ℓ1, ℓ2, ℓ∞ norms of ∇_W L (W: every weight tensor of ≥ 2 dims), eval mode."""
    was_training = model.training
    model.eval()
    weights = [p for p in model.parameters() if p.ndim > 1]
    frozen = [p for p in weights if not p.requires_grad]  # e.g. an export's hard-quantized tensors
    for p in frozen:
        p.requires_grad_(True)
    sums: dict[str, float] = {}
    batches = 0
    with torch.enable_grad():
        for x, y in loader:
            norms = weight_gradient_norms(F.cross_entropy(model(x).float(), y), weights)
            sums = {k: sums.get(k, 0.0) + float(v) for k, v in norms.items()}
            batches += 1
    for p in frozen:
        p.requires_grad_(False)
    model.train(was_training)
    return {k: v / max(batches, 1) for k, v in sums.items()}


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast to `dtype` on `device`, or nothing when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
