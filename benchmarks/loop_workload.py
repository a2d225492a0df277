"""The CIFAR-shaped workload of bench_loop_speed.py and gpu_bench.py, and the plain loops they
compare raysweep's loop against (a helper module of those scripts, not a benchmark itself).

* ``write_fake_cifar``: random uint8 images and labels in torchvision's CIFAR-10 python layout,
  so every code path reads them as the real set (``--dataset cifar10 --data_root <folder>``):
  raysweep's loop, the loop of an older commit, Ray trials in other processes.
* ``plain_run``: a hand-written PyTorch loop on the same files, model, optimizer, batch, epochs
  and augmentation (random crop with 4 pixels of zero padding, horizontal flip), in one of two
  styles: ``loader`` (a Dataset with torchvision's per-sample transforms through a DataLoader,
  the textbook way) or ``tensor`` (the set as one uint8 tensor, batches cut by hand, the crop
  sliced per sample, the flip and normalisation batched).
* ``TimedSession``: raysweep's LocalSession that stamps each epoch's report.
"""
from __future__ import annotations

import contextlib
import pickle
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # raysweep.data's
FOLDER = "cifar-10-batches-py"


def write_fake_cifar(root: Path, train: int, val: int, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/data_batch_1..5, test_batch``: random pixels, labels 0..9."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [train // 5 + (1 if i < train % 5 else 0) for i in range(5)]
    for name, n in [(f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)] + [("test_batch", val)]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return Path(root)


def read_fake_cifar(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images uint8 NCHW, train labels, val images, val labels) from the files above."""

    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        data, labels = [], []
        for name in names:
            with open(Path(root) / FOLDER / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(entry["labels"])
        return torch.from_numpy(np.concatenate(data)), torch.tensor(labels)

    x_tr, y_tr = read([f"data_batch_{i}" for i in range(1, 6)])
    x_va, y_va = read(["test_batch"])
    return x_tr, y_tr, x_va, y_va


class TimedSession:
    """raysweep's LocalSession with the time of each report (one per epoch)."""

    def __init__(self, device: str = "cpu") -> None:
        from raysweep.trial.sessions import LocalSession

        self.inner = LocalSession(device=device) if device != "cpu" else LocalSession()
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def report(self, metrics: dict, state: Any, epoch: int) -> None:
        _sync()
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())
        self.inner.report(metrics, state, epoch)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class _PerSample(torch.utils.data.Dataset):
    """The textbook dataset: one uint8 image at a time through torchvision's transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        import torchvision.transforms as T

        self.images, self.labels = images, labels
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
        self.mean = torch.tensor(CIFAR_MEAN)[:, None, None]
        self.std = torch.tensor(CIFAR_STD)[:, None, None]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.transform(self.images[i]).float() / 255.0
        return (x - self.mean) / self.std, self.labels[i]


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _normalise(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN, device=device)[:, None, None]
    std = torch.tensor(CIFAR_STD, device=device)[:, None, None]
    return (x.float() / 255.0 - mean) / std


def _tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch: int, gen: torch.Generator):
    """Hand-cut batches: shuffle, pad, a per-sample crop slice, a batched flip."""
    order = torch.randperm(len(labels), generator=gen).to(images.device)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        x = F.pad(images[idx], (4, 4, 4, 4))
        offsets = torch.randint(0, 9, (len(idx), 2), generator=gen).tolist()
        x = torch.stack([x[i, :, dy : dy + 32, dx : dx + 32] for i, (dy, dx) in enumerate(offsets)])
        flip = (torch.rand(len(idx), generator=gen) < 0.5).to(images.device)
        yield torch.where(flip[:, None, None, None], x.flip(3), x), labels[idx]


def plain_run(root: Path, style: str, epochs: int, batch: int, threads: int, *, model_name: str = "resnet20",
              lr: float = 0.05, channels_last: bool = False, precision: str = "fp32", device: str = "cpu",
              seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """A plain loop: per epoch a pass of SGD and an evaluation; returns the per-epoch seconds."""
    from raysweep.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    x_tr, y_tr, x_va, y_va = read_fake_cifar(root)
    model = create_model(model_name, num_classes=10, dataset="cifar10").to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    gen = torch.Generator().manual_seed(seed)
    loader: Optional[torch.utils.data.DataLoader] = None
    if style == "loader":
        loader = torch.utils.data.DataLoader(_PerSample(x_tr, y_tr), batch_size=batch, shuffle=True, generator=gen)
    else:
        x_tr, y_tr = x_tr.to(dev), y_tr.to(dev)
    x_va, y_va = x_va.to(dev), y_va.to(dev)
    stamps, cpu_stamps, correct = [time.perf_counter()], [time.process_time()], 0
    for _ in range(epochs):
        model.train()
        batches = loader if loader is not None else _tensor_batches(x_tr, y_tr, batch, gen)
        for x, y in batches:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            x = (x if loader is not None else _normalise(x, dev)).contiguous(memory_format=fmt)
            opt.zero_grad(set_to_none=True)
            with _autocast(dev, dtype):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad(), _autocast(dev, dtype):
            for start in range(0, len(y_va), batch):
                out = model(_normalise(x_va[start : start + batch], dev).contiguous(memory_format=fmt))
                correct += int((out.argmax(1) == y_va[start : start + batch]).sum())
        _sync()
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
    return {"epoch_s": np.diff(stamps).tolist(), "epoch_cpu_s": np.diff(cpu_stamps).tolist(), "accuracy": correct / len(y_va)}


def loop_run(root: Optional[Path], epochs: int, batch: int, threads: int, *, model_name: str = "resnet20",
             dataset: str = "cifar10", lr: float = 0.05, device: str = "cpu", seed: int = 0,
             options: Optional[dict[str, Any]] = None) -> dict[str, Any]:  # fmt: skip
    """raysweep's loop (whichever version is importable) on the same workload, timed per report."""
    from raysweep.config import RunConfig
    from raysweep.trial.loop import run_loop

    cfg = RunConfig(model=model_name, dataset=dataset, data_root=str(root) if root else None, epochs=epochs,
                    batch_size=batch, lr=lr, seed=seed, cpus_per_worker=threads, print_freq=0, **(options or {}))  # fmt: skip
    session = TimedSession(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    run_loop({"run": cfg.to_dict(), "run_dir": ""}, session)
    return {"epoch_s": np.diff([start, *session.stamps]).tolist(), "epoch_cpu_s": np.diff([cpu_start, *session.cpu_stamps]).tolist(),
            "accuracy": session.reports[-1]["accuracy"]}  # fmt: skip


def images_per_s(result: dict[str, Any], train_images: int, clock: str = "epoch_s") -> float:
    """Train images over the median epoch time of epochs 1.. (epoch 0 pays set-up and warm-up);
    ``clock`` "epoch_cpu_s": over the process's CPU seconds instead (less moved by other load)."""
    times = result[clock][1:] or result[clock]
    return train_images / float(np.median(times))
