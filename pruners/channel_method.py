"""The ``channel`` method: dependency-aware channel pruning over the groups of ``pruners.channels``.

A target addresses a channel group through any member's weight name (a producer, or a depthwise
conv on its channels): a ResNet stream is one group (stem, every block's last conv, the shortcut
convs), a concatenation's parts stay separate groups, a grouped conv's channels go in equal
numbers from each conv group. A group's ratio is the parameter-weighted mean of its named
members' ratios; it removes exactly ``round(ratio * channels)`` channels (per conv group:
``round(ratio * channels / groups)``), ranked by an importance (``pruners.importance``: ``l1``
over every producer's filter by default, or ``taylor``). The masks cover the whole channel:
producers' filters and biases, followers (BatchNorm, depthwise convs) and the consumers' input
columns, so a removed channel outputs exactly 0 and costs nothing in the accounting either.

Masks are recomputed by ``pruners.step`` (schedules) from the groups, re-traced from
``options["input_shape"]`` when the model is new to this process (a reloaded checkpoint).
"""
from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from typing import Any, Optional

import torch
from torch import fx, nn

from pruners.channel_group import ChannelGroup
from pruners.channel_ops import UntraceableModel
from pruners.group_cache import cached_groups, model_groups
from pruners.importance import get_importance, taylor_gradients
from pruners.plan import GraphHooks, MaskPlan
from pruners.registry import register_method
from pruners.selection import count_for_ratio, keep_mask_lowest_removed
from pruners.structured import filter_mask
from pruners.targets import Target, require_ratio, scale_target
from pruners.weight_mask import modules_of

__all__ = ["channel_mask", "group_members"]

logger = logging.getLogger(__name__)

_DATA: "weakref.WeakKeyDictionary[nn.Module, tuple[list, Any]]" = weakref.WeakKeyDictionary()
# Models whose groups ``channel_plan`` has just traced: the first masks (``prepare``'s step, right
# after) need not check the groups again.
_JUST_PLANNED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def group_members(model: nn.Module, group: ChannelGroup, modules: Optional[dict[str, nn.Module]] = None) -> list[str]:
    """Weight names that address ``group``: its producers, and depthwise convs on its channels.

    ``modules``: the model's modules by name (``modules_of``), when the caller asks for many groups."""
    find = model.get_submodule if modules is None else (lambda n: modules[n] if n in modules else model.get_submodule(n))
    names = [f"{m}.weight" for m, p in group.producers if p == "weight"]
    names += [f"{m}.weight" for m, p in group.followers if p == "weight" and isinstance(find(m), nn.modules.conv._ConvNd)]
    return names


def _group_ratio(model: nn.Module, named: dict[str, float], modules: dict[str, nn.Module]) -> float:
    """The parameter-weighted mean of the named members' ratios."""
    find = lambda n: modules[n] if n in modules else model.get_submodule(n)  # noqa: E731
    sizes = {n: getattr(find(n.rpartition(".")[0]), "weight").numel() for n in named}
    total = sum(sizes.values())
    return sum(named[n] * sizes[n] for n in named) / total if total else 0.0


def _plan_group(model: nn.Module, group: ChannelGroup, ratio: float, options: dict[str, Any], plan: MaskPlan) -> None:
    """Producers get the group's ratio; biases, followers and consumers' columns follow their rows."""
    producers = [f"{m}.weight" for m, p in group.producers if p == "weight"]
    source = producers[0]
    for name in producers:
        plan.own(name, ratio, options)
    for mod_name, tensor in group.producers:
        if tensor == "bias":
            plan.follow(f"{mod_name}.bias", ((f"{mod_name}.weight", 0, 1),))
    for mod_name, tensor in group.followers:
        if tensor in ("weight", "bias"):
            plan.follow(f"{mod_name}.{tensor}", ((source, group.offset(mod_name, tensor), 1),))
    for mod_name, tensor, block in group.consumers:
        plan.follow(f"{mod_name}.{tensor}", reads=((source, group.offset(mod_name, tensor), block),))


def _options(options: dict[str, Any], model: nn.Module) -> str:
    """The importance name; Taylor's batches are kept for this model (never in checkpoints)."""
    importance = get_importance(options.pop("importance", "l1"))
    data, loss_fn = options.pop("data", None), options.pop("loss_fn", None)
    if options:
        raise ValueError(f"method 'channel' takes importance, data and loss_fn; got {', '.join(sorted(options))}")
    if importance.needs_grads:
        if data is None:
            raise ValueError(f"importance {importance.name!r} needs data=[(inputs, labels), ...] (a few batches)")
        _DATA[model] = (list(data), loss_fn)
    return importance.name


def _no_group_reason(model: nn.Module, name: str, graph: Optional[fx.Graph]) -> str:
    """Why no channel group holds ``name``'s output channels: the layer runs inside a module the tracer
    keeps whole (MultiheadAttention, a transformer layer), or the tracer cannot follow what it emits."""
    mod_name = name.rpartition(".")[0]
    calls = {str(n.target): n for n in graph.nodes if n.op == "call_module"} if graph is not None else {}
    if mod_name not in calls:
        outer = next((m for m in calls if mod_name.startswith(m + ".")), None)
        if outer is not None:
            return f"it runs inside {type(model.get_submodule(outer)).__name__} {outer}, which the channel tracer keeps whole"
        return "its output channels belong to no channel group the tracer found"
    node, module = calls[mod_name], model.get_submodule(mod_name)
    source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    meta = source.meta.get("tensor_meta") if source is not None else None
    rank = len(meta.shape) if hasattr(meta, "shape") else None
    if isinstance(module, nn.Linear) and rank not in (None, 2):
        return f"it is a Linear on a {rank}-D input (features last); the channel tracer follows channels along dim 1"
    if getattr(module, "transposed", False):
        return "it is a transposed conv, whose channels the channel tracer does not follow"
    return "its output channels belong to no channel group the tracer found"


def channel_plan(model: nn.Module, resolved: dict[str, Target], example_input: Optional[torch.Tensor], options: dict[str, Any]) -> MaskPlan:
    """Targets -> groups (through any member's name) -> every tensor the groups' channels live in.

    A model torch.fx cannot trace has no groups: every target is left dense with that reason."""
    if example_input is None:
        raise ValueError("method 'channel' traces the model: pass example_input= (a batch, e.g. torch.zeros(1, 3, 32, 32))")
    importance = _options(options, model)
    for name, target in resolved.items():
        require_ratio("channel", target)
    try:
        groups = model_groups(model, example_input)
    except UntraceableModel as exc:
        return MaskPlan(skipped={name: f"channel groups come from the model's graph, and {exc}" for name in resolved})
    _JUST_PLANNED.add(model)
    modules = dict(modules_of(model))
    where = {name: i for i, g in enumerate(groups) for name in group_members(model, g, modules)}
    plan = MaskPlan()
    named: dict[int, dict[str, float]] = defaultdict(dict)
    for name, target in resolved.items():
        ratio = require_ratio("channel", target)
        i = where.get(name)
        if i is None:  # the graph is looked up only for a name without a group (its signature walks the model)
            plan.skipped[name] = _no_group_reason(model, name, (cached_groups(model, example_input) or (None,))[0])
        elif not groups[i].free:
            plan.skipped[name] = f"its output channels are fixed: {groups[i].fixed_reason}"
        else:
            named[i][name] = ratio
    shape = [1, *example_input.shape[1:]]
    for i, members in named.items():
        ratio = _group_ratio(model, members, modules)
        if ratio > 0.0:
            _plan_group(model, groups[i], ratio, {"input_shape": shape, "importance": importance}, plan)
    return plan


def _keep(scores: torch.Tensor, ratio: float, chunks: int) -> torch.Tensor:
    """Exactly ``round(ratio * channels)`` lowest scores removed (per conv group for a grouped conv)."""
    per = scores.numel() // chunks
    return keep_mask_lowest_removed(scores.reshape(chunks, per), count_for_ratio(ratio, per)).reshape(-1)


def channel_masks(model: nn.Module, own: dict[str, tuple], fraction: float) -> dict[str, torch.Tensor]:
    """Producer masks of every targeted group at ``fraction`` of its ratio, ranked over the whole group
    (rows, broadcast along the other dims by ``step``)."""
    first = next(iter(own.values()))[2]
    shape = first.options.get("input_shape")
    if not shape:
        raise ValueError("channel masks without an input_shape option cannot find their groups")
    checked = model in _JUST_PLANNED
    _JUST_PLANNED.discard(model)
    groups = model_groups(model, torch.zeros(list(shape), device=first.mask.device), checked=checked)
    importance = get_importance(first.options.get("importance", "l1"))
    modules = dict(modules_of(model))
    targeted = [g for g in groups if g.free and any(n in own for n in group_members(model, g, modules))]
    grads = None
    if importance.needs_grads:
        data, loss_fn = _DATA.get(model, (None, None))
        if data is None:
            raise ValueError(f"importance {importance.name!r} needs data: prepare(..., data=[(x, y), ...]) on this model")
        names = [f"{m}.{p}" for g in targeted for m, p in g.producers + g.followers if p in ("weight", "bias")]
        grads = taylor_gradients(model, names, data, loss_fn)
    out: dict[str, torch.Tensor] = {}
    for g in targeted:
        mine = [n for n, p in ((f"{m}.weight", p) for m, p in g.producers) if p == "weight" and n in own]
        if not mine:
            continue
        ratio = max(float(scale_target(own[n][2].target, fraction)) for n in mine)
        keep = _keep(importance.fn(model, g, grads), ratio, g.chunks) if ratio > 0 else torch.ones(g.size, dtype=torch.bool)
        keep = keep.to(first.mask.device)
        for n in mine:
            out[n] = keep.view(-1, *([1] * (own[n][2].mask.dim() - 1)))
    missing = set(own) - set(out)
    if missing:
        logger.warning("channel: %d masked weight(s) are in no free group any more, left dense: %s", len(missing), sorted(missing)[:5])
    return out


def _skip(shape: torch.Size, target: Target) -> Optional[str]:
    require_ratio("channel", target)
    return None


@register_method("channel", skip=_skip, kills_channels=True, graph=GraphHooks(channel_plan, channel_masks))
def channel_mask(weight: torch.Tensor, target: Target, **options: object) -> torch.Tensor:
    """Dependency-aware channel pruning: whole channel groups (residual streams, concatenations,
    depthwise and grouped convs) ranked by L1 over every producer; alone, a weight is its own group."""
    return filter_mask(weight, require_ratio("channel", target))
