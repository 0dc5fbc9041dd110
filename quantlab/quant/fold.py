"""Batch-norm folding: y = BN(conv(x)) becomes one conv with scaled weights and a shifted bias.

For BN with running mean μ, variance σ², scale γ and shift β (γ = 1, β = 0 without learnable
parameters) after a conv or linear layer with weight W and bias b:
    W' = W · γ/√(σ² + ε)   (per output channel),    b' = (b − μ) · γ/√(σ² + ε) + β.
The pairs are found on the torch.fx graph (a BN whose only input is a conv/linear used nowhere
else); the result is a copy in eval mode whose outputs equal the original's (in eval mode).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.fx import GraphModule, symbolic_trace

from quantlab.quant.layers import WEIGHT_LAYERS

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold `bn` (eval statistics) into `layer` in place."""
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias if bn.affine else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    layer.weight.mul_(factor.reshape(-1, *([1] * (layer.weight.ndim - 1))))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + beta
    layer.bias = nn.Parameter(new_bias)


def fold_batch_norm(model: nn.Module) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A copy with every foldable BN folded into its producer; also returns {layer name: the BN folded}."""
    graph_module: GraphModule = symbolic_trace(copy.deepcopy(model).eval())
    modules = dict(graph_module.named_modules())
    folded: dict[str, nn.Module] = {}
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        producer = node.args[0]
        if (
            not isinstance(producer, torch.fx.Node)
            or producer.op != "call_module"
            or not isinstance(modules.get(producer.target), WEIGHT_LAYERS)
            or len(producer.users) != 1
        ):
            continue
        bn = modules[node.target]
        fold_into(modules[producer.target], bn)
        folded[producer.target] = copy.deepcopy(bn)
        node.replace_all_uses_with(producer)
        graph_module.graph.erase_node(node)
    graph_module.graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return graph_module.eval(), folded
