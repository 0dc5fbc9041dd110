"""Shared machinery of the weight-quantization methods (MD paper and its baselines).

- Which tensors are quantized (`Scope`): by default every learnable parameter of every conv and
  linear layer — first conv, last FC and biases included, the MD paper's fully quantized setting.
  Batch-norm parameters are never quantized: the quantized methods build models whose batch norm
  has no learnable parameters (`bn_affine: false` in their YAML, read by the model config), and
  with `method.bn_affine=true` they stay in float (Table 4's "BN float").
- `Projected`: a `torch.nn.utils.parametrize` module: the optimizer sees the auxiliary tensor, the
  layer sees its projection, optionally times a learnable per-layer scale (Table 4's "layerwise
  scaling").
- `WeightQuantizer`: the Method base that anneals β (`schedule.beta`, logged as `method/beta`),
  prepares the targets and exports a copy whose quantized tensors hold only values of Q.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from quantlab.errors import ConfigError
from quantlab.methods.base import QUANTIZED, Method
from quantlab.quant.layers import conv_linear_layers
from quantlab.schedules import Constant, Schedule

BINARY = (-1.0, 1.0)
TERNARY = (-1.0, 0.0, 1.0)
LEVEL_NAMES = {BINARY: "binary", TERNARY: "ternary"}


@dataclass
class Scope:
    """Which tensors are quantized (MD paper Table 4 ablation)."""

    first: bool = True  # the first conv (or linear) layer
    last: bool = True  # the last linear layer
    fc: bool = True  # every fully connected (linear) layer, the last one included
    bias: bool = True  # biases of conv and linear layers
    shortcut: bool = True  # ResNet downsample (shortcut) convs
    layerwise_scale: bool = False  # a learnable float scale per quantized tensor


def quantized_layers(model: nn.Module, scope: Scope) -> Iterator[tuple[str, str]]:
    """(module path, parameter name) of every tensor to quantize, in model order."""
    layers = conv_linear_layers(model)
    if not layers:
        return
    first = layers[0][0]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else layers[-1][0]
    for path, module in layers:
        if (not scope.first and path == first) or (not scope.last and path == last):
            continue
        if not scope.fc and isinstance(module, nn.Linear):
            continue
        if not scope.shortcut and ("downsample" in path or "shortcut" in path):
            continue
        yield path, "weight"
        if module.bias is not None and scope.bias:
            yield path, "bias"


def weight_layers(model: nn.Module, scope: Scope) -> list[str]:
    """Module paths of the conv / linear layers in `scope` (their weights; biases aside)."""
    return [path for path, name in quantized_layers(model, scope) if name == "weight"]


def plain_copy(model: nn.Module, weights: dict[str, Tensor]) -> nn.Module:
    """A deep copy in which each module path of `weights` is unparametrized to hold that weight."""
    exported = copy.deepcopy(model)
    for path, value in weights.items():
        unparametrize(exported.get_submodule(path), {"weight": value})
    return exported


class BetaRef:
    """The current β, shared by every projection of a model: `value` (a float, for logs, checkpoints
    and the optimizer) and `tensor`, a 0-d float32 tensor on the model's device that the
    projections read. Setting `value` updates `tensor` in place, so that a torch.compile'd forward
    reads the new β without recompiling (a float would be a constant of the graph)."""

    def __init__(self, value: float) -> None:
        self.tensor = torch.tensor(float(value), dtype=torch.float32)
        self._value = float(value)

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, new: float) -> None:
        self._value = float(new)
        with torch.no_grad():
            self.tensor.fill_(self._value)

    def to(self, device: torch.device) -> None:
        self.tensor = self.tensor.to(device)


class Projected(nn.Module):
    """Parametrization: layer tensor = scale · project(aux, β); `to_aux` maps an initial tensor to aux."""

    def __init__(
        self,
        project: Callable[[Tensor, float], Tensor],
        beta: BetaRef,
        to_aux: Callable[[Tensor], Tensor] | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.project, self.beta, self.to_aux = project, beta, to_aux
        self.scale = nn.Parameter(torch.tensor(float(scale))) if scale is not None else None

    def forward(self, aux: Tensor) -> Tensor:
        # in float32 under autocast too: tanh(β w̃) and softmax(β ũ)·q with β up to 1e4 and beyond
        # would lose the levels' exactness in bfloat16 / float16 (matmul autocasts)
        with torch.autocast(aux.device.type, enabled=False):
            w = self.project(aux.float(), self.beta.tensor)
        return w * self.scale if self.scale is not None else w

    def right_inverse(self, w: Tensor) -> Tensor:
        return self.to_aux(w) if self.to_aux is not None else w


def _identity(x: Tensor, beta: float | Tensor) -> Tensor:
    return x


def unparametrize(module: nn.Module, values: dict[str, Tensor]) -> None:
    """Turn a parametrized module back into its plain class holding `values`.

    `parametrize.remove_parametrizations` edits the module's class, which a deepcopy shares with
    the original model; switching the copy's class back leaves the original untouched.
    """
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for name, value in values.items():
        module._parameters[name] = nn.Parameter(value.detach().clone(), requires_grad=False)


def init_md(tensor: Tensor, gain: float = 1.0) -> None:
    """The public MD code's initialization: xavier_uniform for ≥ 2-D tensors, normal(0, 0.1) for 1-D,
    times `gain` (1 in the paper)."""
    with torch.no_grad():
        if tensor.ndim >= 2:
            nn.init.xavier_uniform_(tensor, gain=gain)
        else:
            nn.init.normal_(tensor, 0.0, 0.1 * gain)


class WeightQuantizer(Method):
    """Base of the methods that train weights towards the levels Q of `bitwidth.levels`.

    Subclasses set `supported` (the level sets they implement) and define `attach` (reparametrize
    one tensor) and `hard` (its exported value on Q, from the auxiliary tensor).
    """

    traits = QUANTIZED  # binary weights lie on the 1-bit grid (sign · scale), ternary on the 2-bit
    # symmetric grid {−1, 0, 1} · scale; activations stay in float (set per instance below)
    supported: Sequence[tuple[float, ...]] = (BINARY, TERNARY)
    name = "weight quantizer"

    def __init__(
        self,
        bitwidth: Any,
        *,
        beta: Schedule | None,
        scope: dict | None,
        init: str,
        init_gain: float,
        bn_affine: bool,
    ) -> None:
        levels = bitwidth.get("levels") if hasattr(bitwidth, "get") else None
        name = bitwidth.get("name", "?") if hasattr(bitwidth, "get") else "?"
        if levels is None or tuple(float(q) for q in levels) not in {tuple(s) for s in self.supported}:
            allowed = " or ".join(LEVEL_NAMES.get(tuple(s), str(list(s))) for s in self.supported)
            raise ConfigError(f"bitwidth={name}: method={self.name} supports bitwidth={allowed} only")
        if init not in ("xavier", "keep"):
            raise ConfigError(
                f"method.init={init!r}: must be xavier (the MD code's) or keep (e.g. for fine-tuning)"
            )
        self.levels_tuple = tuple(float(q) for q in levels)
        self.levels = torch.tensor(self.levels_tuple)
        self.beta_schedule = beta if beta is not None else Constant(1.0)
        self.beta = BetaRef(self.beta_schedule(0, 0))
        self.scope = Scope(**(dict(scope) if scope else {}))
        self.init, self.init_gain, self.bn_affine = init, float(init_gain), bn_affine
        self.targets: list[tuple[str, str]] = []
        self.traits = replace(QUANTIZED, trained_bits=(2 if self.ternary else 1, None))

    @property
    def ternary(self) -> bool:
        return len(self.levels_tuple) == 3

    # -- protocol ------------------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        self.targets = list(quantized_layers(model, self.scope))
        if not self.targets:
            raise ConfigError("method.scope: no conv or linear tensor is left to quantize")
        self.levels = self.levels.to(next(model.parameters()).device)
        self.beta.to(self.levels.device)
        for path, name in self.targets:
            module = model.get_submodule(path)
            if self.init == "xavier":
                init_md(getattr(module, name), self.init_gain)
            self.attach(module, name)
        return model

    def on_step(self, model: nn.Module, step: int, epoch: int) -> dict[str, float]:
        """β for the next step: β_k = schedule(k, epoch) (MD: β ← ρβ every interval iterations)."""
        self.beta.value = self.beta_schedule(step + 1, epoch)
        return {"beta": self.beta.value}

    def export(self, model: nn.Module) -> nn.Module:
        """A plain copy (no parametrizations) whose quantized tensors hold their hard values on Q
        (times the layer scale where layerwise scaling is on)."""
        with torch.no_grad():
            hard = {}
            for path, name in self.targets:
                module = model.get_submodule(path)
                value = self.hard(self.aux(module, name)).to(self.aux(module, name).dtype)
                scale = self.layer_scale(module, name)
                hard[path, name] = value * scale if scale is not None else value
            exported = copy.deepcopy(model)
            for path, module in list(exported.named_modules()):
                if parametrize.is_parametrized(module):
                    source = model.get_submodule(path)
                    names = list(module.parametrizations.keys())
                    unparametrize(module, {n: hard.get((path, n), getattr(source, n)) for n in names})
            for (path, name), value in hard.items():
                exported.get_submodule(path)._parameters[name] = nn.Parameter(
                    value.clone(), requires_grad=False
                )
        return exported

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta.value = float(state["beta"])

    # -- helpers for subclasses ------------------------------------------------------------------------

    def attach(self, module: nn.Module, name: str) -> None:
        raise NotImplementedError  # abstract: every concrete method defines it

    def hard(self, aux: Tensor) -> Tensor:
        raise NotImplementedError  # abstract: every concrete method defines it

    def parametrize(
        self, module: nn.Module, name: str, project: Callable, to_aux: Callable | None = None
    ) -> None:
        scale = 1.0 if self.scope.layerwise_scale else None
        parametrize.register_parametrization(
            module, name, Projected(project, self.beta, to_aux, scale), unsafe=to_aux is not None
        )

    def attach_scale_only(self, module: nn.Module, name: str) -> None:
        """For methods that update the layer tensor itself: only the optional layerwise scale."""
        if self.scope.layerwise_scale:
            self.parametrize(module, name, _identity)

    @staticmethod
    def aux(module: nn.Module, name: str) -> Tensor:
        """The tensor the optimizer updates (the parametrization's original, or the parameter)."""
        if parametrize.is_parametrized(module, name):
            return module.parametrizations[name].original
        return getattr(module, name)

    @staticmethod
    def layer_scale(module: nn.Module, name: str) -> Tensor | None:
        if parametrize.is_parametrized(module, name):
            return module.parametrizations[name][0].scale
        return None

    def aux_tensors(self, model: nn.Module) -> list[Tensor]:
        return [self.aux(model.get_submodule(p), n) for p, n in self.targets]
