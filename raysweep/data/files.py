"""Datasets served by DataLoader workers: image folders, and in-memory sets above the device limit.

Decoding and augmenting a JPEG is per-sample work, so it runs in loader processes beside the
one that trains (``loader_workers``), with pinned memory on a GPU and workers kept across
epochs. The order is DistributedSampler's (seed, epoch), as the device feed's; and sample ``i``
of epoch ``e`` is transformed under a torch RNG seeded by (seed, e, i), whichever worker process
picks it up, so the same seed gives the same data and a run resumed at an epoch sees what an
uninterrupted run would, persistent workers included.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset


def loader_workers(cpus: float, cuda: bool) -> int:
    """Loader processes for a worker holding ``cpus`` CPUs: every CPU but the one that trains;
    on a GPU at least one, so that decoding overlaps the GPU's work."""
    spare = max(0, int(cpus) - 1)
    return max(1, spare) if cuda else spare


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 2_000_000_011 + index) % (2**63)


class EpochSampler(Sampler):
    """DistributedSampler's indices paired with the epoch, ``(index, epoch)``: a persistent
    worker learns the epoch from each key it is handed."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((i, epoch) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededSamples(Dataset):
    """``dataset[i]`` under a CPU torch RNG seeded by (seed, epoch, i), restored afterwards (the
    training process's own RNG is untouched when it loads without workers)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


class LoaderFeed:
    """Batches of one rank's shard through a DataLoader, moved to ``device``."""

    def __init__(self, dataset: Dataset, device: torch.device, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world: int = 1, train: bool = True, workers: int = 0) -> None:  # fmt: skip
        self.device = device
        self.sampler = None
        if train:
            self.sampler = EpochSampler(DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed))
            source: Dataset = SeededSamples(dataset, seed)
        else:
            source = Subset(dataset, range(rank, len(dataset), world))
        self.loader = DataLoader(
            source, batch_size=batch_size, sampler=self.sampler, shuffle=False, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(seed),  # workers' base seed: not from the training RNG
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
