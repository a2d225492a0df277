"""Which dead channels compaction may remove, and what their removal leaves for the consumers to absorb.

A dead channel (every producer's filter zero) that outputs exactly 0 goes as it is: masks from
``filter``, ``stripe`` and ``channel`` make dead channels 0 (``pruners.followers``). A mask saved
before those (only the weight masked) leaves a constant: the bias through BatchNorm and ReLU. Its
removal is exact only if the constant is folded into what the consumer computes:

* Linear consumer: ``bias += W[:, cols] @ value`` (one value per flattened column);
* Conv consumer: the constant's contribution is ``conv(constant image)``; where zero padding
  makes it differ at the borders no bias can hold it and the channel is *kept* (reported) --
  unless ``fold_borders``, which stores that contribution as a per-position ``bias_map``
  (``BiasMapConv2d``): exact, but only at the input size compacted for. A position-independent
  contribution is added to the conv's bias or, for a bias-free conv feeding only a BatchNorm,
  subtracted from that BN's ``running_mean`` (eval-exact); a bias is created only as a last resort.

Values come from ``ChannelStats``, filled during compaction's one traced forward: per consumer
input channel, its first value and its range over the probe batch and positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import fx, nn

from pruners.channel_group import ChannelGroup, is_depthwise

__all__ = ["BiasMapConv2d", "ChannelStats", "Plan", "analyse", "bn_after", "fold_delta"]

_CONST_TOL = 1e-6  # relative spread allowed for "the same value everywhere" (float32 pipeline)
_UNIFORM_TOL = 1e-9  # relative spread of a float64 contribution map still called uniform


class BiasMapConv2d(nn.Conv2d):
    """A Conv2d plus a fixed per-position bias ``bias_map`` (out_channels, H, W): what removed
    constant channels contributed through zero padding. Valid at one input size only."""

    bias_map: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.bias_map


@dataclass
class _Call:
    first: torch.Tensor  # per input column (channel, or flattened feature): first sample's value
    low: torch.Tensor
    high: torch.Tensor
    spatial: tuple[int, ...]

    @cached_property
    def nonzero(self) -> torch.Tensor:
        """Whether the column is ever not exactly 0 (asked only of consumers of dead channels)."""
        return (self.low != 0) | (self.high != 0)


@dataclass
class ChannelStats:
    """Per conv/linear input: each channel's value range, recorded during the traced forward."""

    calls: dict[str, list[_Call]] = field(default_factory=dict)

    def observe(self, node: fx.Node, module: nn.Module, x: object) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or is_depthwise(module):
            return
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            return
        t = x.detach().transpose(0, 1).reshape(x.shape[1], -1)  # (channels or features, samples x positions)
        low, high = t.amin(1), t.amax(1)  # two reductions: ~10x faster than aminmax(dim=1) on CPU
        call = _Call(t[:, 0], low, high, tuple(x.shape[2:]))
        self.calls.setdefault(str(node.target), []).append(call)


class Plan:
    """One group's decision: which dead channels go, and what each consumer must absorb."""

    def __init__(self, group: ChannelGroup, dead: torch.Tensor) -> None:
        self.group, self.dead = group, dead
        self.keep_reason: dict[int, str] = {}
        self.values: dict[str, torch.Tensor] = {}  # consumer -> per dead channel value(s), non-zero ones
        self.maps: dict[str, torch.Tensor] = {}  # conv consumer -> contribution maps (float64)
        self.map_rows: dict[str, torch.Tensor] = {}  # which dead channels those maps are for
        self.dead_idx = dead.nonzero().flatten()
        self._removed: torch.Tensor | None = None

    def keep(self, channels, reason: str) -> None:
        for c in channels:
            self.keep_reason.setdefault(int(c), reason)
        self._removed = None

    def removed(self) -> torch.Tensor:
        if self._removed is None:
            self._removed = self.dead.clone()
            self._removed[list(self.keep_reason)] = False
        return self._removed


def _spread_ok(low: torch.Tensor, high: torch.Tensor, tol: float) -> torch.Tensor:
    return (high - low) <= tol * high.abs().clamp_min(1.0)


def _conv_maps(conv: nn.Module, values: torch.Tensor, channels: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Per channel c: ``conv`` applied to an input that is ``values[c]`` in channel c, 0 elsewhere.

    float64, shape (len(channels), out_channels, *out_spatial), bias excluded.
    """
    nd = len(spatial)
    w = conv.weight.detach().double()[:, channels]  # (O, D, *k)
    d = len(channels)
    if d == 0:
        return w.new_zeros((0, w.shape[0], *([1] * nd)))
    if conv.padding_mode != "zeros" or all(p == 0 for p in conv._reversed_padding_repeated_twice):
        # No zero padding: every output position sees the whole kernel on the constant.
        flat = w.sum(tuple(range(2, 2 + nd))).t() * values.double()[:, None]
        return flat.reshape(d, -1, *([1] * nd))
    x = values.double().reshape(1, d, *([1] * nd)).expand(1, d, *spatial)
    grouped = w.transpose(0, 1).reshape(d * w.shape[0], 1, *w.shape[2:])
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    out = conv_fn(x, grouped, None, conv.stride, conv.padding, conv.dilation, groups=d)
    return out.reshape(d, w.shape[0], *out.shape[2:])


def _columns(dead_idx: torch.Tensor, offset: int, block: int) -> torch.Tensor:
    if block == 1:
        return dead_idx + offset if offset else dead_idx
    return ((offset + dead_idx)[:, None] * block + torch.arange(block)).reshape(-1)


def _consumer(model: nn.Module, plan: Plan, mod_name: str, block: int, calls: list[_Call], fold_borders: bool) -> None:
    """Keep the dead channels this consumer cannot lose exactly; note the values it must absorb."""
    dead_idx = plan.dead_idx
    cols = _columns(dead_idx, plan.group.offset(mod_name, "weight"), block)
    if not any(bool(c.nonzero[cols].any()) for c in calls):
        return  # every dead channel is exactly 0 here: it goes as it is
    lows = torch.stack([c.low[cols] for c in calls]).amin(0).double().view(len(dead_idx), block)
    highs = torch.stack([c.high[cols] for c in calls]).amax(0).double().view(len(dead_idx), block)
    zero = ((lows == 0) & (highs == 0)).all(1)
    if len(calls) != 1:
        plan.keep(dead_idx[~zero], f"consumer {mod_name} runs {len(calls)} times per forward")
        return
    module = model.get_submodule(mod_name)
    const = _spread_ok(lows, highs, _CONST_TOL).all(1)
    plan.keep(dead_idx[~const], f"input of {mod_name} is not constant (e.g. after a padded depthwise conv)")
    fold = const & ~zero
    if not fold.any():
        return
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        plan.keep(dead_idx[fold], f"grouped conv {mod_name} cannot absorb a constant channel")
        return
    values = calls[0].first[cols].double().view(len(dead_idx), block)
    if isinstance(module, nn.Linear):
        plan.values[mod_name] = torch.where(fold[:, None], values, torch.zeros_like(values))
        return
    v = values[:, 0]
    channels = plan.group.offset(mod_name, "weight") + dead_idx[fold]
    maps = _conv_maps(module, v[fold], channels, calls[0].spatial)
    plan.values[mod_name], plan.maps[mod_name], plan.map_rows[mod_name] = v, maps, fold
    uniform = torch.ones(len(dead_idx), dtype=torch.bool)
    uniform[fold] = _spread_ok(maps.flatten(2).amin(2), maps.flatten(2).amax(2), _UNIFORM_TOL).all(1)
    if not (fold_borders and type(module) in (nn.Conv2d, BiasMapConv2d)):
        plan.keep(dead_idx[~uniform], f"zero padding of {mod_name} makes a constant channel position-dependent")


def _balance(plan: Plan) -> None:
    """A group read in conv groups loses as many channels from each; every part keeps one."""
    chunks = plan.group.chunks
    per = plan.group.size // chunks
    removed = plan.removed()
    if chunks == 1 and not bool(removed.all()):
        return
    removed = removed.view(chunks, per)
    most = min(int(removed.sum(1).min()), per - 1)
    # Past the first ``most`` removed channels of each part (by rank within the part), in part order.
    extra = (removed & (removed.cumsum(1) > most)).reshape(-1).nonzero().flatten()
    reason = "a grouped conv removes as many channels from each group" if most < per - 1 else "a group keeps at least one channel"
    plan.keep(extra.tolist(), reason)


def analyse(model: nn.Module, plan: Plan, stats: ChannelStats, fold_borders: bool) -> None:
    """Which of the group's dead channels stay, and why."""
    dead_idx = plan.dead_idx
    for mod_name, _, block in plan.group.consumers:
        calls = stats.calls.get(mod_name, [])
        if not calls:
            plan.keep(dead_idx, f"consumer {mod_name} never runs in a forward")
            continue
        _consumer(model, plan, mod_name, block, calls, fold_borders)
    _balance(plan)


def fold_delta(model: nn.Module, plan: Plan, mod_name: str, block: int) -> torch.Tensor | None:
    """What the consumer's output loses when the removed channels go (float64), or None."""
    values = plan.values.get(mod_name)
    dead_idx = plan.dead_idx
    removed = plan.removed()[dead_idx]  # among dead channels
    if values is None or not removed.any():
        return None
    module = model.get_submodule(mod_name)
    if isinstance(module, nn.Linear):
        cols = _columns(dead_idx[removed], plan.group.offset(mod_name, "weight"), block)
        v = values[removed].reshape(-1).double()
        return module.weight.detach().double()[:, cols] @ v if v.any() else None
    rows = plan.map_rows[mod_name]
    if not (rows & removed).any():
        return None
    maps = plan.maps[mod_name][removed[rows]]  # maps exist for `rows`, in dead-channel order
    total = maps.sum(0)  # (O, *out_spatial)
    flat = total.flatten(1)
    return flat[:, 0] if bool(_spread_ok(flat.amin(1), flat.amax(1), _UNIFORM_TOL).all()) else total


def bn_after(graph: fx.Graph, model: nn.Module) -> dict[str, str]:
    """conv name -> the BatchNorm that is the sole user of its output (fold target)."""
    out: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if user.op == "call_module":
            bn = model.get_submodule(str(user.target))
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
                out[str(node.target)] = str(user.target)
    return out
