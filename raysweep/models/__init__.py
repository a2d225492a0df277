"""Model registry and the models raysweep sweeps over.

    create_model("vgg16", dataset="cifar10")   # CIFAR VGG-16-BN (block0..block4, classifier)
    create_model("resnet18")                   # torchvision ResNet-18 (ImageNet, last_linear)
    create_model("resnet18", dataset="cifar10")  # -> cifar_resnet18
    list_models("cifar"); model_info("digits_cnn").input_size

Beside zoo names: ``"package.module:factory"``, ``"torchvision:<name>"``, ``"timm:<name>"`` and
Python callables (raysweep.models.external), called with ``num_classes`` and ``input_size``.

Families: ``cifar`` (3x32x32), ``mnist`` (1x28x28), ``digits`` (1x8x8, the embedded
default), ``imagenet`` (3x224x224; inception_v3 3x299x299). A name registered in several
families resolves through ``DATASET_FAMILY`` (see ``registry.py``).
"""
from raysweep.models.external import ModelSourceError, check_on_sample, describe, is_external, module_of
from raysweep.models.registry import (
    DATASET_FAMILY,
    DEFAULT_FAMILY,
    MODELS,
    ModelEntry,
    create_model,
    list_models,
    model_info,
    register_model,
    resolve_model_name,
)

# Importing the model modules fills MODELS through their @register_model decorators.
from raysweep.models import cifar_resnet, cifar_vgg, imagenet, mobilenetv2, small, wrn  # noqa: E402,F401

__all__ = [
    "ModelSourceError",
    "check_on_sample",
    "describe",
    "is_external",
    "module_of",
    "DATASET_FAMILY",
    "DEFAULT_FAMILY",
    "MODELS",
    "ModelEntry",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "resolve_model_name",
]
