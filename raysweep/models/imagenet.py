"""torchvision's ImageNet models, built without downloading anything.

ResNets rename ``fc`` to ``last_linear`` (the reference project's naming, which its
``resnet18_imagenet_irre.yaml`` uses). ``pretrained=True`` reads torchvision's weights
file from the local torch hub cache only (where ``torch.hub`` would have saved it) and
fails with the exact path when the file is absent: raysweep never downloads.
"""
from __future__ import annotations

import logging
import os
from typing import Callable
from urllib.parse import urlparse

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from raysweep.models.registry import register_model

if TYPE_CHECKING:
    import torchvision.models as tvm

log = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000


def _tvm():
    """torchvision.models, imported on first use: it costs seconds (torch._dynamo comes with it)
    in every process that merely loads the model registry."""
    import torchvision.models

    return torchvision.models


@functools.cache
def _resnet_class() -> type:
    tvm = _tvm()

    class ResNet(tvm.ResNet):
        """torchvision's ResNet with the classifier named ``last_linear``."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.last_linear = self.fc
            del self.fc

        def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.last_linear(torch.flatten(self.avgpool(x), 1))

    return ResNet


def _resnet(block: str, layers: list[int], num_classes: int) -> nn.Module:
    from torchvision.models import resnet

    return _resnet_class()(getattr(resnet, block), layers, num_classes=num_classes)


def hub_checkpoint_path(weights: tvm.WeightsEnum) -> str:
    """Where ``torch.hub`` keeps the file for ``weights`` (``<hub dir>/checkpoints/<name>``)."""
    filename = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def load_local_weights(
    weights: tvm.WeightsEnum, renames: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """The state dict of ``weights`` from the local hub cache, key prefixes renamed."""
    path = hub_checkpoint_path(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained weights {weights} not found at {path} (the local torch hub cache; "
            f"raysweep never downloads). Copy {os.path.basename(path)} from {weights.url} there, "
            "or set TORCH_HOME / torch.hub.set_dir to where it is."
        )
    log.info("loading pretrained weights from %s", path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for old, new in (renames or {}).items():
        state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    return state


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _build(
    make: Callable[[int], nn.Module],
    weights_cls: type[tvm.WeightsEnum],
    head: str,
    num_classes: int,
    input_size: tuple[int, int, int],
    pretrained: bool,
    weights: str,
    renames: dict[str, str] | None = None,
    drop_prefixes: tuple[str, ...] = (),
) -> nn.Module:
    """Build with ``make(classes)``; if pretrained, load the cached weights and swap the head."""
    if input_size[0] != 3:
        raise ValueError(f"ImageNet models take 3 input channels, got input_size={input_size}")
    if not pretrained:
        return make(num_classes)
    state = load_local_weights(weights_cls[weights], renames)
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    with torch.device("meta"):  # skip a random init that the weights overwrite anyway
        model = make(IMAGENET_CLASSES)
    model.load_state_dict(state, assign=True)  # strict: every parameter comes from the file
    if num_classes != IMAGENET_CLASSES:  # fine-tuning on another label set: fresh classifier
        old = model.get_submodule(head)
        _set_module(model, head, nn.Linear(old.in_features, num_classes))
    return model


_FC_RENAME = {"fc.": "last_linear."}


@register_model("resnet18", family="imagenet", input_size=(3, 224, 224), num_classes=1000)
def resnet18(num_classes: int = 1000, input_size: tuple[int, int, int] = (3, 224, 224),
             pretrained: bool = False, weights: str = "IMAGENET1K_V1") -> nn.Module:
    """torchvision ResNet-18 with ``last_linear``."""
    return _build(lambda n: _resnet("BasicBlock", [2, 2, 2, 2], n), _tvm().ResNet18_Weights,
                  "last_linear", num_classes, input_size, pretrained, weights, _FC_RENAME)


@register_model("resnet50", family="imagenet", input_size=(3, 224, 224), num_classes=1000)
def resnet50(num_classes: int = 1000, input_size: tuple[int, int, int] = (3, 224, 224),
             pretrained: bool = False, weights: str = "IMAGENET1K_V1") -> nn.Module:
    """torchvision ResNet-50 with ``last_linear``; V1 weights by default, as the reference project used."""
    return _build(lambda n: _resnet("Bottleneck", [3, 4, 6, 3], n), _tvm().ResNet50_Weights,
                  "last_linear", num_classes, input_size, pretrained, weights, _FC_RENAME)


@register_model("vgg16", family="imagenet", input_size=(3, 224, 224), num_classes=1000)
def vgg16(num_classes: int = 1000, input_size: tuple[int, int, int] = (3, 224, 224),
          pretrained: bool = False, weights: str = "IMAGENET1K_V1") -> nn.Module:
    """torchvision VGG-16 (no BN)."""
    return _build(lambda n: _tvm().vgg16(weights=None, num_classes=n), _tvm().VGG16_Weights,
                  "classifier.6", num_classes, input_size, pretrained, weights)


@register_model("vgg16_bn", family="imagenet", input_size=(3, 224, 224), num_classes=1000)
def vgg16_bn(num_classes: int = 1000, input_size: tuple[int, int, int] = (3, 224, 224),
             pretrained: bool = False, weights: str = "IMAGENET1K_V1") -> nn.Module:
    """torchvision VGG-16 with BatchNorm."""
    return _build(lambda n: _tvm().vgg16_bn(weights=None, num_classes=n), _tvm().VGG16_BN_Weights,
                  "classifier.6", num_classes, input_size, pretrained, weights)


@register_model("inception_v3", family="imagenet", input_size=(3, 299, 299), num_classes=1000)
def inception_v3(num_classes: int = 1000, input_size: tuple[int, int, int] = (3, 299, 299),
                 pretrained: bool = False, weights: str = "IMAGENET1K_V1") -> nn.Module:
    """torchvision Inception-v3 without the auxiliary head (forward returns plain logits)."""

    def make(n: int) -> nn.Module:
        # torchvision's pretrained weights expect its input re-normalisation (transform_input).
        return _tvm().inception_v3(weights=None, num_classes=n, aux_logits=False,
                                init_weights=False, transform_input=pretrained)

    return _build(make, _tvm().Inception_V3_Weights, "fc", num_classes, input_size, pretrained,
                  weights, drop_prefixes=("AuxLogits.",))
