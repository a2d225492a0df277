"""A user's own data: ``dataset: "package.module:factory"`` (or the callable itself, from Python).

The factory is called as ``factory(root)`` with ``root`` the space's ``data_root`` (None when
there is none) and returns ``(train, val)``, two torch Datasets of ``(tensor, int)`` samples.
``num_classes`` and ``input_size`` come from ``dataset_options`` when given, else from the labels
(the highest plus one) and the first sample's shape. Each problem is a ``DatasetSourceError``
before any trial starts.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch.utils.data import Dataset

from raysweep.data.info import DatasetInfo

log = logging.getLogger("raysweep.data")


class DatasetSourceError(ValueError):
    """A dataset named by import path (or given as a callable) that cannot be used."""


def external_datasets(source: Any, root: Optional[Path], options: Mapping[str, Any]) -> tuple[Dataset, Dataset, DatasetInfo]:
    from raysweep.models.external import describe, import_object

    name = describe(source)
    factory: Callable[..., Any] = source if callable(source) else import_object(source, "dataset", DatasetSourceError)
    try:
        takes_root = bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        takes_root = True
    try:
        result = factory(str(root) if root is not None else None) if takes_root else factory()
    except Exception as exc:  # noqa: BLE001 -- the user's factory: say which and why
        raise DatasetSourceError(f"dataset {name!r}: its factory raised {type(exc).__name__}: {exc}") from None
    if not (isinstance(result, (tuple, list)) and len(result) == 2 and all(_is_dataset(d) for d in result)):
        raise DatasetSourceError(f"dataset {name!r}: its factory must return (train, val), two torch Datasets; "
                                 f"it returned {_kind(result)}")  # fmt: skip
    train, val = result
    for split, data in (("train", train), ("val", val)):
        _check_sample(name, split, data)
    num_classes = int(options.get("num_classes") or _classes(train, val))
    input_size = tuple(options.get("input_size") or tuple(train[0][0].shape))
    return train, val, DatasetInfo(name, num_classes, input_size, "custom", (), ())


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__")


def _kind(obj: Any) -> str:
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)}: " + ", ".join(type(o).__name__ for o in obj)
    return f"a {type(obj).__name__}"


def _check_sample(name: str, split: str, data: Any) -> None:
    if len(data) == 0:
        raise DatasetSourceError(f"dataset {name!r}: its {split} split is empty")
    sample = data[0]
    ok = isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[0], torch.Tensor)
    label = sample[1] if ok else None
    if not ok or not (isinstance(label, int) or (isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point())):
        raise DatasetSourceError(f"dataset {name!r}: a {split} sample must be (tensor, int); the first is {_describe_sample(sample)}")


def _describe_sample(sample: Any) -> str:
    if isinstance(sample, (tuple, list)):
        return "(" + ", ".join(type(s).__name__ for s in sample) + ")"
    return type(sample).__name__


def _labels(data: Any) -> torch.Tensor:
    """All labels, from ``targets``/``tensors`` when the dataset has them, else one by one."""
    if hasattr(data, "targets"):
        return torch.as_tensor(data.targets)
    if hasattr(data, "tensors") and len(data.tensors) >= 2:
        return data.tensors[1]
    return torch.as_tensor([int(data[i][1]) for i in range(len(data))])


def _classes(train: Any, val: Any) -> int:
    labels = torch.cat([_labels(train).reshape(-1), _labels(val).reshape(-1)])
    if int(labels.min()) < 0:
        raise DatasetSourceError(f"labels must be class indices 0..K-1, found {int(labels.min())}")
    return int(labels.max()) + 1
