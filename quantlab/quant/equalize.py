"""Cross-layer equalization (CLE; data-free quantization, Nagel et al. 2019, Sec. 4.1), `ptq.equalize`.

Two layers in a row, the first's output reaching only the second through operators that commute
with a positive per-channel scale (ReLU, pooling, dropout, identity: `homogeneous` in
quant.operators), compute the same function when output channel i of the first is divided by s_i
and input channel i of the second multiplied by it: f(W₂·relu(W₁x + b₁)) = f(W₂S·relu(S⁻¹(W₁x + b₁))).
With r₁ᵢ the range of the first layer's output channel i (max |W₁[i]|) and r₂ᵢ that of the second's
input channel i (max |W₂[:, i]|), sᵢ = √(r₁ᵢ·r₂ᵢ) / r₂ᵢ makes both ranges √(r₁ᵢ·r₂ᵢ): equal, so that
per-tensor weight quantization wastes no grid on one channel's outliers. A layer is in up to two
pairs (a depthwise conv between two pointwise ones: the MobileNetV2 block, the case CLE exists for),
so the pairs are equalized in turn until no scale moves by more than `tolerance` (the paper's
iteration). It runs on the network the PTQ sweep evaluates, after batch norm is folded (DFQ's
order); a folded batch norm that bounds the first layer's output (the sites' ranges) is scaled with it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from quantlab.quant.operators import operator_of


def _depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups == layer.in_channels == layer.out_channels > 1


def _plain(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)


def equalization_pairs(model: GraphModule) -> list[tuple[str, str]]:
    """(first, second) layer names CLE can rescale (see the module docstring), in graph order."""
    modules = dict(model.named_modules())
    pairs = []
    for node in model.graph.nodes:
        first = modules.get(str(node.target)) if node.op == "call_module" else None
        if not (first is not None and (_plain(first) or _depthwise(first))):
            continue
        current: Node = node
        while len(current.users) == 1:
            (user,) = current.users
            module = modules.get(str(user.target)) if user.op == "call_module" else None
            if module is not None and (_plain(module) or _depthwise(module)):
                if isinstance(first, nn.Conv2d) == isinstance(module, nn.Conv2d):
                    channels = first.out_channels if isinstance(first, nn.Conv2d) else first.out_features
                    into = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
                    if channels == into:
                        pairs.append((str(node.target), str(user.target)))
                break
            entry = operator_of(user, modules)
            if entry is None or not entry.homogeneous or user.args[0] is not current:
                break
            current = user
    return pairs


def _output_range(layer: nn.Module) -> Tensor:
    w = layer.weight.detach()
    return w.abs().reshape(w.shape[0], -1).amax(1)


def _input_range(layer: nn.Module) -> Tensor:
    w = layer.weight.detach()
    if _depthwise(layer):
        return w.abs().reshape(w.shape[0], -1).amax(1)
    return w.abs().transpose(0, 1).reshape(w.shape[1], -1).amax(1)


@torch.no_grad()
def _rescale(first: nn.Module, second: nn.Module, s: Tensor, bn: nn.Module | None) -> None:
    """Output channel i of `first` ÷ sᵢ (and its bias, and the batch norm bounding it), input channel
    i of `second` × sᵢ."""
    shape = (-1, *([1] * (first.weight.ndim - 1)))
    first.weight.div_(s.reshape(shape))
    if first.bias is not None:
        first.bias.div_(s)
    if _depthwise(second):
        second.weight.mul_(s.reshape(-1, *([1] * (second.weight.ndim - 1))))
    else:
        second.weight.mul_(s.reshape(1, -1, *([1] * (second.weight.ndim - 2))))
    if bn is not None:
        if not bn.affine:  # the range β ± n·|γ| of a batch norm without parameters: γ = 1, β = 0
            bn.affine = True
            bn.weight = nn.Parameter(torch.ones_like(bn.running_mean))
            bn.bias = nn.Parameter(torch.zeros_like(bn.running_mean))
        bn.weight.div_(s)
        bn.bias.div_(s)


def equalize(
    model: GraphModule, folded: dict[str, nn.Module], iterations: int = 20, tolerance: float = 1e-6
) -> list[tuple[str, str]]:
    """Equalize every pair of `model` in place (its function unchanged up to float rounding); the
    folded batch norms (`folded`: layer name → the batch norm folded into it) follow their layer.
    Returns the pairs."""
    modules = dict(model.named_modules())
    pairs = equalization_pairs(model)
    for _ in range(iterations):
        moved = 0.0
        for a, b in pairs:
            first, second = modules[a], modules[b]
            r1, r2 = _output_range(first), _input_range(second)
            s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 * r2) / r2, torch.ones_like(r1))
            _rescale(first, second, s, folded.get(a))
            moved = max(moved, float((s - 1).abs().max()))
        if moved < tolerance:
            break
    return pairs
