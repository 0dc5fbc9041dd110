"""The layers whose weights are quantized: conv and linear. Every module that needs them asks here."""

from __future__ import annotations

from torch import nn

#: The layer types that carry a quantized weight tensor (and, optionally, a float bias).
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def conv_linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module path, module) of every conv and linear layer, in model order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
