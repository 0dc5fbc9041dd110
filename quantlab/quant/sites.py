"""Where activations are fake-quantized, and which batch norm bounds each of those tensors.

The network is a torch.fx GraphModule (see quant.fold). `instrument` inserts one `ActQuant`
module per site:
- placement "input" (the default): on the input of every conv / linear layer — the tensors the
  integer matmuls consume, the network input included unless `quantize_network_input` is off;
  layers that read the same tensor (a ResNet block's first conv and its shortcut) share one;
- placement "output": on the output of every conv / linear layer (after its batch norm, folded or
  not), except a layer whose output is the network's output (the logits stay in float).
For each site, the batch norm whose statistics bound the tensor is found by walking back through
range-preserving operations (their `range` in quant.operators): ReLU / ReLU6 (recorded as
clamps), max / average pooling, flatten, view, dropout, identity. A site with no such batch norm (the
network input, a residual sum) gets its range from calibration data instead (`ptq.act_fallback`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn
from torch.fx import GraphModule, Node

from quantlab.quant.layers import WEIGHT_LAYERS
from quantlab.quant.operators import operator_of
from quantlab.quant.ranges import Range, RangeObserver
from quantlab.quant.uniform import fake_quantize_activation

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
PLACEMENTS = ("input", "output")


class ActQuant(nn.Module):
    """Observes (calibration) and/or fake-quantizes the tensor passing through; off: the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.observer: RangeObserver | None = None
        self.grid: tuple[float, int, int, int] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.observer is not None:
            self.observer.update(x)
        if self.grid is None:
            return x
        return fake_quantize_activation(x, self.grid)

    def extra_repr(self) -> str:
        return "off" if self.grid is None else f"scale={self.grid[0]:.4g}, q=[{self.grid[2]}, {self.grid[3]}]"


@dataclass
class Site:
    """One activation quantizer: its module name, the layer it serves, its range source."""

    name: str
    layer: str
    bn: nn.Module | None = None  # bounds the tensor (before `clamps`), or None: calibrate
    clamps: list[Range] = field(default_factory=list)

    @property
    def data_free(self) -> bool:
        return self.bn is not None


def bn_source(
    node: Node, modules: dict[str, nn.Module], folded: dict[str, nn.Module]
) -> tuple[nn.Module | None, list[Range]]:
    """The batch norm that bounds `node`'s tensor, and the clamps between them (in forward order)."""
    clamps: list[Range] = []
    while isinstance(node, Node):
        if node.op == "call_module":
            target = str(node.target)
            if isinstance(modules[target], _BN):
                return modules[target], clamps[::-1]
            if target in folded:
                return folded[target], clamps[::-1]
        entry = operator_of(node, modules)  # quant.operators: does it keep or clamp the range?
        if entry is not None and entry.range == "clamp":
            clamps.append(entry.clamp)  # type: ignore[arg-type]
        elif entry is None or entry.range != "pass":
            return None, []
        node = node.args[0]  # type: ignore[assignment]
    return None, []


def _add_site(
    graph_module: GraphModule,
    modules: dict[str, nn.Module],
    folded: dict[str, nn.Module],
    layer: str,
    kind: str,
    tensor: Node,
) -> Site:
    """A Site for `tensor` (its batch-norm source found) and its ActQuant module, named act_<kind>_<layer>."""
    bn, clamps = bn_source(tensor, modules, folded)
    site = Site(f"act_{kind}_{layer.replace('.', '_')}", layer, bn, clamps)
    graph_module.add_submodule(site.name, ActQuant())
    return site


def instrument(
    graph_module: GraphModule,
    folded: dict[str, nn.Module],
    placement: str = "input",
    quantize_network_input: bool = True,
) -> list[Site]:
    """Insert an `ActQuant` at every site (in place); returns the sites in graph order."""
    if placement not in PLACEMENTS:
        raise ValueError(f"ptq.act_placement={placement!r}: must be one of {', '.join(PLACEMENTS)}")
    modules = dict(graph_module.named_modules())
    graph = graph_module.graph
    sites: list[Site] = []
    shared: dict[Node, Node] = {}
    layer_nodes = [
        n for n in graph.nodes if n.op == "call_module" and isinstance(modules[str(n.target)], WEIGHT_LAYERS)
    ]
    for node in layer_nodes:
        layer = str(node.target)
        if placement == "input":
            source = node.args[0]
            if not isinstance(source, Node) or (source.op == "placeholder" and not quantize_network_input):
                continue
            if source in shared:  # layers reading the same tensor (a ResNet shortcut) share its quantizer
                node.replace_input_with(source, shared[source])
                continue
            site = _add_site(graph_module, modules, folded, layer, "in", source)
            with graph.inserting_before(node):
                quant = graph.call_module(site.name, (source,))
            node.replace_input_with(source, quant)
            shared[source] = quant
        else:
            tensor = node
            users = list(node.users)
            bn_after = len(users) == 1 and users[0].op == "call_module"
            if layer not in folded and bn_after and isinstance(modules[str(users[0].target)], _BN):
                tensor = users[0]
            if any(u.op == "output" for u in tensor.users):
                continue
            site = _add_site(graph_module, modules, folded, layer, "out", tensor)
            with graph.inserting_after(tensor):
                quant = graph.call_module(site.name, (tensor,))
            tensor.replace_all_uses_with(quant, delete_user_cb=lambda user, q=quant: user is not q)
        sites.append(site)
    graph.lint()
    graph_module.recompile()
    return sites
