"""Models from outside the zoo: ``"package.module:factory"``, ``"torchvision:<name>"``,
``"timm:<name>"``, or a Python callable (a notebook's class or function).

A factory is called as ``factory(num_classes=..., input_size=(C, H, W))`` with only the
keywords it accepts, and must return an ``nn.Module``. Each problem is a ``ModelSourceError``
that says what was wrong (a module that does not import, with the nearest names; a factory
that raises or returns something else) before any trial starts.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from typing import Any, Callable, Optional

import torch.nn as nn

Factory = Callable[..., nn.Module]
SCHEMES: dict[str, Callable[[str], Factory]] = {}


class ModelSourceError(ValueError):
    """A model named by import path or scheme that cannot be built."""


def register_scheme(name: str) -> Callable[[Callable[[str], Factory]], Callable[[str], Factory]]:
    def deco(fn: Callable[[str], Factory]) -> Callable[[str], Factory]:
        SCHEMES[name] = fn
        return fn

    return deco


def is_external(name: object) -> bool:
    """A callable, or a string naming a scheme (``torchvision:resnet18``) or an import path."""
    return callable(name) or (isinstance(name, str) and ":" in name)


def describe(model: object) -> str:
    """A model's name as text (configs, reports): a callable becomes ``module:qualname``."""
    from raysweep.config import source_name

    return source_name(model) if callable(model) and not isinstance(model, str) else str(model)


def resolve_factory(name: str | Factory) -> Factory:
    """The callable behind an external model name."""
    if callable(name):
        return name
    scheme, _, rest = name.partition(":")
    if scheme in SCHEMES:
        return SCHEMES[scheme](rest)
    return import_object(name, "model")


def import_object(path: str, what: str, error: type[ValueError] = ModelSourceError) -> Any:
    """``package.module:attribute`` imported; errors (``error``) name the nearest module or attribute."""
    try:
        return _import_object(path, what)
    except ModelSourceError as exc:
        raise error(str(exc)) from None


def _import_object(path: str, what: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ModelSourceError(f"{what} {path!r}: an import path is 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSourceError(f"{what} {path!r}: cannot import {module_name!r} ({exc}){_near_module(module_name)}. "
                               "The module must be importable here and on every Ray worker (the job's "
                               "--working-dir, or runtime_env py_modules)") from None  # fmt: skip
    except Exception as exc:  # noqa: BLE001 -- the user's module failed while importing
        raise ModelSourceError(f"{what} {path!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            near = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ModelSourceError(f"{what} {path!r}: {module_name!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSourceError(f"{what} {path!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def _near_module(name: str) -> str:
    parent, _, leaf = name.rpartition(".")
    try:
        pool = [m.name for m in pkgutil.iter_modules(importlib.import_module(parent).__path__)] if parent else \
            [m.name for m in pkgutil.iter_modules()]  # fmt: skip
    except Exception:  # noqa: BLE001 -- no hint is better than a second error
        return ""
    near = difflib.get_close_matches(leaf, pool, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(f'{parent}.{n}' if parent else n for n in near)}?" if near else ""


def call_factory(factory: Factory, num_classes: Optional[int], input_size: Optional[tuple[int, ...]], name: str = "") -> nn.Module:
    """``factory`` called with the keywords it accepts of num_classes and input_size."""
    given = {"num_classes": num_classes, "input_size": tuple(input_size) if input_size is not None else None}
    given = {k: v for k, v in given.items() if v is not None}
    try:
        params = inspect.signature(factory).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = given if takes_any else {k: v for k, v in given.items() if k in params}
    except (TypeError, ValueError):  # a builtin without a signature: try everything
        kwargs = given
    label = name or describe(factory)
    try:
        model = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 -- the user's factory: say which and why
        raise ModelSourceError(f"model {label!r}: its factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"model {label!r}: its factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@register_scheme("torchvision")
def _torchvision(name: str) -> Factory:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)  # classification models only
    if name not in known:
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        raise ModelSourceError(f"model 'torchvision:{name}': torchvision has no classification model {name!r}"
                               + (f"; did you mean {', '.join(near)}?" if near else ""))  # fmt: skip

    def build(num_classes: int = 1000, input_size: Optional[tuple[int, ...]] = None) -> nn.Module:
        return tvm.get_model(name, weights=None, num_classes=num_classes)

    return build


@register_scheme("timm")
def _timm(name: str) -> Factory:
    try:
        import timm
    except ImportError:
        raise ModelSourceError(f"model 'timm:{name}' needs timm, which is not installed: pip install -e \".[timm]\"") from None
    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.5)
        raise ModelSourceError(f"model 'timm:{name}': timm has no model {name!r}" + (f"; did you mean {', '.join(near)}?" if near else ""))

    def build(num_classes: int = 1000, input_size: Optional[tuple[int, ...]] = None) -> nn.Module:
        in_chans = input_size[0] if input_size else 3
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)

    return build


def check_on_sample(model: nn.Module, sample: Any, num_classes: int, name: str) -> None:
    """One sample of the data through the model: it must run and give one score per class."""
    import torch

    if not (isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[0], torch.Tensor)):
        raise ModelSourceError(f"the dataset's samples must be (tensor, int) pairs; the first is a {type(sample).__name__}")
    x = sample[0][None]
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:  # noqa: BLE001 -- a shape mismatch, a wrong channel count...
        raise ModelSourceError(f"model {name!r} fails on one sample of the data (input {tuple(x.shape)}): "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None  # fmt: skip
    if not isinstance(out, torch.Tensor) or out.shape != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelSourceError(f"model {name!r} outputs {shape} for one sample; a classifier of the dataset's "
                               f"{num_classes} classes outputs (1, {num_classes})")  # fmt: skip


def module_of(name: object) -> Optional[str]:
    """The module an import-path name comes from (None for zoo names, schemes and callables)."""
    if not isinstance(name, str) or ":" not in name:
        return None
    module, _, _ = name.partition(":")
    return None if module in SCHEMES else module
