"""The data model of a search space: what a checked space holds, with its one set of defaults.

``load_space`` (raysweep.space.read) builds a ``SearchSpace`` from YAML, a mapping or a shipped
name; a key the space leaves out takes the default written here, and ``to_mapping`` writes a
space back in the YAML format (a sweep saves it beside its results, and a resume reads it).
Nothing here imports Ray.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pruners
from raysweep.config import source_name
from pruners.allocation import FAMILIES, get_family
from raysweep.config import RunConfig

DENSE_TRAIN = "train"  # `dense: train`: train the dense model once per recipe and cache it
SEARCHES = ("random", "grid", "optuna")
SAMPLERS = ("nsga2", "tpe")
SCHEDULERS = ("fifo", "asha")
MODES = ("max", "min")
OBJECTIVES = {  # name -> natural mode
    "accuracy": "max", "sparsity": "max", "flops_ratio": "min",
    # measured on the compacted model after the last epoch (raysweep.speed.latency), CPU
    "latency_ms_b1": "min", "latency_ms_b64": "min", "speedup": "max",
}  # fmt: skip
LATENCY_OBJECTIVES = frozenset({"latency_ms_b1", "latency_ms_b64", "speedup"})
# Where a trial trains (raysweep.sweep.executors): `auto` picks inprocess for one worker, else pool.
EXECUTORS = ("auto", "inprocess", "pool", "trainer")
# Trial hyper-parameters: searched or fixed like any value, cast to these types for the run.
HPARAM_TYPES: dict[str, type] = {
    "epochs": int, "lr": float, "batch_size": int, "wd": float, "nm_permute": bool,
    "lr_schedule": str, "warmup_epochs": float, "label_smoothing": float,
}  # fmt: skip
# Distillation from the dense model: `distill: {alpha, temperature}`, each searchable like lr.
DISTILL_TYPES: dict[str, type] = {"alpha": float, "temperature": float}
# The YAML keys of a space; `ratios` is shorthand for targets that every listed method shares.
SPACE_KEYS: tuple[str, ...] = (
    "name", "model", "dataset", "dataset_options", "data_root", "dense", "dense_epochs", "dense_lr", "trials", "search",
    "sampler", "seed", "scheduler", "measure_latency", "precision", "channels_last", "compile", "asha",
    "objectives", "resources", *HPARAM_TYPES, "distill", "methods", "ratios", "schedules", "points",
    "tracking",
)  # fmt: skip
ALLOCATION_KEY = "allocation"  # the key inside a method's targets (no parameter is called that)
_PERTURB = "perturb/"


class SpaceError(ValueError):
    """A search space with problems; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str], source: str = "search space") -> None:
        self.problems, self.source = list(problems), source
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {source}: {n} problem{'s' if n != 1 else ''}\n{lines}")

    def __reduce__(self) -> tuple:  # survive pickling (Ray ships exceptions between processes)
        return (type(self), (self.problems, self.source))


@dataclass(frozen=True)
class Dist:
    """A searched value: ``{choice: [...]}``, ``{uniform: [lo, hi]}``, ``{quniform: [lo, hi, q]}``
    or ``{loguniform: [lo, hi]}``."""

    kind: str
    args: tuple

    def candidates(self) -> list:
        """The values checks run on: every choice, or the bounds."""
        return list(self.args) if self.kind == "choice" else list(self.args[:2])

    def representative(self) -> Any:
        """A deterministic value inside the distribution (fixed points use it)."""
        reps: dict[str, Callable[..., Any]] = {
            "choice": lambda *a: a[0],
            "uniform": lambda lo, hi: (lo + hi) / 2,
            "quniform": lambda lo, hi, q: round((lo + hi) / 2 / q) * q,
            "loguniform": lambda lo, hi: math.sqrt(lo * hi),
        }
        return reps[self.kind](*self.args)

    def to_tune(self, grid: bool = False) -> Any:
        """The Ray Tune domain; with ``grid`` a choice becomes ``tune.grid_search``."""
        from ray import tune

        if grid and self.kind == "choice":
            return tune.grid_search(list(self.args))
        makers: dict[str, Callable[..., Any]] = {
            "choice": lambda *a: tune.choice(list(a)),
            "uniform": tune.uniform,
            "quniform": tune.quniform,
            "loguniform": tune.loguniform,
        }
        return makers[self.kind](*self.args)

    def to_yaml(self) -> dict:
        return {self.kind: list(self.args)}


Param = Any  # a constant (int, float, str) or a Dist


def candidates(value: Param) -> list:
    return value.candidates() if isinstance(value, Dist) else [value]


def representative(value: Param) -> Any:
    return value.representative() if isinstance(value, Dist) else value


@dataclass
class Allocation:
    """A method's allocation section, parsed (raysweep.space.allocation): values or
    distributions, plus the sensitivity table read once."""

    family: Param
    target: Param
    perturb: dict[str, Param] = field(default_factory=dict)
    mode: str = "add"
    table: str | None = None  # absolute path of a sensitivity.csv
    table_data: dict | None = field(default=None, repr=False)  # SensitivityTable.to_dict()

    def params(self) -> dict[str, Param]:
        """The searchable values, keyed as in a trial's config below ``<method>/allocation/``."""
        return {"family": self.family, "target": self.target, **{_PERTURB + k: v for k, v in self.perturb.items()}}

    def to_tune(self, domain) -> dict[str, Any]:
        out: dict[str, Any] = {"family": domain(self.family), "target": domain(self.target)}
        if self.perturb:
            out["perturb"] = {k: domain(v) for k, v in self.perturb.items()}
        return out

    def to_yaml(self) -> dict[str, Any]:
        out = {"family": self.family, "target": self.target, "perturb": dict(self.perturb), "mode": self.mode}
        return {**out, "table": self.table} if self.table else out

    def spec(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The run-time spec (``pruners.allocation.resolve_allocation``) from a trial's values (see ``params``)."""
        family = get_family(values["family"]).name
        spec = {
            "family": family,
            "target": float(values["target"]),
            "perturb": {k: float(values[_PERTURB + k]) for k in self.perturb},
            "mode": self.mode,
        }
        if FAMILIES[family].needs_table:
            spec["table"] = self.table_data
        return spec

    def representative_spec(self) -> dict[str, Any]:
        return self.spec({k: representative(v) for k, v in self.params().items()})


@dataclass
class Point:
    """A fixed configuration run beside the searched trials (e.g. a reference project's ratios)."""

    method: str
    targets: dict[str, pruners.Target]
    schedule: str = "oneshot"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)  # epochs/lr/batch_size/wd set by the point
    label: str = ""
    config_file: Optional[Path] = None
    allocation: Optional[Allocation] = None  # targets are then the fixed layers; the rest is allocated


@dataclass
class Resources:
    """Ray resources of one trial: ``workers_per_trial`` DDP workers of this size each, and
    where it trains (``executor``: auto | inprocess | pool | trainer)."""

    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    executor: str = "auto"


@dataclass
class Tracking:
    """Where the trials are logged besides the sweep's own files (raysweep.sweep.tracking): an
    MLflow tracking server or store (``{tracking_uri, experiment}``; ``{}``: MLflow's defaults),
    and TensorBoard event files in each trial's folder of the experiment."""

    mlflow: Optional[dict[str, str]] = None
    tensorboard: bool = False


@dataclass
class Asha:
    """ASHA's knobs; it stops trials on accuracy with ``time_attr="epoch"``."""

    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass
class SearchSpace:
    """A checked search space (build it with ``load_space``); paths are absolute. Every default
    here is also what a space file that leaves the key out gets."""

    name: str = "space"  # experiment name; a file's stem when read from a file
    model: str = "digits_cnn"
    dataset: str = "digits"
    data_root: Optional[str] = None
    dataset_options: dict[str, Any] = field(default_factory=dict)  # imagefolder's image_size, channels, mean, std...
    dense: str = DENSE_TRAIN  # DENSE_TRAIN or an absolute weights path
    dense_epochs: int = 20
    dense_lr: float = 0.05
    trials: int = 20  # searched trials; the fixed points come on top
    search: str = "optuna"
    sampler: str = "nsga2"
    seed: int = 0
    scheduler: str = "fifo"
    measure_latency: bool = False  # time each trial's compacted model (always on with a latency objective)
    # How every run of the sweep computes (dense training included); defaults as RunConfig's
    precision: str = RunConfig.precision  # fp32 | bf16 | fp16 (CUDA: resources.gpus_per_worker > 0)
    channels_last: bool = RunConfig.channels_last
    compile: bool = RunConfig.compile
    asha: Asha = field(default_factory=Asha)
    objectives: dict[str, str] = field(default_factory=lambda: {"accuracy": "max", "sparsity": "max"})
    resources: Resources = field(default_factory=Resources)
    epochs: Param = 4
    lr: Param = 0.01
    batch_size: Param = 128
    wd: Param = 5e-4
    nm_permute: Param = False  # nm trials: permute input channels first (searchable: choice [true, false])
    lr_schedule: Param = RunConfig.lr_schedule  # multistep | cosine (raysweep.trial.optim)
    warmup_epochs: Param = RunConfig.warmup_epochs  # cosine's linear warm-up, in epochs
    label_smoothing: Param = RunConfig.label_smoothing
    # alpha 0: no distillation; the teacher is the sweep's dense model
    distill: dict[str, Param] = field(default_factory=lambda: {"alpha": RunConfig.distill_alpha, "temperature": RunConfig.distill_temperature})
    methods: dict[str, dict[str, Param]] = field(default_factory=dict)  # canonical -> target space
    allocations: dict[str, Allocation] = field(default_factory=dict)  # method -> its allocation section
    schedules: dict[str, dict[str, Param]] = field(default_factory=lambda: {"oneshot": {}})
    points: list[Point] = field(default_factory=list)
    tracking: Tracking = field(default_factory=Tracking)
    source: Optional[Path] = None

    @property
    def dense_weights(self) -> Optional[str]:
        return None if self.dense == DENSE_TRAIN else self.dense


def _plain(value: Any) -> Any:
    if isinstance(value, Dist):
        return value.to_yaml()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_mapping(space: SearchSpace) -> dict[str, Any]:
    """The checked space in the YAML format (``load_space`` reads it back to an equal space,
    bar ``source``); a sweep saves it beside its results. Points carry their targets inline."""
    out = {key: getattr(space, key) for key in SPACE_KEYS if hasattr(space, key)}
    for key in ("model", "dataset"):  # a Python callable is saved by its name (module:qualname)
        if callable(out[key]):
            out[key] = source_name(out[key])
    out.update(asha=dataclasses.asdict(space.asha), resources=dataclasses.asdict(space.resources))
    out["tracking"] = dataclasses.asdict(space.tracking)
    out["methods"] = {m: {**t, **_allocation_yaml(space.allocations.get(m))} for m, t in space.methods.items()}
    out["points"] = [
        {"method": p.method, "ratios": p.targets, **_allocation_yaml(p.allocation), "schedule": p.schedule,
         "schedule_params": p.schedule_params, "label": p.label, **p.hparams}
        for p in space.points
    ]  # fmt: skip
    return _plain(out)


def _allocation_yaml(alloc: Optional[Allocation]) -> dict[str, Any]:
    return {ALLOCATION_KEY: alloc.to_yaml()} if alloc else {}


def raw_defaults() -> dict[str, Any]:
    """The YAML form of ``SearchSpace()``: what a space that leaves a key out gets."""
    return {**to_mapping(SearchSpace()), "ratios": {}}
