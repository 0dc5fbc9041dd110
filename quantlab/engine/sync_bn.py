"""`trainer.sync_bn`: batch norm whose training statistics are those of the global batch.

On CUDA this is torch's SyncBatchNorm (its fused kernels, NCCL). torch's SyncBatchNorm refuses CPU
tensors and has no second derivative, so on the CPU (gloo: the tests' stand-in for several GPUs),
and for methods that backpropagate through a gradient (exact gradient-L1), the `global_class` of
each batch-norm class computes the same thing with a differentiable all-reduce (`SumOverRanks`):
the mean over every rank's samples, then the biased variance Σ(x − mean)²/N over them (two passes,
as a one-process batch norm does; no E[x²] − E[x]² cancellation), normalisation by them, and the
running statistics updated with the unbiased variance of the N samples. The all-reduce's backward
is an all-reduce of the gradients, so each rank's backward sees how its samples moved the shared
statistics; DistributedDataParallel's average of the ranks' gradients is then the gradient of the
one-process loss over the global batch.

The modules keep their identity and parameters (an optimizer built before or after sees the same
tensors) and are turned back into plain batch norm after training (`restore`), so that batch-norm
folding and export see the classes they know.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

#: the class each converted module had, by module name, to restore after training
Originals = dict[str, type[nn.Module]]


class SumOverRanks(torch.autograd.Function):
    """Σ over the ranks of a tensor, differentiable (twice: gradient-L1's double backprop goes through
    the batch statistics too): the gradient of each rank's input is the sum of the ranks' output
    gradients (every rank's loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, t: Tensor) -> Tensor:
        t = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        return SumOverRanks.apply(grad)  # itself differentiable: double backprop goes through it


class _GlobalStatistics:
    """Mixin over a batch-norm class: in training, statistics over the samples of every rank."""

    def forward(self, x: Tensor) -> Tensor:
        bn: _BatchNorm = self  # type: ignore[assignment]
        if not (bn.training or bn.running_mean is None) or not dist.is_initialized():
            return super().forward(x)  # type: ignore[misc]
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        xf = x.float()
        local_n = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        sums = SumOverRanks.apply(torch.cat([xf.sum(dims), local_n]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = xf - mean.view(shape)
        var = SumOverRanks.apply(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + bn.eps).view(shape)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            self._update_running(mean.detach(), var.detach(), float(n))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, n: float) -> None:
        bn: _BatchNorm = self  # type: ignore[assignment]
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # a cumulative moving average
                factor = 1.0 / float(bn.num_batches_tracked)
        unbiased = var * (n / max(n - 1.0, 1.0))
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)


@functools.cache
def global_class(cls: type[_BatchNorm]) -> type[_BatchNorm]:
    """`cls` with training statistics over every rank (still an instance of `cls`)."""
    return type(f"Global{cls.__name__}", (_GlobalStatistics, cls), {"__module__": __name__})


def synchronize(
    model: nn.Module, device: torch.device, double_backward: bool = False
) -> tuple[nn.Module, Originals]:
    """Every batch-norm module of `model` with global-batch statistics; the classes to restore.
    `double_backward`: the method differentiates through a gradient, which torch's SyncBatchNorm
    (one backward, fused kernels) does not support: the all-reduce version on CUDA too."""
    originals: Originals = {name: type(m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    if device.type == "cuda" and not double_backward:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), originals
    for name in originals:
        module = model.get_submodule(name)
        module.__class__ = global_class(originals[name])
    return model, originals


def restore(model: nn.Module, originals: Originals) -> None:
    """Plain batch norm again (the same modules, parameters and running statistics)."""
    for name, cls in originals.items():
        model.get_submodule(name).__class__ = cls
