"""What a method needs to know of a data-parallel run (torch.distributed; DistributedDataParallel
averages the ranks' gradients): how many ranks there are, and reductions over them.

A method whose penalty is not linear in the batch (a norm of the batch gradient, say) computes its
value and its direction from reduced quantities, so that every rank holds the one-process numbers of
the global batch. With one process every function here is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> int:
    """The number of processes training this run (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_over_ranks(tensors: list[Tensor]) -> list[Tensor]:
    """Each tensor's mean over the ranks (one all-reduce of their concatenation; not differentiable)."""
    n = world()
    if n == 1 or not tensors:
        return tensors
    flat = _all_reduce(torch.cat([t.detach().reshape(-1) for t in tensors])) / n
    parts = flat.split([t.numel() for t in tensors])
    return [part.view_as(t) for part, t in zip(parts, tensors, strict=True)]


def sum_over_ranks(value: Tensor) -> Tensor:
    """`value` summed over the ranks (not differentiable)."""
    return value if world() == 1 else _all_reduce(value.detach().clone())


def max_over_ranks(value: Tensor) -> Tensor:
    """The elementwise maximum of `value` over the ranks (not differentiable)."""
    return value if world() == 1 else _all_reduce(value.detach().clone(), dist.ReduceOp.MAX)


def _all_reduce(t: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    dist.all_reduce(t, op=op)
    return t
