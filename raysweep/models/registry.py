"""A timm-style model registry: names -> constructors, plus default input size and classes.

Each model module decorates its constructors with ``@register_model``. A registered
constructor is called as ``fn(num_classes=..., input_size=(C, H, W), **kwargs)`` and
returns an ``nn.Module``; ImageNet constructors also take ``pretrained=True``.

Some architectures exist in two families (``resnet18`` for CIFAR and for ImageNet).
Registry keys are unique (``cifar_resnet18``, ``resnet18``); each entry also carries a
*short name* (``resnet18`` for both), and a short name shared by several families is
resolved by the dataset's family (``DATASET_FAMILY``), defaulting to ``DEFAULT_FAMILY``.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from raysweep.models.external import call_factory, describe, is_external, resolve_factory

log = logging.getLogger(__name__)

# Which model family serves a dataset: used only to pick between same-named models.
DATASET_FAMILY: dict[str, str] = {
    "cifar10": "cifar",
    "cifar100": "cifar",
    "mnist": "mnist",
    "imagenet": "imagenet",
    "imagefolder": "imagenet",
    "digits": "digits",
}
DEFAULT_FAMILY = "imagenet"  # a bare ambiguous name means the torchvision model, as in timm
PRETRAINED_FAMILIES = frozenset({"imagenet"})


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one model (returned by ``model_info``)."""

    name: str  # unique registry key
    fn: Callable[..., nn.Module]
    family: str
    input_size: tuple[int, int, int]  # (C, H, W) the model is designed for
    num_classes: int
    short_name: str  # the name users type; may be shared across families

    @property
    def pretrained_available(self) -> bool:
        return self.family in PRETRAINED_FAMILIES


MODELS: dict[str, ModelEntry] = {}
# short name -> {family: registry key}
SHORT_NAMES: dict[str, dict[str, str]] = {}


def register_model(
    name: str,
    *,
    family: str,
    input_size: tuple[int, int, int],
    num_classes: int,
    short_name: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: add a constructor to ``MODELS`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        short = short_name or name
        by_family = SHORT_NAMES.setdefault(short, {})
        if family in by_family:
            raise ValueError(f"short name {short!r} already used in family {family!r}")
        MODELS[name] = ModelEntry(name, fn, family, tuple(input_size), num_classes, short)
        by_family[family] = name
        return fn

    return deco


def list_models(family: str | None = None) -> list[str]:
    """Sorted registry keys, optionally of one family (cifar, mnist, digits, imagenet)."""
    return sorted(k for k, e in MODELS.items() if family is None or e.family == family)


def _unknown(name: str) -> ValueError:
    known = sorted(set(MODELS) | set(SHORT_NAMES))
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return ValueError(f"unknown model {name!r}{hint} (known: {', '.join(list_models())})")


def resolve_model_name(name: str, dataset: str | None = None, family: str | None = None) -> str:
    """Registry key for ``name``; a short name shared by families goes by family/dataset. An
    external name (``pkg.mod:factory``, ``torchvision:...``, ``timm:...``) is checked to resolve
    and returned as it is."""
    if is_external(name):
        resolve_factory(name)
        return name
    if name in SHORT_NAMES:
        by_family = SHORT_NAMES[name]
        if len(by_family) == 1:
            return next(iter(by_family.values()))
        if family is None and dataset is not None:
            if dataset not in DATASET_FAMILY:
                raise ValueError(
                    f"model {name!r} exists in families {sorted(by_family)}; cannot tell which "
                    f"from unknown dataset {dataset!r} (known: {sorted(DATASET_FAMILY)}); "
                    f"pass family= or a full name ({', '.join(sorted(by_family.values()))})"
                )
            family = DATASET_FAMILY[dataset]
        family = family or DEFAULT_FAMILY
        if family not in by_family:
            raise ValueError(
                f"model {name!r} has no {family!r} variant; it exists as "
                f"{', '.join(f'{k} ({f})' for f, k in sorted(by_family.items()))}"
            )
        return by_family[family]
    if name in MODELS:
        return name
    raise _unknown(name)


def model_info(name: str, dataset: str | None = None, family: str | None = None) -> ModelEntry:
    """The registry entry (family, default input size, num_classes) for a model name."""
    return MODELS[resolve_model_name(name, dataset, family)]


def create_model(
    name_or_callable: str | Callable[..., nn.Module],
    num_classes: int | None = None,
    input_size: tuple[int, int, int] | None = None,
    pretrained: bool = False,
    *,
    dataset: str | None = None,
    family: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by registered name, constructor, import path or scheme.

    ``dataset``/``family`` only choose between same-named models (``resnet18`` for
    cifar10 vs imagenet); they do not set ``num_classes``: pass that from the dataset
    info. ``num_classes``/``input_size`` default to the model's registered values; an
    external model (raysweep.models.external) gets them only if given, and only the ones its
    factory accepts. ``pretrained=True`` is for ImageNet models and reads the local torch hub
    cache only.
    """
    if callable(name_or_callable):
        entry = next((e for e in MODELS.values() if e.fn is name_or_callable), None)
    else:
        entry = None if is_external(name_or_callable) else MODELS[resolve_model_name(name_or_callable, dataset, family)]
    if entry is None:
        if pretrained:
            raise ValueError(f"pretrained weights exist only for the zoo's ImageNet models, not {describe(name_or_callable)!r}")
        return call_factory(resolve_factory(name_or_callable), num_classes, input_size, describe(name_or_callable))
    if pretrained:
        if not entry.pretrained_available:
            raise ValueError(
                f"pretrained weights exist only for ImageNet models; {entry.name!r} is "
                f"a {entry.family} model"
            )
        kwargs["pretrained"] = True
    num_classes = entry.num_classes if num_classes is None else int(num_classes)
    input_size = entry.input_size if input_size is None else tuple(input_size)
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {input_size}")
    log.debug("create_model %s num_classes=%d input_size=%s", entry.name, num_classes, input_size)
    return entry.fn(num_classes=num_classes, input_size=input_size, **kwargs)
