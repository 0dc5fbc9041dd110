"""The operators quantlab's PTQ and ONNX export know: one entry per module type, function or Tensor
method, holding what each part needs of it (Brevitas keeps its export handlers the same way).

- `range`: how the operator acts on the range of the tensor it reads, for the PTQ sites
  (quant.sites walks back from a site to the batch norm that bounds it): "pass" keeps the range
  (pooling, flatten, view, dropout, identity), "clamp" clips it to `clamp` (ReLU, ReLU6), "other"
  ends the walk (the site gets a range from calibration data).
- `homogeneous`: f(s·x) = s·f(x) for a positive scale per channel (ReLU, pooling, dropout, identity),
  so that cross-layer equalization (quant.equalize) may rescale channels through it.
- `onnx`: its ONNX writer, `onnx(writer, node, module) -> output name`, on quant.onnx_graph's
  GraphWriter (None: no ONNX form; the export refuses it in one line, naming it).

A new operator is one `register(...)` call here.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

if TYPE_CHECKING:
    from quantlab.quant.onnx_graph import GraphWriter

Writer = Callable[["GraphWriter", Node, Any], str]
Range = tuple[float, float]


@dataclass(frozen=True)
class Operator:
    name: str
    range: str = "other"  # pass | clamp | other
    clamp: Range | None = None
    onnx: Writer | None = None
    homogeneous: bool = False


MODULES: dict[type, Operator] = {}
FUNCTIONS: dict[Any, Operator] = {}
METHODS: dict[str, Operator] = {}


def register(
    *keys: Any,
    range: str = "other",
    clamp: Range | None = None,
    onnx: Writer | None = None,
    homogeneous: bool = False,
) -> None:
    """One entry for each key: a module class, a function, or a Tensor method's name."""
    for key in keys:
        if isinstance(key, str):
            METHODS[key] = Operator(f"Tensor.{key}", range, clamp, onnx, homogeneous)
        elif isinstance(key, type):
            MODULES[key] = Operator(key.__name__, range, clamp, onnx, homogeneous)
        else:
            FUNCTIONS[key] = Operator(getattr(key, "__name__", str(key)), range, clamp, onnx, homogeneous)


def operator_of(node: Node, modules: dict[str, nn.Module]) -> Operator | None:
    """The entry of an fx node's operator (a module's class or one of its bases), or None."""
    if node.op == "call_module":
        for cls in type(modules[str(node.target)]).__mro__:
            if cls in MODULES:
                return MODULES[cls]
        return None
    if node.op == "call_function":
        return FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return METHODS.get(str(node.target))
    return None


# -- writers ------------------------------------------------------------------------------------------


def _x(w: GraphWriter, node: Node) -> str:
    return w.source(node.args[0])


def _relu(w: GraphWriter, node: Node, _: Any) -> str:
    return w.node("Relu", [_x(w, node)], "relu")


def _identity(w: GraphWriter, node: Node, _: Any) -> str:
    return _x(w, node)


def _flatten_module(w: GraphWriter, node: Node, module: nn.Flatten) -> str:
    if module.start_dim != 1 or module.end_dim != -1:
        from quantlab.quant.onnx_graph import NotExportable

        raise NotExportable(f"{node.target}: Flatten(start_dim={module.start_dim}, end_dim={module.end_dim})")
    return w.node("Flatten", [_x(w, node)], "flatten", axis=1)


def _flatten_call(w: GraphWriter, node: Node, _: Any) -> str:
    return w.flatten(node, node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0))


def _add(w: GraphWriter, node: Node, _: Any) -> str:
    return w.node("Add", [w.source(node.args[0]), w.source(node.args[1])], "add")


def _adaptive(maximum: bool) -> Writer:
    def write(w: GraphWriter, node: Node, module: Any) -> str:
        size = module.output_size if module is not None else node.args[1]
        return w.adaptive_pool(node, _x(w, node), size, maximum)

    return write


register(nn.Conv2d, onnx=lambda w, node, m: w.conv(_x(w, node), str(node.target), m))
register(nn.Linear, onnx=lambda w, node, m: w.linear(_x(w, node), str(node.target), m))
register(nn.BatchNorm1d, nn.BatchNorm2d, onnx=lambda w, node, m: w.batch_norm(_x(w, node), m))
register(nn.ReLU, range="clamp", clamp=(0.0, math.inf), onnx=_relu, homogeneous=True)
register(torch.relu, F.relu, "relu", range="clamp", clamp=(0.0, math.inf), onnx=_relu, homogeneous=True)
register(nn.ReLU6, range="clamp", clamp=(0.0, 6.0), onnx=lambda w, node, m: w.clip(_x(w, node), 0.0, 6.0))
register(
    nn.Hardtanh, onnx=lambda w, node, m: w.clip(_x(w, node), float(m.min_val), float(m.max_val))
)  # ReLU6 is a Hardtanh: its own entry (a clamp) comes first in its class's MRO
register(
    nn.LeakyReLU,
    onnx=lambda w, node, m: w.node("LeakyRelu", [_x(w, node)], "leaky_relu", alpha=float(m.negative_slope)),
)
register(
    nn.MaxPool2d, nn.AvgPool2d, range="pass", onnx=lambda w, node, m: w.pool(_x(w, node), m), homogeneous=True
)
register(nn.AdaptiveAvgPool2d, range="pass", onnx=_adaptive(False), homogeneous=True)
register(
    nn.AdaptiveMaxPool2d, onnx=_adaptive(True), homogeneous=True
)  # a max of a range: kept, but not walked
register(F.adaptive_avg_pool2d, range="pass", onnx=_adaptive(False), homogeneous=True)
register(nn.Flatten, range="pass", onnx=_flatten_module)
register(torch.flatten, "flatten", range="pass", onnx=_flatten_call)
register(nn.Dropout, nn.Identity, "contiguous", range="pass", onnx=_identity, homogeneous=True)
register(operator.add, torch.add, onnx=_add)
# range-preserving operators the export has no form for (the PTQ sites still walk through them)
register(torch.reshape, "view", "reshape", range="pass")
register(F.max_pool2d, F.avg_pool2d, F.dropout, range="pass", homogeneous=True)
