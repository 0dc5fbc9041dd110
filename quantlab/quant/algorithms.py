"""PTQ algorithms as plug-ins of the sweep (quant.sweep.PTQSweep), each chosen by one `ptq.*` setting:

- a graph transform, applied once to the folded network before calibration:
  cross-layer equalization (`ptq.equalize`, quant.equalize);
- a weight-rounding rule, giving every conv / linear weight its integer codes for a variant:
  `nearest` (round-to-nearest on the min-max grid) or `adaround` (quant.adaround), `ptq.weight_rounding`;
- corrections of the built variant, in order: empirical bias correction (`ptq.bias_correction`),
  then the int32 accumulator bias (`ptq.bias=int32`, the variant's `int32_bias`).

A new algorithm is one class here (registered in ROUNDINGS, TRANSFORMS or CORRECTIONS) plus its
option in conf/ptq_setup/default.yaml. Each gets a `Build`: the sweep (its float network, settings and
calibration images) and the variant's network being built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from quantlab.quant.adaround import AdaRoundSettings, adaround_layer
from quantlab.quant.equalize import equalize
from quantlab.quant.layers import WEIGHT_LAYERS
from quantlab.quant.sites import ActQuant
from quantlab.quant.uniform import Codes, tensor_codes

if TYPE_CHECKING:
    from quantlab.quant.sweep import PTQSweep, Variant


@dataclass
class Build:
    """One variant's network as the sweep builds it."""

    sweep: PTQSweep
    model: GraphModule
    variant: Variant
    codes: dict[str, Codes] = field(default_factory=dict)

    def layers(self) -> list[tuple[str, nn.Module]]:
        """The conv / linear layers of the network, in graph order."""
        modules = dict(self.model.named_modules())
        return [
            (str(n.target), modules[str(n.target)])
            for n in self.model.graph.nodes
            if n.op == "call_module" and isinstance(modules[str(n.target)], WEIGHT_LAYERS)
        ]

    def nearest(self, name: str, layer: nn.Module) -> Codes:
        s = self.sweep.settings
        axis = 0 if s.weight_per_channel else None
        return tensor_codes(layer.weight.detach(), self.variant.weight_bits, s.weight_symmetric, axis)


@torch.no_grad()
def layer_inputs(model: nn.Module, name: str, images: Tensor, batch_size: int = 256) -> Tensor:
    """What layer `name` of `model` receives for `images` (its input, after the site quantizing it)."""
    layer = dict(model.named_modules())[name]
    seen: list[Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    try:
        for i in range(0, len(images), batch_size):
            model(images[i : i + batch_size])
    finally:
        handle.remove()
    return torch.cat(seen)


# -- weight rounding -------------------------------------------------------------------------------------


class Nearest:
    """Round-to-nearest on the weight's own min-max grid (quant.uniform.tensor_codes)."""

    needs_data = False

    @torch.no_grad()
    def round(self, build: Build) -> None:
        for name, layer in build.layers():
            build.codes[name] = build.nearest(name, layer)
            layer.weight.copy_(build.codes[name].dequantize())


class AdaRound:
    """AdaRound (quant.adaround), layer by layer in graph order on the sweep's calibration images;
    a 1-bit weight (sign × mean|w|, no rounding to learn) keeps the nearest codes."""

    needs_data = True

    def round(self, build: Build) -> None:
        settings = AdaRoundSettings.from_config(build.sweep.settings.adaround)
        images = build.sweep.images[: settings.samples]
        for index, (name, layer) in enumerate(build.layers()):
            nearest = build.nearest(name, layer)
            if build.variant.weight_bits == 1 or settings.iterations == 0:
                codes = nearest
            else:
                x_quant = layer_inputs(build.model, name, images)
                x_float = build.sweep.float_inputs(name, images)
                with torch.enable_grad():
                    codes, _ = adaround_layer(layer, nearest, x_quant, x_float, settings, seed=index)
            build.codes[name] = codes
            with torch.no_grad():
                layer.weight.copy_(codes.dequantize())


ROUNDINGS: dict[str, Any] = {"nearest": Nearest(), "adaround": AdaRound()}


# -- corrections -----------------------------------------------------------------------------------------


class BiasCorrection:
    """Empirical bias correction (Nagel et al. 2019, Sec. 4.2, the empirical form; Finkelstein et al.
    2019): layer by layer in graph order, the bias absorbs the mean shift of the layer's output that
    quantization causes on the calibration images, E[W x + b] − E[W̃ x̃ + b] per output channel (x̃:
    its input in the network being built, earlier layers already corrected), so that each layer's
    mean output equals the float network's."""

    setting = "bias_correction"
    needs_data = True

    @torch.no_grad()
    def apply(self, build: Build) -> None:
        images = build.sweep.images
        float_layers = dict(build.sweep.base.named_modules())
        for name, layer in build.layers():
            dims = [0, 2, 3] if isinstance(layer, nn.Conv2d) else [0]
            want = float_layers[name](build.sweep.float_inputs(name, images)).mean(dims)
            have = layer(layer_inputs(build.model, name, images)).mean(dims)
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros_like(want))
            layer.bias.add_(want - have)


class Int32Bias:
    """`ptq.bias=int32`: each bias on its accumulator grid s_x·s_w (round_biases_to_accumulator)."""

    setting = "bias"

    def apply(self, build: Build) -> None:
        round_biases_to_accumulator(build.model, build.codes)


@torch.no_grad()
def round_biases_to_accumulator(model: GraphModule, codes: dict[str, Codes]) -> list[str]:
    """`ptq.bias=int32`: every conv / linear bias whose layer reads an activation grid, rounded (half
    to even) to the accumulator grid s_x·s_w of its output channel, in place; returns those layers."""
    modules = dict(model.named_modules())
    rounded = []
    for node in model.graph.nodes:
        layer = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(layer, WEIGHT_LAYERS) or layer.bias is None or str(node.target) not in codes:
            continue
        source = node.args[0]
        quant = modules.get(str(source.target)) if isinstance(source, Node) else None
        if not isinstance(quant, ActQuant) or quant.grid is None:
            continue
        step = codes[str(node.target)].scale.to(layer.bias.dtype) * quant.grid[0]
        layer.bias.copy_(torch.round(layer.bias / step) * step)
        rounded.append(str(node.target))
    return rounded


def corrections(build: Build) -> list[Any]:
    """The corrections this variant gets, in order."""
    chosen: list[Any] = []
    if build.sweep.settings.bias_correction:
        chosen.append(BiasCorrection())
    if build.variant.int32_bias:
        chosen.append(Int32Bias())
    return chosen


# -- graph transforms ------------------------------------------------------------------------------------


class Equalize:
    """Cross-layer equalization (quant.equalize) of the folded network, before calibration."""

    setting = "equalize"

    def apply(self, model: GraphModule, folded: dict[str, nn.Module]) -> None:
        equalize(model, folded)


TRANSFORMS: list[Any] = [Equalize()]
