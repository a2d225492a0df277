"""ImageNet and any folder of class folders (``train/<class>/*``, ``val/<class>/*``).

``imagenet`` is ImageNet's recipe: 224 x 224 RGB crops, ImageNet's mean and std. ``imagefolder``
takes ``dataset_options``: ``image_size`` (a side in pixels, default 224), ``channels`` (1 or 3)
and ``mean``/``std``; without them the statistics are computed once from (a sample of) the train
split at that size and channel count and cached, so a folder of 28 x 28 grayscale PNGs works as is.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from raysweep.data.info import DatasetInfo
from raysweep.data.sources import _not_found, register_dataset

log = logging.getLogger("raysweep.data")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXPECTED = "{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg (the same class folders in both)"
STATS_SAMPLE = 2000  # images of the train split the mean and std are computed over (seeded)
CACHE_DIR = Path(os.environ.get("RAYSWEEP_CACHE_DIR", Path.home() / ".cache" / "raysweep"))


def _class_dirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir()) if path.is_dir() else []


def _checked_root(name: str, root: Optional[Path]) -> list[str]:
    if root is None:
        raise _not_found(name, root, EXPECTED)
    train_classes, val_classes = _class_dirs(root / "train"), _class_dirs(root / "val")
    if not train_classes or not val_classes:
        raise _not_found(name, root, EXPECTED)
    if train_classes != val_classes:  # ImageFolder would silently give them different labels
        diff = sorted(set(train_classes) ^ set(val_classes))[:5]
        raise _not_found(name, root, EXPECTED, f"train/ and val/ class folders differ, e.g. {diff}")
    return train_classes


def _transforms(image_size: int, channels: int, augment: bool):
    """(train, val) transforms before normalisation. At 224 px ImageNet's (random resized crops,
    flips); at another size the images are resized to it, and train images shifted by up to an
    eighth of a side (no flip: a folder of digits or text must not be mirrored)."""
    import torchvision.transforms as T

    gray = [T.Grayscale(1)] if channels == 1 else [T.Lambda(lambda im: im.convert("RGB"))]
    if image_size == 224:
        val = [T.Resize(256), T.CenterCrop(224)]
        train = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()] if augment else val
    else:
        val = [T.Resize((image_size, image_size))]
        train = [*val, T.RandomCrop(image_size, padding=max(1, image_size // 8))] if augment else val
    return gray + train, gray + val


def _image_folder(name: str, root: Optional[Path], augment: bool, image_size: int = 224, channels: int = 3,
                  mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> tuple[Dataset, Dataset, DatasetInfo]:  # fmt: skip
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    classes = _checked_root(name, root)
    if channels not in (1, 3) or int(image_size) < 1:
        raise ValueError(f"{name}: channels is 1 or 3 and image_size a positive side in pixels; got {channels}, {image_size}")
    train_tf, val_tf = _transforms(int(image_size), channels, augment)
    if mean is None or std is None:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if name == "imagenet" else folder_stats(root, int(image_size), channels)
    norm = [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    try:
        train = ImageFolder(str(root / "train"), transform=T.Compose(train_tf + norm))
        val = ImageFolder(str(root / "val"), transform=T.Compose(val_tf + norm))
    except (FileNotFoundError, OSError) as e:  # e.g. a class folder without images
        raise _not_found(name, root, EXPECTED, str(e)) from e
    family = "imagenet" if channels == 3 and image_size == 224 else "custom"
    return train, val, DatasetInfo(name, len(classes), (channels, int(image_size), int(image_size)), family, tuple(mean), tuple(std))


def folder_stats(root: Path, image_size: int, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the train split at this size (a seeded sample of up to
    ``STATS_SAMPLE`` images), computed once per folder and setting and cached."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    train_dir = root / "train"
    key = hashlib.sha1(f"{train_dir.resolve()}|{image_size}|{channels}|{train_dir.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    cache = CACHE_DIR / "imagefolder_stats" / f"{key}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        return tuple(saved["mean"]), tuple(saved["std"])
    _, val_tf = _transforms(image_size, channels, augment=False)
    images = ImageFolder(str(train_dir), transform=T.Compose(val_tf + [T.ToTensor()]))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE]
    batch = torch.stack([images[int(i)][0] for i in order])  # (n, C, H, W) in [0, 1]
    mean = batch.mean(dim=(0, 2, 3)).tolist()
    std = batch.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"root": str(train_dir), "mean": mean, "std": std, "images": len(order)}))
    except OSError as exc:  # no cache, computed again next time
        log.warning("could not cache %s's statistics in %s: %s", train_dir, cache, exc)
    log.info("%s: mean %s, std %s over %d images", train_dir, [round(m, 4) for m in mean], [round(s, 4) for s in std], len(order))
    return tuple(mean), tuple(std)


@register_dataset("imagenet")
def _imagenet(root: Optional[Path], augment: bool) -> tuple[Dataset, Dataset, DatasetInfo]:
    return _image_folder("imagenet", root, augment)


@register_dataset("imagefolder")
def _imagefolder(root: Optional[Path], augment: bool, **options) -> tuple[Dataset, Dataset, DatasetInfo]:
    return _image_folder("imagefolder", root, augment, **options)
