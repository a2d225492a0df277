"""In-memory datasets on the trial's device: the whole set as two tensors, batches cut by index.

A CIFAR-size set is ~150 MB of uint8: on the device it costs one copy per trial, and every batch
is then an index gather, a batched augmentation and a normalisation -- a few kernels, no
per-sample Python and no loader processes. The order is DistributedSampler's (a permutation
seeded by ``seed + epoch``, padded to a multiple of the world size, rank ``r`` taking every
``world``-th index from ``r``), so the same seed gives the same batches, DDP ranks keep
disjoint shards, and a run resumed at epoch ``e`` sees exactly the batches an uninterrupted
run would. The augmentation's random numbers are drawn per epoch from a generator seeded by
(seed, epoch, rank): the same holds for them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

# Train + val images and labels above this stay on the host and go through DataLoader workers
# (raysweep.data.files): several trials may share one GPU, each holding its own copy.
DEVICE_DATA_LIMIT_BYTES = 1 << 30


@dataclass(frozen=True)
class Augment:
    """Batched augmentation on the device, as torchvision's RandomCrop(size, padding=pad) and
    RandomHorizontalFlip() do per sample."""

    pad: int = 0  # zero padding on each side before a random crop back to the input size (0: none)
    flip: bool = False  # horizontal flip with probability 0.5


@dataclass
class MemoryImages:
    """A dataset as tensors: what ``DeviceFeed`` serves."""

    images: torch.Tensor  # (N, C, H, W): uint8 (normalised on the device) or float (used as is)
    labels: torch.Tensor  # (N,) int64
    mean: Optional[tuple[float, ...]] = None  # uint8 images: (x / 255 - mean) / std per channel
    std: Optional[tuple[float, ...]] = None
    augment: Optional[Augment] = None  # training batches only; None: no augmentation

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size() + self.labels.numel() * self.labels.element_size()


def shard_order(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """Training indices of rank ``rank`` for one epoch, as ``DistributedSampler(shuffle=True, seed,
    drop_last=False)`` with ``set_epoch(epoch)`` yields them."""
    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g)
    total = math.ceil(n / world) * world
    if total > n:  # pad with the first indices again, as DistributedSampler does
        order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
    return order[rank:total:world]


def augment_seed(seed: int, epoch: int, rank: int) -> int:
    """One seed per (seed, epoch, rank), so an epoch's augmentation does not depend on the ones before."""
    return (seed * 1_000_003 + epoch * 10_007 + rank) % (2**63)


@dataclass
class Draws:
    """One epoch's random augmentation parameters, one row per sample of the shard."""

    dy: torch.Tensor  # crop offsets in [0, 2 * pad]
    dx: torch.Tensor
    flip: torch.Tensor  # bool

    @classmethod
    def sample(cls, count: int, augment: Augment, generator: torch.Generator) -> "Draws":
        span = 2 * augment.pad + 1
        dy = torch.randint(0, span, (count,), generator=generator)
        dx = torch.randint(0, span, (count,), generator=generator)
        flip = torch.rand(count, generator=generator) < 0.5 if augment.flip else torch.zeros(count, dtype=torch.bool)
        return cls(dy, dx, flip)

    def to(self, device: torch.device) -> "Draws":
        return Draws(self.dy.to(device), self.dx.to(device), self.flip.to(device))

    def slice(self, start: int, stop: int) -> "Draws":
        return Draws(self.dy[start:stop], self.dx[start:stop], self.flip[start:stop])


def random_crop(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Each image zero-padded by ``pad`` and cropped back to its size at offset (dy, dx): two gathers."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * pad)
    cut = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    return cut.gather(3, cols)


def apply_augment(x: torch.Tensor, augment: Augment, draws: Draws) -> torch.Tensor:
    if augment.pad:
        x = random_crop(x, augment.pad, draws.dy, draws.dx)
    if augment.flip:
        x = torch.where(draws.flip[:, None, None, None], x.flip(3), x)
    return x


class DeviceFeed:
    """Batches of one rank's shard of an in-memory dataset, on ``device``."""

    def __init__(self, data: MemoryImages, device: torch.device, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world: int = 1, train: bool = True) -> None:  # fmt: skip
        self.device, self.batch_size, self.seed, self.rank, self.world, self.train = device, batch_size, seed, rank, world, train
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.augment = data.augment if train else None
        self.scale = self.shift = None
        if not data.images.is_floating_point():
            std = torch.tensor(data.std or (1.0,), dtype=torch.float32, device=device)[:, None, None]
            mean = torch.tensor(data.mean or (0.0,), dtype=torch.float32, device=device)[:, None, None]
            self.scale, self.shift = 1.0 / (255.0 * std), mean / std
        n = len(self.labels)
        # Training: every rank's share, DistributedSampler's padding included. Evaluation: a
        # disjoint stride with no padding, so the counts summed over ranks are exact.
        self.shard = math.ceil(n / world) if train else len(range(rank, n, world))

    def __len__(self) -> int:
        return math.ceil(self.shard / self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = shard_order(n, self.seed, epoch, self.rank, self.world) if self.train else torch.arange(self.rank, n, self.world)
        order = order.to(self.device)
        draws = None
        if self.augment is not None:
            g = torch.Generator().manual_seed(augment_seed(self.seed, epoch, self.rank))
            draws = Draws.sample(len(order), self.augment, g).to(self.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images.index_select(0, idx)
            if draws is not None:
                x = apply_augment(x, self.augment, draws.slice(start, start + len(idx)))
            yield self.normalise(x), self.labels.index_select(0, idx)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return x
        return x.float() * self.scale - self.shift
