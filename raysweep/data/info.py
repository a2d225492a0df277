"""What a trial needs to know about its data, whichever source it came from (a registered
dataset, an image folder, a user's factory)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W) of one sample after transforms
    family: str  # model family that fits (cifar, mnist, digits, imagenet)
    mean: tuple[float, ...]
    std: tuple[float, ...]
