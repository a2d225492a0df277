"""One epoch's work in one rank: a pass of SGD and an exact evaluation over the whole val set."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from raysweep.trial.distill import Criterion
from raysweep.trial.optim import LRSchedule
from raysweep.trial.precision import Compute

log = logging.getLogger("raysweep.loop")


def all_reduce(values: list[float], device: torch.device) -> list[float]:
    """Sums over the ranks of the process group (the values themselves without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def rank_checksums(model: nn.Module, world: int, device) -> list[float]:
    """Every rank's sum of |weights|: equal entries show the DDP ranks hold identical weights."""
    tensors = [t for t in model.state_dict().values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    total = torch.tensor([sum(t.detach().double().abs().sum().item() for t in tensors)], dtype=torch.float64, device=device)
    if world == 1:
        return total.tolist()
    gathered = [torch.zeros_like(total) for _ in range(world)]
    dist.all_gather(gathered, total)
    return [g.item() for g in gathered]


def count_correct(model: nn.Module, batches: Iterable, device, compute: Optional[Compute] = None) -> tuple[float, float, float, float]:
    """(top-1 hits, top-5 hits, summed loss, samples) of ``model`` over ``batches``, in eval mode."""
    model.eval()
    correct1 = torch.zeros((), dtype=torch.float64, device=device)
    correct5, loss_sum, count = torch.zeros_like(correct1), torch.zeros_like(correct1), 0
    # cached(): each masked weight is computed once for the whole evaluation, not per batch.
    with torch.no_grad(), torch.nn.utils.parametrize.cached():
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            if compute is not None:
                with compute.autocast():
                    out = model(compute.input(x)).float()
            else:
                out = model(x)
            loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").double()
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == y).sum()
            correct5 += (top == y[:, None]).any(dim=1).sum()
            count += len(y)
    return correct1.item(), correct5.item(), loss_sum.item(), float(count)


def evaluate(model: nn.Module, val_feed, device, compute: Optional[Compute] = None) -> dict:
    """Top-1/top-5/loss over the whole val set, each rank scoring its own disjoint stride (exact)."""
    counts = count_correct(model, val_feed.batches(), device, compute)
    correct1, correct5, loss_sum, count = all_reduce(list(counts), device)
    return {"accuracy": correct1 / count, "top5": correct5 / count, "val_loss": loss_sum / count}


def top1(model: nn.Module, loader, device=torch.device("cpu")) -> float:
    """Val top-1 as a fraction, in this process (the sensitivity tasks' measure)."""
    correct1, _, _, count = count_correct(model, loader, device)
    return correct1 / count


@dataclass
class TrainStep:
    """One optimizer step on a batch: forward under autocast, the loss, backward (scaled with
    fp16), the step, and the per-batch part of the LR schedule."""

    model: nn.Module  # what trains: DDP-wrapped with several ranks, compiled when asked
    optimizer: torch.optim.Optimizer
    compute: Compute
    criterion: Criterion
    lr_schedule: LRSchedule

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        x = self.compute.input(x)
        with self.compute.autocast():
            loss = self.criterion(self.model(x), x, y)
        self.compute.backward(loss, self.optimizer)
        self.lr_schedule.batch_end()
        return loss.detach()


def train_one_epoch(step: TrainStep, train_feed, epoch: int, print_freq: int, rank: int) -> float:
    """One pass; the loss stays on the device (no per-batch sync) and is checked once at the end."""
    step.model.train()
    loss_sum: float | torch.Tensor = 0.0
    n = 0
    for i, (x, y) in enumerate(train_feed.batches(epoch)):
        loss = step(x, y)
        loss_sum = loss_sum + loss.double() * len(y)
        n += len(y)
        if rank == 0 and print_freq and i % print_freq == 0:
            lr = step.optimizer.param_groups[0]["lr"]
            log.info("Training Epoch: %d [%d/%d]\tLoss: %.4f\tLR: %.6f", epoch, i, len(train_feed), loss.item(), lr)
    mean = float(loss_sum) / max(n, 1)
    if not math.isfinite(mean):
        raise FloatingPointError(f"training loss became {mean} in epoch {epoch}")
    return mean
