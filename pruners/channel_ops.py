"""What the channel tracer knows about ops (which keep each channel apart, which join, concatenate,
split or flatten channels), and the one traced forward: fx graph, shapes, output and observed inputs."""
from __future__ import annotations

import operator
import weakref
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx import traceback as fx_traceback

from pruners.graph_run import GraphRun, Meta, Observer
from pruners.weight_mask import modules_of

__all__ = [
    "UntraceableModel", "symbolic_trace", "CONCATS", "ELEMENTWISE_BINARY", "ELEMENTWISE_BINARY_METHODS", "FLATTENS", "JOINING", "PASSTHROUGH_FUNCTIONS",
    "PASSTHROUGH_METHODS", "PASSTHROUGH_MODULES", "SHAPE_QUERIES", "SPATIAL_REDUCTIONS", "SPLITS", "Meta", "Observer", "Tracer", "ZERO_KEEPING", "ZERO_KEEPING_MODULES", "call_dim", "graph_of", "modules_of", "plain_type", "reduced_dims", "structure", "trace", "trace_run",
]  # fmt: skip

# Modules and functions that act on each channel separately (the channel passes through).
PASSTHROUGH_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Hardtanh, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
PASSTHROUGH_FUNCTIONS: frozenset = frozenset({
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.hardtanh, F.silu,
    F.gelu, F.mish, F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    F.dropout, F.dropout2d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
    F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, operator.neg,
})  # fmt: skip
PASSTHROUGH_METHODS = frozenset({
    "relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "double", "half",
    "to", "neg",
})  # fmt: skip
# Per-channel ops that map 0 to 0: a channel that is exactly 0 stays 0 through them.
ZERO_KEEPING_MODULES: tuple[type, ...] = tuple(
    t for t in PASSTHROUGH_MODULES if t not in (nn.Sigmoid, nn.Hardsigmoid)
)
ZERO_KEEPING = frozenset(PASSTHROUGH_FUNCTIONS - {torch.sigmoid, F.sigmoid, F.hardsigmoid}) | (
    PASSTHROUGH_METHODS - {"sigmoid"}
)
ELEMENTWISE_BINARY = frozenset({
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
})  # fmt: skip
ELEMENTWISE_BINARY_METHODS = frozenset({"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"})
JOINING = frozenset({operator.add, operator.iadd, torch.add, "add", "add_"})  # a residual join
FLATTENS = frozenset({torch.flatten, "flatten", "view", "reshape"})
CONCATS = frozenset({torch.cat, torch.concat, torch.concatenate})
SPLITS = frozenset({torch.split, torch.chunk, torch.tensor_split, "split", "chunk", "tensor_split"})
SHAPE_QUERIES = frozenset({"size", "dim", "numel", getattr})  # results are not channel-carrying
# Reductions over spatial dims only (a global pool written as ``x.mean([2, 3])``) keep every channel.
SPATIAL_REDUCTIONS = frozenset({torch.mean, torch.amax, torch.sum, "mean", "amax", "sum"})


_PLAIN_ARGS = frozenset({int, float, bool, str, type(None)})


class Tracer(fx.Tracer):
    """Conv/linear/norm layers (masked or not) are leaves; containers are traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaf_types = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.PReLU)
        return isinstance(m, leaf_types) or super().is_leaf_module(m, qualname)

    def _plain(self) -> bool:
        """No caller asked for the per-node bookkeeping (stack traces, preserved meta, mutation checks)."""
        return not (self.check_mutable_operations or self.record_stack_traces or fx_traceback.has_preserved_node_meta())

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        """A leaf becomes a node, anything else is traced through; without the scope and module-stack
        bookkeeping only ``create_node``'s metadata reads."""
        if not self._plain():
            return super().call_module(m, forward, args, kwargs)
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return self.create_proxy("call_module", name, args, kwargs)
        return forward(*args, **kwargs)

    def create_arg(self, a: Any) -> Any:
        """The common arguments (a proxy, a number, a plain tuple of those) without fx's generic
        dispatch, which turns each into the same thing after a dozen type checks."""
        kind = type(a)
        if kind is fx.Proxy:
            return a.node
        if kind in _PLAIN_ARGS:
            return a
        if kind is tuple:
            return tuple(self.create_arg(x) for x in a)
        if kind is dict and all(type(k) is str for k in a):  # keyword arguments
            return {k: self.create_arg(v) for k, v in a.items()}
        return super().create_arg(a)

    def create_node(self, kind: str, target: Any, args: tuple, kwargs: dict, name: Optional[str] = None,
                    type_expr: Any = None) -> fx.Node:  # fmt: skip
        """The node alone: the channel trace reads no scope, module stack or stack trace, whose
        bookkeeping (a copy of the module stack per node) costs a third of a trace."""
        if not self._plain():
            return super().create_node(kind, target, args, kwargs, name, type_expr)
        return self.graph.create_node(kind, target, args, kwargs, name, type_expr)


class UntraceableModel(ValueError):
    """``torch.fx`` cannot trace the model (data-dependent Python control flow, say): whatever needs
    its graph (channel groups, follower masks, compaction) is skipped, and says so with this reason."""


def symbolic_trace(model: nn.Module) -> fx.Graph:
    """``Tracer().trace(model)``; any failure is an ``UntraceableModel`` naming the model and the cause."""
    try:
        return Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 -- fx fails in many ways on user code; all mean "no graph"
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UntraceableModel(f"torch.fx cannot trace {type(model).__name__} ({cause})") from exc


def reduced_dims(node: fx.Node, rank: int) -> set[int] | None:
    """The dims a mean/amax/sum call reduces (non-negative), or None when they are not constants."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = [dim] if isinstance(dim, int) else dim
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims) or not rank:
        return None
    return {d % rank for d in dims}


def call_dim(node: fx.Node, position: int, default: int, rank: int) -> int:
    """The ``dim`` argument of a cat/split call (positional or keyword), made non-negative.

    The tensor is ``args[0]`` for a method call as for a function call, so positions agree."""
    dim = node.args[position] if len(node.args) > position else node.kwargs.get("dim", default)
    if not isinstance(dim, int):
        return -1
    return dim % rank if rank else dim


def plain_type(m: nn.Module) -> type:
    """A module's class; a masked module's class before masking (torch makes a subclass per module)."""
    return type(m).__bases__[0] if "parametrizations" in m._modules else type(m)


def structure(model: nn.Module) -> tuple:
    """What a traced graph depends on: every module's name and class (a masked one's class before masking)."""
    return tuple((n, plain_type(m)) for n, m in modules_of(model))


_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, fx.Graph]]" = weakref.WeakKeyDictionary()


def graph_of(model: nn.Module) -> fx.Graph:
    """The symbolic trace of ``model`` (conv/linear/norm layers are leaves), once per model and structure."""
    key = structure(model)
    cached = _GRAPHS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    graph = symbolic_trace(model)
    _GRAPHS[model] = (key, graph)
    return graph


def _set_training(modes: dict[nn.Module, bool]) -> None:
    for m, mode in modes.items():
        m.training = mode  # per module: train() would recurse into every child again


def trace_run(model: nn.Module, example_input: torch.Tensor, observe: Optional[Observer] = None,
              graph: Optional[fx.Graph] = None, shapes_only: bool = False) -> tuple[fx.Graph, Any]:
    """``model``'s fx graph (``graph_of``, or ``graph`` traced from a model of the same structure) with
    shapes in ``node.meta``, and its output on ``example_input``: the one forward also feeds ``observe``.
    With ``shapes_only`` conv and linear layers only give zeros of their output's shape and per-channel
    layers hand their input on (see ``pruners.graph_run``).

    The forward runs in eval mode under ``no_grad``; BatchNorm statistics and training flags
    are left as they were.
    """
    graph = graph_of(model) if graph is None else graph
    named = dict(modules_of(model))
    modes = {m: m.training for m in named.values()}
    _set_training(dict.fromkeys(modes, False))
    try:
        with torch.no_grad():
            output = GraphRun(model, graph, named, observe, shapes_only).run(example_input)
    finally:
        _set_training(modes)
    return graph, output


def trace(model: nn.Module, example_input: torch.Tensor) -> fx.Graph:
    """The graph with its shapes: ``trace_run`` without output, without the arithmetic of conv and linear layers."""
    return trace_run(model, example_input, shapes_only=True)[0]
