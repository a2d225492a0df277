"""What a channel group is, and ``index_channels``: slicing or permuting one group in place.

A group lists every tensor whose channel dimension must change together: producers emit the
channels (conv/linear ``weight`` and ``bias``, dim 0), followers carry one value per channel
(BatchNorm, depthwise convs, PReLU; dim 0), consumers read them (dim 1 of the next conv/linear,
in blocks of ``block`` inputs after a flatten). ``pruners.channels`` finds the groups of a model.

Masked models work as they are: a parametrized weight is indexed through its ``original`` and
every mask buffer of its parametrizations, so masks stay aligned (no need to ``squash`` first).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["ChannelGroup", "index_channels", "is_depthwise"]


@dataclass
class ChannelGroup:
    """Channels that must be removed or reordered together, or the network computes something else."""

    size: int  # number of channels in the group
    producers: list[tuple[str, str]] = field(default_factory=list)  # (module, param): dim 0 emits
    followers: list[tuple[str, str]] = field(default_factory=list)  # per-channel params/buffers, dim 0
    consumers: list[tuple[str, str, int]] = field(default_factory=list)  # (module, param, block): dim 1 reads
    residual: bool = False  # joined through an add: every producer feeding the add is here
    fixed_reason: str | None = None  # why the group must not change; None if free

    @property
    def free(self) -> bool:
        return self.fixed_reason is None


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every output channel reads exactly its own input channel."""
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and not module.transposed
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _index_tensor(module: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
    """Replace ``module.<name>`` by its ``index_select(dim, index)``; masks follow a masked weight."""
    if parametrize.is_parametrized(module, name):
        plist = module.parametrizations[name]
        old = plist.original
        plist.original = nn.Parameter(old.detach().index_select(dim, index.to(old.device)), old.requires_grad)
        for p in plist:
            mask = getattr(p, "mask", None)
            if not isinstance(mask, torch.Tensor) or mask.shape != old.shape:
                raise ValueError(f"cannot slice {name!r}: parametrization {type(p).__name__} is not a mask")
            p.mask = mask.index_select(dim, index.to(mask.device))
        return
    old = getattr(module, name)
    new = old.detach().index_select(dim, index.to(old.device))
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, old.requires_grad))
    else:
        module._buffers[name] = new


def _block_index(index: torch.Tensor, block: int) -> torch.Tensor:
    """A consumer's input columns for ``index``: after a flatten, each channel is ``block`` columns."""
    if block == 1:
        return index
    return (index[:, None] * block + torch.arange(block, device=index.device)).reshape(-1)


def index_channels(model: nn.Module, group: ChannelGroup, index: torch.Tensor) -> None:
    """Keep the group's channels ``index`` (in that order) in every tensor of the group, in place.

    A sorted subset compacts; a permutation of ``range(group.size)`` reorders. Producers and
    followers take ``index_select(0, index)``, consumers ``index_select(1, ...)`` over their
    blocks; ``out_channels``/``in_channels``/``groups``/``num_features``/``in_features``/
    ``out_features`` follow. ``group.size`` becomes ``len(index)``; other groups stay valid.
    """
    index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= group.size):
        raise ValueError(f"index out of range for a group of {group.size} channels")
    if index.unique().numel() != index.numel():
        raise ValueError("index repeats a channel")
    n = index.numel()
    for mod_name, pname in group.producers + group.followers:
        module = model.get_submodule(mod_name)
        _index_tensor(module, pname, 0, index)
        if isinstance(module, nn.Linear):
            module.out_features = n
        elif is_depthwise(module) or (isinstance(module, nn.modules.conv._ConvNd) and (mod_name, pname) in group.followers):
            module.in_channels = module.out_channels = module.groups = n
        elif isinstance(module, nn.modules.conv._ConvNd):
            module.out_channels = n
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            module.num_features = n
        elif isinstance(module, nn.PReLU):
            module.num_parameters = n
    for mod_name, pname, block in group.consumers:
        module = model.get_submodule(mod_name)
        _index_tensor(module, pname, 1, _block_index(index, block))
        if isinstance(module, nn.Linear):
            module.in_features = n * block
        elif isinstance(module, nn.modules.conv._ConvNd):
            module.in_channels = n
    group.size = n
