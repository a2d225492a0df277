"""One checkpoint format, one writer, one reader: a run's or a trial's state after an epoch.

Every place that saves or reads training state goes through here: the loop's sessions (resume),
the single-run driver (final.pt, best.pt, metrics.csv, layers.csv), the sweep's results table,
export, and the starting weights of a run. On disk a checkpoint is ``checkpoint.pt``, a plain
dict ``torch.load(..., weights_only=True)`` reads (``Checkpoint.to_payload``), inside a folder
``checkpoint_epochNNNN/`` (Ray Train's layout, and the one ``CheckpointFolder`` keeps). Every
path here may also be a storage URI (raysweep.storage): ``s3://bucket/.../checkpoint.pt``.
"""
from __future__ import annotations

import dataclasses
import io
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
from raysweep import storage
from raysweep.errors import first_line

CHECKPOINT_FILE = "checkpoint.pt"
MODULE_PREFIX = "module."  # DDP's wrapper; stripped wherever weights are read

log = logging.getLogger("raysweep.checkpoint")

PathLike = Union[str, os.PathLike]
STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError,)
try:  # pyarrow's own errors (an object store's refusal is an OSError; a few are not)
    import pyarrow

    STORAGE_ERRORS = (OSError, pyarrow.ArrowException)
except ImportError:  # pragma: no cover -- pyarrow comes with Ray
    pass


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint or weights file; the message names it and says why."""


class StorageError(RuntimeError):
    """Writing into the sweep's storage failed (read-only, full, gone): the storage's failure, not
    the trial's. The sweep stops after a few of these instead of failing trial after trial."""

    def __init__(self, path: str, errno: Optional[int], strerror: str) -> None:
        self.path, self.errno, self.strerror = str(path), errno, strerror
        super().__init__(f"storage failure: {self.reason}: {path}")

    @property
    def reason(self) -> str:
        """``[Errno 30] Read-only file system`` for a folder; an object store's own words."""
        return f"[Errno {self.errno}] {self.strerror}" if self.errno is not None else self.strerror

    def __reduce__(self) -> tuple:  # survives pickling (Ray ships exceptions between processes)
        return (type(self), (self.path, self.errno, self.strerror))

    @classmethod
    def from_os_error(cls, exc: BaseException, path: PathLike) -> "StorageError":
        """From an OSError (a folder's errno) or an object store's error (its message)."""
        filename, errno, strerror = getattr(exc, "filename", None), getattr(exc, "errno", None), getattr(exc, "strerror", None)
        return cls(str(filename or path), errno, strerror or first_line(exc))


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

    def to_payload(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        # A model or dataset given as a Python callable is saved by name: weights_only loads no code.
        payload["config"] = {k: _named(v) for k, v in payload["config"].items()}
        return payload

    @classmethod
    def from_payload(cls, payload: Any, source: str = "checkpoint") -> "Checkpoint":
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
            raise CheckpointError(f"{source} is not a raysweep checkpoint (no 'model' state dict in it)")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in known})


def _named(value: Any) -> Any:
    from raysweep.config import source_name

    return source_name(value) if callable(value) else value


def save_checkpoint(state: Checkpoint, path: PathLike) -> None:
    torch.save(state.to_payload(), path)


def checkpoint_bytes(state: Checkpoint) -> bytes:
    """The file ``save_checkpoint`` writes, in memory: uploaded in one piece."""
    buffer = io.BytesIO()
    torch.save(state.to_payload(), buffer)
    return buffer.getvalue()


def _torch_load(path: storage.Location) -> Any:
    try:
        found = storage.is_file(path)
    except STORAGE_ERRORS as exc:
        raise CheckpointError(f"cannot read {path}: {first_line(exc)}") from None
    if not found:
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with storage.open_input(path) as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- truncated, not a torch file, pickled code: one message
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or not a torch weights file): {first_line(exc)}") from None


def read_checkpoint(path: PathLike) -> Checkpoint:
    """The checkpoint in ``path`` (a ``checkpoint.pt``, or a folder holding one)."""
    path = storage.location(path)
    if storage.is_dir(path):
        path = storage.join(path, CHECKPOINT_FILE)
    return Checkpoint.from_payload(_torch_load(path), str(path))


def read_weights(path: PathLike) -> tuple[dict[str, torch.Tensor], Optional[Checkpoint]]:
    """(state dict, the checkpoint it came from or None) of a weights file: a raysweep checkpoint
    (masked or not) or a plain state dict, such as a ``.pth`` of the reference project."""
    path = storage.location(path)
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
    run's have too. Each is written, then committed, then older ones are removed: whenever the
    driver or the trial dies, the folder holds at least one complete checkpoint, a half-written
    one is never read, and a resumed trial starts from the newest.

    In a local folder a checkpoint is written to a temporary folder that is renamed into place;
    on an object store (``folder`` a URI) ``checkpoint.pt`` is uploaded under a temporary key
    and moved (copied server-side, at once) to its name: a ``checkpoint.pt`` is always whole."""

    PATTERN = re.compile(r"checkpoint_epoch(\d+)$")

    def __init__(self, folder: PathLike) -> None:
        self.folder = storage.location(folder)
        self.remote = storage.is_uri(self.folder)

    def _saved(self) -> list[tuple[int, Any]]:
        if self.remote:
            return [(epoch, path) for epoch, path, complete in self._listed() if complete]
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := self.PATTERN.match(p.name)) and p.is_dir()]
        return sorted(found)

    def _listed(self) -> list[tuple[int, Any, bool]]:
        """(epoch, folder, holds its checkpoint.pt) of every checkpoint folder, from one listing."""
        found: dict[str, bool] = {}
        for entry in storage.listdir(self.folder, recursive=True):
            top, _, rest = entry.name.partition("/")
            if self.PATTERN.match(top):
                found[top] = found.get(top, False) or (rest == CHECKPOINT_FILE and not entry.is_dir)
        listed = [(int(self.PATTERN.match(top).group(1)), storage.join(self.folder, top), ok) for top, ok in found.items()]
        return sorted(listed, key=lambda t: t[0])

    def newest_path(self) -> Optional[Any]:
        saved = self._saved()
        return storage.join(saved[-1][1], CHECKPOINT_FILE) if saved else None

    def latest(self) -> Optional[Checkpoint]:
        """The newest checkpoint that loads; one that does not is skipped with a warning."""
        for _, path in reversed(self._saved()):
            try:
                return read_checkpoint(path)
            except CheckpointError as exc:
                log.warning("skipping unreadable checkpoint %s: %s", path, exc)
        return None

    def save(self, state: Checkpoint, epoch: int) -> Any:
        """Write atomically; a failure of the folder itself is a ``StorageError``."""
        try:
            return self._save_remote(state, epoch) if self.remote else self._save(state, epoch)
        except STORAGE_ERRORS as exc:
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

    def _save_remote(self, state: Checkpoint, epoch: int) -> Any:
        data = checkpoint_bytes(state)  # serialised first: a failure here leaves nothing behind
        before = self._listed()
        final = storage.join(self.folder, f"checkpoint_epoch{epoch:04d}")
        storage.write_atomic(storage.join(final, CHECKPOINT_FILE), data)
        for other_epoch, path, _ in before:  # older ones, and any a killed trial left incomplete
            if other_epoch != epoch:
                try:
                    storage.remove_tree(path)
                except STORAGE_ERRORS as exc:  # the new one is in place: an old one left is harmless
                    log.warning("could not remove the superseded checkpoint %s: %s", path, exc)
        return final


FAILURE_FILE = "failed.txt"  # a trial's own failure, kept beside its checkpoints


def record_failure(folder: PathLike, text: str) -> None:
    """Remember that a trial failed on its own (not on the storage), so that a resumed sweep
    reports that failure again instead of training the trial once more. Best effort."""
    try:
        storage.makedirs(folder)
        storage.write_text(storage.join(folder, FAILURE_FILE), text + "\n")
    except STORAGE_ERRORS as exc:
        log.warning("could not record the failure in %s: %s", folder, exc)


def recorded_failure(folder: PathLike) -> Optional[str]:
    path = storage.join(folder, FAILURE_FILE)
    return storage.read_text(path).strip() if storage.is_file(path) else None
