"""Small models: LeNets for MNIST and ``digits_cnn``, the embedded default for 8x8 digits.

``digits_cnn`` is shaped so every pruning method has something to act on while a sweep
stays seconds per trial on a laptop: all convs are 3x3 with padding 1 (pattern, stripe)
and every conv but the first has a multiple of 8 input channels, as has every Linear
(M:N up to m8nY groups along the input dimension).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from raysweep.models.registry import register_model


class LeNet300(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998; Han et al. 2015's irregular-pruning benchmark)."""

    def __init__(self, num_classes: int = 10, in_features: int = 784) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class LeNet5(nn.Module):
    """LeNet-5: conv 6 and 16 (5x5, the first padded so 28x28 behaves like 32x32), fc 120-84."""

    def __init__(self, num_classes: int = 10, input_size: tuple[int, int, int] = (1, 28, 28)) -> None:
        super().__init__()
        c, h, w = input_size
        self.conv1 = nn.Conv2d(c, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        flat = 16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2)
        self.fc1 = nn.Linear(flat, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class DigitsCNN(nn.Module):
    """conv 1->16, conv 16->32, pool, conv 32->64, pool, Linear 256->64->classes (8x8 input).

    Half the compute of a 32-64-64 stack at the same accuracy (~99% on digits in 20
    epochs); sweeps train it once per trial, so its cost is most of a trial's cost.
    """

    def __init__(self, num_classes: int = 10, input_size: tuple[int, int, int] = (1, 8, 8)) -> None:
        super().__init__()
        c, h, w = input_size
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(64 * (h // 4) * (w // 4), 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("lenet300", family="mnist", input_size=(1, 28, 28), num_classes=10)
def lenet300(num_classes: int = 10, input_size: tuple[int, int, int] = (1, 28, 28)) -> LeNet300:
    """LeNet-300-100: Linear 784->300->100->classes (``fc1``, ``fc2``, ``fc3``)."""
    return LeNet300(num_classes, math.prod(input_size))


@register_model("lenet5", family="mnist", input_size=(1, 28, 28), num_classes=10)
def lenet5(num_classes: int = 10, input_size: tuple[int, int, int] = (1, 28, 28)) -> LeNet5:
    """LeNet-5 for 28x28 MNIST."""
    return LeNet5(num_classes, tuple(input_size))


@register_model("digits_cnn", family="digits", input_size=(1, 8, 8), num_classes=10)
def digits_cnn(num_classes: int = 10, input_size: tuple[int, int, int] = (1, 8, 8)) -> DigitsCNN:
    """The embedded default: trains to ~99% on sklearn digits in seconds on a CPU."""
    return DigitsCNN(num_classes, tuple(input_size))
