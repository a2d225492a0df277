"""Where the training loop runs: in Ray Train's DDP workers, or in a Ray Tune trial's own process.

The loop (``raysweep.loop.run_loop``) talks only to a ``LoopSession``: rank, world size, device,
the checkpoint to resume from, model/loader preparation and the per-epoch report. Three sessions:

* ``TrainSession`` — inside a ``TorchTrainer`` worker (``raysweep.train``/``.prune`` and every
  multi-worker sweep trial): DDP over the worker group, checkpoints through Ray Train.
* ``LocalSession`` — no Ray at all: the same loop in this process (tests, benchmarks).
* ``TuneSession`` — a one-worker sweep trial runs the loop in the Tune trial's process itself.
  A one-rank "DDP" needs no worker group, no process group and no controller; skipping them
  is what takes a trial's fixed cost from ~10-20 s down to about a second (issue #6). The trial
  keeps its own checkpoints (``TrialCheckpoints``), not Tune's: Tune deletes a superseded
  checkpoint before its experiment state stops naming it, so a driver killed in between left a
  resume that failed on a checkpoint that no longer existed.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

import torch
import torch.nn as nn

CHECKPOINT_FILE = "checkpoint.pt"

log = logging.getLogger("raysweep.session")


class LoopSession(Protocol):
    world_rank: int
    world_size: int

    def device(self) -> torch.device: ...

    def node_id(self) -> str: ...

    def resume_payload(self) -> Optional[dict[str, Any]]:
        """The saved training state to continue from, or None for a fresh start."""

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def prepare_data_loader(self, loader): ...

    def report(self, metrics: dict[str, Any], payload: Optional[dict[str, Any]], epoch: int) -> None:
        """Report one epoch; ``payload`` (rank 0 only) becomes the epoch's checkpoint."""


def _load_payload(checkpoint) -> Optional[dict[str, Any]]:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


@contextmanager
def _checkpoint_dir(payload: dict[str, Any]) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        torch.save(payload, Path(d) / CHECKPOINT_FILE)
        yield d


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class TrainSession:
    """One rank of a Ray Train worker group."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.world_rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def node_id(self) -> str:
        return _node_id()

    def resume_payload(self) -> Optional[dict[str, Any]]:
        import ray.train

        return _load_payload(ray.train.get_checkpoint())

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def prepare_data_loader(self, loader):
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)

    def report(self, metrics: dict[str, Any], payload: Optional[dict[str, Any]], epoch: int) -> None:
        import ray.train

        if payload is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with _checkpoint_dir(payload) as d:
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=f"checkpoint_epoch{epoch:04d}"
            )


class TrialCheckpoints:
    """One trial's checkpoints in ``<trials_dir>/<trial_id>/checkpoint_epochNNNN/``, the layout
    a TorchTrainer trial's have too. Each is written to a temporary folder and renamed into
    place, then older ones are removed: whenever the driver or the trial dies, the folder holds
    at least one complete checkpoint, and a resumed trial starts from the newest."""

    PATTERN = re.compile(r"checkpoint_epoch(\d+)$")

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _saved(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := self.PATTERN.match(p.name)) and p.is_dir()]
        return sorted(found)

    def latest(self) -> Optional[dict[str, Any]]:
        """The newest checkpoint that loads; one that does not is skipped with a warning."""
        for epoch, path in reversed(self._saved()):
            try:
                return torch.load(path / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file means: use an older one
                log.warning("skipping unreadable checkpoint %s: %s", path, exc)
        return None

    def save(self, payload: dict[str, Any], epoch: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"checkpoint_epoch{epoch:04d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.folder))
        torch.save(payload, tmp / CHECKPOINT_FILE)
        if final.exists():  # the same epoch again (a trial restarted before this one was superseded)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for other_epoch, path in self._saved():
            if other_epoch < epoch:
                shutil.rmtree(path, ignore_errors=True)
        for stale in self.folder.glob(".checkpoint_epoch*"):  # left by a trial killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        return final


class TuneSession:
    """A one-worker trial in the Tune trial process: rank 0 of 1, no process group.

    Reports metrics to Tune and keeps its checkpoints itself (``TrialCheckpoints``)."""

    world_rank = 0
    world_size = 1

    def __init__(self, checkpoint_dir: Path, use_gpu: bool = False) -> None:
        self.checkpoints = TrialCheckpoints(checkpoint_dir)
        self.use_gpu = use_gpu

    def device(self) -> torch.device:
        # Tune sets CUDA_VISIBLE_DEVICES to the trial's GPU, which is then cuda:0.
        return torch.device("cuda:0" if self.use_gpu and torch.cuda.is_available() else "cpu")

    def node_id(self) -> str:
        return _node_id()

    def resume_payload(self) -> Optional[dict[str, Any]]:
        return self.checkpoints.latest()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device())

    def prepare_data_loader(self, loader):
        return loader

    def report(self, metrics: dict[str, Any], payload: Optional[dict[str, Any]], epoch: int) -> None:
        import ray.tune

        if payload is not None:
            # Saved before the report: a trial Tune stops at this report has it on disk.
            self.checkpoints.save(payload, epoch)
        ray.tune.report(metrics)


class LocalSession:
    """The loop without Ray, in this process: what a plain PyTorch script would do.

    Keeps every report in ``reports`` and the last checkpoint payload in ``payload``; the
    overhead benchmark compares trials against this, and tests use it to run the loop fast.
    """

    world_rank = 0
    world_size = 1

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.payload: dict[str, Any] | None = None

    def device(self) -> torch.device:
        return torch.device("cpu")

    def node_id(self) -> str:
        return "local"

    def resume_payload(self) -> dict[str, Any] | None:
        return None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def prepare_data_loader(self, loader):
        return loader

    def report(self, metrics: dict[str, Any], payload: dict[str, Any] | None, epoch: int) -> None:
        self.reports.append(metrics)
        if payload is not None:
            self.payload = payload
