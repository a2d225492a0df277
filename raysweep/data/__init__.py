"""Datasets (read from local files, never downloaded) and the batches a trial trains on.

``build_datasets(name, data_root) -> (train, val, DatasetInfo)`` and ``register_dataset`` are the
registry (raysweep.data.sources); ``build_feeds`` turns a pair of datasets into one rank's
batches: on the trial's device for in-memory sets (raysweep.data.device), through DataLoader
workers for the rest (raysweep.data.files).
"""
from raysweep.data.device import DEVICE_DATA_LIMIT_BYTES, Augment, DeviceFeed, MemoryImages
from raysweep.data.feeds import Feed, Feeds, build_feeds, memory_images
from raysweep.data.files import LoaderFeed, loader_workers
from raysweep.data import folders  # noqa: F401 -- registers imagenet and imagefolder
from raysweep.data.external import DatasetSourceError
from raysweep.data.sources import (
    DATASETS,
    DIGITS_SPLIT,
    NO_DOWNLOAD_HINT,
    CifarPickle,
    DatasetInfo,
    DatasetNotFoundError,
    build_datasets,
    digits_arrays,
    list_datasets,
    register_dataset,
)

__all__ = [
    "DATASETS", "DEVICE_DATA_LIMIT_BYTES", "DatasetSourceError", "DIGITS_SPLIT", "NO_DOWNLOAD_HINT", "Augment", "CifarPickle", "DatasetInfo",
    "DatasetNotFoundError", "DeviceFeed", "Feed", "Feeds", "LoaderFeed", "MemoryImages", "build_datasets", "build_feeds",
    "digits_arrays", "list_datasets", "loader_workers", "memory_images", "register_dataset",
]  # fmt: skip
