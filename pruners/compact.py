"""Compaction: a physically smaller dense model that computes exactly what the masked model does.

A channel of a free group (``pruners.channels``) is *dead* when every producer's weight row for
it is zero (a pruned filter; also a stripe-, pattern- or irregular-pruned filter that lost all
its weights). Masks from ``filter``, ``stripe`` and ``channel`` also mask what follows a dead
filter (bias, BatchNorm, depthwise conv), so the channel outputs exactly 0 and goes as it is, at
any input size; a mask that left those alone (an older checkpoint) leaves a constant, folded into
the consumers where that is exact (``pruners.compact_fold``).

The result is built without copying the masked model's tensors: its module tree is copied and
the masked tensors become their effective values. One traced forward of that copy on a seeded
probe batch does the rest: its graph gives the groups, its output is the masked model's (the same
function) that the result must match, and each consumer's input channels are measured on the
way. Every dead channel is then cut from every tensor in one pass. A forward of the result on the probe checks it
(``CompactReport.max_abs_diff``). Zeros inside kept filters (irregular, pattern, N:M masks) stay
in place: dense kernels gain no speed from them.
"""
from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from pruners.channel_group import ChannelGroup, keep_channels
from pruners.channel_ops import UntraceableModel, graph_of
from pruners.channels import groups_of, trace_run
from pruners.group_cache import cached_groups
from pruners.compact_fold import BiasMapConv2d, ChannelStats, Plan, analyse, bn_after, fold_delta
from pruners.followers import rows_alive
from pruners.mask_register import is_parametrized
from pruners.weight_mask import WeightMask, is_masked, modules_of, squash

__all__ = ["BiasMapConv2d", "CompactReport", "compact", "dead_channels", "squashed_copy", "zero_weights"]

logger = logging.getLogger(__name__)


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


def dead_channels(model: nn.Module, group: ChannelGroup, masked: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """Bool per channel: its weight row is zero in every producer (False if none produce it).

    ``masked``: producer weight name -> the rows its enforced mask removes (``masked_dead_rows``),
    read instead of the weights: a bool mask is a quarter of the bytes and one reduction, not two.
    A row its mask keeps but whose weights are all zero then stays (fewer channels go; none wrongly)."""
    producers = [m for m, p in group.producers if p == "weight"]
    if not producers:
        return torch.zeros(group.size, dtype=torch.bool)
    dead = torch.ones(group.size, dtype=torch.bool)
    for m in producers:
        known = masked.get(f"{m}.weight") if masked else None
        if known is not None:
            dead &= known
            continue
        rows = model.get_submodule(m).weight.detach().flatten(1)
        dead &= ((rows.amax(1) == 0) & (rows.amin(1) == 0)).cpu()  # two reductions beat (rows == 0).all(1)
    return dead


def masked_dead_rows(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weight name -> the output rows its enforced mask removes entirely (its effective rows of zeros)."""
    return {f"{mod_name}.weight": ~rows_alive(wm.mask).cpu()
            for mod_name, module in modules_of(model) if is_parametrized(module, "weight")
            for wm in module.parametrizations["weight"] if isinstance(wm, WeightMask) and wm.mask.dim() > 1 and bool(wm.enforced)}  # fmt: skip


def zero_weights(model: nn.Module) -> int:
    """Zero entries in conv/linear weights: sparsity a dense kernel still multiplies by."""
    mods = (nn.modules.conv._ConvNd, nn.Linear)  # count_nonzero: ~4x faster than (w == 0).sum()
    return sum(m.weight.numel() - int(torch.count_nonzero(m.weight.detach())) for m in model.modules() if isinstance(m, mods))


def _effective(module: nn.Module, name: str) -> torch.Tensor:
    """The value a parametrized tensor has in the forward: ``original * mask`` for enforced masks.

    It may share the original's storage (a mask ``step`` has just applied to it): ``_unshare``
    clones what the copy still shares once compaction has cut it."""
    plist = module.parametrizations[name]
    if not all(isinstance(p, WeightMask) for p in plist):
        return getattr(module, name).detach()
    value = plist.original.detach()
    for wm in plist:
        value = wm.effective(value)
    return value


_PLAIN_CONTAINERS = frozenset({dict, OrderedDict, set, list})


def _copied(value: object) -> object:
    """A module attribute for the copy: containers (parameters, buffers, hooks...) copied, the rest shared."""
    if type(value) in _PLAIN_CONTAINERS:
        return value.copy()  # type: ignore[attr-defined]
    return type(value)(value) if isinstance(value, (dict, set, list)) else value


def _copy_tree(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    """``module`` with its submodules copied and its tensors shared; a masked tensor becomes a plain
    parameter holding its effective value (a new tensor), and the module its class before masking."""
    if id(module) in memo:
        return memo[id(module)]
    masked = is_parametrized(module)
    # The class torch made for a parametrized module is shared with every copy of it: the copy
    # takes the class before parametrization instead.
    cls = type(module).__bases__[0] if masked else type(module)
    new = cls.__new__(cls)
    memo[id(module)] = new
    new.__dict__.update({k: _copied(v) for k, v in module.__dict__.items()})  # not through Module.__setattr__
    if masked:  # masked tensors first, as weight and bias were before masking moved them out
        del new._modules["parametrizations"]
        unmasked = new._parameters
        new._parameters = {name: nn.Parameter(_effective(module, name), plist.original.requires_grad)
                           for name, plist in module.parametrizations.items()}  # fmt: skip
        new._parameters.update(unmasked)
    for key, child in new._modules.items():
        if child is not None:
            new._modules[key] = _copy_tree(child, memo)
    return new


def _structural_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares the tensors of ``model``; masked tensors become
    their effective values (new tensors). ``model`` keeps its masks."""
    return _copy_tree(model, {})


def squashed_copy(model: nn.Module) -> nn.Module:
    """A copy with every parametrization (mask) applied and removed, sharing no tensor with ``model``.

    Not ``squash(copy.deepcopy(model))``: a deep copy shares the class torch creates for a
    parametrized module, and removing the parametrization from the copy deletes the ``weight``
    property from that shared class, so the original loses its weight.
    """
    out = _structural_copy(model)
    _unshare(out, model)
    return out


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _unshare(work: nn.Module, model: nn.Module) -> None:
    """Clone the tensors ``work`` still shares storage with in ``model`` (masks' originals included),
    so neither changes the other."""
    shared = {_storage(t) for m in model.modules() for t in (*m._parameters.values(), *m._buffers.values()) if t is not None}
    shared.discard(0)  # empty tensors have no storage to share
    for _, module in modules_of(work):
        for name, p in list(module._parameters.items()):
            if p is not None and _storage(p) in shared:
                module._parameters[name] = nn.Parameter(p.detach().clone(), p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None and _storage(b) in shared:
                module._buffers[name] = b.clone()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _producer_label(group: ChannelGroup) -> str:
    return group.producers[0][0] + (f" (+{len({m for m, _ in group.producers}) - 1})" if len(group.producers) > 2 else "")


def _probe(example_input: torch.Tensor, probe_batch: int, seed: int) -> torch.Tensor:
    """A seeded random batch: constants are read from it, and the result is checked on it."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((probe_batch, *example_input.shape[1:]), generator=gen).to(example_input)


def _apply_delta(work: nn.Module, mod_name: str, delta: torch.Tensor, bn_of: dict[str, str],
                 groups: list[ChannelGroup], report: CompactReport) -> None:
    """Fold what removed constant channels gave ``mod_name``; new tensors, never in place."""
    module = work.get_submodule(mod_name)
    if delta.dim() > 1:  # position-dependent (fold_borders): a bias map on the conv
        if isinstance(module, BiasMapConv2d):
            module.bias_map = module.bias_map + delta.to(module.bias_map.dtype)
            return
        module.__class__ = BiasMapConv2d
        module.register_buffer("bias_map", delta.to(module.weight.dtype))
        report.bias_maps.append(mod_name)
        _travels_with_outputs(groups, mod_name, "bias_map")
    elif module.bias is not None:
        module.bias = nn.Parameter(module.bias.detach() + delta.to(module.bias.dtype), module.bias.requires_grad)
    elif mod_name in bn_of:
        bn = work.get_submodule(bn_of[mod_name])
        bn.running_mean = bn.running_mean - delta.to(bn.running_mean.dtype)
    else:
        module.bias = nn.Parameter(delta.to(module.weight.dtype))
        report.biases_added.append(mod_name)
        _travels_with_outputs(groups, mod_name, "bias")


def _travels_with_outputs(groups: list[ChannelGroup], mod_name: str, tensor: str) -> None:
    """A tensor added to a layer is sliced with the layer's output channels from now on."""
    for g in groups:
        if (mod_name, "weight") in g.producers:
            g.producers.append((mod_name, tensor))


def _fold(work: nn.Module, plans: list[Plan], stats: ChannelStats, graph: torch.fx.Graph,
          groups: list[ChannelGroup], fold_borders: bool, report: CompactReport) -> None:
    """Decide per group which dead channels go; fold the constants those leave behind.

    Every delta is computed before any is applied: each reads the consumers' unsliced weights.
    """
    deltas = []
    for plan in plans:
        analyse(work, plan, stats, fold_borders)
        for mod_name, _, block in plan.group.consumers:
            delta = fold_delta(work, plan, mod_name, block)
            if delta is not None:
                deltas.append((mod_name, delta))
    bn_of = bn_after(graph, work) if deltas else {}
    with torch.no_grad():
        for mod_name, delta in deltas:
            _apply_delta(work, mod_name, delta, bn_of, groups, report)


def _cut(work: nn.Module, plans: list[Plan], report: CompactReport) -> None:
    """Slice every removed channel out of every tensor at once, recording per group what went and what stayed."""
    cuts = []
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
            cuts.append((plan.group, (~removed).nonzero().flatten()))
    keep_channels(work, cuts)


def _observed_forward(work: nn.Module, probe: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """The plain forward, ``stats`` measuring every conv/linear input on the way (groups already known)."""
    hooks = []
    for name, module in work.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            node = _Named(name)
            hooks.append(module.register_forward_pre_hook(lambda m, args, node=node: stats.observe(node, m, args[0])))
    try:
        return work(probe)
    finally:
        for h in hooks:
            h.remove()


class _Named:
    """What ``ChannelStats.observe`` reads of an fx node: the module's name as ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target


def _check(work: nn.Module, probe: torch.Tensor, expected: torch.Tensor, report: CompactReport) -> None:
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
    probe_batch: int = 1,
    seed: int = 0,
) -> tuple[nn.Module, CompactReport]:
    """A dense model without the removable dead channels of ``model`` (masked or plain), in eval mode.

    ``model`` is left untouched unless ``inplace`` (then it becomes the result). The result is
    checked against the masked model on a random probe batch (``report.max_abs_diff``).
    ``fold_borders`` also removes dead channels whose constant (masks that kept BatchNorm alive)
    a padded conv sees differently at the borders, via per-position bias maps: the result then
    runs at ``example_input``'s spatial size only. A model torch.fx cannot trace is a ValueError
    (``pruners.channel_ops.UntraceableModel``) that says why.
    """
    probe = _probe(example_input, probe_batch, seed)
    hit = cached_groups(model, probe)  # the channel method's own trace of this model
    masked = masked_dead_rows(model)  # read before squash removes the masks
    work = (squash(model) if is_masked(model) else model) if inplace else _structural_copy(model)
    work.eval()
    stats = ChannelStats()
    if hit is not None:
        graph, groups = hit[0], copy.deepcopy(hit[1])
        expected = _observed_forward(work, probe, stats)
    else:
        try:  # the copy computes the masked model's function, without masks to apply
            graph, expected = trace_run(work, probe, stats.observe, graph=graph_of(model))
        except UntraceableModel as exc:
            raise UntraceableModel(f"cannot compact: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 -- the graph runs user code: any failure means no compaction
            cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"cannot compact {type(model).__name__}: its traced forward failed ({cause})") from exc
        groups = groups_of(graph, work)
    report = CompactReport(params_before=_params(work))
    plans = [Plan(g, d) for g in groups if g.free and (d := dead_channels(work, g, masked)).any()]
    _fold(work, plans, stats, graph, groups, fold_borders, report)
    _cut(work, plans, report)
    if not inplace:
        _unshare(work, model)
    _check(work, probe, expected, report)
    return work, report
