"""Running a traced fx graph on a model: the one forward that gives every node's shape.

Why not ``torch.fx.Interpreter``: its per-node machinery (a progress bar, a context manager per
node, a ``named_modules()`` walk and attribute lookups by dotted path) costs more than the
shape-only forward itself, and ``prepare(..., "channel")`` runs this once per model. ``GraphRun``
does the same evaluation in one loop: placeholders take the inputs in order (or their defaults),
values are dropped after their last use, modules are found in one dict.

``shapes_only`` skips the arithmetic that cannot change a shape: conv and linear layers give zeros
of their output's shape, and per-channel layers (BatchNorm, activations, dropout) hand their input
on as it is. The shapes are all a channel trace needs; those layers are nearly all of a forward.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.node import map_arg

__all__ = ["GraphRun", "Meta", "Observer"]

_MISSING = object()
Observer = Callable[[fx.Node, nn.Module, Any], None]  # (node, module, its input) during the traced forward

# Layers whose output has their input's shape, whatever their values (skipped in shapes_only).
SHAPE_KEEPING_MODULES: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm, nn.PReLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Hardtanh,
    nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)  # fmt: skip
SHAPE_KEEPING_FUNCTIONS: frozenset = frozenset({
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.hardtanh, F.silu,
    F.gelu, F.mish, F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    F.dropout, operator.neg, "relu", "relu_", "sigmoid", "tanh", "neg",
})  # fmt: skip


class Meta(NamedTuple):
    """What the builder reads of a traced value: its shape (``node.meta["tensor_meta"]``)."""

    shape: torch.Size


def _meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Meta(value.shape)
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(_meta(v) for v in value)
    return None


def _conv_shape(m: nn.modules.conv._ConvNd, shape: torch.Size) -> Optional[tuple[int, ...]]:
    """A (non-transposed) conv's output shape, or None where the formula is not sure."""
    nd = len(m.kernel_size)
    if m.transposed or len(shape) != nd + 2:
        return None
    if isinstance(m.padding, str):
        if m.padding == "same":
            return (shape[0], m.out_channels, *shape[2:])
        pads = (0,) * nd
    else:
        pads = m.padding
    spatial = [(size + 2 * p - d * (k - 1) - 1) // s + 1
               for size, p, d, k, s in zip(shape[2:], pads, m.dilation, m.kernel_size, m.stride)]  # fmt: skip
    return (shape[0], m.out_channels, *spatial)


def _last_uses(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """node -> the values whose last use it is (dropped once it has run)."""
    seen: set[fx.Node] = set()
    out: dict[fx.Node, list[fx.Node]] = {}
    for node in reversed(graph.nodes):
        for n in node.all_input_nodes:
            if n not in seen:
                seen.add(n)
                out.setdefault(node, []).append(n)
    return out


class GraphRun:
    """Evaluates ``graph`` on ``root`` (modules by name from ``modules``), recording each value's shape
    in ``node.meta["tensor_meta"]`` and showing ``observe`` every module's input."""

    def __init__(self, root: nn.Module, graph: fx.Graph, modules: dict[str, nn.Module],
                 observe: Optional[Observer] = None, shapes_only: bool = False) -> None:  # fmt: skip
        self.root, self.graph, self.modules = root, graph, modules
        self.observe, self.shapes_only = observe, shapes_only

    def fetch_attr(self, target: str) -> Any:
        if target in self.modules:
            return self.modules[target]
        value: Any = self.root
        for atom in target.split("."):
            value = getattr(value, atom)
        return value

    def call_module(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        m = self.fetch_attr(str(node.target))
        if self.shapes_only and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            x = args[0]
            if isinstance(m, SHAPE_KEEPING_MODULES):
                return x
            out = None
            if isinstance(m, nn.modules.conv._ConvNd):
                out = _conv_shape(m, x.shape)
            elif isinstance(m, nn.Linear) and x.shape[-1] == m.in_features:
                out = (*x.shape[:-1], m.out_features)
            if out is not None:
                return torch.zeros(out, dtype=x.dtype, device=x.device)
        if self.observe is not None and node.args and isinstance(node.args[0], fx.Node):
            self.observe(node, m, args[0])
        return m(*args, **kwargs)

    def call(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        op, target = node.op, node.target
        if op == "get_attr":
            return self.fetch_attr(str(target))
        if self.shapes_only and target in SHAPE_KEEPING_FUNCTIONS and args and isinstance(args[0], torch.Tensor):
            return args[0]
        if op == "call_function":
            return target(*args, **kwargs)  # type: ignore[operator]
        if op == "call_method":
            return getattr(args[0], str(target))(*args[1:], **kwargs)
        return self.call_module(node, args, kwargs)

    @staticmethod
    def placeholder(node: fx.Node, pending: Iterator[Any]) -> Any:
        """The next input (``*args``: all the rest), or the parameter's default."""
        if str(node.target).startswith("*"):
            return list(pending)
        value = next(pending, _MISSING)
        if value is _MISSING:
            if not node.args:
                raise RuntimeError(f"Expected positional argument for parameter {node.target}, but one was not passed in!")
            value = node.args[0]
        return value

    def run(self, *inputs: Any) -> Any:
        env: dict[fx.Node, Any] = {}
        pending = iter(inputs)
        last_uses = _last_uses(self.graph)
        for node in self.graph.nodes:
            if node.op == "placeholder":
                value = self.placeholder(node, pending)
            elif node.op == "output":
                return map_arg(node.args[0], env.__getitem__)
            else:
                value = self.call(node, map_arg(node.args, env.__getitem__), map_arg(node.kwargs, env.__getitem__))
            env[node] = value
            meta = _meta(value)
            if meta is not None:
                node.meta["tensor_meta"] = meta
            for dead in last_uses.get(node, ()):
                del env[dead]
        return None
