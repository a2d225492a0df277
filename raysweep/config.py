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


def source_name(value: Any) -> str:
    """A model or dataset given as a Python callable, by name (``module:qualname``)."""
    return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', type(value).__name__)}"


def folder_label(value: Any) -> str:
    """A model or dataset as part of a folder name: ``pkg.mod:factory`` -> ``factory``."""
    text = source_name(value) if callable(value) else str(value)
    return text.rpartition(":")[2] or text


@dataclass
class RunConfig:
    # --- what to train -------------------------------------------------------------
    model: str = "digits_cnn"  # registry name in raysweep.models
    dataset: str = "digits"  # registry name in raysweep.data; `digits` is embedded, no files
    data_root: Optional[str] = None  # torchvision-layout datasets live here; never downloaded
    # Options of the dataset's builder: imagefolder's image_size/channels/mean/std, a user
    # dataset's num_classes/input_size when they are not to be inferred (raysweep.data).
    dataset_options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False  # ImageNet models: torchvision weights from the local hub cache
    weight_file: Optional[str] = None  # starting weights (dense or masked), loaded weights_only

    # --- optimisation: the reference project's recipe --------------------------------
    epochs: int = 20  # epochs of this run (fine-tune epochs for a prune run)
    batch_size: int = 128  # GLOBAL batch, split evenly across workers
    lr: float = 0.05  # SGD learning rate for the global batch
    momentum: float = 0.9  # SGD momentum, as the reference project
    wd: float = 5e-4  # weight decay
    lr_decay_milestones: list[int] = field(default_factory=list)  # MultiStepLR, gamma 0.1
    # multistep: the reference project's MultiStepLR on lr_decay_milestones, per epoch; cosine:
    # per batch to 0 over the run, after warmup_epochs (raysweep.trial.optim.LR_SCHEDULES)
    lr_schedule: str = "multistep"
    warmup_epochs: float = 0.0  # cosine: linear warm-up to lr over this many epochs (fractions allowed)
    label_smoothing: float = 0.0  # cross-entropy against (1 - s) one-hot + s uniform; 0: plain CE
    seed: int = 0  # model init, data order, augmentation and splits are all seeded from this

    # --- distillation from the dense model (raysweep.trial.distill) -----------------------
    # Weight of matching the teacher's softened outputs (Hinton et al. 2015); the teacher is
    # weight_file (a sweep's dense model). 0: plain cross-entropy, no teacher is loaded.
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0  # softmax temperature of that term (both sides)

    # --- how the model computes (raysweep.trial.precision; README "Training") -----------------
    # fp32 | bf16 (autocast; CPU and GPU) | fp16 (autocast + GradScaler; CUDA only). fp32: on a
    # CPU without native bf16 (AVX2, as measured) bf16 trains 8-20x slower.
    precision: str = "fp32"
    # NHWC weights and inputs, the layout conv kernels prefer: measured 1.2-1.3x the images per
    # CPU second on CPU (resnet20, masked digits_cnn); masks come out the same.
    channels_last: bool = True
    # torch.compile the training module: on CPU it cost 15-60 s per trial and ran no faster.
    compile: bool = False

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
    use_gpu: bool = False  # train on CUDA, gpus_per_worker of a GPU per worker
    # Ray's GPU share per worker with use_gpu: 0.25 lets four one-worker trials share one GPU
    gpus_per_worker: float = 1.0
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
        parts = [folder_label(self.dataset), folder_label(self.model), self.method or "scratch"]
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

    def to_json(self) -> str:
        """The config as JSON (config.json); a callable model or dataset by its name."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=source_name) + "\n"

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: Union[str, Path]) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
