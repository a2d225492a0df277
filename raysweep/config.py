"""One run's configuration: a dataclass whose every field says why it is there.

The same ``RunConfig`` drives ``python -m raysweep.train``, ``python -m raysweep.prune`` and
each trial of the sweep; it travels to Ray Train workers as a plain dict (``to_dict``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

Target = Union[float, str]


@dataclass
class RunConfig:
    # --- what to train -------------------------------------------------------------
    model: str = "digits_cnn"  # registry name in raysweep.models
    dataset: str = "digits"  # registry name in raysweep.data; `digits` is embedded, no files
    data_root: Optional[str] = None  # torchvision-layout datasets live here; never downloaded
    pretrained: bool = False  # ImageNet models: torchvision weights from the local hub cache
    weight_file: Optional[str] = None  # starting weights (dense or masked), loaded weights_only

    # --- optimisation: the reference project's recipe --------------------------------
    epochs: int = 20  # epochs of this run (fine-tune epochs for a prune run)
    batch_size: int = 128  # GLOBAL batch, split evenly across workers
    lr: float = 0.05  # SGD learning rate for the global batch
    momentum: float = 0.9  # SGD momentum, as the reference project
    wd: float = 5e-4  # weight decay
    lr_decay_milestones: list[int] = field(default_factory=list)  # MultiStepLR, gamma 0.1
    seed: int = 0  # model init, data order and splits are all seeded from this

    # --- pruning (method None = plain training) -------------------------------------
    method: Optional[str] = None  # one of pruners.list_methods() or a reference alias
    targets: dict[str, Target] = field(default_factory=dict)  # parameter name or glob -> target
    schedule: str = "oneshot"  # oneshot | regrow | agp (pruners.schedules)
    schedule_params: dict[str, Any] = field(default_factory=dict)  # e.g. prune_freq, end_epoch
    # One global target spread over layers by a family (pruners.allocation: uniform, erk,
    # global_magnitude, lamp, sensitivity); resolved on the loaded weights. Empty: use targets.
    allocation: dict[str, Any] = field(default_factory=dict)
    nm_permute: bool = False  # nm only: permute input channels first so N:M keeps more magnitude
    measure_latency: bool = False  # after the last epoch, time the compacted model on CPU (b1, b64)

    # --- execution ------------------------------------------------------------------
    workers: int = 1  # Ray Train workers = DDP ranks (gloo on CPU, NCCL on GPU)
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # Ray resources per worker; also its torch thread count
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    max_failures: int = 2  # worker-group restarts from the last checkpoint before giving up
    print_freq: int = 10  # log every N training batches (0: only per-epoch lines)
    log_tag: str = ""  # appended to the run name, as the reference project's --log_tag
    output: str = "runs"  # parent folder of run directories
    name: Optional[str] = None  # run directory name; derived from model/dataset/method if None

    def run_name(self) -> str:
        """``cifar10-vgg16-irregular-example``: readable, and stable across a resume."""
        if self.name:
            return self.name
        parts = [self.dataset, self.model, self.method or "scratch"]
        if self.log_tag:
            parts.append(self.log_tag.lstrip("-"))
        return "-".join(parts)

    def run_dir(self) -> Path:
        return Path(self.output).expanduser().resolve() / self.run_name()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown run config keys: {', '.join(unknown)}")
        return cls(**values)

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
