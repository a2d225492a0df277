"""VGG with BatchNorm for 32x32 inputs, named like the reference project.

``block0``..``block4`` are Sequentials of [conv3x3, BatchNorm2d, ReLU] triples, so the
convolutions sit at indices 0, 3, 6, 9 and the reference project's ``prune_config/*.yaml`` names
(``block2.6.weight``) address them directly. Max-pooling happens in ``forward`` rather
than inside the blocks so that the indices stay those triples.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from raysweep.models.registry import register_model

# Output channels per conv, one list per block (Simonyan & Zisserman configs A, B, D, E).
CFGS: dict[str, list[list[int]]] = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(in_ch: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_ch = w
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """VGG-BN: five conv blocks, a 2x2 max-pool after each, one Linear classifier."""

    def __init__(self, cfg: list[list[int]], num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        in_ch = in_chans
        for i, widths in enumerate(cfg):
            self.add_module(f"block{i}", _block(in_ch, widths))
            in_ch = widths[-1]
        self.num_blocks = len(cfg)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = F.max_pool2d(getattr(self, f"block{i}")(x), 2)
        # 32x32 inputs are 1x1 here; the average only matters for larger inputs.
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def _make(name: str):
    @register_model(f"cifar_{name}", family="cifar", input_size=(3, 32, 32), num_classes=10,
                    short_name=name)
    def build(num_classes: int = 10, input_size: tuple[int, int, int] = (3, 32, 32)) -> CifarVGG:
        return CifarVGG(CFGS[name], num_classes, in_chans=input_size[0])

    build.__name__ = build.__qualname__ = f"cifar_{name}"
    build.__doc__ = f"CIFAR {name.upper()} with BatchNorm (reference-project naming)."
    return build


cifar_vgg11 = _make("vgg11")
cifar_vgg13 = _make("vgg13")
cifar_vgg16 = _make("vgg16")
cifar_vgg19 = _make("vgg19")
