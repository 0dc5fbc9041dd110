"""A PTQ variant as a standard ONNX graph: QuantizeLinear / DequantizeLinear at the sweep's sites.

The input is what the PTQ sweep evaluates for one (weight bits, activation bits) variant
(quant.sweep.PTQSweep.build): a torch.fx GraphModule with batch norm folded (or kept), an `ActQuant`
at every activation site holding its grid, and its conv / linear weights on their grids, together
with those weights' integer codes (quant.uniform.Codes). The output is an opset-21 ONNX model that
computes the same function with the integer tensors ONNX runtimes quantize to:

- a conv / linear weight is an integer initializer → DequantizeLinear (per output channel: axis 0)
  → Conv / Gemm; its bias stays float (added in the 32-bit accumulator, as the sweep does);
- an activation site is QuantizeLinear → DequantizeLinear with the site's scale and zero point,
  preceded by a Clip to the grid where the grid is narrower than the integer type (a 6-bit grid
  carried in int8, the narrow symmetric [−127, 127] in int8's [−128, 127]); a 1-bit signed grid
  {−s, s} is Where(x ≥ 0, s, −s) carried in int4 as ±1;
- the integer type is the narrowest ONNX has for the grid (`storage_type`): weights of ≤ 4 bits
  in int4 / uint4 (a weight's DequantizeLinear runs in onnxruntime's CPU provider), 5 to 8 bits in
  int8 / uint8, up to 16 in int16 / uint16; activations of ≤ 8 bits in int8 / uint8 carrying the
  narrower grid (onnxruntime's QDQ propagation moves an int4 Q/DQ pair across MaxPool, which has no
  int4 kernel: the session fails to load), up to 16 in int16 / uint16. Binary and ternary weights
  (every channel within {−a, 0, a}) are stored as {−1, 0, 1} with the scale a (`exact_levels`);
- batch norm the sweep kept is BatchNormalization (inference); ReLU, ReLU6 / Hardtanh (Clip),
  pooling, flatten, dropout / identity and residual additions map to their ONNX operators, each by
  its entry in quant.operators. Any other operator raises NotExportable, naming it.

QuantizeLinear rounds half to even, as torch.round does, and the Clip bounds are the grid's end
points (q_min·s, q_max·s), so the graph evaluates the fake-quantized network of the sweep.
`onnx` is imported when a graph is built: it is the optional `export` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from quantlab.errors import ConfigError
from quantlab.quant.operators import operator_of
from quantlab.quant.sites import ActQuant
from quantlab.quant.uniform import Codes

OPSET = 21  # int4 / uint4 / int16 QuantizeLinear and DequantizeLinear
#: (name, ONNX TensorProto data type, smallest, largest) from the narrowest
INTEGER_TYPES = (
    ("uint4", 21, 0, 15),
    ("int4", 22, -8, 7),
    ("uint8", 2, 0, 255),
    ("int8", 3, -128, 127),
    ("uint16", 4, 0, 65535),
    ("int16", 5, -32768, 32767),
)


NUMPY_TYPES = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16}


class NotExportable(ConfigError):
    """The network has an operator (or a setting of one) the ONNX export does not write."""


@dataclass(frozen=True)
class IntegerType:
    name: str
    onnx_type: int
    low: int
    high: int

    def holds(self, q_min: int, q_max: int) -> bool:
        return self.low <= q_min and q_max <= self.high

    def exact(self, q_min: int, q_max: int) -> bool:
        """The grid is the type's whole range: QuantizeLinear's saturation is the grid's clamp."""
        return (self.low, self.high) == (q_min, q_max)


def storage_type(q_min: int, q_max: int, four_bit: bool = True) -> IntegerType:
    """The narrowest ONNX integer type holding the grid [q_min, q_max]; `four_bit` false: at least 8
    bits (activations: onnxruntime 1.2x moves Q/DQ pairs across MaxPool, which has no int4 kernel)."""
    for kind in (IntegerType(*row) for row in INTEGER_TYPES):
        if (four_bit or kind.high > 15) and kind.holds(q_min, q_max):
            return kind
    raise NotExportable(f"an integer grid [{q_min}, {q_max}] wider than 16 bits")


def exact_levels(codes: Codes) -> Codes:
    """Binary / ternary weights on a wider grid (every channel's codes within {−m, 0, m}, zero
    point 0) as {−1, 0, 1} with the scale s·m: the same values, (±1)·(s·m) = (±m)·s in float32."""
    if codes.q_max - codes.q_min <= 2 or bool((codes.zero_point != 0).any()):
        return codes
    magnitude, axis = codes.q.abs(), codes.axis
    if axis is None:
        m = magnitude.amax()
        shaped = m
    else:
        m = magnitude.transpose(0, axis).reshape(magnitude.shape[axis], -1).amax(dim=1)
        shaped = m.reshape([-1 if d == axis else 1 for d in range(codes.q.ndim)])
    if not bool(((magnitude == 0) | (magnitude == shaped)).all()):
        return codes
    m, shaped = m.clamp_min(1.0), shaped.clamp_min(1.0)  # an all-zero channel keeps its scale
    return Codes(codes.q / shaped, codes.scale * m, codes.zero_point, -1, 1, axis)


class GraphWriter:
    """Writes the ONNX nodes of one fx graph, node by node (see the module docstring)."""

    def __init__(self, model: GraphModule, weights: dict[str, Codes]) -> None:
        from onnx import helper

        self.helper = helper
        self.model = model
        self.modules = dict(model.named_modules())
        self.weights = weights
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.names: dict[Node, str] = {}
        self.sites: list[dict[str, Any]] = []
        self.layers: list[dict[str, Any]] = []
        self.counter = 0

    # -- small helpers ---------------------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}_{self.counter}"

    def constant(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def integer(self, hint: str, values: np.ndarray, kind: IntegerType) -> str:
        """An integer initializer: raw bytes for 8 and 16 bits, two values per byte for 4 bits."""
        from onnx import numpy_helper

        name = self.fresh(hint)
        values = np.asarray(values).astype(np.int64)
        if kind.name in NUMPY_TYPES:
            self.initializers.append(numpy_helper.from_array(values.astype(NUMPY_TYPES[kind.name]), name))
        else:  # int4 / uint4: two per byte, the first in the low nibble (the ONNX layout)
            nibbles = (values.reshape(-1) & 0xF).astype(np.uint8)
            if len(nibbles) % 2:
                nibbles = np.append(nibbles, np.uint8(0))
            packed = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()
            shape = list(values.shape)
            self.initializers.append(self.helper.make_tensor(name, kind.onnx_type, shape, packed, raw=True))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attributes: Any) -> str:
        out = self.fresh(hint)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attributes))
        return out

    def source(self, arg: Any) -> str:
        if not isinstance(arg, Node):
            raise NotExportable(f"a constant operand {arg!r} where a tensor was expected")
        return self.names[arg]

    # -- the graph ------------------------------------------------------------------------------------

    def write(self, input_shape: list[int]) -> Any:
        from onnx import TensorProto

        helper = self.helper
        inputs, outputs = [], []
        for node in self.model.graph.nodes:
            if node.op == "placeholder":
                self.names[node] = "input"
                shape = ["batch", *input_shape[1:]]
                inputs.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, shape))
            elif node.op == "output":
                result = node.args[0]
                self.nodes.append(
                    helper.make_node("Identity", [self.source(result)], ["logits"], name="logits")
                )
                outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None]))
            elif node.op == "call_module":
                self.names[node] = self.module(node, self.modules[str(node.target)])
            elif node.op in ("call_function", "call_method"):
                self.names[node] = self.operator(node)
            else:
                raise NotExportable(f"graph node {node.op} {node.target}")
        graph = helper.make_graph(self.nodes, "quantlab", inputs, outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="quantlab"
        )
        model.ir_version = 10
        return model

    # -- modules --------------------------------------------------------------------------------------

    def module(self, node: Node, module: nn.Module) -> str:
        if isinstance(module, ActQuant):  # quantlab's own quantizer, not a network operator
            return self.activation_site(self.source(node.args[0]), str(node.target), module)
        return self.operator(node, module)

    def operator(self, node: Node, module: nn.Module | None = None) -> str:
        """The ONNX nodes of a network operator, by its entry in quant.operators."""
        entry = operator_of(node, self.modules)
        if entry is None or entry.onnx is None:
            raise NotExportable(f"{_named(node, self.modules)} has no ONNX export in quantlab")
        return entry.onnx(self, node, module)

    def activation_site(self, x: str, name: str, module: ActQuant) -> str:
        if module.grid is None:  # activations in float at this pair
            return x
        scale, zero_point, q_min, q_max = module.grid
        scale32 = np.float32(scale)
        if (q_min, q_max) == (-1, 0):  # 1-bit signed: sign(x)·s, carried as ±1
            positive = self.node(
                "GreaterOrEqual", [x, self.constant("zero", np.array(0.0, np.float32))], "sign"
            )
            levels = [self.constant("plus", np.array(scale32)), self.constant("minus", np.array(-scale32))]
            x = self.node("Where", [positive, *levels], "binary")
            q_min, q_max = -1, 1
        kind = storage_type(q_min, q_max, four_bit=False)
        if not kind.exact(q_min, q_max):
            x = self.clip(x, float(np.float32(q_min) * scale32), float(np.float32(q_max) * scale32))
        s = self.constant(f"{name}_scale", np.array(scale32))
        z = self.integer(f"{name}_zero_point", np.array(zero_point), kind)
        q = self.node("QuantizeLinear", [x, s, z], f"{name}_q")
        self.sites.append(
            {
                "site": name,
                "type": kind.name,
                "scale": float(scale32),
                "zero_point": int(zero_point),
                "grid": [int(q_min), int(q_max)],
                "range": [
                    float(np.float32(q_min - zero_point) * scale32),
                    float(np.float32(q_max - zero_point) * scale32),
                ],
            }
        )
        return self.node("DequantizeLinear", [q, s, z], f"{name}_dq")

    def weight(self, name: str, module: nn.Module) -> str:
        codes = self.weights.get(name)
        if codes is None:
            return self.constant(f"{name}_weight", module.weight.detach().float().cpu().numpy())
        codes = exact_levels(codes)
        kind = storage_type(codes.q_min, codes.q_max)
        q = codes.q.detach().cpu().numpy()
        scale = codes.scale.detach().float().cpu().numpy().astype(np.float32)
        zero_point = codes.zero_point.detach().cpu().numpy()
        axis = {} if codes.axis is None else {"axis": codes.axis}
        inputs = [self.integer(f"{name}_weight_q", q, kind), self.constant(f"{name}_weight_scale", scale)]
        inputs.append(self.integer(f"{name}_weight_zero_point", zero_point, kind))
        per_channel = codes.q.reshape(codes.q.shape[0], -1) if codes.axis == 0 else codes.q.reshape(1, -1)
        levels = max(len(torch.unique(row)) for row in per_channel)
        self.layers.append(
            {
                "layer": name,
                "type": kind.name,
                "grid": [codes.q_min, codes.q_max],
                "per_channel": codes.axis is not None,
                "levels_per_channel": int(levels),
            }
        )
        return self.node("DequantizeLinear", inputs, f"{name}_weight", **axis)

    def bias(self, name: str, module: nn.Module) -> list[str]:
        if module.bias is None:
            return []
        return [self.constant(f"{name}_bias", module.bias.detach().float().cpu().numpy())]

    def conv(self, x: str, name: str, conv: nn.Conv2d) -> str:
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise NotExportable(
                f"{name}: Conv2d with padding={conv.padding!r}, padding_mode={conv.padding_mode}"
            )
        ph, pw = conv.padding
        attributes = {
            "kernel_shape": list(conv.kernel_size),
            "strides": list(conv.stride),
            "pads": [ph, pw, ph, pw],
            "dilations": list(conv.dilation),
            "group": conv.groups,
        }
        return self.node("Conv", [x, self.weight(name, conv), *self.bias(name, conv)], name, **attributes)

    def linear(self, x: str, name: str, linear: nn.Linear) -> str:
        return self.node("Gemm", [x, self.weight(name, linear), *self.bias(name, linear)], name, transB=1)

    def batch_norm(self, x: str, bn: nn.Module) -> str:
        n = bn.num_features
        gamma = bn.weight if bn.affine else torch.ones(n)
        beta = bn.bias if bn.affine else torch.zeros(n)
        tensors = [gamma, beta, bn.running_mean, bn.running_var]
        names = [self.constant("bn", t.detach().float().cpu().numpy()) for t in tensors]
        return self.node("BatchNormalization", [x, *names], "batch_norm", epsilon=float(bn.eps))

    def clip(self, x: str, low: float, high: float) -> str:
        bounds = [
            self.constant("clip_min", np.array(low, np.float32)),
            self.constant("clip_max", np.array(high, np.float32)),
        ]
        return self.node("Clip", [x, *bounds], "clip")

    def pool(self, x: str, pool: nn.Module) -> str:
        pair = _pair
        kernel, padding = pair(pool.kernel_size), pair(pool.padding)
        stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
        attributes = {
            "kernel_shape": list(kernel),
            "strides": list(stride),
            "pads": [padding[0], padding[1], padding[0], padding[1]],
            "ceil_mode": int(pool.ceil_mode),
        }
        if isinstance(pool, nn.MaxPool2d):
            attributes["dilations"] = list(pair(pool.dilation))
            return self.node("MaxPool", [x], "max_pool", **attributes)
        if pool.divisor_override is not None:
            raise NotExportable("AvgPool2d with divisor_override")
        return self.node(
            "AveragePool", [x], "avg_pool", count_include_pad=int(pool.count_include_pad), **attributes
        )

    def adaptive_pool(self, node: Node, x: str, output_size: Any, maximum: bool) -> str:
        """torch's adaptive pooling: output cell i pools input rows [⌊i·H/O⌋, ⌈(i+1)·H/O⌉) (and so
        for columns). A global pool for a 1×1 output, one MaxPool / AveragePool where H and W are
        multiples of the output size, else one reduction per cell (Slice → ReduceMax / ReduceMean)
        joined by Concat. The input size comes from the shapes propagated on the example input."""
        out = _pair(output_size)
        if out == (1, 1):
            return self.node("GlobalMaxPool" if maximum else "GlobalAveragePool", [x], "global_pool")
        size = tuple(input_shape(node)[-2:])
        out = tuple(s if o is None else o for s, o in zip(size, out, strict=True))
        if all(s % o == 0 for s, o in zip(size, out, strict=True)):
            kernel = [s // o for s, o in zip(size, out, strict=True)]
            attributes = {"kernel_shape": kernel, "strides": kernel}
            return self.node("MaxPool" if maximum else "AveragePool", [x], "adaptive_pool", **attributes)
        reduce = "ReduceMax" if maximum else "ReduceMean"
        axes = self.constant("axes", np.array([2, 3], np.int64))
        rows = []
        for i in range(out[0]):
            cells = []
            for j in range(out[1]):
                (r0, r1), (c0, c1) = _window(i, size[0], out[0]), _window(j, size[1], out[1])
                bounds = [self.constant("starts", np.array([r0, c0], np.int64))]
                bounds.append(self.constant("ends", np.array([r1, c1], np.int64)))
                window = self.node("Slice", [x, *bounds, axes], "window")
                cells.append(self.node(reduce, [window, axes], "cell", keepdims=1))
            rows.append(self.node("Concat", cells, "row", axis=3))
        return self.node("Concat", rows, "adaptive_pool", axis=2)

    def flatten(self, node: Node, start_dim: Any) -> str:
        end_dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        if start_dim != 1 or end_dim != -1:
            raise NotExportable(f"flatten(start_dim={start_dim}, end_dim={end_dim})")
        return self.node("Flatten", [self.source(node.args[0])], "flatten", axis=1)


def _pair(value: Any) -> tuple[Any, Any]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)  # type: ignore[return-value]


def _window(i: int, size: int, out: int) -> tuple[int, int]:
    """torch's adaptive pooling window of output cell i: [⌊i·size/out⌋, ⌈(i+1)·size/out⌉)."""
    return (i * size) // out, -((-(i + 1) * size) // out)


def input_shape(node: Node) -> list[int]:
    """The shape of a node's first input, from torch.fx's ShapeProp on the example input."""
    source = node.args[0]
    meta = source.meta.get("tensor_meta") if isinstance(source, Node) else None
    if meta is None:
        raise NotExportable(f"{node.target}: the input shape is unknown")
    return list(meta.shape)


@dataclass
class OnnxExport:
    """The ONNX model and what was written where: activation sites and weight layers."""

    model: Any  # onnx.ModelProto
    sites: list[dict[str, Any]]
    layers: list[dict[str, Any]]


def to_onnx(model: GraphModule, weights: dict[str, Codes], example: Tensor) -> OnnxExport:
    """The ONNX graph of a PTQ variant (`model`, from PTQSweep.build) whose conv / linear weights
    are `weights` (layer name → integer codes; a layer absent stays float); `example`: an input
    batch (its shape; the shapes inside the graph). Checked by onnx.checker."""
    import onnx

    check_exportable(model, example)
    writer = GraphWriter(model, weights)
    proto = writer.write(list(example.shape))
    onnx.checker.check_model(proto, full_check=True)
    return OnnxExport(proto, writer.sites, writer.layers)


def check_exportable(model: GraphModule, example: Tensor) -> None:
    """Every operator of `model` has an ONNX form here (raises NotExportable naming the first that has
    not); needs no onnx install. Annotates the graph with the shapes of `example`'s forward pass."""
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(model).propagate(example)
    modules = dict(model.named_modules())
    for node in model.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        if node.op == "call_module" and isinstance(modules[str(node.target)], ActQuant):
            continue
        entry = operator_of(node, modules)
        if entry is None or entry.onnx is None:
            raise NotExportable(f"{_named(node, modules)} has no ONNX export in quantlab")


def _named(node: Node, modules: dict[str, nn.Module]) -> str:
    """How a refusal names an operator: `layer: Class`, a function's name, or Tensor.method."""
    if node.op == "call_module":
        return f"{node.target}: {type(modules[str(node.target)]).__name__}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return str(getattr(node.target, "__name__", node.target))
