"""Datasets: the embedded digits split, torchvision layouts from fake files, clear errors."""
from __future__ import annotations

import pickle
import socket
from collections import Counter

import numpy as np
import pytest
import torch

from raysweep.data import DatasetNotFoundError, build_datasets, list_datasets


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Anything that tries to download fails loudly instead of hanging."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_list_datasets():
    assert {"digits", "cifar10", "cifar100", "mnist", "imagenet", "imagefolder"} <= set(list_datasets())


def test_unknown_dataset_names_nearest():
    with pytest.raises(ValueError, match="did you mean cifar10"):
        build_datasets("cifar-10")


# ---------------------------------------------------------------- digits


def test_digits_split_shapes_and_stats():
    train, val, info = build_datasets("digits")
    assert (len(train), len(val)) == (1437, 360)
    assert (info.num_classes, info.input_size, info.family) == (10, (1, 8, 8), "digits")
    x, y = train.tensors
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-2  # train-normalised
    x0, y0 = val[0]
    assert x0.shape == (1, 8, 8) and y0.ndim == 0


def test_digits_split_is_stratified_and_deterministic():
    train, val, _ = build_datasets("digits")
    train2, val2, _ = build_datasets("digits", "/ignored")
    assert torch.equal(train.tensors[0], train2.tensors[0]) and torch.equal(val.tensors[1], val2.tensors[1])
    tr, va = Counter(train.tensors[1].tolist()), Counter(val.tensors[1].tolist())
    for c in range(10):
        assert abs(va[c] - 0.2 * (tr[c] + va[c])) <= 1, (c, tr[c], va[c])


def test_digits_equal_sklearn_load_and_split():
    """The stored split and the numpy reader reproduce sklearn's load_digits + train_test_split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(x / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    mean, std = x_tr.mean(), x_tr.std()
    train, val, info = build_datasets("digits")
    assert info.mean == (float(mean),) and info.std == (float(std),)
    expected = torch.from_numpy(((x_va - mean) / std).reshape(-1, 1, 8, 8).astype(np.float32))
    assert torch.equal(val.tensors[0], expected) and torch.equal(val.tensors[1], torch.from_numpy(y_va))
    assert torch.equal(train.tensors[1], torch.from_numpy(y_tr))


# ---------------------------------------------------------------- CIFAR


def write_cifar10(root, per_batch: int = 2, n_test: int = 3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels[name] = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels[name]}, f)
    return labels


def test_fake_cifar10_loads(tmp_path):
    labels = write_cifar10(tmp_path)
    train, val, info = build_datasets("cifar10", tmp_path)
    assert (len(train), len(val)) == (10, 3)
    assert (info.num_classes, info.input_size, info.family) == (10, (3, 32, 32), "cifar")
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert train.targets == sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    assert [val[i][1] for i in range(3)] == labels["test_batch"]


def test_fake_cifar10_pixels_unaugmented(tmp_path):
    write_cifar10(tmp_path)
    _, val, info = build_datasets("cifar10", str(tmp_path), augment=False)
    x, _ = val[0]
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)["data"][0].reshape(3, 32, 32) / 255.0
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    assert torch.allclose(x, (torch.tensor(raw, dtype=torch.float32) - mean) / std, atol=1e-5)


def test_fake_cifar100_loads(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in [("train", 4), ("test", 2)]:
        with open(folder / name, "wb") as f:
            data = np.zeros((n, 3072), np.uint8)
            pickle.dump({"data": data, "fine_labels": [99] * n, "coarse_labels": [0] * n}, f)
    train, val, info = build_datasets("cifar100", tmp_path)
    assert (len(train), len(val), info.num_classes) == (4, 2, 100)
    assert train[3][1] == 99


def test_missing_cifar_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_datasets("cifar10", tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert f"cifar10 not found under {tmp_path}" in msg
    assert f"{tmp_path}/cifar-10-batches-py/data_batch_1..5 and test_batch" in msg
    assert "never downloads" in msg and "the embedded digits dataset" in msg and "--dataset" not in msg


def test_missing_data_root(tmp_path):
    for name in ("cifar10", "cifar100", "mnist", "imagenet", "imagefolder"):
        with pytest.raises(DatasetNotFoundError, match=f"{name} needs a data root"):
            build_datasets(name, None)


def test_malformed_cifar(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="malformed"):
        build_datasets("cifar10", tmp_path)


# ---------------------------------------------------------------- MNIST


def write_idx(path, magic: int, array: np.ndarray):
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fake_mnist_loads(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in [("train", 5), ("t10k", 3)]:
        write_idx(raw / f"{split}-images-idx3-ubyte", 2051, np.full((n, 28, 28), 7))
        write_idx(raw / f"{split}-labels-idx1-ubyte", 2049, np.arange(n))
    train, val, info = build_datasets("mnist", tmp_path)
    assert (len(train), len(val)) == (5, 3)
    assert (info.input_size, info.family) == ((1, 28, 28), "mnist")
    x, y = val[2]
    assert x.shape == (1, 28, 28) and y == 2
    assert torch.allclose(x, torch.full_like(x, (7 / 255 - 0.1307) / 0.3081), atol=1e-5)


def test_missing_mnist_names_path(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_datasets("mnist", tmp_path)
    assert f"mnist not found under {tmp_path}" in str(err.value)
    assert f"{tmp_path}/MNIST/raw/" in str(err.value) and "train-images-idx3-ubyte" in str(err.value)


# ---------------------------------------------------------------- image folders


def write_image_folder(root, classes=("cat", "dog"), per_class: int = 2):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.png")


@pytest.mark.parametrize("name", ["imagefolder", "imagenet"])
def test_fake_image_folder_loads(tmp_path, name):
    write_image_folder(tmp_path, classes=("a", "b", "c"))
    train, val, info = build_datasets(name, tmp_path)
    assert (len(train), len(val)) == (6, 6)
    assert (info.num_classes, info.input_size, info.family) == (3, (3, 224, 224), "imagenet")
    assert train[0][0].shape == (3, 224, 224) and val[5][0].shape == (3, 224, 224)
    assert val[5][1] == 2


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_datasets("imagefolder", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "train") in str(err.value)
    write_image_folder(tmp_path, classes=("a", "b"))
    (tmp_path / "val" / "b").rename(tmp_path / "val" / "z")
    with pytest.raises(DatasetNotFoundError, match="class folders differ"):
        build_datasets("imagefolder", tmp_path)
