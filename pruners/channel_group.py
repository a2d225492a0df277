"""What a channel group is, and cutting or reordering groups in place (``keep_channels``).

A group lists every tensor whose channel dimension must change together: producers emit the
channels (conv/linear ``weight`` and ``bias``, dim 0), followers carry one value per channel
(BatchNorm, depthwise convs, PReLU; dim 0), consumers read them (dim 1 of the next conv/linear,
in blocks of ``block`` inputs after a flatten). After a concatenation a follower or consumer
holds the group's channels from ``offsets[(module, param)]`` on; a grouped conv reads or emits
them in ``chunks`` equal parts, so a cut must take the same number from every part.
``pruners.channels`` finds the groups of a model.

Masked models work as they are: a parametrized weight is indexed through its ``original`` and
every mask buffer of its parametrizations, so masks stay aligned (no need to ``squash`` first).
All groups of one cut are applied together, each tensor indexed once: offsets into a
concatenation stay valid however many of its parts shrink.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from pruners.mask_register import is_parametrized

__all__ = ["ChannelGroup", "index_channels", "is_depthwise", "keep_channels"]

Entry = tuple[str, str]  # (module name, tensor name)


@dataclass
class ChannelGroup:
    """Channels that must be removed or reordered together, or the network computes something else."""

    size: int  # number of channels in the group
    producers: list[tuple[str, str]] = field(default_factory=list)  # (module, param): dim 0 emits
    followers: list[tuple[str, str]] = field(default_factory=list)  # per-channel params/buffers, dim 0
    consumers: list[tuple[str, str, int]] = field(default_factory=list)  # (module, param, block): dim 1 reads
    residual: bool = False  # joined through an add: every producer feeding the add is here
    fixed_reason: str | None = None  # why the group must not change; None if free
    offsets: dict[Entry, int] = field(default_factory=dict)  # follower/consumer -> first channel, if not 0
    chunks: int = 1  # grouped convs split the channels in this many equal parts

    @property
    def free(self) -> bool:
        return self.fixed_reason is None

    def offset(self, module: str, param: str) -> int:
        return self.offsets.get((module, param), 0)


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every output channel reads exactly its own input channel."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and not module.transposed
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _is_grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not is_depthwise(module)


@dataclass
class _Cut:
    """The new order of one tensor's dim 0 and dim 1, assembled from every group that touches it."""

    segments: dict[int, list[tuple[int, int, torch.Tensor]]] = field(default_factory=lambda: defaultdict(list))
    block: int = 1  # dim 1 inputs per channel (after a flatten)

    def index(self, dim: int, length: int) -> torch.Tensor | None:
        """Positions kept along ``dim`` (channel units), in their new order; None if untouched."""
        segs = sorted(self.segments.get(dim, []), key=lambda s: s[0])
        if not segs:
            return None
        if len(segs) == 1 and segs[0][0] == 0 and segs[0][1] == length:
            return segs[0][2]  # one group spans the whole dim (the usual case)
        pieces, pos = [], 0
        for start, size, idx in segs:
            if start < pos or start + size > length:
                raise ValueError(f"channel segments overlap or overrun a dimension of {length}")
            pieces += [torch.arange(pos, start), start + idx]
            pos = start + size
        pieces.append(torch.arange(pos, length))
        return torch.cat(pieces)


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    if is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def _columns(index: torch.Tensor, block: int) -> torch.Tensor:
    """A consumer's input columns for channel ``index``: after a flatten, each channel is ``block`` columns."""
    if block == 1:
        return index
    return (index[:, None] * block + torch.arange(block)).reshape(-1)


def _grouped_columns(channels: torch.Tensor, groups: int, in_old: int) -> torch.Tensor:
    """(groups, kept per group): the local input columns each conv group keeps, in their new order."""
    per = in_old // groups
    part = channels // per
    if channels.numel() % groups == 0 and bool((part[1:] >= part[:-1]).all()):
        # In part order (keep_channels checks it): each group's columns are one run, no loop over groups.
        if bool((torch.bincount(part, minlength=groups) == channels.numel() // groups).all()):
            return (channels - part * per).reshape(groups, -1)
    local = [channels[part == q] - q * per for q in range(groups)]
    if len({int(x.numel()) for x in local}) != 1:
        raise ValueError(f"a grouped conv ({groups} groups) must keep the same number of input channels in every group")
    return torch.stack(local)


def _take(t: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None, grouped: tuple[int, int, int] | None) -> torch.Tensor:
    """``t`` with dim-0 ``rows`` and dim-1 ``cols`` kept; a grouped conv's columns are per conv group."""
    out = t.detach()
    row_src = torch.arange(t.shape[0]) if rows is None else rows
    if rows is not None:
        out = out.index_select(0, rows.to(out.device))
    if cols is None:
        return out
    if grouped is None:
        return out.index_select(1, cols.to(out.device))
    groups, in_old, out_old = grouped
    local = _grouped_columns(cols, groups, in_old)  # (groups, kept)
    group_of_row = row_src // (out_old // groups)
    idx = local[group_of_row].to(out.device)  # (rows, kept)
    idx = idx.reshape(*idx.shape, *([1] * (out.dim() - 2))).expand(-1, -1, *out.shape[2:])
    return out.gather(1, idx)


def _replace(module: nn.Module, name: str, rows: torch.Tensor | None, cols: torch.Tensor | None,
             grouped: tuple[int, int, int] | None) -> None:
    """Index ``module.<name>`` (and every mask of a parametrized one) in place."""
    if is_parametrized(module, name):
        plist = module.parametrizations[name]
        old = plist.original
        plist.original = nn.Parameter(_take(old, rows, cols, grouped), old.requires_grad)
        for p in plist:
            mask = getattr(p, "mask", None)
            if not isinstance(mask, torch.Tensor) or mask.shape != old.shape:
                raise ValueError(f"cannot slice {name!r}: parametrization {type(p).__name__} is not a mask")
            p.mask = _take(mask, rows, cols, grouped)
        return
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(_take(old, rows, cols, grouped), old.requires_grad)
    else:
        module._buffers[name] = _take(module._buffers[name], rows, cols, grouped)


def _update_sizes(module: nn.Module, was_depthwise: bool) -> None:
    """Shape attributes follow the sliced tensors."""
    if isinstance(module, nn.modules.conv._ConvNd):
        w = _tensor(module, "weight")
        if was_depthwise:
            module.in_channels = module.out_channels = module.groups = w.shape[0]
        else:
            module.out_channels = w.shape[0]
            module.in_channels = w.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        w = _tensor(module, "weight")
        module.out_features, module.in_features = w.shape[0], w.shape[1]
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        ref = module.running_mean if module.running_mean is not None else _tensor(module, "weight")
        module.num_features = ref.shape[0]
    elif isinstance(module, nn.PReLU):
        module.num_parameters = _tensor(module, "weight").numel()


def _check_index(group: ChannelGroup, index: torch.Tensor) -> None:
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= group.size):
        raise ValueError(f"index out of range for a group of {group.size} channels")
    if index.unique().numel() != index.numel():
        raise ValueError("index repeats a channel")
    if group.chunks > 1:
        per = group.size // group.chunks
        counts = torch.bincount(index // per, minlength=group.chunks)
        if counts.unique().numel() != 1 or bool(((index // per)[1:] < (index // per)[:-1]).any()):
            raise ValueError(f"a group read by a grouped conv keeps the same number of channels in each of its "
                             f"{group.chunks} parts, in part order")  # fmt: skip


def keep_channels(model: nn.Module, cuts: Sequence[tuple[ChannelGroup, torch.Tensor]]) -> None:
    """Keep channels ``index`` (in that order) of every group in ``cuts``, all at once, in place.

    A sorted subset compacts; a permutation of ``range(group.size)`` reorders. Producers and
    followers take ``index`` along dim 0 (from their offset), consumers along dim 1 over their
    blocks (a grouped conv per conv group); ``out_channels``/``in_channels``/``groups``/
    ``num_features``/``in_features``/``out_features`` follow. Each ``group.size`` becomes
    ``len(index)``; groups not cut stay valid.
    """
    plans: dict[Entry, _Cut] = defaultdict(_Cut)
    for group, index in cuts:
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
        _check_index(group, index)
        for mod_name, pname in group.producers + group.followers:
            plans[(mod_name, pname)].segments[0].append((group.offset(mod_name, pname), group.size, index))
        for mod_name, pname, block in group.consumers:
            cut = plans[(mod_name, pname)]
            cut.block = block
            cut.segments[1].append((group.offset(mod_name, pname), group.size, index))
    modules: dict[str, bool] = {}
    named = dict(model.named_modules())
    for (mod_name, pname), cut in plans.items():
        module = named[mod_name]
        modules.setdefault(mod_name, is_depthwise(module))
        t = _tensor(module, pname)
        rows = cut.index(0, t.shape[0])
        grouped = None
        if t.dim() > 1 and _is_grouped(module) and not modules[mod_name]:
            grouped = (module.groups, module.in_channels, t.shape[0])
            cols = cut.index(1, module.in_channels)
        else:
            cols = cut.index(1, t.shape[1] // cut.block) if t.dim() > 1 else None
            cols = None if cols is None else _columns(cols, cut.block)
        _replace(module, pname, rows, cols, grouped if cols is not None else None)
    for mod_name, was_depthwise in modules.items():
        _update_sizes(named[mod_name], was_depthwise)
    for group, index in cuts:
        group.size = int(torch.as_tensor(index).numel())


def index_channels(model: nn.Module, group: ChannelGroup, index: torch.Tensor) -> None:
    """Keep the group's channels ``index`` (in that order) in every tensor of the group, in place.

    One group of ``keep_channels``: a sorted subset compacts, a permutation reorders. Cut several
    groups that share a concatenation in one ``keep_channels`` call.
    """
    keep_channels(model, [(group, index)])
