"""Channel coupling (Torch-Pruning style): which tensors must be sliced or reordered together.

``channel_groups`` traces the model with ``torch.fx`` and follows each channel dimension from the
layer that emits it (a producer: conv/linear ``weight`` and ``bias`` along dim 0) through
per-channel modules (followers: BatchNorm, depthwise convs, PReLU), element-wise ops, pooling and
flattens, to the layers that read it (consumers: dim 1 of the next conv/linear). An ``add`` or
``mul`` of two tensors joins their channels into one group (a ResNet stream: every producer
feeding the add, shortcut conv included). ``index_channels`` (``pruners.channel_group``) slices
or permutes one group in place; a sorted subset compacts the model, a permutation reorders it
with identical outputs. Masked models are traced and indexed as they are.

Anything the tracer does not understand (concat, reshapes other than a flatten, grouped or
transposed convs, norms over channels) makes the groups it touches *fixed*, with the reason.
"""
from __future__ import annotations

import logging
import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pruners.channel_group import ChannelGroup, index_channels, is_depthwise

__all__ = ["ChannelGroup", "channel_groups", "index_channels", "is_depthwise", "trace"]

logger = logging.getLogger(__name__)

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
ELEMENTWISE_BINARY = frozenset({
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
})  # fmt: skip
ELEMENTWISE_BINARY_METHODS = frozenset({"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"})
JOINING = frozenset({operator.add, operator.iadd, torch.add, "add", "add_"})  # a residual join
FLATTENS = frozenset({torch.flatten, "flatten", "view", "reshape"})
SHAPE_QUERIES = frozenset({"size", "dim", "numel", getattr})  # results are not channel-carrying


class _Space:
    """One channel dimension while tracing; spaces joined by an add are merged (union-find)."""

    def __init__(self, sid: int, size: int) -> None:
        self.id, self.size, self.parent = sid, size, sid
        self.producers: list[tuple[str, str]] = []
        self.followers: list[tuple[str, str]] = []
        self.consumers: list[tuple[str, str, int]] = []
        self.residual = False
        self.reasons: list[str] = []


class _Tracer(fx.Tracer):
    """Conv/linear/norm layers (masked or not) are leaves; containers are traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaf_types = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.PReLU)
        return isinstance(m, leaf_types) or super().is_leaf_module(m, qualname)


class _Builder:
    """Walks the traced graph once, giving every channel-carrying node a (space, block)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.spaces: list[_Space] = []
        self.at: dict[fx.Node, tuple[int, int]] = {}  # node -> (space id, block)

    # --- union-find ------------------------------------------------------------------------
    def new(self, size: int, reason: str | None = None) -> int:
        s = _Space(len(self.spaces), size)
        if reason:
            s.reasons.append(reason)
        self.spaces.append(s)
        return s.id

    def root(self, sid: int) -> _Space:
        s = self.spaces[sid]
        while s.parent != s.id:
            s = self.spaces[s.parent]
        return s

    def union(self, a: int, b: int, residual: bool = False) -> int:
        ra, rb = self.root(a), self.root(b)
        if ra.id != rb.id:
            if ra.size != rb.size:
                ra.reasons.append(f"joins channel dims of different sizes ({ra.size} vs {rb.size})")
            lo, hi = (ra, rb) if ra.id < rb.id else (rb, ra)
            hi.parent = lo.id
            for attr in ("producers", "followers", "consumers", "reasons"):
                getattr(lo, attr).extend(getattr(hi, attr))
            lo.residual = lo.residual or hi.residual
            ra = lo
        ra.residual = ra.residual or residual
        return ra.id

    def fix(self, sid: int, reason: str) -> None:
        self.root(sid).reasons.append(reason)

    # --- helpers ---------------------------------------------------------------------------
    @staticmethod
    def shape(node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def inputs(self, node: fx.Node) -> list[fx.Node]:
        """Channel-carrying tensor nodes among ``node``'s arguments (nested ones included)."""
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n in self.at else None)
        return found

    def give(self, node: fx.Node, sid: int, block: int = 1) -> None:
        shp = self.shape(node)
        if shp is not None and len(shp) >= 2:
            self.at[node] = (sid, block)

    def fresh(self, node: fx.Node, reason: str | None) -> None:
        shp = self.shape(node)
        if shp is not None and len(shp) >= 2:
            self.at[node] = (self.new(shp[1], reason), 1)

    def unknown(self, node: fx.Node, what: str) -> None:
        reason = f"unsupported op {what} at {node.name}"
        for n in self.inputs(node):
            self.fix(self.at[n][0], reason)
        self.fresh(node, reason)

    # --- the walk --------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.fresh(node, "model input")
            elif node.op == "output":
                for n in self.inputs(node):
                    self.fix(self.at[n][0], "model output")
            elif node.op == "call_module":
                self.module(node, self.gm.get_submodule(node.target))
            elif node.op in ("call_function", "call_method"):
                self.function(node)
            elif node.op == "get_attr":
                continue

    def module(self, node: fx.Node, m: nn.Module) -> None:
        name = str(node.target)
        ins = self.inputs(node)
        if not ins:
            self.fresh(node, None)
            return
        sid, block = self.at[ins[0]]
        if isinstance(m, PASSTHROUGH_MODULES):
            self.give(node, sid, block)
        elif isinstance(m, nn.modules.conv._ConvNd):
            if m.transposed or (m.groups > 1 and not is_depthwise(m)):
                kind = "transposed conv" if m.transposed else "grouped conv"
                self.fix(sid, f"{kind} {name}")
                self.fresh(node, f"{kind} {name}")
            elif is_depthwise(m):
                self.root(sid).followers += [(name, p) for p in ("weight", "bias") if getattr(m, p) is not None]
                self.give(node, sid, block)
            else:
                if block != 1:
                    self.fix(sid, f"{name} reads a flattened channel")
                self.root(sid).consumers.append((name, "weight", block))
                self.producer(node, name, m)
        elif isinstance(m, nn.Linear):
            if len(self.shape(ins[0]) or ()) != 2:
                self.fix(sid, f"{name} reads a tensor that is not (batch, features)")
                self.fresh(node, f"{name} on a tensor that is not (batch, features)")
                return
            self.root(sid).consumers.append((name, "weight", block))
            self.producer(node, name, m)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) or (isinstance(m, nn.PReLU) and m.num_parameters > 1):
            if block != 1:
                self.fix(sid, f"{name} is per-feature on a flattened tensor")
            params = ("weight", "bias", "running_mean", "running_var")
            self.root(sid).followers += [(name, p) for p in params if getattr(m, p, None) is not None]
            self.give(node, sid, block)
        elif isinstance(m, nn.PReLU):
            self.give(node, sid, block)
        elif isinstance(m, nn.Flatten):
            self.flatten(node, ins[0])
        else:
            self.unknown(node, type(m).__name__)

    def producer(self, node: fx.Node, name: str, m: nn.Module) -> None:
        shp = self.shape(node)
        out = self.new(shp[1] if shp else m.weight.shape[0])
        self.spaces[out].producers += [(name, p) for p in ("weight", "bias") if getattr(m, p) is not None]
        self.at[node] = (out, 1)

    def flatten(self, node: fx.Node, src: fx.Node) -> None:
        sid, block = self.at[src]
        before, after = self.shape(src), self.shape(node)
        if before and after and len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:]):
            self.give(node, sid, block * math.prod(before[2:]))
        elif before == after:
            self.give(node, sid, block)
        else:
            self.unknown(node, f"reshape {before} -> {after}")

    def function(self, node: fx.Node) -> None:
        target = node.target
        ins = self.inputs(node)
        if not ins:
            self.fresh(node, None)
            return
        if target in SHAPE_QUERIES and self.shape(node) is None:
            return
        if target in PASSTHROUGH_FUNCTIONS or target in PASSTHROUGH_METHODS:
            sid, block = self.at[ins[0]]
            self.give(node, sid, block)
        elif target in FLATTENS:
            self.flatten(node, ins[0])
        elif target in ELEMENTWISE_BINARY or target in ELEMENTWISE_BINARY_METHODS:
            out = self.shape(node) or ()
            same = [n for n in ins if (self.shape(n) or ())[1:2] == out[1:2]]
            if not same or len({self.at[n][1] for n in same}) != 1:
                self.unknown(node, str(target))
                return
            sid = self.at[same[0]][0]
            for n in same[1:]:
                sid = self.union(sid, self.at[n][0], residual=target in JOINING)
            self.give(node, sid, self.at[same[0]][1])
        else:
            self.unknown(node, getattr(target, "__name__", str(target)))

    # --- result ----------------------------------------------------------------------------
    def groups(self) -> list[ChannelGroup]:
        # A tensor dim shared by two spaces (a module called twice) joins them.
        changed = True
        while changed:
            changed = False
            owner: dict[tuple[str, str, int], int] = {}
            for s in self.spaces:
                r = self.root(s.id)
                if r.id != s.id:
                    continue
                keys = [(m, p, 0) for m, p in r.producers + r.followers] + [(m, p, 1) for m, p, _ in r.consumers]
                for key in keys:
                    if key in owner and self.root(owner[key]).id != r.id:
                        self.union(owner[key], r.id)
                        changed = True
                    owner[key] = r.id
        out: list[ChannelGroup] = []
        for s in self.spaces:
            if s.parent != s.id or not (s.producers or s.followers or s.consumers):
                continue
            reasons = list(dict.fromkeys(s.reasons))
            out.append(ChannelGroup(
                size=s.size,
                producers=list(dict.fromkeys(s.producers)),
                followers=list(dict.fromkeys(s.followers)),
                consumers=list(dict.fromkeys(s.consumers)),
                residual=s.residual,
                fixed_reason="; ".join(reasons) if reasons else None,
            ))  # fmt: skip
        return out


def trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """``model`` as an fx graph (conv/linear/norm layers are leaves) with shapes in ``node.meta``.

    The forward runs in eval mode under ``no_grad``; BatchNorm statistics and training flags
    are left as they were.
    """
    tracer = _Tracer()
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return gm


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """Every channel group of ``model``, in the order the model computes them.

    ``example_input`` (a batch, e.g. ``torch.randn(1, 3, 32, 32)``) fixes the shapes, which
    give flatten blocks (Linear ``in_features = C*H*W``); see ``trace``.
    """
    builder = _Builder(trace(model, example_input))
    builder.run()
    groups = builder.groups()
    logger.debug("%d channel groups, %d free", len(groups), sum(g.free for g in groups))
    return groups
