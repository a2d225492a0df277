"""Batches on the trial's device and through DataLoader workers: the order (seeded, sharded as
DistributedSampler shards, the same after a resume), the batched augmentation against a
reference, and which path a dataset takes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from raysweep.data import DatasetInfo, build_datasets, build_feeds, loader_workers
from raysweep.data import feeds as feeds_mod
from raysweep.data.device import Augment, DeviceFeed, MemoryImages, shard_order
from raysweep.data.files import LoaderFeed
from test_data import write_cifar10, write_image_folder

CPU = torch.device("cpu")
H = W = 8


def coded_images(n: int) -> MemoryImages:
    """Image k's pixel (h, w) holds 1 + 64k + 8h + w (exact in float32), so an augmented pixel
    tells which image, row and column it came from; zero padding stays 0. Label of image k: k % 10."""
    k = torch.arange(n)[:, None, None]
    h, w = torch.arange(H)[None, :, None], torch.arange(W)[None, None, :]
    images = (1 + 64 * k + 8 * h + w).float()[:, None]
    return MemoryImages(images, torch.arange(n) % 10, augment=Augment(pad=4, flip=True))


def decode(x: torch.Tensor) -> tuple[int, int, int, bool]:
    """(source image, crop offset dy, dx in [0, 8], flipped) of one augmented 8x8 image: its
    top-left real pixel names the source pixel, its right neighbour the direction of the row."""
    rows, cols = torch.nonzero(x[0], as_tuple=True)
    i, j = int(rows[0]), int(cols[0])  # a crop keeps >= 4 x 4 real pixels, so (i, j + 1) is real too
    value = int(x[0, i, j]) - 1
    k, h, w = value // 64, value % 64 // 8, value % 8
    flipped = bool(x[0, i, j + 1] < x[0, i, j])
    col = W - 1 - j if flipped else j  # out(i, j) = crop(i, W-1-j) when flipped; crop(r, c) = x(r + dy - 4, c + dx - 4)
    return k, h - i + 4, w - col + 4, flipped


def test_the_order_is_distributed_samplers_for_every_rank_and_epoch():
    train, _, _ = build_datasets("digits")
    for world in (1, 2, 3):
        for rank in range(world):
            sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=7)
            sampler.set_epoch(2)
            assert shard_order(len(train), 7, 2, rank, world).tolist() == list(sampler)


def test_digits_batches_equal_the_dataloader_ones_and_shards_cover_the_set():
    train, val, info = build_datasets("digits")
    feeds = build_feeds(train, val, info, device=CPU, batch_size=128, seed=0)
    assert feeds.where.startswith("tensors on cpu")
    sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(3)
    reference = list(DataLoader(train, batch_size=128, sampler=sampler))
    got = list(feeds.train.batches(3))
    assert len(got) == len(reference) == len(feeds.train)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, reference))
    sevenths = [build_feeds(train, val, info, device=CPU, batch_size=16, seed=0, rank=r, world=7) for r in range(7)]
    seen = [torch.cat([y for _, y in f.val.batches()]) for f in sevenths]
    assert [len(s) for s in seen] == [52, 52, 52, 51, 51, 51, 51]  # 360 val images: strides, no padding
    assert sorted(torch.cat(seen).tolist()) == sorted(val.tensors[1].tolist())  # exact and disjoint
    halves = [build_feeds(train, val, info, device=CPU, batch_size=64, seed=0, rank=r, world=2) for r in range(2)]
    assert [sum(len(y) for _, y in f.train.batches(0)) for f in halves] == [719, 719]  # 1437 padded to 1438


def test_same_seed_same_batches_and_a_resumed_epoch_sees_what_an_uninterrupted_one_did():
    data = coded_images(100)
    one = DeviceFeed(data, CPU, 16, seed=3)
    for epoch in range(3):
        list(one.batches(epoch))  # an uninterrupted run went through epochs 0..2
    resumed = DeviceFeed(data, CPU, 16, seed=3)  # a fresh process resumed at epoch 3
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(one.batches(3), resumed.batches(3)))
    other = DeviceFeed(data, CPU, 16, seed=4)
    assert not torch.equal(next(iter(one.batches(3)))[0], next(iter(other.batches(3)))[0])
    assert not torch.equal(next(iter(one.batches(3)))[0], next(iter(one.batches(4)))[0])


def test_augmentation_matches_the_reference_crop_and_flip_with_labels_aligned():
    """Every augmented image is a crop of its own source (zero-padded by 4) at an offset drawn
    uniformly from [0, 8] in each direction, flipped with probability 0.5, beside its own label."""
    n = 2000
    data = coded_images(n)
    feed = DeviceFeed(data, CPU, 250, seed=0)
    offsets, flips = [], []
    for x, y in feed.batches(0):
        for image, label in zip(x, y):
            k, dy, dx, flipped = decode(image)
            assert int(label) == k % 10  # the label travelled with its image
            reference = torch.nn.functional.pad(data.images[k], (4, 4, 4, 4))[:, dy : dy + H, dx : dx + W]
            assert torch.equal(image, reference.flip(2) if flipped else reference)
            offsets += [dy, dx]
            flips.append(flipped)
    counts = np.bincount(offsets, minlength=9)
    expected = len(offsets) / 9
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert counts.size == 9 and chi2 < 26.1, counts  # 8 degrees of freedom, p = 0.001
    assert abs(np.mean(flips) - 0.5) < 4 * np.sqrt(0.25 / n)


def test_uint8_images_are_normalised_on_the_device_as_torchvision_does(tmp_path):
    write_cifar10(tmp_path, per_batch=4, n_test=6)
    train, val, info = build_datasets("cifar10", tmp_path)
    feeds = build_feeds(train, val, info, device=CPU, batch_size=4, seed=0)
    x, y = next(iter(feeds.val.batches()))
    for i in range(len(y)):
        expected, label = val[i]  # ToTensor + Normalize, per sample
        assert torch.allclose(x[i], expected, atol=1e-5) and int(y[i]) == label
    assert feeds.train.augment == Augment(pad=4, flip=True)
    assert build_feeds(*build_datasets("cifar10", tmp_path, augment=False), device=CPU, batch_size=4, seed=0).train.augment is None


def test_file_datasets_go_through_workers_seeded_per_sample(tmp_path, monkeypatch):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=3)
    train, val, info = build_datasets("imagefolder", tmp_path)
    feeds = build_feeds(train, val, info, device=CPU, batch_size=4, seed=1, cpus=1)
    assert isinstance(feeds.train, LoaderFeed) and feeds.where == "DataLoader, 0 worker process(es)"
    rng_before = torch.get_rng_state()
    first = [x for x, _ in feeds.train.batches(0)]
    assert torch.equal(torch.get_rng_state(), rng_before)  # loading in-process leaves the training RNG alone
    again = [x for x, _ in LoaderFeed(train, CPU, 4, seed=1, workers=1).batches(0)]  # a worker process, persistent
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # random crops too: seeded by (seed, epoch, index)
    assert not all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in feeds.train.batches(1)]))
    assert sum(len(y) for _, y in feeds.val.batches()) == 6


def test_in_memory_sets_over_the_limit_use_workers(monkeypatch):
    train, val, info = build_datasets("digits")
    monkeypatch.setattr(feeds_mod, "DEVICE_DATA_LIMIT_BYTES", 1000)
    assert isinstance(build_feeds(train, val, info, device=CPU, batch_size=64, seed=0).train, LoaderFeed)
    user = TensorDataset(torch.zeros(10, 3, 4, 4), torch.zeros(10, dtype=torch.int64))
    small_info = DatasetInfo("user", 2, (3, 4, 4), "cifar", (0.0,), (1.0,))
    monkeypatch.setattr(feeds_mod, "DEVICE_DATA_LIMIT_BYTES", 1 << 20)
    assert isinstance(build_feeds(user, user, small_info, device=CPU, batch_size=4, seed=0).train, DeviceFeed)


@pytest.mark.parametrize("cpus,cuda,workers", [(1, False, 0), (4, False, 3), (1, True, 1), (8, True, 7)])
def test_loader_workers_are_sized_from_the_trials_cpus(cpus, cuda, workers):
    assert loader_workers(cpus, cuda) == workers
