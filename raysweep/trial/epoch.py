"""One epoch's work in one rank: a pass of SGD and an exact evaluation over the whole val set."""
from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

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


def count_correct(model: nn.Module, loader, device) -> tuple[float, float, float, float]:
    """(top-1 hits, top-5 hits, summed loss, samples) of ``model`` over ``loader``, in eval mode."""
    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    # cached(): each masked weight is computed once for the whole evaluation, not per batch.
    with torch.no_grad(), torch.nn.utils.parametrize.cached():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").item()
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(dim=1).sum().item()
            count += len(y)
    return correct1, correct5, loss_sum, count


def evaluate(model: nn.Module, val_ds, batch_size: int, rank: int, world: int, device) -> dict:
    """Top-1/top-5/loss over the whole val set, each rank scoring a disjoint stride (exact)."""
    shard = Subset(val_ds, range(rank, len(val_ds), world))
    counts = count_correct(model, DataLoader(shard, batch_size=batch_size, shuffle=False), device)
    correct1, correct5, loss_sum, count = all_reduce(list(counts), device)
    return {"accuracy": correct1 / count, "top5": correct5 / count, "val_loss": loss_sum / count}


def top1(model: nn.Module, loader, device=torch.device("cpu")) -> float:
    """Val top-1 as a fraction, in this process (the sensitivity tasks' measure)."""
    correct1, _, _, count = count_correct(model, loader, device)
    return correct1 / count


def train_one_epoch(model, loader, optimizer, device, epoch: int, print_freq: int, rank: int) -> float:
    """One pass; the loss stays on the device (no per-batch sync) and is checked once at the end."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        n += len(y)
        if rank == 0 and print_freq and i % print_freq == 0:
            lr = optimizer.param_groups[0]["lr"]
            log.info("Training Epoch: %d [%d/%d]\tLoss: %.4f\tLR: %.6f", epoch, i, len(loader), loss.item(), lr)
    mean = loss_sum.item() / max(n, 1)
    if not math.isfinite(mean):
        raise FloatingPointError(f"training loss became {mean} in epoch {epoch}")
    return mean
