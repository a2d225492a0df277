"""Where the training loop runs: in Ray Train's DDP workers, or in a Ray Tune trial's own process.

The loop (``raysweep.trial.loop.run_loop``) talks only to a ``LoopSession``: rank, world size,
device, the checkpoint to resume from, model preparation (device, DDP) and the per-epoch report.
Batches come from raysweep.data's feeds, already on the device and sharded per rank.

* ``TrainSession`` — inside a ``TorchTrainer`` worker (``raysweep.train``/``.prune``, a
  ``trainer`` sweep trial): DDP over the worker group, checkpoints through Ray Train.
* ``TuneSession`` — an ``inprocess`` sweep trial: the loop in the Tune trial's own process. A
  one-rank "DDP" needs no worker group, no process group and no controller; skipping them takes
  a trial's fixed cost from ~10-20 s to about a second. The trial keeps its own checkpoints
  (``CheckpointFolder``), not Tune's: Tune deletes a superseded checkpoint before its experiment
  state stops naming it, so a driver killed in between would resume from one that is gone.
* ``LocalSession`` — no Ray at all: the same loop in this process (tests, benchmarks).

The ``pool`` executor's session is ``raysweep.sweep.pool.PoolSession``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
import torch.nn as nn

from raysweep.trial.checkpoint import CHECKPOINT_FILE, Checkpoint, CheckpointFolder, read_checkpoint, save_checkpoint


class LoopSession(Protocol):
    world_rank: int
    world_size: int

    def device(self) -> torch.device: ...

    def node_id(self) -> str: ...

    def resume_state(self) -> Optional[Checkpoint]:
        """The saved training state to continue from, or None for a fresh start."""

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def report(self, metrics: dict[str, Any], state: Optional[Checkpoint], epoch: int) -> None:
        """Report one epoch; ``state`` (rank 0 only) becomes the epoch's checkpoint."""


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

    def resume_state(self) -> Optional[Checkpoint]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return read_checkpoint(Path(d) / CHECKPOINT_FILE)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], state: Optional[Checkpoint], epoch: int) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(state, Path(d) / CHECKPOINT_FILE)
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=f"checkpoint_epoch{epoch:04d}"
            )


class TuneSession:
    """A one-worker trial in the Tune trial process: rank 0 of 1, no process group.

    Reports metrics to Tune and keeps its checkpoints itself (``CheckpointFolder``)."""

    world_rank = 0
    world_size = 1

    def __init__(self, checkpoint_dir: Path, use_gpu: bool = False) -> None:
        self.checkpoints = CheckpointFolder(checkpoint_dir)
        self.use_gpu = use_gpu

    def device(self) -> torch.device:
        # Tune sets CUDA_VISIBLE_DEVICES to the trial's GPU, which is then cuda:0.
        return torch.device("cuda:0" if self.use_gpu and torch.cuda.is_available() else "cpu")

    def node_id(self) -> str:
        return _node_id()

    def resume_state(self) -> Optional[Checkpoint]:
        return self.checkpoints.latest()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device())

    def report(self, metrics: dict[str, Any], state: Optional[Checkpoint], epoch: int) -> None:
        import ray.tune

        if state is not None:
            # Saved before the report: a trial Tune stops at this report has it on disk.
            self.checkpoints.save(state, epoch)
        ray.tune.report(metrics)


class LocalSession:
    """The loop without Ray, in this process: what a plain PyTorch script would do.

    Keeps every report in ``reports`` and the last checkpoint in ``state``; the overhead
    benchmark compares trials against this, and tests use it to run the loop fast."""

    world_rank = 0
    world_size = 1

    def __init__(self, resume: Optional[Checkpoint] = None, device: str = "cpu") -> None:
        self.reports: list[dict[str, Any]] = []
        self.state: Optional[Checkpoint] = None
        self.resume = resume
        self._device = torch.device(device)  # "cuda": the benchmarks time a GPU trial without Ray

    def device(self) -> torch.device:
        return self._device

    def node_id(self) -> str:
        return "local"

    def resume_state(self) -> Optional[Checkpoint]:
        return self.resume

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self._device)

    def report(self, metrics: dict[str, Any], state: Optional[Checkpoint], epoch: int) -> None:
        self.reports.append(metrics)
        if state is not None:
            self.state = state
