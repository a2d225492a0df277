"""Wide ResNets (Zagoruyko & Komodakis 2016) for 32x32 inputs: WRN-depth-k.

Pre-activation blocks (BN-ReLU-conv); depth = 6n + 4 gives n blocks per stage with widths
16k, 32k, 64k. A shape-changing shortcut is a 1x1 conv on the pre-activated input, named
``downsample.0`` like the ResNets so pruning configs read the same way.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from raysweep.models.registry import register_model


class WideBasic(nn.Module):
    """Pre-activation basic block; ``downsample`` only when shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.dropout = dropout
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(o)
        o = self.conv1(o)
        o = F.relu(self.bn2(o))
        if self.dropout > 0:
            o = F.dropout(o, self.dropout, self.training)
        return self.conv2(o) + shortcut


class WideResNet(nn.Module):
    def __init__(
        self, depth: int, widen: int, num_classes: int = 10, in_chans: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        in_ch = widths[0]
        for i, w in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            blocks = [WideBasic(in_ch, w, stride, dropout)]
            blocks += [WideBasic(w, w, 1, dropout) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = w
        self.bn = nn.BatchNorm2d(in_ch)
        self.last_linear = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.last_linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("wrn_16_2", family="cifar", input_size=(3, 32, 32), num_classes=10)
def wrn_16_2(
    num_classes: int = 10, input_size: tuple[int, int, int] = (3, 32, 32), dropout: float = 0.0
) -> WideResNet:
    """WRN-16-2 (0.7M parameters): a small CIFAR baseline."""
    return WideResNet(16, 2, num_classes, input_size[0], dropout)


@register_model("wrn_40_2", family="cifar", input_size=(3, 32, 32), num_classes=10)
def wrn_40_2(
    num_classes: int = 10, input_size: tuple[int, int, int] = (3, 32, 32), dropout: float = 0.0
) -> WideResNet:
    """WRN-40-2 (2.2M parameters)."""
    return WideResNet(40, 2, num_classes, input_size[0], dropout)
