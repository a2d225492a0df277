"""Channel groups kept per model: the ``channel`` method traces a model once and compaction reuses it.

A model's groups depend on its structure (module names and classes, a masked module's class
before masking), each layer's channel sizes and the input's shape past the batch; a model cut
since, or traced for another input size, is traced again. The cache holds models weakly.
"""
from __future__ import annotations

import weakref

import torch
from torch import fx, nn

from pruners.channel_group import ChannelGroup
from pruners.channel_ops import plain_type, symbolic_trace, trace_run
from pruners.channels import groups_of
from pruners.weight_mask import modules_of

__all__ = ["cached_groups", "model_groups"]


def _size(m: nn.Module) -> tuple:
    """The channel sizes a cut changes."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return (m.in_channels, m.out_channels, m.groups)
    if isinstance(m, nn.Linear):
        return (m.in_features, m.out_features)
    if isinstance(m, nn.modules.batchnorm._NormBase):
        return (m.num_features,)
    return ()


def _signature(model: nn.Module, example_input: torch.Tensor) -> tuple:
    """What the groups depend on: every module's name, class (before masking) and channel sizes, and
    the input's shape past the batch."""
    return (tuple(example_input.shape[1:]), *((n, plain_type(m), _size(m)) for n, m in modules_of(model)))


_GROUPS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, fx.Graph, list[ChannelGroup]]]" = weakref.WeakKeyDictionary()


def cached_groups(model: nn.Module, example_input: torch.Tensor) -> tuple[fx.Graph, list[ChannelGroup]] | None:
    """The graph and groups ``model_groups`` found for this model, if its structure and shapes are unchanged.

    The groups are shared: copy them before changing them (a cut changes ``size``)."""
    cached = _GROUPS.get(model)
    if cached is None or cached[0] != _signature(model, example_input):
        return None
    return cached[1], cached[2]


def model_groups(model: nn.Module, example_input: torch.Tensor, *, checked: bool = False) -> list[ChannelGroup]:
    """``channel_groups`` of ``model``, traced once per model, structure and input shape.

    ``checked``: the caller found these groups a moment ago and changed no layer since (``prepare``
    computing its first masks right after planning them); the cached groups are then taken as they are.
    A model torch.fx cannot trace is a ``pruners.channel_ops.UntraceableModel`` (a ValueError).
    """
    cached = _GROUPS.get(model)
    if checked and cached is not None:
        return cached[2]
    key = _signature(model, example_input)
    if cached is not None and cached[0] == key:
        return cached[2]
    graph = trace_run(model, example_input, graph=symbolic_trace(model), shapes_only=True)[0]
    groups = groups_of(graph, model)
    _GROUPS[model] = (key, graph, groups)
    return groups
