"""ResNets for 32x32 inputs: He et al. 2016's resnet20..110 and a CIFAR-stem resnet18/34/50.

Both reuse torchvision's ``BasicBlock``/``Bottleneck``, so parameter names match the
ImageNet ResNets (``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``,
``last_linear.weight``) and a prune config written for one applies to the other.
Shortcuts that change shape are option B (1x1 conv + BN as ``downsample.0/1``) so a
pruner can slice residual channels like any other conv; He et al.'s option A
(zero-padding) has no weights to prune.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from raysweep.models.registry import register_model

# torchvision's blocks are imported when a ResNet is built, not when the registry loads: importing
# torchvision costs seconds (it pulls in torch._dynamo), paid by every Ray worker that unpickles
# the training loop, while most runs never build a ResNet.
Block = Any  # torchvision.models.resnet.BasicBlock or Bottleneck


def _block(name: str) -> Block:
    from torchvision.models import resnet

    return getattr(resnet, name)


class CifarResNet(nn.Module):
    """3x3 stem (no max-pool), stages of residual blocks, global average pool, Linear."""

    def __init__(
        self,
        block: Block,
        layers: list[int],
        widths: list[int],
        num_classes: int = 10,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        for i, (n, w) in enumerate(zip(layers, widths)):
            self.add_module(f"layer{i + 1}", self._make_layer(block, w, n, 1 if i == 0 else 2))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(widths[-1] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: Block, planes: int, n: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        blocks = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.last_linear(torch.flatten(self.avgpool(x), 1))


# name -> (registry key, block, blocks per stage, widths)
_SPECS: dict[str, tuple[str, str, list[int], list[int]]] = {
    "resnet20": ("resnet20", "BasicBlock", [3, 3, 3], [16, 32, 64]),
    "resnet32": ("resnet32", "BasicBlock", [5, 5, 5], [16, 32, 64]),
    "resnet56": ("resnet56", "BasicBlock", [9, 9, 9], [16, 32, 64]),
    "resnet110": ("resnet110", "BasicBlock", [18, 18, 18], [16, 32, 64]),
    # Same names as torchvision's ImageNet ResNets: registered with a cifar_ prefix.
    "resnet18": ("cifar_resnet18", "BasicBlock", [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet34": ("cifar_resnet34", "BasicBlock", [3, 4, 6, 3], [64, 128, 256, 512]),
    "resnet50": ("cifar_resnet50", "Bottleneck", [3, 4, 6, 3], [64, 128, 256, 512]),
}


def _make(short: str):
    key, block, layers, widths = _SPECS[short]

    @register_model(key, family="cifar", input_size=(3, 32, 32), num_classes=10, short_name=short)
    def build(num_classes: int = 10, input_size: tuple[int, int, int] = (3, 32, 32)) -> CifarResNet:
        return CifarResNet(_block(block), layers, widths, num_classes, in_chans=input_size[0])

    build.__name__ = build.__qualname__ = key
    build.__doc__ = f"CIFAR {short} ({block}, stages {layers}, widths {widths})."
    return build


resnet20 = _make("resnet20")
resnet32 = _make("resnet32")
resnet56 = _make("resnet56")
resnet110 = _make("resnet110")
cifar_resnet18 = _make("resnet18")
cifar_resnet34 = _make("resnet34")
cifar_resnet50 = _make("resnet50")
