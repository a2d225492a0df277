"""The optimizer and the learning-rate schedule of a run (``RunConfig.lr_schedule``).

``LR_SCHEDULES`` maps a name to a factory ``(optimizer, cfg, batches_per_epoch) -> LRSchedule``:
``multistep`` is the reference project's MultiStepLR (gamma 0.1 at ``lr_decay_milestones``,
stepped per epoch); ``cosine`` anneals to 0 over the run, stepped per batch, after a linear
warm-up of ``warmup_epochs`` epochs. A schedule's state goes into every checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from raysweep.config import RunConfig


@dataclass
class LRSchedule:
    """A torch LR scheduler and when it steps: after every batch, or after every epoch."""

    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_batch: bool

    def batch_end(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def epoch_end(self) -> None:
        if not self.per_batch:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


ScheduleFactory = Callable[[torch.optim.Optimizer, RunConfig, int], LRSchedule]
LR_SCHEDULES: dict[str, ScheduleFactory] = {}


def register_lr_schedule(name: str) -> Callable[[ScheduleFactory], ScheduleFactory]:
    def deco(fn: ScheduleFactory) -> ScheduleFactory:
        LR_SCHEDULES[name] = fn
        return fn

    return deco


@register_lr_schedule("multistep")
def _multistep(optimizer: torch.optim.Optimizer, cfg: RunConfig, batches_per_epoch: int) -> LRSchedule:
    return LRSchedule(torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_decay_milestones), gamma=0.1), per_batch=False)


def cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """lr / base lr after ``step`` batches: linear up to 1 over the warm-up, then half a cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))


@register_lr_schedule("cosine")
def _cosine(optimizer: torch.optim.Optimizer, cfg: RunConfig, batches_per_epoch: int) -> LRSchedule:
    warmup = round(cfg.warmup_epochs * batches_per_epoch)
    total = cfg.epochs * batches_per_epoch
    return LRSchedule(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, warmup, total)), per_batch=True)


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay, the reference project's optimizer."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)


def build_lr_schedule(optimizer: torch.optim.Optimizer, cfg: RunConfig, batches_per_epoch: int) -> LRSchedule:
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r} (known: {', '.join(LR_SCHEDULES)})")
    return LR_SCHEDULES[cfg.lr_schedule](optimizer, cfg, batches_per_epoch)
