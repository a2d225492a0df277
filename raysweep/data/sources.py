"""Datasets from local files only: raysweep never downloads.

``build_datasets(name, data_root)`` returns ``(train, val, info)``. The embedded default
``digits`` is scikit-learn's bundled 8x8 digits (1,797 real images), so a sweep runs with
no data at all. CIFAR-10/100, MNIST and ImageNet-style folders are read from
``data_root`` in torchvision's on-disk layouts; the layout is checked *before* any
torchvision dataset is constructed, so a missing or broken dataset is one
``DatasetNotFoundError`` that names the path and the layout expected.

Digits, CIFAR and MNIST also have an in-memory form (``memory_images``): the training loop
serves them from the trial's device (raysweep.data.device); the per-sample transforms here
are for plain indexing and for sets too large for that.
"""
from __future__ import annotations

import difflib
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from raysweep.data.device import Augment, MemoryImages
from raysweep.data.external import external_datasets
from raysweep.data.info import DatasetInfo

log = logging.getLogger(__name__)

NO_DOWNLOAD_HINT = "raysweep never downloads: put the files there yourself, or use the embedded digits dataset"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is absent or malformed under its data root."""


Builder = Callable[..., tuple[Dataset, Dataset, DatasetInfo]]  # (data_root, augment, **options)
DATASETS: dict[str, Builder] = {}


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator: a builder ``fn(data_root, augment) -> (train, val, info)``."""

    def deco(fn: Builder) -> Builder:
        DATASETS[name] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def build_datasets(
    name: str | Callable[..., Any], data_root: str | os.PathLike | None = None, *, augment: bool = True,
    options: Mapping[str, Any] | None = None,
) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Train and validation datasets plus their ``DatasetInfo``; nothing is downloaded.

    ``name`` is a registered name, an import path ``package.module:factory`` or a callable (a
    user's own data, raysweep.data.external); ``options`` go to the dataset's builder (e.g.
    imagefolder's image_size, channels, mean, std; num_classes and input_size for a user's)."""
    root = Path(data_root).expanduser() if data_root is not None else None
    if callable(name) or ":" in name:
        train, val, info = external_datasets(name, root, dict(options or {}))
        log.info("dataset %s: %d train, %d val, %d classes", info.name, len(train), len(val), info.num_classes)
        return train, val, info
    if name not in DATASETS:
        near = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(f"unknown dataset {name!r}{hint} (known: {', '.join(list_datasets())})")
    try:
        train, val, info = DATASETS[name](root, augment, **dict(options or {}))
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ValueError(f"dataset {name!r} takes no option {str(exc).rsplit(' ', 1)[-1]} (dataset_options)") from None
    log.info("dataset %s: %d train, %d val, %d classes", name, len(train), len(val), info.num_classes)
    return train, val, info


def _not_found(
    name: str, root: Path | None, expected: str, problem: str | None = None
) -> DatasetNotFoundError:
    if root is None:
        return DatasetNotFoundError(
            f"{name} needs a data root (--data_root): expected {expected.format(root='<data_root>')}. "
            + NO_DOWNLOAD_HINT
        )
    what = f"is malformed under {root} ({problem})" if problem else f"not found under {root}"
    return DatasetNotFoundError(f"{name} {what}: expected {expected.format(root=root)}. {NO_DOWNLOAD_HINT}")


def _require_files(name: str, root: Path | None, expected: str, files: list[str]) -> Path:
    """``root`` if every relative path in ``files`` is a file under it, else the error."""
    if root is None or not all((root / f).is_file() for f in files):
        raise _not_found(name, root, expected)
    return root


# ---------------------------------------------------------------- digits (embedded)


# scikit-learn's stratified 80/20 split of the 1,797 digits (``train_test_split(test_size=0.2,
# random_state=0, stratify=y)``, indices in its order), stored so that loading the data needs no
# sklearn import: ~2 s in every fresh process (each trial's Ray worker), against ~20 ms for this.
DIGITS_SPLIT = Path(__file__).resolve().parents[1] / "digits_split.npz"


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's bundled digits file, read with numpy: pixels 0..16 (1797, 64), labels (1797,)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise DatasetNotFoundError("the embedded digits data comes with scikit-learn, which is not installed")
    table = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


@register_dataset("digits")
def _digits(root: Path | None, augment: bool) -> tuple[Dataset, Dataset, DatasetInfo]:
    """sklearn's bundled digits: fixed stratified 80/20 split, normalised by train stats."""
    x, y = digits_arrays()
    split = np.load(DIGITS_SPLIT)
    x_tr, x_va, y_tr, y_va = x[split["train"]] / 16.0, x[split["val"]] / 16.0, y[split["train"]], y[split["val"]]
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def tensors(xs: np.ndarray, ys: np.ndarray) -> TensorDataset:
        xs = torch.from_numpy(((xs - mean) / std).reshape(-1, 1, 8, 8).astype(np.float32))
        return TensorDataset(xs, torch.from_numpy(ys.astype(np.int64)))

    info = DatasetInfo("digits", 10, (1, 8, 8), "digits", (mean,), (std,))
    return tensors(x_tr, y_tr), tensors(x_va, y_va), info


# ---------------------------------------------------------------- CIFAR


class CifarPickle(Dataset):
    """CIFAR from torchvision's python layout, read directly.

    torchvision's own class insists on the md5 of each batch file; reading the pickles
    ourselves keeps the same layout while letting subsets and re-packed copies load.
    """

    def __init__(
        self, files: list[Path], label_key: str, transform: Callable | None = None, device_augment: Augment | None = None
    ) -> None:
        data, targets = [], []
        for f in files:
            with open(f, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            targets.extend(int(t) for t in entry[label_key])
        self.data = np.concatenate(data).transpose(0, 2, 3, 1)  # HWC for PIL, as torchvision
        self.targets = targets
        self.transform = transform
        self.device_augment = device_augment  # what ``transform`` does at random, done in batches on the device
        if len(self.data) != len(self.targets):
            raise ValueError(f"{len(self.data)} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform else img), self.targets[i]

    def memory_images(self, info: DatasetInfo) -> MemoryImages:
        images = torch.from_numpy(self.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW, uint8
        return MemoryImages(images, torch.tensor(self.targets, dtype=torch.int64), info.mean, info.std, self.device_augment)


_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# name -> (folder, train files, val files, label key, classes)
_CIFAR_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def _cifar(name: str, root: Path | None, augment: bool) -> tuple[Dataset, Dataset, DatasetInfo]:
    import torchvision.transforms as T

    folder, train_files, val_files, label_key, classes = _CIFAR_LAYOUT[name]
    shown = ", ".join(train_files) if len(train_files) == 1 else "data_batch_1..5"
    expected = f"{{root}}/{folder}/{shown} and {val_files[0]} (torchvision's python layout)"
    _require_files(name, root, expected, [f"{folder}/{f}" for f in train_files + val_files])
    mean, std = _CIFAR_STATS[name]
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    device_aug = Augment(pad=4, flip=True) if augment else None
    try:
        train = CifarPickle([root / folder / f for f in train_files], label_key, T.Compose(aug + norm), device_aug)
        val = CifarPickle([root / folder / f for f in val_files], label_key, T.Compose(norm))
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
        raise _not_found(name, root, expected, f"{type(e).__name__}: {e}") from e
    return train, val, DatasetInfo(name, classes, (3, 32, 32), "cifar", mean, std)


@register_dataset("cifar10")
def _cifar10(root: Path | None, augment: bool) -> tuple[Dataset, Dataset, DatasetInfo]:
    return _cifar("cifar10", root, augment)


@register_dataset("cifar100")
def _cifar100(root: Path | None, augment: bool) -> tuple[Dataset, Dataset, DatasetInfo]:
    return _cifar("cifar100", root, augment)


# ---------------------------------------------------------------- MNIST

MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


class MnistData(Dataset):
    """torchvision's MNIST, indexed as it is, with its in-memory form for the device feed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.targets = dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.dataset[i]

    def memory_images(self, info: DatasetInfo) -> MemoryImages:
        return MemoryImages(self.dataset.data[:, None].contiguous(), self.targets.long(), info.mean, info.std)


@register_dataset("mnist")
def _mnist(root: Path | None, augment: bool) -> tuple[Dataset, Dataset, DatasetInfo]:
    """torchvision's raw layout (uncompressed idx files); no augmentation."""
    import torchvision.transforms as T
    from torchvision.datasets import MNIST

    expected = "{root}/MNIST/raw/{{" + ", ".join(MNIST_FILES) + "}} (torchvision's raw layout, uncompressed)"
    _require_files("mnist", root, expected, [f"MNIST/raw/{f}" for f in MNIST_FILES])
    mean, std = (0.1307,), (0.3081,)
    tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    try:
        train = MnistData(MNIST(str(root), train=True, transform=tf, download=False))
        val = MnistData(MNIST(str(root), train=False, transform=tf, download=False))
    except (RuntimeError, ValueError, AssertionError, OSError) as e:
        raise _not_found("mnist", root, expected, f"{type(e).__name__}: {e}") from e
    return train, val, DatasetInfo("mnist", 10, (1, 28, 28), "mnist", mean, std)
