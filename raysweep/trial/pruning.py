"""A run's pruning, set up once before training: per-layer targets (an allocation resolved on
the loaded weights), the N:M channel permutation, and the masks, attached dense (fraction 0)
before the DDP wrap for the schedule to fill."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn

import pruners
from pruners.allocation import resolve_allocation
from raysweep.config import RunConfig
from raysweep.trial.checkpoint import Checkpoint

log = logging.getLogger("raysweep.loop")


@dataclass
class Pruning:
    """What a run's pruning set up: its schedule, and the columns every report carries
    (allocation, ``ratio/<param>``, ``target_sparsity``, ``nm_permute_gain``)."""

    schedule: Any = None  # a pruners schedule; None for plain training
    columns: dict[str, Any] = field(default_factory=dict)
    nm_permute_gain: Optional[float] = None


def set_up_pruning(model: nn.Module, cfg: RunConfig, example: torch.Tensor, rank: int, saved: Optional[Checkpoint]) -> Pruning:
    """Per-layer targets (an allocation resolved on the loaded weights), the N:M permutation,
    and the masks, attached dense (fraction 0) for the schedule to fill."""
    if not cfg.method:
        return Pruning()
    pruning = Pruning(schedule=pruners.get_schedule(cfg.schedule, **cfg.schedule_params))
    if cfg.allocation:
        # Weight-ranked families (lamp, global_magnitude) need the loaded dense weights.
        cfg.targets = resolve_allocation(model, cfg.method, cfg.targets, cfg.allocation)
        pruning.columns.update(allocation=cfg.allocation["family"], global_target=cfg.allocation["target"])
    if cfg.nm_permute and cfg.method == "nm":
        gain = saved.nm_permute_gain if saved is not None else None
        pruning.nm_permute_gain = _permute_for_nm(model, cfg, example, rank) if gain is None else gain
        pruning.columns["nm_permute_gain"] = pruning.nm_permute_gain
    resolved = pruners.resolve_targets(model, cfg.targets)
    pruning.columns.update({f"ratio/{k}": v for k, v in resolved.items()})
    pruning.columns["target_sparsity"] = target_sparsity(model, resolved)
    # Each layer the method leaves dense is named once, with its reason, by prepare itself.
    pruners.prepare(model, cfg.targets, cfg.method, fraction=0.0, enforce=True, example_input=example)
    return pruning


def target_sparsity(model: nn.Module, targets: dict[str, Any]) -> float:
    """The prunable-weight sparsity the targets ask for (M:N as 1 - N/M), for progress tables."""
    params = dict(model.named_parameters())
    total = removed = 0.0
    for name in pruners.prunable_parameters(model):
        numel = params[name].numel()
        total += numel
        target = targets.get(name, 0.0)
        if isinstance(target, str):
            m, n = pruners.parse_nm(target)
            removed += numel * (1 - n / m)
        else:
            removed += pruners.selection.count_for_ratio(float(target), numel)
    return removed / total if total else 0.0


def _permute_for_nm(model: nn.Module, cfg: RunConfig, example: torch.Tensor, rank: int) -> float:
    """Reorder input channels (and their producers) so N:M keeps more |w|; same function.

    Bounded by rounds, not time, so every DDP rank computes the same permutation."""
    from pruners.nm_permute import permute_for_nm

    found = permute_for_nm(model, cfg.targets, example, time_budget_s=None, seed=cfg.seed)
    if rank == 0:
        log.info("N:M channel permutation: retained magnitude %+.2f%% (%d groups, %.1f s)",
                 100 * found.gain, len(found.groups), found.seconds)  # fmt: skip
        for name, why in found.skipped.items():
            log.info("  %s not permuted: %s", name, why)
    return found.gain
