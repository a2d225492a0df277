"""Rules across sections of a space, run once each section has parsed: a grid takes only
choices, a schedule reaches its final sparsity within the epochs, names fit the model."""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from raysweep.space.allocation import check_allocation, searched
from raysweep.space.schema import HPARAM_TYPES, Dist, candidates, representative
from raysweep.space.targets import build_model, check_targets, freeze
from raysweep.space.values import Problems, join, schedule_final_epoch, suggest

log = logging.getLogger("raysweep.space")


def grid_problems(out: Mapping[str, Any], problems: Problems) -> None:
    """Grid search enumerates choices; anything continuous cannot be a grid axis."""
    found = [f"{v.kind} at {where}" for where, v in searched_values(out) if v.kind != "choice"]
    if found:
        problems.add("search", "grid takes only {choice: [...]} distributions; found " + ", ".join(found))
        return
    # Tune crosses every axis, including the choices of methods/schedules a trial does not use.
    size = lambda entries: math.prod(len(candidates(v)) for v in entries.values() if v is not None)  # noqa: E731
    allocations = out.get("allocations", {})
    methods = {m: {**t, **(allocations[m].params() if m in allocations else {})} for m, t in out.get("methods", {}).items()}
    schedules = out.get("schedules", {})
    shared = math.prod(len(candidates(out[h])) for h in HPARAM_TYPES if out.get(h) is not None)
    shared *= math.prod(len(candidates(v)) for v in out.get("distill", {}).values() if v is not None)
    wanted = shared * sum(map(size, methods.values())) * sum(map(size, schedules.values()))
    total = shared * max(len(methods), 1) * max(len(schedules), 1) * math.prod(map(size, [*methods.values(), *schedules.values()]))
    if total > wanted:
        log.warning("grid: Tune will run %d trials for %d distinct configurations (choices of the methods and "
                    "schedules a trial does not use multiply the grid); grid one method per space to avoid it", total, wanted)


def searched_values(out: Mapping[str, Any]) -> list[tuple[str, Dist]]:
    found = [(k, out[k]) for k in HPARAM_TYPES if isinstance(out.get(k), Dist)]
    found += [(f"distill.{k}", v) for k, v in out.get("distill", {}).items() if isinstance(v, Dist)]
    for section in ("methods", "schedules"):
        for name, entries in out.get(section, {}).items():
            found += [(f"{section}.{name}.{k}", v) for k, v in entries.items() if isinstance(v, Dist)]
    for name, alloc in out.get("allocations", {}).items():
        found += searched(f"methods.{name}", alloc)
    return found


def epoch_problems(out: Mapping[str, Any], problems: Problems) -> None:
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


def model_problems(out: Mapping[str, Any], problems: Problems) -> None:
    from raysweep.data import list_datasets
    from raysweep.models import resolve_model_name

    dataset, model_name = out.get("dataset"), out.get("model")
    named = isinstance(dataset, str) and ":" not in dataset  # not an import path, not a callable
    if dataset is not None and named and dataset not in list_datasets():
        problems.add("dataset", f"unknown dataset {dataset!r}{suggest(dataset, list_datasets())}")
        return
    if model_name is None:
        return
    try:
        resolve_model_name(model_name, dataset)
        model = build_model(model_name, dataset, out.get("data_root"), freeze(out.get("dataset_options")))
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
