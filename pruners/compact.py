"""Compaction: a physically smaller dense model that computes exactly what the masked model does.

A channel of a free group (``pruners.channels``) is *dead* when every producer's weight row for
it is zero (a pruned filter; also a stripe-, pattern- or irregular-pruned filter that lost all
its weights). A dead channel does not vanish: its producer still adds its bias, BatchNorm turns
that into a constant, ReLU keeps or clips it, and every consumer still reads that constant. So
removal is exact only if the constant is folded into what the consumer computes:

* Linear consumer: ``bias += W[:, cols] @ value`` (one value per flattened column);
* Conv consumer: the constant's contribution is ``conv(constant image)``; where zero padding
  makes it differ at the borders (a non-zero constant under a padded kernel), no bias can hold
  it and the channel is *kept* (reported) -- unless ``fold_borders=True``, which stores that
  contribution as a per-position ``bias_map`` buffer of the conv (``BiasMapConv2d``): exact,
  but only at the input size compacted for. A position-independent contribution is added to
  the conv's bias or, for a bias-free conv feeding only a BatchNorm, subtracted from that
  BN's ``running_mean`` (eval-exact; train-mode BN is shift-invariant); a bias is created only
  as a last resort.

The constants are read from one forward of the squashed model on a random probe batch (two
samples; a value must agree across samples and positions, else the channel stays). Channels
whose weights are zero but whose constant cannot be folded, and channels of fixed groups,
stay: ``CompactReport.kept_dead`` says why. Zeros inside kept filters (irregular, pattern,
N:M masks) stay in place: dense kernels gain no speed from them.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from pruners.channels import ChannelGroup, channel_groups, index_channels, trace
from pruners.masking import is_masked, squash

__all__ = ["BiasMapConv2d", "CompactReport", "compact", "dead_channels", "squashed_copy", "zero_weights"]

logger = logging.getLogger(__name__)

_CONST_TOL = 1e-6  # relative spread allowed for "the same value everywhere" (float32 pipeline)
_UNIFORM_TOL = 1e-9  # relative spread of a float64 contribution map still called uniform


@dataclass
class CompactReport:
    """What ``compact`` removed and kept, and how close the result is to the masked model."""

    params_before: int = 0
    params_after: int = 0
    channels_dead: int = 0  # dead in every producer of a free group
    channels_removed: int = 0
    kept_dead: dict[str, int] = field(default_factory=dict)  # reason -> dead channels kept
    groups: list[dict] = field(default_factory=list)  # per group with dead channels
    biases_added: list[str] = field(default_factory=list)
    bias_maps: list[str] = field(default_factory=list)  # convs given a per-position bias (fold_borders)
    zeros_remaining: int = 0  # zero conv/linear weights left inside the compact model
    max_abs_diff: float = float("nan")  # compact vs masked model on the probe batch (eval)


class BiasMapConv2d(nn.Conv2d):
    """A Conv2d plus a fixed per-position bias ``bias_map`` (out_channels, H, W): what removed
    constant channels contributed through zero padding. Valid at one input size only."""

    bias_map: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.bias_map


def dead_channels(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Bool per channel: its weight row is zero in every producer (False if none produce it)."""
    weights = [model.get_submodule(m).weight for m, p in group.producers if p == "weight"]
    if not weights:
        return torch.zeros(group.size, dtype=torch.bool)
    dead = torch.ones(group.size, dtype=torch.bool)
    for w in weights:
        dead &= (w.detach().flatten(1) == 0).all(1).cpu()
    return dead


def zero_weights(model: nn.Module) -> int:
    """Zero entries in conv/linear weights: sparsity a dense kernel still multiplies by."""
    mods = (nn.modules.conv._ConvNd, nn.Linear)
    return sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, mods))


def squashed_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every parametrization (mask) applied and removed; ``model`` keeps its masks.

    Not ``squash(copy.deepcopy(model))``: a deep copy shares the class torch creates for a
    parametrized module, and removing the parametrization from the copy deletes the ``weight``
    property from that shared class, so the original loses its weight.
    """
    out = copy.deepcopy(model)
    for module in out.modules():
        if not parametrize.is_parametrized(module):
            continue
        values = {}
        for name, plist in module.parametrizations.items():
            values[name] = nn.Parameter(getattr(module, name).detach().clone(), plist.original.requires_grad)
        module.__class__ = type(module).__bases__[0]  # the class before parametrization
        del module._modules["parametrizations"]
        for name, value in values.items():
            module.register_parameter(name, value)
    return out


def _spread_ok(t: torch.Tensor, dim: int, tol: float) -> torch.Tensor:
    hi, lo = t.amax(dim), t.amin(dim)
    return (hi - lo) <= tol * hi.abs().clamp_min(1.0)


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


class _Plan:
    """One group's decision: which dead channels go, and what each consumer must absorb."""

    def __init__(self, group: ChannelGroup, dead: torch.Tensor) -> None:
        self.group, self.dead = group, dead
        self.keep_reason: dict[int, str] = {}
        self.values: dict[str, torch.Tensor] = {}  # consumer -> per dead channel value(s)
        self.maps: dict[str, torch.Tensor] = {}  # conv consumer -> contribution maps (float64)
        self.map_rows: dict[str, torch.Tensor] = {}  # which dead channels those maps are for

    def keep(self, channels, reason: str) -> None:
        for c in channels:
            self.keep_reason.setdefault(int(c), reason)

    def removed(self) -> torch.Tensor:
        out = self.dead.clone()
        out[list(self.keep_reason)] = False
        return out


def _analyse(model: nn.Module, plan: _Plan, captured: dict[str, list[torch.Tensor]], fold_borders: bool) -> None:
    """Read each consumer's constant per dead channel; keep channels that cannot be folded."""
    dead_idx = plan.dead.nonzero().flatten()
    for mod_name, _, block in plan.group.consumers:
        xs = captured.get(mod_name, [])
        if len(xs) != 1:
            plan.keep(dead_idx, f"consumer {mod_name} runs {len(xs)} times per forward")
            continue
        x, module = xs[0], model.get_submodule(mod_name)
        if isinstance(module, nn.Linear):
            t = x.reshape(x.shape[0], -1, block)[:, dead_idx]  # (N, D, block)
            const = _spread_ok(t, 0, _CONST_TOL).all(1)
            plan.values[mod_name] = t[0]
        else:
            t = x.transpose(0, 1)[dead_idx].reshape(len(dead_idx), -1)  # (D, N*positions)
            const = _spread_ok(t, 1, _CONST_TOL)
            plan.values[mod_name] = t[:, 0]
            nonzero = (plan.values[mod_name] != 0) & const
            maps = _conv_maps(module, plan.values[mod_name][nonzero], dead_idx[nonzero], tuple(x.shape[2:]))
            plan.maps[mod_name], plan.map_rows[mod_name] = maps, nonzero
            uniform = torch.ones(len(dead_idx), dtype=torch.bool)
            uniform[nonzero] = _spread_ok(maps.flatten(2), 2, _UNIFORM_TOL).all(1)
            if not (fold_borders and type(module) in (nn.Conv2d, BiasMapConv2d)):
                plan.keep(dead_idx[~uniform], f"zero padding of {mod_name} makes a constant channel position-dependent")
        plan.keep(dead_idx[~const], f"input of {mod_name} is not constant (e.g. after a padded depthwise conv)")
    if plan.dead.all() and not plan.keep_reason:
        plan.keep(dead_idx[:1], "a group keeps at least one channel")


def _fold_delta(model: nn.Module, plan: _Plan, mod_name: str, block: int) -> torch.Tensor | None:
    """What the consumer's output loses when the removed channels go (float64), or None."""
    dead_idx = plan.dead.nonzero().flatten()
    removed = plan.removed()[dead_idx]  # among dead channels
    values = plan.values.get(mod_name)
    if values is None or not removed.any():
        return None
    module = model.get_submodule(mod_name)
    if isinstance(module, nn.Linear):
        cols = (dead_idx[removed][:, None] * block + torch.arange(block)).reshape(-1)
        v = values[removed].reshape(-1).double()
        return module.weight.detach().double()[:, cols] @ v if v.any() else None
    rows = plan.map_rows[mod_name]
    if not (rows & removed).any():
        return None
    maps = plan.maps[mod_name][removed[rows]]  # maps exist for `rows`, in dead-channel order
    total = maps.sum(0)  # (O, *out_spatial)
    return total.flatten(1)[:, 0] if bool(_spread_ok(total.flatten(1), 1, _UNIFORM_TOL).all()) else total


def _bn_after(gm: torch.fx.GraphModule) -> dict[str, str]:
    """conv name -> the BatchNorm that is the sole user of its output (fold target)."""
    out: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if user.op == "call_module":
            bn = gm.get_submodule(user.target)
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
                out[str(node.target)] = str(user.target)
    return out


def _apply_delta(model: nn.Module, mod_name: str, delta: torch.Tensor, bn_after: dict[str, str],
                 groups: list[ChannelGroup], report: CompactReport) -> None:
    module = model.get_submodule(mod_name)
    with torch.no_grad():
        if delta.dim() > 1:  # position-dependent (fold_borders): a bias map on the conv
            if isinstance(module, BiasMapConv2d):
                module.bias_map.add_(delta.to(module.bias_map.dtype))
                return
            module.__class__ = BiasMapConv2d
            module.register_buffer("bias_map", delta.to(module.weight.dtype))
            report.bias_maps.append(mod_name)
            _travels_with_outputs(groups, mod_name, "bias_map")
        elif module.bias is not None:
            module.bias.add_(delta.to(module.bias.dtype))
        elif mod_name in bn_after:
            bn = model.get_submodule(bn_after[mod_name])
            bn.running_mean.sub_(delta.to(bn.running_mean.dtype))
        else:
            module.bias = nn.Parameter(delta.to(module.weight.dtype))
            report.biases_added.append(mod_name)
            _travels_with_outputs(groups, mod_name, "bias")


def _travels_with_outputs(groups: list[ChannelGroup], mod_name: str, tensor: str) -> None:
    """A tensor added to a layer is sliced with the layer's output channels from now on."""
    for g in groups:
        if (mod_name, "weight") in g.producers:
            g.producers.append((mod_name, tensor))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _producer_label(group: ChannelGroup) -> str:
    return group.producers[0][0] + (f" (+{len({m for m, _ in group.producers}) - 1})" if len(group.producers) > 2 else "")


def _working_model(model: nn.Module, inplace: bool) -> nn.Module:
    """The model to cut, in eval mode, masks applied and removed: the result is a plain dense model,
    and ``model`` keeps its masks unless ``inplace``."""
    if inplace:
        work = squash(model) if is_masked(model) else model
    else:
        work = squashed_copy(model)
    return work.eval()


def _probe(example_input: torch.Tensor, probe_batch: int, seed: int) -> torch.Tensor:
    """A seeded random batch: constants are read from it, and the result is checked on it."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((probe_batch, *example_input.shape[1:]), generator=gen).to(example_input)


def _groups_or_explain(work: nn.Module, example_input: torch.Tensor, model: nn.Module) -> list[ChannelGroup]:
    """The channel groups; a model fx cannot trace (data-dependent Python) is a plain ValueError."""
    try:
        return channel_groups(work, example_input)
    except Exception as exc:
        raise ValueError(f"cannot compact {type(model).__name__}: torch.fx tracing failed ({exc})") from exc


def _forward_capturing_consumer_inputs(
    work: nn.Module, plans: list[_Plan], probe: torch.Tensor
) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
    """(consumer -> its inputs, output) of one forward: the dead channels' constants are in those inputs."""
    captured: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name in {c for p in plans for c, _, _ in p.group.consumers}:
        hook = lambda _m, args, name=name: captured.setdefault(name, []).append(args[0].detach())
        hooks.append(work.get_submodule(name).register_forward_pre_hook(hook))
    try:
        expected = work(probe)
    finally:
        for h in hooks:
            h.remove()
    return captured, expected


def _plan_folds(
    work: nn.Module, plans: list[_Plan], captured: dict[str, list[torch.Tensor]], fold_borders: bool
) -> list[tuple[str, torch.Tensor]]:
    """Decide per group which dead channels go, and what each consumer must absorb for them.

    Every delta is computed before any is applied or any channel is cut: each one reads the
    consumers' unsliced weights.
    """
    deltas = []
    for plan in plans:
        _analyse(work, plan, captured, fold_borders)
        for mod_name, _, block in plan.group.consumers:
            delta = _fold_delta(work, plan, mod_name, block)
            if delta is not None:
                deltas.append((mod_name, delta))
    return deltas


def _cut_removed_channels(work: nn.Module, plans: list[_Plan], report: CompactReport) -> None:
    """Slice the removed channels out of every group, recording per group what went and what stayed."""
    for plan in plans:
        removed = plan.removed()
        report.channels_dead += int(plan.dead.sum())
        report.channels_removed += int(removed.sum())
        for reason in plan.keep_reason.values():
            report.kept_dead[reason] = report.kept_dead.get(reason, 0) + 1
        report.groups.append({
            "producer": _producer_label(plan.group), "size": plan.group.size,
            "dead": int(plan.dead.sum()), "removed": int(removed.sum()),
        })  # fmt: skip
        if removed.any():
            index_channels(work, plan.group, (~removed).nonzero().flatten())


def _check_against_masked(work: nn.Module, probe: torch.Tensor, expected: torch.Tensor, report: CompactReport) -> None:
    """Sizes after compaction, and the largest output difference on the probe: the proof of exactness."""
    report.params_after = _params(work)
    report.zeros_remaining = zero_weights(work)
    report.max_abs_diff = float((work(probe) - expected).abs().max()) if expected.numel() else 0.0
    logger.info(
        "compact: removed %d of %d dead channels, params %d -> %d, max |diff| %.3g; kept: %s",
        report.channels_removed, report.channels_dead, report.params_before, report.params_after,
        report.max_abs_diff, report.kept_dead or "none",
    )


@torch.no_grad()
def compact(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    inplace: bool = False,
    fold_borders: bool = False,
    probe_batch: int = 2,
    seed: int = 0,
) -> tuple[nn.Module, CompactReport]:
    """A dense model without the removable dead channels of ``model`` (masked or plain), in eval mode.

    ``model`` is left untouched unless ``inplace``; a masked copy is squashed first. The result
    is checked against the masked model on a random probe batch (``report.max_abs_diff``).
    ``fold_borders`` also removes dead channels whose constant a padded conv sees differently
    at the borders, via per-position bias maps: the result then runs at ``example_input``'s
    spatial size only.
    """
    work = _working_model(model, inplace)
    probe = _probe(example_input, probe_batch, seed)
    report = CompactReport(params_before=_params(work))
    groups = _groups_or_explain(work, example_input, model)
    plans = [_Plan(g, d) for g in groups if g.free and (d := dead_channels(work, g)).any()]
    captured, expected = _forward_capturing_consumer_inputs(work, plans, probe)
    bn_after = _bn_after(trace(work, example_input)) if plans else {}
    for mod_name, delta in _plan_folds(work, plans, captured, fold_borders):
        _apply_delta(work, mod_name, delta, bn_after, groups, report)
    _cut_removed_channels(work, plans, report)
    _check_against_masked(work, probe, expected, report)
    return work, report
