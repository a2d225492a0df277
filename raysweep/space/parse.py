"""From a raw search-space mapping to ``SearchSpace`` fields, section by section.

Each section parser records what is wrong in a shared ``Problems`` and goes on, so one pass
reports everything; the rules across sections (raysweep.space.checks) run last, on what
parsed. The format is described in raysweep.space.read.
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Mapping, Optional

import pruners
from raysweep.space.allocation import parse_allocation
from raysweep.space.checks import epoch_problems, grid_problems, model_problems, searched_values
from raysweep.space.schema import (
    ALLOCATION_KEY,
    DENSE_TRAIN,
    EXECUTORS,
    MODES,
    OBJECTIVES,
    SAMPLERS,
    SCHEDULERS,
    SEARCHES,
    SPACE_KEYS,
    Allocation,
    Asha,
    Point,
    Resources,
    Tracking,
    raw_defaults,
    representative,
)
from raysweep.space.values import (
    Check,
    Problems,
    a_bool,
    a_string,
    any_int,
    name_or_callable,
    cast_like,
    check_keys,
    int_at_least,
    join,
    number_above,
    one_of,
    optional_string,
    parse_param,
    parse_schedule_params,
    suggest,
    target_check,
)
from raysweep.trial.optim import LR_SCHEDULES
from raysweep.trial.precision import PRECISIONS, fp16_refusal


def fraction(closed: bool) -> Check:
    """A number in [0, 1] (``closed``) or [0, 1)."""

    def check(v: Any) -> Optional[str]:
        ok = number_above(0.0, inclusive=True)(v) is None and (v <= 1.0 if closed else v < 1.0)
        return None if ok else f"must be a number in [0, 1{']' if closed else ')'}, got {v!r}"

    return check


SCALAR_CHECKS: dict[str, Check] = {
    "name": a_string,
    "model": name_or_callable,
    "dataset": name_or_callable,
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
    "precision": one_of("precision", list(PRECISIONS)),
    "channels_last": a_bool,
    "compile": a_bool,
}

HPARAM_CHECKS: dict[str, Check] = {
    "epochs": int_at_least(1),
    "lr": number_above(0.0),
    "batch_size": int_at_least(1),
    "wd": number_above(0.0, inclusive=True),
    "nm_permute": a_bool,
    "lr_schedule": one_of("lr_schedule", list(LR_SCHEDULES)),
    "warmup_epochs": number_above(0.0, inclusive=True),
    "label_smoothing": fraction(closed=False),
}
DISTILL_CHECKS: dict[str, Check] = {"alpha": fraction(closed=True), "temperature": number_above(0.0)}

# Every key of SPACE_KEYS is a scalar, a hyper-parameter or one of these sections (tested).
SECTIONS = ("dataset_options", "asha", "objectives", "resources", "distill", "methods", "ratios", "schedules", "points", "tracking")
def _numbers(v: Any) -> Optional[str]:
    ok = isinstance(v, (list, tuple)) and v and all(number_above(-1e30)(x) is None for x in v)
    return None if ok else f"must be a list of numbers, got {v!r}"


def _sizes(v: Any) -> Optional[str]:
    ok = isinstance(v, (list, tuple)) and v and all(int_at_least(1)(x) is None for x in v)
    return None if ok else f"must be a list of positive ints like [1, 28, 28], got {v!r}"


DATASET_OPTION_CHECKS: dict[str, Check] = {
    "image_size": int_at_least(1), "channels": one_of("channel count", (1, 3)), "mean": _numbers, "std": _numbers,
    "num_classes": int_at_least(2), "input_size": _sizes,
}  # fmt: skip
RESOURCE_CHECKS: dict[str, Check] = {
    "workers_per_trial": int_at_least(1),
    "cpus_per_worker": number_above(0.0),
    "gpus_per_worker": number_above(0.0, inclusive=True),
    "executor": one_of("executor", EXECUTORS),
}
ASHA_CHECKS: dict[str, Check] = {"grace_period": int_at_least(1), "reduction_factor": number_above(1.0)}

POINT_KEYS = ("method", "config_file", "ratios", "allocation", "schedule", "schedule_params", "label", *HPARAM_CHECKS)



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
    """A local path made absolute; a storage URI (s3://...) as it is."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _section(raw: Any, where: str, cls: type, checks: Mapping[str, Check], problems: Problems) -> Any:
    """A small typed section (``resources``, ``asha``): known keys, checked, cast to the field types."""
    values = _mapping(raw, where, problems)
    check_keys(values, list(checks), where, problems)
    types = typing.get_type_hints(cls)
    parsed = {k: parse_param(v, join(where, k), checks[k], problems, fixed=True) for k, v in values.items() if k in checks}
    return cls(**{k: cast_like(types[k], v) for k, v in parsed.items() if v is not None})


def parse_distill(raw: Any, problems: Problems) -> dict[str, Any]:
    """``{alpha, temperature}``: values or distributions; what is left out keeps its default."""
    values = _mapping(raw, "distill", problems)
    check_keys(values, list(DISTILL_CHECKS), "distill", problems)
    defaults = raw_defaults()["distill"]
    return {k: parse_param(values.get(k, defaults[k]), join("distill", k), c, problems) for k, c in DISTILL_CHECKS.items()}


TRACKING_KEYS = ("mlflow", "tensorboard")
MLFLOW_KEYS = ("tracking_uri", "experiment")


def parse_tracking(raw: Any, problems: Problems) -> Tracking:
    """``{mlflow: {tracking_uri, experiment} | true | false, tensorboard: bool}``. A tracking_uri
    without a scheme is a local folder, made absolute here like every path on the command line."""
    values = _mapping(raw, "tracking", problems)
    check_keys(values, list(TRACKING_KEYS), "tracking", problems)
    mlflow = values.get("mlflow")
    if mlflow is True:
        mlflow = {}
    elif mlflow in (None, False):
        mlflow = None
    elif isinstance(mlflow, Mapping):
        check_keys(mlflow, list(MLFLOW_KEYS), "tracking.mlflow", problems)
        for key in (k for k in MLFLOW_KEYS if mlflow.get(k) is not None and not isinstance(mlflow[k], str)):
            problems.add(join("tracking.mlflow", key), f"must be a string, got {mlflow[key]!r}")
        mlflow = {k: str(v) for k, v in mlflow.items() if k in MLFLOW_KEYS and v is not None}
        if ":" not in mlflow.get("tracking_uri", ":"):  # a folder: MLflow's local file store
            mlflow["tracking_uri"] = Path(mlflow["tracking_uri"]).expanduser().resolve().as_uri()
    else:
        problems.add("tracking.mlflow", f"must be a mapping {{tracking_uri, experiment}}, true or false, got {mlflow!r}")
        mlflow = None
    tensorboard = values.get("tensorboard", False)
    if not isinstance(tensorboard, bool):
        problems.add("tracking.tensorboard", f"must be true or false, got {tensorboard!r}")
        tensorboard = False
    return Tracking(mlflow=mlflow, tensorboard=tensorboard)


def parse_dataset_options(raw: Any, problems: Problems) -> dict[str, Any]:
    """Options of the dataset's builder, each checked (which builder takes which: raysweep.data)."""
    values = _mapping(raw, "dataset_options", problems)
    check_keys(values, list(DATASET_OPTION_CHECKS), "dataset_options", problems)
    out = {}
    for key, value in values.items():
        if key in DATASET_OPTION_CHECKS:
            checked = parse_param(value, join("dataset_options", key), DATASET_OPTION_CHECKS[key], problems, fixed=True)
            if checked is not None:
                out[key] = list(checked) if isinstance(checked, tuple) else checked
    return out


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


def parse_space(raw: Mapping[str, Any], problems: Problems) -> dict[str, Any]:
    """``SearchSpace`` keyword arguments from ``raw`` (defaults filled in); problems recorded."""
    check_keys(raw, SPACE_KEYS, "", problems)
    values = {**raw_defaults(), **{k: v for k, v in raw.items() if k in SPACE_KEYS}}
    out: dict[str, Any] = {k: parse_param(values[k], k, c, problems, fixed=True) for k, c in SCALAR_CHECKS.items()}
    out.update({k: parse_param(values[k], k, c, problems) for k, c in HPARAM_CHECKS.items()})
    out["resources"] = _section(values["resources"], "resources", Resources, RESOURCE_CHECKS, problems)
    out["dataset_options"] = parse_dataset_options(values["dataset_options"], problems)
    out["asha"] = _section(values["asha"], "asha", Asha, ASHA_CHECKS, problems)
    out["tracking"] = parse_tracking(values["tracking"], problems)
    if out["resources"].executor == "inprocess" and out["resources"].workers_per_trial > 1:
        problems.add("resources.executor", f"inprocess trains one rank in the trial's own process, but workers_per_trial "
                     f"is {out['resources'].workers_per_trial}: use pool or trainer (or auto)")  # fmt: skip
    shared_gpu = out["resources"].workers_per_trial > 1 and 0 < out["resources"].gpus_per_worker < 1
    if shared_gpu:
        problems.add("resources.gpus_per_worker", f"{out['resources'].gpus_per_worker:g} with workers_per_trial "
                     f"{out['resources'].workers_per_trial}: Ray may place two ranks of one trial on the same GPU, which "
                     "NCCL refuses; give multi-worker trials whole GPUs (one-worker trials may share one)")  # fmt: skip
    if out["precision"] == "fp16" and not out["resources"].gpus_per_worker:
        problems.add("precision", fp16_refusal("resources.gpus_per_worker is 0"))
    out["distill"] = parse_distill(values["distill"], problems)
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
        grid_problems(out, problems)
    elif out["trials"] and out["methods"] and len(out["methods"]) < 2 and len(out["schedules"]) < 2 and not searched_values(out):
        # Optuna (random or not) has no dimension to sample: every "searched" trial would be the same.
        problems.add("trials", f"{out['trials']} searched trials but nothing to search (one method, one schedule, "
                     "no distribution): set trials: 0 to run only the points, or give a distribution")
    epoch_problems(out, problems)
    model_problems(out, problems)
    return out
