"""What ``prepare`` attaches: one entry per tensor to mask, from a per-weight method or a graph method.

A tensor has its own (*primary*) mask computed by the method, or a mask *derived* from other
weights' rows, or both: ``follows`` lists producer weights (with the offset of their channels in
this tensor) whose dead rows (filters with every weight masked) kill this tensor's rows (a conv bias, the BatchNorm after it, a depthwise conv on
its channels), and ``reads`` lists producer weights whose dead rows kill these input columns
(the next layer's weight). Derived masks make a pruned channel output exactly 0, so compaction
removes it at any input size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from pruners.targets import Target

__all__ = ["GraphHooks", "MaskPlan", "Read", "TensorPlan", "plain_reads"]

Read = tuple[str, int, int]  # (producer weight name, first channel in this tensor's dim 1, columns per channel)


@dataclass
class TensorPlan:
    """One tensor to mask (``module.tensor`` by its user-facing name)."""

    target: Target = 0.0
    primary: bool = True  # the method computes a mask of its own for it
    options: dict[str, Any] = field(default_factory=dict)
    follows: tuple[Read, ...] = ()  # dim 0 (block is 1)
    reads: tuple[Read, ...] = ()  # dim 1


@dataclass
class MaskPlan:
    """Every tensor ``prepare`` masks, and the targeted weights it leaves dense (with why)."""

    tensors: dict[str, TensorPlan] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def own(self, name: str, target: Target, options: dict[str, Any]) -> None:
        """``name`` gets a primary mask at ``target`` (keeping derived masking planned before)."""
        entry = self.tensors.setdefault(name, TensorPlan())
        entry.primary, entry.target, entry.options = True, target, dict(options)

    def follow(self, name: str, sources: tuple[Read, ...] = (), reads: tuple[Read, ...] = ()) -> None:
        """Add derived masking to ``name`` (a new derived-only entry if it has none yet)."""
        entry = self.tensors.setdefault(name, TensorPlan(primary=False))
        entry.follows = tuple(dict.fromkeys(entry.follows + sources))
        entry.reads = tuple(dict.fromkeys(entry.reads + reads))


def plain_reads(value: object) -> tuple[Read, ...]:
    """Follows/reads as saved in a checkpoint (lists) back to tuples; anything else is dropped."""
    out = []
    for item in value or ():
        if isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], str):
            out.append((item[0], int(item[1]), int(item[2])))
    return tuple(out)


# (model, resolved targets {weight name: target}, example input or None, options) -> the plan
PlanFn = Callable[[nn.Module, dict[str, Target], Optional[torch.Tensor], dict[str, Any]], MaskPlan]
# (model, {name: (module, tensor name, WeightMask)} of the method's primary masks, fraction) -> masks
MasksFn = Callable[[nn.Module, dict[str, tuple], float], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class GraphHooks:
    """A method that masks a model from its graph (channel groups) rather than one weight at a time."""

    plan: PlanFn
    masks: MasksFn
