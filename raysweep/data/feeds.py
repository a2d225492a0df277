"""A trial's train and val batches: on its device as tensors when the dataset fits, else through
DataLoader workers. The loop sees only ``Feed``: ``len`` (batches per epoch) and ``batches(epoch)``.

In memory: a ``TensorDataset`` (its images as given, augmented if the dataset carries a
``device_augment``), and any dataset with a ``memory_images(info)`` method (CIFAR, MNIST),
together under ``DEVICE_DATA_LIMIT_BYTES``. Everything else (image folders) goes through
workers sized from the trial's CPUs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

import torch
from torch.utils.data import Dataset, TensorDataset

from raysweep.data.device import DEVICE_DATA_LIMIT_BYTES, DeviceFeed, MemoryImages
from raysweep.data.files import LoaderFeed, loader_workers
from raysweep.data.info import DatasetInfo

log = logging.getLogger("raysweep.data")


class Feed(Protocol):
    def __len__(self) -> int: ...

    def batches(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class Feeds:
    train: Feed
    val: Feed
    where: str  # how the batches are made, for the run's log


def memory_images(dataset: Dataset, info: DatasetInfo) -> Optional[MemoryImages]:
    """The dataset as tensors, or None when it has no in-memory form."""
    if hasattr(dataset, "memory_images"):
        return dataset.memory_images(info)
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors[:2]
        return MemoryImages(images, labels, augment=getattr(dataset, "device_augment", None))
    return None


def build_feeds(train: Dataset, val: Dataset, info: DatasetInfo, *, device: torch.device, batch_size: int, seed: int,
                rank: int = 0, world: int = 1, cpus: float = 1.0) -> Feeds:  # fmt: skip
    """One rank's feeds: ``batch_size`` per rank, shards as DistributedSampler cuts them."""
    shard = dict(seed=seed, rank=rank, world=world)
    train_mem, val_mem = memory_images(train, info), memory_images(val, info)
    if train_mem is not None and val_mem is not None:
        size = train_mem.nbytes + val_mem.nbytes
        if size <= DEVICE_DATA_LIMIT_BYTES:
            feeds = DeviceFeed(train_mem, device, batch_size, train=True, **shard), DeviceFeed(val_mem, device, batch_size, train=False, **shard)
            return Feeds(*feeds, f"tensors on {device} ({size / 2**20:.1f} MiB)")
        log.info("dataset %s: %.0f MiB is over the device limit (%.0f MiB): DataLoader workers", info.name, size / 2**20, DEVICE_DATA_LIMIT_BYTES / 2**20)
    workers = loader_workers(cpus, device.type == "cuda")
    feeds = LoaderFeed(train, device, batch_size, train=True, workers=workers, **shard), LoaderFeed(val, device, batch_size, train=False, workers=workers, **shard)
    return Feeds(*feeds, f"DataLoader, {workers} worker process(es)")
