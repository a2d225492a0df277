"""One checkpoint format, one writer, one reader: a run's or a trial's state after an epoch.

Every place that saves or reads training state goes through here: the loop's sessions (resume),
the single-run driver (final.pt, best.pt, metrics.csv, layers.csv), the sweep's results table,
export, and the starting weights of a run. On disk a checkpoint is ``checkpoint.pt``, a plain
dict ``torch.load(..., weights_only=True)`` reads (``Checkpoint.to_payload``), inside a folder
``checkpoint_epochNNNN/`` (Ray Train's layout, and the one ``CheckpointFolder`` keeps).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

import pruners
from raysweep.errors import first_line

CHECKPOINT_FILE = "checkpoint.pt"
MODULE_PREFIX = "module."  # DDP's wrapper; stripped wherever weights are read

log = logging.getLogger("raysweep.checkpoint")

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint or weights file; the message names it and says why."""


class StorageError(RuntimeError):
    """Writing into the sweep's storage failed (read-only, full, gone): the storage's failure, not
    the trial's. The sweep stops after a few of these instead of failing trial after trial."""

    def __init__(self, path: str, errno: Optional[int], strerror: str) -> None:
        self.path, self.errno, self.strerror = str(path), errno, strerror
        super().__init__(f"storage failure: [Errno {errno}] {strerror}: {path}")

    def __reduce__(self) -> tuple:  # survives pickling (Ray ships exceptions between processes)
        return (type(self), (self.path, self.errno, self.strerror))

    @classmethod
    def from_os_error(cls, exc: OSError, path: PathLike) -> "StorageError":
        return cls(str(exc.filename or path), exc.errno, exc.strerror or str(exc))


@dataclass
class Checkpoint:
    """The state after one epoch; ``model`` carries the masks (parametrizations) as buffers."""

    model: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)  # RunConfig.to_dict() of the run
    epoch: int = -1
    metrics: dict[str, Any] = field(default_factory=dict)  # what this epoch reported
    history: list[dict[str, Any]] = field(default_factory=list)  # every epoch's metrics so far
    best_accuracy: float = math.nan  # best val top-1 among epochs at the final sparsity
    train_s: float = 0.0  # seconds spent training and evaluating, over all epochs so far
    layers: list[dict[str, Any]] = field(default_factory=list)  # pruners.layer_table rows
    optimizer: Optional[dict[str, Any]] = None
    lr_scheduler: Optional[dict[str, Any]] = None
    # The N:M permutation search's result: the weights above are already permuted, so a resumed
    # run keeps them and reports this instead of searching again.
    nm_permute_gain: Optional[float] = None
    scaler: Optional[dict[str, Any]] = None  # fp16's GradScaler (its loss scale carries on)
    # The global torch RNGs after this epoch ({"cpu": ..., "cuda": ...}): dropout and other random
    # ops continue their stream. The data order and augmentation need nothing here: they are
    # functions of (seed, epoch, rank), and a resumed run starts at epoch + 1.
    rng: Optional[dict[str, torch.Tensor]] = None
    scaler: Optional[dict[str, Any]] = None  # fp16's GradScaler (its loss scale carries on)
    # The global torch RNGs after this epoch ({"cpu": ..., "cuda": ...}): dropout and other random
    # ops continue their stream. The data order and augmentation need nothing here: they are
    # functions of (seed, epoch, rank), and a resumed run starts at epoch + 1.
    rng: Optional[dict[str, torch.Tensor]] = None

    def to_payload(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_payload(cls, payload: Any, source: str = "checkpoint") -> "Checkpoint":
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
            raise CheckpointError(f"{source} is not a raysweep checkpoint (no 'model' state dict in it)")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in known})


def save_checkpoint(state: Checkpoint, path: PathLike) -> None:
    torch.save(state.to_payload(), path)


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- truncated, not a torch file, pickled code: one message
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or not a torch weights file): {first_line(exc)}") from None


def read_checkpoint(path: PathLike) -> Checkpoint:
    """The checkpoint in ``path`` (a ``checkpoint.pt``, or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    return Checkpoint.from_payload(_torch_load(path), str(path))


def read_weights(path: PathLike) -> tuple[dict[str, torch.Tensor], Optional[Checkpoint]]:
    """(state dict, the checkpoint it came from or None) of a weights file: a raysweep checkpoint
    (masked or not) or a plain state dict, such as a ``.pth`` of the reference project."""
    path = Path(path)
    payload = _torch_load(path)
    checkpoint = None
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        checkpoint = Checkpoint.from_payload(payload, str(path))
        payload = checkpoint.model
    if not isinstance(payload, dict) or not any(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{path} holds no model state dict (expected a raysweep checkpoint or a state dict)")
    return strip_module_prefix(payload), checkpoint


def strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix(MODULE_PREFIX): v for k, v in state.items()}


def load_weights(model: nn.Module, path: PathLike) -> None:
    """Starting weights of a run: a plain state dict, or a checkpoint, masked or not.

    A masked checkpoint (an earlier prune) is squashed to plain weights with its zeros, so the
    new run's masks start from them."""
    state, _ = read_weights(path)
    if any(".parametrizations." in k for k in state):
        pruners.load_masked_state_dict(model, state)
        pruners.squash(model)
    else:
        model.load_state_dict(state)


class CheckpointFolder:
    """One trial's checkpoints, ``<folder>/checkpoint_epochNNNN/``, the layout a TorchTrainer
    run's have too. Each is written to a temporary folder and renamed into place, then older
    ones are removed: whenever the driver or the trial dies, the folder holds at least one
    complete checkpoint, and a resumed trial starts from the newest."""

    PATTERN = re.compile(r"checkpoint_epoch(\d+)$")

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)

    def _saved(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := self.PATTERN.match(p.name)) and p.is_dir()]
        return sorted(found)

    def newest_path(self) -> Optional[Path]:
        saved = self._saved()
        return saved[-1][1] / CHECKPOINT_FILE if saved else None

    def latest(self) -> Optional[Checkpoint]:
        """The newest checkpoint that loads; one that does not is skipped with a warning."""
        for _, path in reversed(self._saved()):
            try:
                return read_checkpoint(path)
            except CheckpointError as exc:
                log.warning("skipping unreadable checkpoint %s: %s", path, exc)
        return None

    def save(self, state: Checkpoint, epoch: int) -> Path:
        """Write atomically; a failure of the folder itself is a ``StorageError``."""
        try:
            return self._save(state, epoch)
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.folder) from exc

    def _save(self, state: Checkpoint, epoch: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"checkpoint_epoch{epoch:04d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.folder))
        save_checkpoint(state, tmp / CHECKPOINT_FILE)
        if final.exists():  # the same epoch again (a trial restarted before this one was superseded)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for other_epoch, path in self._saved():
            if other_epoch < epoch:
                shutil.rmtree(path, ignore_errors=True)
        for stale in self.folder.glob(".checkpoint_epoch*"):  # left by a trial killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        return final


FAILURE_FILE = "failed.txt"  # a trial's own failure, kept beside its checkpoints


def record_failure(folder: PathLike, text: str) -> None:
    """Remember that a trial failed on its own (not on the storage), so that a resumed sweep
    reports that failure again instead of training the trial once more. Best effort."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / FAILURE_FILE).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("could not record the failure in %s: %s", folder, exc)


def recorded_failure(folder: PathLike) -> Optional[str]:
    path = Path(folder) / FAILURE_FILE
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None
