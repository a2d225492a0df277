"""Channel coupling (Torch-Pruning style): which tensors must be sliced or reordered together.

``channel_groups`` traces the model with ``torch.fx`` and follows each channel dimension from the
layer that emits it (a producer: conv/linear ``weight`` and ``bias`` along dim 0) through
per-channel modules (followers: BatchNorm, depthwise convs, PReLU), element-wise ops, pooling and
flattens, to the layers that read it (consumers: dim 1 of the next conv/linear). An ``add`` or
``mul`` of two tensors joins their channels into one group (a ResNet stream: every producer
feeding the add, shortcut conv included). A concatenation along channels lays groups side by
side (DenseNet): its followers and consumers read each group from an offset. A split along
channels hands each piece the groups it holds whole. A grouped conv reads and emits its channels
in equal parts (``ChannelGroup.chunks``). ``keep_channels`` (``pruners.channel_group``) slices or
permutes groups in place; a sorted subset compacts the model, a permutation reorders it with
identical outputs. Masked models are traced and indexed as they are.

Anything the tracer does not understand (reshapes other than a flatten, transposed convs, a split
through a group, norms over channels) makes the groups it touches *fixed*, with the reason.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch
from torch import fx, nn

from pruners.channel_group import ChannelGroup, index_channels, is_depthwise, keep_channels
from pruners.channel_ops import (
    CONCATS, ELEMENTWISE_BINARY, ELEMENTWISE_BINARY_METHODS, FLATTENS, JOINING, PASSTHROUGH_FUNCTIONS,
    PASSTHROUGH_METHODS, PASSTHROUGH_MODULES, SHAPE_QUERIES, SPATIAL_REDUCTIONS, SPLITS, call_dim,
    reduced_dims, trace, trace_run,
)  # fmt: skip

__all__ = [
    "ChannelGroup", "channel_groups", "groups_of", "index_channels", "is_depthwise", "keep_channels", "trace", "trace_run",
]

logger = logging.getLogger(__name__)

class _Space:
    """One channel dimension while tracing; spaces joined by an add are merged (union-find)."""

    def __init__(self, sid: int, size: int) -> None:
        self.id, self.size, self.parent = sid, size, sid
        self.producers: list[tuple[str, str]] = []
        self.followers: list[tuple[str, str]] = []
        self.consumers: list[tuple[str, str, int]] = []
        self.offsets: dict[tuple[str, str], int] = {}
        self.residual = False
        self.chunks = 1
        self.reasons: list[str] = []


class _Builder:
    """Walks the traced graph once, giving every channel-carrying node its (spaces in channel order, block)."""

    def __init__(self, graph: fx.Graph, model: nn.Module) -> None:
        self.graph = graph
        self.modules = dict(model.named_modules())
        self.spaces: list[_Space] = []
        self.at: dict[fx.Node, tuple[tuple[int, ...], int]] = {}
        self.pieces: dict[fx.Node, list[Optional[tuple[tuple[int, ...], int]]]] = {}  # a split's outputs

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
            lo.offsets.update(hi.offsets)
            lo.residual = lo.residual or hi.residual
            lo.chunks = math.lcm(lo.chunks, hi.chunks)
            ra = lo
        ra.residual = ra.residual or residual
        return ra.id

    def fix(self, sid: int, reason: str) -> None:
        self.root(sid).reasons.append(reason)

    def fix_all(self, node: fx.Node, reason: str) -> None:
        for n in self.inputs(node):
            for sid in self.at[n][0]:
                self.fix(sid, reason)

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

    def give(self, node: fx.Node, segs: tuple[int, ...], block: int = 1) -> None:
        shp = self.shape(node)
        if shp is not None and len(shp) >= 2:
            self.at[node] = (segs, block)

    def fresh(self, node: fx.Node, reason: str | None) -> None:
        shp = self.shape(node)
        if shp is not None and len(shp) >= 2:
            self.at[node] = ((self.new(shp[1], reason),), 1)

    def unknown(self, node: fx.Node, what: str) -> None:
        reason = f"unsupported op {what} at {node.name}"
        self.fix_all(node, reason)
        self.fresh(node, reason)

    def laid_out(self, segs: tuple[int, ...]) -> list[tuple[int, int]]:
        """(space, offset) of each part of a channel dim."""
        out, pos = [], 0
        for sid in segs:
            out.append((sid, pos))
            pos += self.root(sid).size
        return out

    def record(self, segs: tuple[int, ...], kind: str, entries: list[tuple], block: int = 1) -> None:
        """``entries`` read (consumers) or carry (followers) each part of ``segs`` from its offset."""
        for sid, offset in self.laid_out(segs):
            space = self.root(sid)
            for entry in entries:
                key = entry[:2]
                if offset and space.offsets.get(key, offset) != offset:
                    space.reasons.append(f"{key[0]} reads these channels twice")
                getattr(space, kind).append(entry if kind == "followers" else (*key, block))
                if offset:
                    space.offsets[key] = offset

    # --- the walk --------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.graph.nodes:
            if node.op == "placeholder":
                self.fresh(node, "model input")
            elif node.op == "output":
                self.fix_all(node, "model output")
            elif node.op == "call_module":
                self.module(node, self.modules[str(node.target)])
            elif node.op in ("call_function", "call_method"):
                self.function(node)

    def module(self, node: fx.Node, m: nn.Module) -> None:
        name = str(node.target)
        ins = self.inputs(node)
        if not ins:
            self.fresh(node, None)
            return
        segs, block = self.at[ins[0]]
        params = lambda *names: [(name, p) for p in names if getattr(m, p, None) is not None]  # noqa: E731
        if isinstance(m, PASSTHROUGH_MODULES):
            self.give(node, segs, block)
        elif isinstance(m, nn.modules.conv._ConvNd):
            self.conv(node, name, m, segs, block)
        elif isinstance(m, nn.Linear):
            if len(self.shape(ins[0]) or ()) != 2:
                self.unknown(node, f"{name} on a tensor that is not (batch, features)")
                return
            self.record(segs, "consumers", [(name, "weight")], block)
            self.producer(node, name, m)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) or (isinstance(m, nn.PReLU) and m.num_parameters > 1):
            if block != 1:
                self.fix_all(node, f"{name} is per-feature on a flattened tensor")
            self.record(segs, "followers", params("weight", "bias", "running_mean", "running_var"))
            self.give(node, segs, block)
        elif isinstance(m, nn.PReLU):
            self.give(node, segs, block)
        elif isinstance(m, nn.Flatten):
            self.flatten(node, ins[0])
        else:
            self.unknown(node, type(m).__name__)

    def conv(self, node: fx.Node, name: str, m: nn.Module, segs: tuple[int, ...], block: int) -> None:
        """A conv reads its input's channels and emits new ones; a depthwise conv carries them; a
        grouped conv reads and emits them in equal parts."""
        if m.transposed:
            self.unknown(node, f"transposed conv {name}")
        elif block != 1:
            self.unknown(node, f"{name} on a flattened tensor")
        elif is_depthwise(m):
            self.record(segs, "followers", [(name, p) for p in ("weight", "bias") if getattr(m, p) is not None])
            self.give(node, segs, block)
        elif m.groups > 1:
            if len(segs) != 1 or m.in_channels // m.groups < 2 or m.out_channels // m.groups < 2:
                self.unknown(node, f"grouped conv {name} (a concatenation, or one channel per group)")
                return
            self.root(segs[0]).chunks = math.lcm(self.root(segs[0]).chunks, m.groups)
            self.record(segs, "consumers", [(name, "weight")])
            self.producer(node, name, m, chunks=m.groups)
        else:
            self.record(segs, "consumers", [(name, "weight")])
            self.producer(node, name, m)

    def producer(self, node: fx.Node, name: str, m: nn.Module, chunks: int = 1) -> None:
        shp = self.shape(node)
        out = self.new(shp[1] if shp else m.weight.shape[0])
        self.spaces[out].producers += [(name, p) for p in ("weight", "bias") if getattr(m, p) is not None]
        self.spaces[out].chunks = chunks
        self.at[node] = ((out,), 1)

    def flatten(self, node: fx.Node, src: fx.Node) -> None:
        segs, block = self.at[src]
        before, after = self.shape(src), self.shape(node)
        if before and after and len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:]):
            self.give(node, segs, block * math.prod(before[2:]))
        elif before == after:
            self.give(node, segs, block)
        else:
            self.unknown(node, f"reshape {before} -> {after}")

    def function(self, node: fx.Node) -> None:
        target = node.target
        if target in SPLITS:
            self.split(node)
            return
        if node.op == "call_function" and getattr(target, "__name__", "") == "getitem" and node.args[0] in self.pieces:
            piece = self.pieces[node.args[0]][node.args[1]] if isinstance(node.args[1], int) else None
            if piece is None:
                self.fresh(node, f"part of a split at {node.name}")
            else:
                self.give(node, *piece)
            return
        ins = self.inputs(node)
        if not ins:
            self.fresh(node, None)
        elif target in SHAPE_QUERIES and self.shape(node) is None:
            return
        elif target in PASSTHROUGH_FUNCTIONS or target in PASSTHROUGH_METHODS:
            self.give(node, *self.at[ins[0]])
        elif target in FLATTENS:
            self.flatten(node, ins[0])
        elif target in CONCATS:
            self.concat(node, ins)
        elif target in SPATIAL_REDUCTIONS and ins[0] is node.args[0] and self.spatial_only(node, ins[0]):
            self.give(node, *self.at[ins[0]])
        elif target in ELEMENTWISE_BINARY or target in ELEMENTWISE_BINARY_METHODS:
            self.elementwise(node, ins)
        else:
            self.unknown(node, getattr(target, "__name__", str(target)))

    def spatial_only(self, node: fx.Node, src: fx.Node) -> bool:
        """A mean/amax/sum over spatial dims only: every channel stays, as after a global pool."""
        dims = reduced_dims(node, len(self.shape(src) or ()))
        return dims is not None and not dims & {0, 1} and self.at[src][1] == 1

    def concat(self, node: fx.Node, ins: list[fx.Node]) -> None:
        """Channels concatenated along dim 1: the groups side by side, in order."""
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        rank = len(self.shape(node) or ())
        if call_dim(node, 1, 0, rank) != 1 or not isinstance(tensors, (list, tuple)) or any(t not in self.at for t in tensors):
            self.unknown(node, "cat (not along channels of traced tensors)")
            return
        blocks = {self.at[t][1] for t in tensors}
        if len(blocks) != 1:
            self.unknown(node, "cat of tensors flattened differently")
            return
        self.give(node, tuple(sid for t in tensors for sid in self.at[t][0]), blocks.pop())

    def split(self, node: fx.Node) -> None:
        """Each piece of a channel split holds whole groups; a group cut through is fixed."""
        src = node.args[0] if node.args else None
        metas = node.meta.get("tensor_meta")
        if src not in self.at or not isinstance(metas, (list, tuple)):
            if src in self.at:
                self.unknown(node, str(getattr(node.target, "__name__", node.target)))
            return
        segs, block = self.at[src]
        rank = len(self.shape(src) or ())
        if call_dim(node, 2, 0, rank) != 1:
            self.pieces[node] = [None] * len(metas)
            self.fix_all(node, f"split not along channels at {node.name}")
            return
        bounds = {0}
        for sid, offset in self.laid_out(segs):
            bounds.add(offset + self.root(sid).size)
        pieces, start = [], 0
        for meta in metas:
            end = start + int(meta.shape[1])
            inside = tuple(sid for sid, off in self.laid_out(segs) if start <= off < end)
            if start in bounds and end in bounds:
                pieces.append((inside, block))
            else:
                for sid, off in self.laid_out(segs):
                    if off < end and off + self.root(sid).size > start:
                        self.fix(sid, f"a split at {node.name} cuts through these channels")
                pieces.append(None)
            start = end
        self.pieces[node] = pieces

    def elementwise(self, node: fx.Node, ins: list[fx.Node]) -> None:
        """An element-wise op of tensors with the same channels joins them, part by part."""
        out = self.shape(node) or ()
        same = [n for n in ins if (self.shape(n) or ())[1:2] == out[1:2]]
        layouts = {tuple(self.root(s).size for s in self.at[n][0]) for n in same}
        if not same or len({self.at[n][1] for n in same}) != 1 or len(layouts) != 1:
            self.unknown(node, str(node.target))
            return
        segs = list(self.at[same[0]][0])
        for n in same[1:]:
            segs = [self.union(a, b, residual=node.target in JOINING) for a, b in zip(segs, self.at[n][0])]
        self.give(node, tuple(segs), self.at[same[0]][1])

    # --- result ----------------------------------------------------------------------------
    def join_shared_tensors(self) -> None:
        """A tensor dim shared by two spaces at one offset (a module called twice) joins them."""
        changed = True
        while changed:
            changed = False
            owner: dict[tuple, int] = {}
            for s in self.spaces:
                r = self.root(s.id)
                if r.id != s.id:
                    continue
                keys = [(m, p, 0, r.offsets.get((m, p), 0)) for m, p in r.producers + r.followers]
                keys += [(m, p, 1, r.offsets.get((m, p), 0)) for m, p, _ in r.consumers]
                for key in keys:
                    if key in owner and self.root(owner[key]).id != r.id:
                        self.union(owner[key], r.id)
                        changed = True
                    owner[key] = r.id

    def groups(self) -> list[ChannelGroup]:
        self.join_shared_tensors()
        out: list[ChannelGroup] = []
        for s in self.spaces:
            if s.parent != s.id or not (s.producers or s.followers or s.consumers):
                continue
            if s.chunks > 1 and (s.size % s.chunks or s.size // s.chunks < 2):
                s.reasons.append(f"grouped convs split {s.size} channels in {s.chunks} parts")
            reasons = list(dict.fromkeys(s.reasons))
            out.append(ChannelGroup(
                size=s.size,
                producers=list(dict.fromkeys(s.producers)),
                followers=list(dict.fromkeys(s.followers)),
                consumers=list(dict.fromkeys(s.consumers)),
                residual=s.residual,
                fixed_reason="; ".join(reasons) if reasons else None,
                offsets=dict(s.offsets),
                chunks=s.chunks,
            ))  # fmt: skip
        return out


def groups_of(graph: fx.Graph, model: nn.Module) -> list[ChannelGroup]:
    """The channel groups of ``model`` from its traced graph (``trace``), in the order the model computes them."""
    builder = _Builder(graph, model)
    builder.run()
    return builder.groups()


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """Every channel group of ``model``, in the order the model computes them.

    ``example_input`` (a batch, e.g. ``torch.randn(1, 3, 32, 32)``) fixes the shapes, which
    give flatten blocks (Linear ``in_features = C*H*W``); see ``trace``.
    """
    groups = groups_of(trace(model, example_input), model)
    logger.debug("%d channel groups, %d free", len(groups), sum(g.free for g in groups))
    return groups
