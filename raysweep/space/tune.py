"""The one adapter between a search space and Ray Tune.

Tune sees a nested ``param_space`` (``to_tune``) whose '/'-joined keys are ``method``,
``schedule``, ``<method>/<glob or name>``, ``<method>/allocation/family``, ``.../target``,
``.../perturb/<glob or name>``, ``schedule_params/<schedule>/<param>``, ``epochs``, ``lr``,
``batch_size``, ``wd``, ``nm_permute``, ``lr_schedule``, ``warmup_epochs``, ``label_smoothing``,
``distill/alpha``, ``distill/temperature`` (nested, because Ray's OptunaSearch rejects '/' inside
keys); ``trial_run_config`` turns what Tune hands a trial back into a ``RunConfig``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import pruners
from raysweep.config import RunConfig, Target
from raysweep.space.schema import ALLOCATION_KEY, DISTILL_TYPES, HPARAM_TYPES, LATENCY_OBJECTIVES, Dist, Param, Point, SearchSpace, representative
from raysweep.space.targets import build_model
from raysweep.space.values import cast_like, cast_schedule_params


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
    ps["distill"] = {k: _dom(v, grid) for k, v in space.distill.items()}
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
    distill: dict[str, Any]  # alpha, temperature


def _trial(space: SearchSpace, config: Mapping[str, Any]) -> _Trial:
    flat = flatten_config(config)
    index = flat.get("point")
    if index is not None and int(index) >= 0:
        point = space.points[int(index)]
        spec = point.allocation.representative_spec() if point.allocation else None
        distill = {k: representative(v) for k, v in space.distill.items()}
        return _Trial(point.method, dict(point.targets), spec, point.schedule, dict(point.schedule_params), _point_hparams(space, point), distill)
    method = pruners.get_method(_take(flat, "method", _only(space.methods))).name
    schedule = str(_take(flat, "schedule", _only(space.schedules)))
    targets = {k: _target(_take(flat, f"{method}/{k}", v)) for k, v in space.methods[method].items()}
    alloc = space.allocations.get(method)
    prefix = f"{method}/{ALLOCATION_KEY}/"
    spec = alloc.spec({k: _take(flat, prefix + k, v) for k, v in alloc.params().items()}) if alloc else None
    sched_prefix = f"schedule_params/{schedule}/"
    params = {k: _take(flat, sched_prefix + k, v) for k, v in space.schedules.get(schedule, {}).items()}
    hparams = {h: _take(flat, h, getattr(space, h)) for h in HPARAM_TYPES}
    distill = {k: _take(flat, f"distill/{k}", v) for k, v in space.distill.items()}
    return _Trial(method, targets, spec, schedule, params, hparams, distill)


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
        **{f"distill_{k}": cast_like(kind, t.distill[k]) for k, kind in DISTILL_TYPES.items()},
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


def base_run_config(space: SearchSpace, weight_file: Optional[str]) -> RunConfig:
    """What every trial of ``space`` shares before its own config is applied (``trial_run_config``)."""
    r = space.resources
    return RunConfig(
        model=space.model, dataset=space.dataset, data_root=space.data_root, weight_file=weight_file,
        dataset_options=dict(space.dataset_options),
        seed=space.seed, workers=r.workers_per_trial, cpus_per_worker=r.cpus_per_worker,
        use_gpu=bool(r.gpus_per_worker), max_failures=0, print_freq=0,
        measure_latency=space.measure_latency or bool(LATENCY_OBJECTIVES & set(space.objectives)),
        # A GPU share (0.25: four one-worker trials per GPU) reaches every run, dense training too.
        gpus_per_worker=r.gpus_per_worker or RunConfig.gpus_per_worker,
        precision=space.precision, channels_last=space.channels_last, compile=space.compile,
    )
