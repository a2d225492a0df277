"""Search spaces: one YAML says what a sweep searches; this module checks it and feeds Ray Tune.

The format (every key optional; defaults in brackets)::

    name: digits-default          # experiment name [the file's stem]
    model: digits_cnn             # raysweep.models name [digits_cnn]
    dataset: digits               # raysweep.data name; digits is embedded [digits]
    data_root: null               # dataset folder (checked by the sweep, not here) [null]
    dense: train                  # 'train' = train the dense model once per model/dataset and
                                  #   cache it; or a weights file (checked by the sweep) [train]
    dense_epochs: 20              # [20]
    dense_lr: 0.05                # [0.05]
    trials: 20                    # searched trials; points come on top [20]
    search: optuna                # random | grid | optuna [optuna]
    sampler: nsga2                # optuna only: nsga2 | tpe (multi-objective TPE) [nsga2]
    seed: 0                       # [0]
    scheduler: fifo               # fifo | asha (on accuracy, time_attr="epoch") [fifo]
    asha: {grace_period: 1, reduction_factor: 2}
    objectives: {accuracy: max, sparsity: max}   # flops_ratio: min too; a list takes natural modes
    resources: {workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: 0}
    epochs: 4                     # fine-tune epochs per trial: a value or a distribution [4]
    lr: {loguniform: [0.005, 0.05]}               # same for lr [0.01], batch_size [128], wd [5e-4]
    methods:                      # method -> per-layer targets: name or glob -> value or distribution
      irregular: {"*": {uniform: [0.5, 0.95]}, "features.0.weight": 0.0}
      nm: {"*": {choice: [m4n2, m4n1, m8n2]}, "features.0.weight": 0.0}
      filter:                     # or one global target shaped by an allocation family
        allocation: {family: {choice: [lamp, erk]}, target: {uniform: [0.2, 0.7]}, perturb: {"features.*": 0.0}}
        "classifier.2.weight": 0.0  # fixed layers; the others absorb the target
    # or: methods: [irregular, filter]  plus a shared  ratios: {"*": {uniform: [0.3, 0.9]}}
    schedules:                    # name -> params (values or distributions); a trial picks one
      oneshot: {}
      agp: {end_epoch: 2, frequency: 1}
    points:                       # fixed configurations run besides the `trials`
      - {method: irregular, config_file: reference/vgg16_cifar10_irre.yaml, schedule: oneshot}
      - {method: filter, ratios: {"*": 0.5}, label: uniform-filter}

Distributions: ``{choice: [...]}``, ``{uniform: [lo, hi]}``, ``{quniform: [lo, hi, q]}``,
``{loguniform: [lo, hi]}`` (lo > 0). Method names may be the reference project's aliases
(``irre_prune``). A glob is ONE searched value shared by every parameter it matches; exact
names override globs, later globs override earlier ones. A point may also set ``epochs``,
``lr``, ``batch_size``, ``wd``, ``schedule_params`` and a ``label``; what it leaves out takes
the space's value (a distribution's midpoint, first choice for a choice).

Relative paths (``config_file``, ``dense``, ``data_root``) resolve against the space file's
folder, except in the shipped spaces, where ``dense`` and ``data_root`` name *your* files and
resolve against the current directory; ``--set`` values resolve against the current directory.
A reference-project ratio YAML (top-level ``prune_ratio``) is a space too: no search, one point
(``--set method=filter``; default ``nm`` for M:N files, else ``irregular``; model/dataset
default vgg16/cifar10).

Tune sees a nested ``param_space`` (``to_tune``) whose '/'-joined keys are ``method``,
``schedule``, ``<method>/<glob or name>``, ``<method>/allocation/family``, ``.../target``,
``.../perturb/<glob or name>``, ``schedule_params/<schedule>/<param>``, ``epochs``, ``lr``,
``batch_size``, ``wd`` (nested, because Ray's OptunaSearch rejects '/' inside keys).
Allocation sections are described in ``raysweep.space_allocation``.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml

import pruners
from raysweep.config import RunConfig, Target
from raysweep.space_allocation import ALLOCATION_KEY, Allocation
from raysweep.space_overrides import apply_override, override_path
from raysweep.space_overrides import load_yaml as _yaml
from raysweep.space_parse import DENSE_TRAIN, RAW_DEFAULTS, SPACE_KEYS, parse_space
from raysweep.space_validate import (
    Asha,
    Dist,
    Param,
    Point,
    Problems,
    Resources,
    SpaceError,
    build_model,
    cast_like,
    cast_schedule_params,
    representative,
    suggest,
)

__all__ = [
    "SPACE_KEYS", "Asha", "Dist", "Point", "Resources", "SearchSpace", "SpaceError", "flatten_config",
    "list_spaces", "load_space", "override_path", "point_config", "to_mapping", "to_tune", "trial_allocation",
    "trial_run_config", "trial_targets",
]  # fmt: skip

DEFAULT_SPACE = "digits"
SPACES_PACKAGE = "search_spaces"
REFERENCE_KEY = "prune_ratio"  # the reference project's ratio YAML
REFERENCE_DEFAULTS = {"model": "vgg16", "dataset": "cifar10", "method": "irregular"}
HPARAM_TYPES: dict[str, type] = {"epochs": int, "lr": float, "batch_size": int, "wd": float, "nm_permute": bool}


@dataclass
class SearchSpace:
    """A checked search space (build it with ``load_space``); paths are absolute."""

    name: str = RAW_DEFAULTS["name"]
    model: str = RAW_DEFAULTS["model"]
    dataset: str = RAW_DEFAULTS["dataset"]
    data_root: Optional[str] = None
    dense: str = DENSE_TRAIN  # 'train' or an absolute weights path
    dense_epochs: int = RAW_DEFAULTS["dense_epochs"]
    dense_lr: float = RAW_DEFAULTS["dense_lr"]
    trials: int = RAW_DEFAULTS["trials"]
    search: str = RAW_DEFAULTS["search"]
    sampler: str = RAW_DEFAULTS["sampler"]
    seed: int = 0
    scheduler: str = RAW_DEFAULTS["scheduler"]
    asha: Asha = field(default_factory=Asha)
    objectives: dict[str, str] = field(default_factory=lambda: dict(RAW_DEFAULTS["objectives"]))
    resources: Resources = field(default_factory=Resources)
    epochs: Param = RAW_DEFAULTS["epochs"]
    lr: Param = RAW_DEFAULTS["lr"]
    batch_size: Param = RAW_DEFAULTS["batch_size"]
    wd: Param = RAW_DEFAULTS["wd"]
    nm_permute: Param = False  # nm trials: permute input channels first (searchable: choice [true, false])
    measure_latency: bool = False  # time each trial's compacted model (always on with a latency objective)
    methods: dict[str, dict[str, Param]] = field(default_factory=dict)  # canonical -> target space
    allocations: dict[str, Allocation] = field(default_factory=dict)  # method -> its allocation section
    schedules: dict[str, dict[str, Param]] = field(default_factory=lambda: {"oneshot": {}})
    points: list[Point] = field(default_factory=list)
    source: Optional[Path] = None

    @property
    def metrics(self) -> list[str]:
        return list(self.objectives)

    @property
    def modes(self) -> list[str]:
        return list(self.objectives.values())

    @property
    def num_samples(self) -> int:
        """Tune's ``num_samples``: a grid runs once (its size comes from the grid)."""
        return min(self.trials, 1) if self.search == "grid" else self.trials

    @property
    def dense_weights(self) -> Optional[str]:
        return None if self.dense == DENSE_TRAIN else self.dense


# ------------------------------------------------------------------------- reading
def _spaces_dir() -> Path:
    return Path(str(importlib.resources.files(SPACES_PACKAGE)))


def list_spaces() -> list[str]:
    """Names of the shipped spaces (``load_space(name)``)."""
    return sorted(p.stem for p in _spaces_dir().glob("*.yaml"))


def _read(spec: Union[str, os.PathLike, Mapping, None]) -> tuple[dict, Optional[Path], Path, Path]:
    """(mapping, source file, base for config_file, base for dense/data_root)."""
    cwd = Path.cwd()
    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec)), None, cwd, cwd
    spec = DEFAULT_SPACE if spec is None else spec
    path = Path(spec).expanduser()
    if not path.is_file():
        shipped = _spaces_dir() / f"{spec}.yaml"
        if not shipped.is_file():
            raise SpaceError([f"no search space {str(spec)!r}: not a file, nor a shipped space{suggest(spec, list_spaces())}"])
        path = shipped
    path = path.resolve()
    try:
        raw = _yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpaceError([f"not valid YAML: {err}"], str(path)) from None
    if not isinstance(raw, dict):
        raise SpaceError([f"a search space is a mapping, got {type(raw).__name__}"], str(path))
    raw.setdefault("name", path.stem)
    is_shipped = path.parent == _spaces_dir().resolve()
    return raw, path, path.parent, cwd if is_shipped else path.parent


def _absolutise(raw: dict, file_base: Path, path_base: Path) -> None:
    """Paths written in the file are relative to it (see the module doc); done before --set."""
    for key in ("dense", "data_root"):
        value = raw.get(key)
        if isinstance(value, str) and value != DENSE_TRAIN:
            raw[key] = str(path_base / Path(value).expanduser())
    for point in raw["points"] if isinstance(raw.get("points"), list) else []:
        if isinstance(point, dict) and isinstance(point.get("config_file"), str):
            point["config_file"] = str(file_base / Path(point["config_file"]).expanduser())
    # A sensitivity table is the user's file, relative to the space file like config_file.
    methods = raw.get("methods") if isinstance(raw.get("methods"), dict) else {}
    sections = [*methods.values(), raw.get("ratios"), *(raw["points"] if isinstance(raw.get("points"), list) else [])]
    for section in sections:
        alloc = section.get(ALLOCATION_KEY) if isinstance(section, dict) else None
        if isinstance(alloc, dict) and isinstance(alloc.get("table"), str):
            alloc["table"] = str(file_base / Path(alloc["table"]).expanduser())


def _reference_space(raw: Mapping, source: Optional[Path], method: Any) -> dict:
    """The reference project's ``prune_ratio`` YAML as a space: one fixed point, no search.

    Without ``--set method=...`` the method is ``nm`` for M:N targets, else ``irregular``.
    """
    ratios = raw[REFERENCE_KEY] if isinstance(raw[REFERENCE_KEY], Mapping) else {}
    inferred = "nm" if any(isinstance(v, str) for v in ratios.values()) else REFERENCE_DEFAULTS["method"]
    point: dict[str, Any] = {"method": method or inferred}
    point.update({"config_file": str(source)} if source else {"ratios": raw[REFERENCE_KEY]})
    name = source.stem if source else "reference"
    return {"name": name, "model": REFERENCE_DEFAULTS["model"], "dataset": REFERENCE_DEFAULTS["dataset"], "trials": 0, "points": [point]}


# ------------------------------------------------------------------------- public API
def load_space(spec: Union[str, os.PathLike, Mapping, None] = None, overrides: Sequence[str] = ()) -> SearchSpace:
    """Read, override and check a space; every problem is raised at once as ``SpaceError``.

    ``spec``: None (the shipped ``digits``), a shipped name, a file, or a mapping. ``overrides``
    are ``key=value`` strings (dotted keys, YAML values). Dataset and dense weight files are
    not required to exist here: the sweep checks them.
    """
    raw, source, file_base, path_base = _read(spec)
    overrides = list(overrides)
    if REFERENCE_KEY in raw:
        method = next((_yaml(o.partition("=")[2]) for o in overrides if o.partition("=")[0].strip() == "method"), None)
        overrides = [o for o in overrides if o.partition("=")[0].strip() != "method"]
        raw = _reference_space(raw, source, method)
    _absolutise(raw, file_base, path_base)
    problems = Problems()
    for text in overrides:
        apply_override(raw, text, problems)
    fields = parse_space(raw, problems)
    if problems.items:
        raise SpaceError(problems.items, f"search space {str(source or raw.get('name', 'mapping'))}")
    return SearchSpace(**fields, source=source)


def _dom(value: Param, grid: bool) -> Any:
    return value.to_tune(grid) if isinstance(value, Dist) else value


def _pick(names: Sequence[str], grid: bool) -> Any:
    return names[0] if len(names) == 1 else Dist("choice", tuple(names)).to_tune(grid)


def point_config(space: SearchSpace, index: int) -> dict[str, Any]:
    """The constant Tune config of fixed point ``index`` (every key is also in ``param_space``)."""
    p = space.points[index]
    cfg: dict[str, Any] = {"point": index, "method": p.method, "schedule": p.schedule}
    return {**cfg, **_point_hparams(space, p)}


def _point_hparams(space: SearchSpace, point: Point) -> dict[str, Any]:
    return {h: point.hparams.get(h, representative(getattr(space, h))) for h in HPARAM_TYPES}


def to_tune(space: SearchSpace) -> tuple[dict, list[dict]]:
    """(Tune ``param_space``, constant configs of the fixed points); Ray is imported here.

    ``method`` and ``schedule`` are always keys (None when only points run), so the point
    configs can go to a searcher's ``points_to_evaluate``.
    """
    grid = space.search == "grid"
    ps: dict[str, Any] = {
        "method": _pick(list(space.methods), grid) if space.methods else None,
        "schedule": _pick(list(space.schedules), grid) if space.methods else None,
    }
    for method, targets in space.methods.items():
        ps[method] = {k: _dom(v, grid) for k, v in targets.items()}
        if method in space.allocations:
            ps[method][ALLOCATION_KEY] = space.allocations[method].to_tune(lambda v: _dom(v, grid))
    params = {s: {k: _dom(v, grid) for k, v in p.items()} for s, p in space.schedules.items() if p}
    if params and space.methods:
        ps["schedule_params"] = params
    ps.update({h: _dom(getattr(space, h), grid) for h in HPARAM_TYPES})
    return ps, [point_config(space, i) for i in range(len(space.points))]


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested Tune config -> '/'-joined keys; a dataframe row's ``config/`` prefix is dropped."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        flat.update(flatten_config(value, f"{name}/") if isinstance(value, Mapping) else {name: value})
    if not prefix and "method" not in flat and "config/method" in flat:
        flat = {k[len("config/"):]: v for k, v in flat.items() if k.startswith("config/")}
    return flat


def _target(value: Any) -> Target:
    return str(value) if isinstance(value, str) else float(value)


def _take(flat: Mapping[str, Any], key: str, default: Param = None) -> Any:
    """The trial's value; a constant of the space may be absent (a searcher suggests only domains)."""
    if key in flat:
        return flat[key]
    if default is not None and not isinstance(default, Dist):
        return default
    raise ValueError(f"trial config has no {key!r} (keys: {', '.join(sorted(flat))})")


def _only(names: Mapping[str, Any]) -> Optional[str]:
    return next(iter(names)) if len(names) == 1 else None


@dataclass
class _Trial:
    """What a trial's config selects, before it becomes a RunConfig."""

    method: str
    targets: dict[str, Target]  # with an allocation: the fixed layers only
    allocation: Optional[dict[str, Any]]  # pruners.allocation.resolve_allocation's spec, or None
    schedule: str
    params: dict[str, Any]
    hparams: dict[str, Any]


def _trial(space: SearchSpace, config: Mapping[str, Any]) -> _Trial:
    flat = flatten_config(config)
    index = flat.get("point")
    if index is not None and int(index) >= 0:
        point = space.points[int(index)]
        spec = point.allocation.representative_spec() if point.allocation else None
        return _Trial(point.method, dict(point.targets), spec, point.schedule, dict(point.schedule_params), _point_hparams(space, point))
    method = pruners.get_method(_take(flat, "method", _only(space.methods))).name
    schedule = str(_take(flat, "schedule", _only(space.schedules)))
    targets = {k: _target(_take(flat, f"{method}/{k}", v)) for k, v in space.methods[method].items()}
    alloc = space.allocations.get(method)
    prefix = f"{method}/{ALLOCATION_KEY}/"
    spec = alloc.spec({k: _take(flat, prefix + k, v) for k, v in alloc.params().items()}) if alloc else None
    sched_prefix = f"schedule_params/{schedule}/"
    params = {k: _take(flat, sched_prefix + k, v) for k, v in space.schedules.get(schedule, {}).items()}
    hparams = {h: _take(flat, h, getattr(space, h)) for h in HPARAM_TYPES}
    return _Trial(method, targets, spec, schedule, params, hparams)


def trial_run_config(space: SearchSpace, config: Mapping[str, Any], base: RunConfig) -> RunConfig:
    """``base`` with this trial's method, targets, schedule and hyper-parameters (ints kept int).

    ``config`` is what Tune hands the trial (nested or '/'-joined; constants may be absent).
    A ``point`` index >= 0 is authoritative: that point's method, targets, schedule and
    hyper-parameters are used whatever else is there (None or -1 means a searched trial).
    With an allocation, ``targets`` are the fixed layers and ``allocation`` holds the spec
    the training worker resolves once the dense weights are loaded (``trial_allocation``).
    """
    t = _trial(space, config)
    return dataclasses.replace(
        base, method=t.method, targets=t.targets, schedule=t.schedule,
        schedule_params=cast_schedule_params(t.schedule, t.params),
        **{h: cast_like(kind, t.hparams[h]) for h, kind in HPARAM_TYPES.items()}, allocation=t.allocation or {},
    )  # fmt: skip


def trial_allocation(space: SearchSpace, config: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The trial's allocation spec (family, target, perturb, mode, table), or None for per-layer targets."""
    return _trial(space, config).allocation


def trial_targets(space: SearchSpace, config: Mapping[str, Any], model: Optional[Any] = None) -> dict[str, Target]:
    """Per-parameter targets of a trial (globs expanded, exact names winning, allocations
    resolved), model order. ``model`` defaults to the space's model without weights, which
    is enough unless the trial's allocation family ranks weights (global_magnitude, lamp)."""
    from pruners.allocation import resolve_allocation

    t = _trial(space, config)
    model = build_model(space.model, space.dataset) if model is None else model
    if t.allocation:
        return resolve_allocation(model, t.method, t.targets, t.allocation)
    return pruners.resolve_targets(model, t.targets)


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
    out = {f.name: getattr(space, f.name) for f in dataclasses.fields(space) if f.name in SPACE_KEYS}
    out.update(asha=dataclasses.asdict(space.asha), resources=dataclasses.asdict(space.resources))
    out["methods"] = {m: {**t, **_allocation_yaml(space.allocations.get(m))} for m, t in space.methods.items()}
    out["points"] = [
        {"method": p.method, "ratios": p.targets, **_allocation_yaml(p.allocation), "schedule": p.schedule,
         "schedule_params": p.schedule_params, "label": p.label, **p.hparams}
        for p in space.points
    ]  # fmt: skip
    return _plain(out)


def _allocation_yaml(alloc: Optional[Allocation]) -> dict[str, Any]:
    return {ALLOCATION_KEY: alloc.to_yaml()} if alloc else {}
