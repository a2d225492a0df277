"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

As in the usual CIFAR ports, the stem and the second stage use stride 1 instead of 2, so
the final feature map is 4x4 rather than 1x1. Layout follows torchvision's naming
(``features.N``, inverted-residual ``conv`` Sequentials, ``classifier``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from raysweep.models.registry import register_model

# (expansion t, out channels c, repeats n, first stride s); s=1 where ImageNet has 2.
CIFAR_SETTINGS: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _conv_bn(
    in_ch: int, out_ch: int, k: int, stride: int = 1, groups: int = 1, act: bool = True
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear project; residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers = _conv_bn(in_ch, hidden, 1) if expand != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn(hidden, out_ch, 1, act=False)
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, last_ch: int = 1280) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(in_chans, 32, 3, stride=1))]
        in_ch = 32
        for t, c, n, s in CIFAR_SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        layers.append(nn.Sequential(*_conv_bn(in_ch, last_ch, 1)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


@register_model("mobilenetv2", family="cifar", input_size=(3, 32, 32), num_classes=10)
def mobilenetv2(num_classes: int = 10, input_size: tuple[int, int, int] = (3, 32, 32)) -> CifarMobileNetV2:
    """CIFAR MobileNetV2 (stride-1 stem): depthwise convs make a different pruning target."""
    return CifarMobileNetV2(num_classes, input_size[0])
