"""From a raw search-space mapping to ``SearchSpace`` fields, section by section.

Each section parser records what is wrong in a shared ``Problems`` and goes on, so one pass
reports everything; cross-section rules (grid vs distributions, schedule vs epochs, names
vs the model) run last, on what parsed. See ``raysweep.space`` for the format.
"""
from __future__ import annotations

import logging
import math
import typing
from pathlib import Path
from typing import Any, Mapping, Optional

import pruners
from raysweep.space_allocation import (
    ALLOCATION_KEY,
    Allocation,
    check_allocation,
    parse_allocation,
    searched,
)
from raysweep.space_validate import (
    MODES,
    OBJECTIVES,
    SAMPLERS,
    SCHEDULERS,
    SEARCHES,
    Asha,
    Check,
    a_bool,
    Dist,
    Point,
    Problems,
    Resources,
    a_string,
    any_int,
    build_model,
    candidates,
    cast_like,
    check_keys,
    check_targets,
    int_at_least,
    join,
    number_above,
    one_of,
    optional_string,
    parse_param,
    parse_schedule_params,
    representative,
    schedule_final_epoch,
    suggest,
    target_check,
)

log = logging.getLogger("raysweep.space")

SCALAR_CHECKS: dict[str, Check] = {
    "name": a_string,
    "model": a_string,
    "dataset": a_string,
    "data_root": optional_string,
    "dense": a_string,
    "dense_epochs": int_at_least(0),
    "dense_lr": number_above(0.0),
    "trials": int_at_least(0),
    "search": one_of("search", SEARCHES),
    "sampler": one_of("sampler", SAMPLERS),
    "seed": any_int,
    "scheduler": one_of("scheduler", SCHEDULERS),
    "measure_latency": a_bool,
}
HPARAM_CHECKS: dict[str, Check] = {
    "epochs": int_at_least(1),
    "lr": number_above(0.0),
    "batch_size": int_at_least(1),
    "wd": number_above(0.0, inclusive=True),
    "nm_permute": a_bool,
}
SPACE_KEYS: tuple[str, ...] = (
    *SCALAR_CHECKS.keys(), "asha", "objectives", "resources", *HPARAM_CHECKS.keys(),
    "methods", "ratios", "schedules", "points",
)  # fmt: skip
RESOURCE_CHECKS: dict[str, Check] = {
    "workers_per_trial": int_at_least(1),
    "cpus_per_worker": number_above(0.0),
    "gpus_per_worker": number_above(0.0, inclusive=True),
}
ASHA_CHECKS: dict[str, Check] = {"grace_period": int_at_least(1), "reduction_factor": number_above(1.0)}
POINT_KEYS = ("method", "config_file", "ratios", "allocation", "schedule", "schedule_params", "label", *HPARAM_CHECKS)

# What a space that leaves a key out gets (the same values as SearchSpace's defaults).
RAW_DEFAULTS: dict[str, Any] = {
    "name": "space", "model": "digits_cnn", "dataset": "digits", "data_root": None, "dense": "train",
    "dense_epochs": 20, "dense_lr": 0.05, "trials": 20, "search": "optuna", "sampler": "nsga2",
    "seed": 0, "scheduler": "fifo", "asha": {}, "objectives": {"accuracy": "max", "sparsity": "max"},
    "resources": {}, "epochs": 4, "lr": 0.01, "batch_size": 128, "wd": 5e-4, "nm_permute": False,
    "measure_latency": False,
    "methods": {}, "ratios": {}, "schedules": {"oneshot": {}}, "points": [],
}  # fmt: skip
DENSE_TRAIN = "train"


def _mapping(raw: Any, where: str, problems: Problems) -> Mapping:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.add(where, f"must be a mapping, got {type(raw).__name__} {raw!r}")
        return {}
    return raw


def _names(raw: Any, where: str, problems: Problems) -> Mapping:
    """``x`` / ``[x, y]`` / ``{x: ..., y: ...}`` -> a mapping (list entries map to None)."""
    if isinstance(raw, str):
        return {raw: None}
    if isinstance(raw, (list, tuple)):
        for name in raw:
            if not isinstance(name, str):
                problems.add(where, f"a list here holds names, got {name!r}")
        return {name: None for name in raw if isinstance(name, str)}
    return _mapping(raw, where, problems)


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _section(raw: Any, where: str, cls: type, checks: Mapping[str, Check], problems: Problems) -> Any:
    """A small typed section (``resources``, ``asha``): known keys, checked, cast to the field types."""
    values = _mapping(raw, where, problems)
    check_keys(values, list(checks), where, problems)
    types = typing.get_type_hints(cls)
    parsed = {k: parse_param(v, join(where, k), checks[k], problems, fixed=True) for k, v in values.items() if k in checks}
    return cls(**{k: cast_like(types[k], v) for k, v in parsed.items() if v is not None})


def parse_objectives(raw: Any, problems: Problems) -> dict[str, str]:
    """``{accuracy: max, ...}``, or a list of names taking their natural modes."""
    values = raw if isinstance(raw, Mapping) else {n: OBJECTIVES.get(n) for n in _names(raw, "objectives", problems)}
    check_keys(values, list(OBJECTIVES), "objectives", problems)
    out = {}
    for name, mode in values.items():
        if name in OBJECTIVES:
            msg = one_of("mode", MODES)(mode)
            if msg:
                problems.add(join("objectives", name), msg)
            out[name] = mode
    if not values:
        problems.add("objectives", f"needs at least one of {', '.join(OBJECTIVES)}")
    return out


def parse_targets(method: str, raw: Mapping, where: str, problems: Problems, *, fixed: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    check = target_check(method)
    for key, value in raw.items():
        if not isinstance(key, str) or "/" in key:
            problems.add(where, f"parameter names and globs are strings without '/', got {key!r}")
            continue
        out[pruners.ratio_config.strip_module_prefix(key.strip())] = parse_param(value, join(where, key), check, problems, fixed=fixed)
    return out


def parse_methods(raw: Any, shared: Any, problems: Problems) -> tuple[dict[str, dict[str, Any]], dict[str, Allocation]]:
    """(canonical method -> its target space, method -> its allocation section); shared
    ``ratios`` fill in what a method leaves out. With an allocation the targets are the fixed layers."""
    ratios = _mapping(shared, "ratios", problems)
    out: dict[str, dict[str, Any]] = {}
    allocations: dict[str, Allocation] = {}
    spelled: dict[str, str] = {}
    for name, targets in _names(raw, "methods", problems).items():
        try:
            method = pruners.get_method(name).name
        except ValueError as err:
            problems.add("methods", str(err))
            continue
        where = join("methods", method)
        if method in out:
            problems.add(where, f"given twice (as {spelled[method]!r} and {name!r})")
        spelled[method] = name
        merged = {**ratios, **_mapping(targets, where, problems)}
        if not merged:
            problems.add(where, "no targets: give per-layer targets, an allocation or a shared 'ratios'")
        if ALLOCATION_KEY in merged:
            alloc = parse_allocation(method, merged.pop(ALLOCATION_KEY), join(where, ALLOCATION_KEY), problems)
            if alloc is not None:
                allocations[method] = alloc
        out[method] = parse_targets(method, merged, where, problems)
    return out, allocations


def parse_schedules(raw: Any, problems: Problems) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, params in _names(raw, "schedules", problems).items():
        if name not in pruners.SCHEDULES:
            problems.add("schedules", f"unknown schedule {name!r}{suggest(name, list(pruners.SCHEDULES))}")
            continue
        out[name] = parse_schedule_params(name, params, join("schedules", name), problems)
    if not out and not problems.items:
        problems.add("schedules", "needs at least one schedule")
    return out


def parse_point(i: int, raw: Any, space: Mapping[str, Any], problems: Problems) -> Optional[Point]:
    where = f"points[{i}]"
    values = _mapping(raw, where, problems)
    check_keys(values, POINT_KEYS, where, problems)
    try:
        method = pruners.get_method(values.get("method")).name
    except ValueError as err:
        problems.add(join(where, "method"), str(err))
        return None
    allocation = None
    if "allocation" in values:
        allocation = parse_allocation(method, values["allocation"], join(where, "allocation"), problems, fixed=True)
        if allocation is None or "config_file" in values:
            if "config_file" in values:
                problems.add(where, "an allocation point takes optional 'ratios' (its fixed layers), not a 'config_file'")
            return None
    elif ("config_file" in values) == ("ratios" in values):
        problems.add(where, "give exactly one of 'config_file' (a ratio YAML), 'ratios' or 'allocation'")
        return None
    config_file, targets = None, {}
    if "config_file" in values:
        config_file = Path(_absolute(str(values["config_file"])))
        if not config_file.is_file():
            problems.add(join(where, "config_file"), f"file not found: {config_file}")
            return None
    try:
        if config_file or values.get("ratios") or allocation is None:
            targets = pruners.load_ratio_config(config_file or _mapping(values.get("ratios"), where, problems))
    except ValueError as err:
        problems.add(where, "; ".join(line.strip() for line in str(err).splitlines()))
        return None
    targets = parse_targets(method, targets, join(where, "ratios"), problems, fixed=True)
    schedules = space.get("schedules") or {"oneshot": {}}
    schedule = values.get("schedule", next(iter(schedules)))
    if not isinstance(schedule, str) or schedule not in pruners.SCHEDULES:
        problems.add(join(where, "schedule"), f"unknown schedule {schedule!r}{suggest(schedule, list(pruners.SCHEDULES))}")
        return None
    defaults = {k: representative(v) for k, v in schedules.get(schedule, {}).items()}
    given = parse_schedule_params(schedule, values.get("schedule_params"), join(where, "schedule_params"), problems, fixed=True)
    hparams = {k: parse_param(values[k], join(where, k), c, problems, fixed=True) for k, c in HPARAM_CHECKS.items() if k in values}
    label = values.get("label") or (config_file.stem if config_file else f"{method}-point{i}")
    return Point(method, targets, schedule, {**defaults, **given}, hparams, str(label), config_file, allocation)


def _grid_problems(out: Mapping[str, Any], problems: Problems) -> None:
    """Grid search enumerates choices; anything continuous cannot be a grid axis."""
    found = [f"{v.kind} at {where}" for where, v in _searched(out) if v.kind != "choice"]
    if found:
        problems.add("search", "grid takes only {choice: [...]} distributions; found " + ", ".join(found))
        return
    # Tune crosses every axis, including the choices of methods/schedules a trial does not use.
    size = lambda entries: math.prod(len(candidates(v)) for v in entries.values() if v is not None)  # noqa: E731
    allocations = out.get("allocations", {})
    methods = {m: {**t, **(allocations[m].params() if m in allocations else {})} for m, t in out.get("methods", {}).items()}
    schedules = out.get("schedules", {})
    shared = math.prod(len(candidates(out[h])) for h in HPARAM_CHECKS if out.get(h) is not None)
    wanted = shared * sum(map(size, methods.values())) * sum(map(size, schedules.values()))
    total = shared * max(len(methods), 1) * max(len(schedules), 1) * math.prod(map(size, [*methods.values(), *schedules.values()]))
    if total > wanted:
        log.warning("grid: Tune will run %d trials for %d distinct configurations (choices of the methods and "
                    "schedules a trial does not use multiply the grid); grid one method per space to avoid it", total, wanted)


def _searched(out: Mapping[str, Any]) -> list[tuple[str, Dist]]:
    found = [(k, out[k]) for k in HPARAM_CHECKS if isinstance(out.get(k), Dist)]
    for section in ("methods", "schedules"):
        for name, entries in out.get(section, {}).items():
            found += [(f"{section}.{name}.{k}", v) for k, v in entries.items() if isinstance(v, Dist)]
    for name, alloc in out.get("allocations", {}).items():
        found += searched(f"methods.{name}", alloc)
    return found


def _epoch_problems(out: Mapping[str, Any], problems: Problems) -> None:
    """A schedule must reach its final sparsity before the last epoch, or no epoch can count."""
    epochs = out.get("epochs")
    fewest = min(int(c) for c in candidates(epochs)) if epochs is not None else None
    latest_final = 0
    for name, params in out.get("schedules", {}).items():
        final = schedule_final_epoch(name, params, join("schedules", name), problems)
        latest_final = max(latest_final, final or 0)
        if final is not None and fewest is not None and final >= fewest:
            problems.add(join("schedules", name), f"reaches final sparsity at epoch {final} but a trial may train only {fewest} epochs (epochs)")
    for i, point in enumerate(out.get("points", [])):
        if point is None:
            continue
        final = schedule_final_epoch(point.schedule, point.schedule_params, f"points[{i}].schedule_params", problems)
        point_epochs = point.hparams.get("epochs") or representative(epochs)
        if final is not None and point_epochs and final >= int(point_epochs):
            problems.add(f"points[{i}]", f"schedule {point.schedule} reaches final sparsity at epoch {final} but the point trains {point_epochs} epochs")
    asha = out.get("asha")
    if out.get("scheduler") == "asha" and asha and asha.grace_period <= latest_final:
        log.warning("ASHA may stop trials at epoch %d, before a schedule reaches final sparsity (epoch %d)", asha.grace_period, latest_final)


def _model_problems(out: Mapping[str, Any], problems: Problems) -> None:
    from raysweep.data import list_datasets
    from raysweep.models import resolve_model_name

    dataset, model_name = out.get("dataset"), out.get("model")
    if dataset is not None and dataset not in list_datasets():
        problems.add("dataset", f"unknown dataset {dataset!r}{suggest(dataset, list_datasets())}")
        return
    if model_name is None:
        return
    try:
        resolve_model_name(model_name, dataset)
        model = build_model(model_name, dataset)
    except ValueError as err:
        problems.add("model", str(err))
        return
    for method, targets in out.get("methods", {}).items():
        check_targets(model, method, targets, join("methods", method), problems)
        if method in out.get("allocations", {}):
            check_allocation(model, out["allocations"][method], targets, f"methods.{method}.allocation", problems)
    for i, point in enumerate(out.get("points", [])):
        if point is not None:
            check_targets(model, point.method, point.targets, f"points[{i}].ratios", problems)
            if point.allocation is not None:
                check_allocation(model, point.allocation, point.targets, f"points[{i}].allocation", problems)


def parse_space(raw: Mapping[str, Any], problems: Problems) -> dict[str, Any]:
    """``SearchSpace`` keyword arguments from ``raw`` (defaults filled in); problems recorded."""
    check_keys(raw, SPACE_KEYS, "", problems)
    values = {**RAW_DEFAULTS, **{k: v for k, v in raw.items() if k in SPACE_KEYS}}
    out: dict[str, Any] = {k: parse_param(values[k], k, c, problems, fixed=True) for k, c in SCALAR_CHECKS.items()}
    out.update({k: parse_param(values[k], k, c, problems) for k, c in HPARAM_CHECKS.items()})
    out["resources"] = _section(values["resources"], "resources", Resources, RESOURCE_CHECKS, problems)
    out["asha"] = _section(values["asha"], "asha", Asha, ASHA_CHECKS, problems)
    out["objectives"] = parse_objectives(values["objectives"], problems)
    out["methods"], out["allocations"] = parse_methods(values["methods"], values["ratios"], problems)
    out["schedules"] = parse_schedules(values["schedules"], problems)
    raw_points = values["points"] if isinstance(values["points"], list) else []
    if not isinstance(values["points"], (list, type(None))):
        problems.add("points", f"must be a list, got {values['points']!r}")
    out["points"] = [parse_point(i, p, out, problems) for i, p in enumerate(raw_points)]
    for key in ("data_root", "dense"):
        if isinstance(out[key], str) and out[key] != DENSE_TRAIN:
            out[key] = _absolute(out[key])
    if out["trials"] and not out["methods"]:
        problems.add("methods", f"trials is {out['trials']} but no method is given")
    if out["trials"] == 0 and not raw_points:
        problems.add("trials", "nothing to run: trials is 0 and there are no points")
    if out["search"] == "grid":
        _grid_problems(out, problems)
    elif out["trials"] and out["methods"] and len(out["methods"]) < 2 and len(out["schedules"]) < 2 and not _searched(out):
        # Optuna (random or not) has no dimension to sample: every "searched" trial would be the same.
        problems.add("trials", f"{out['trials']} searched trials but nothing to search (one method, one schedule, "
                     "no distribution): set trials: 0 to run only the points, or give a distribution")
    _epoch_problems(out, problems)
    _model_problems(out, problems)
    return out
