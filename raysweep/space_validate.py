"""Checking a search-space mapping: every problem is collected, then raised once as ``SpaceError``.

A user who typo'd three things wants three lines, not three runs, and wants them before Ray
starts. The checks know the pruners' rules (ratios in [0, 1], M:N only for ``nm``, which
layers a method can prune) and check names against the model itself, built once on the meta
device (shapes without memory). Nothing here imports Ray.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import logging
import math
import numbers
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

import pruners

if TYPE_CHECKING:
    from raysweep.space_allocation import Allocation

log = logging.getLogger(__name__)

Check = Callable[[Any], Optional[str]]  # value -> what is wrong with it, or None

DIST_ARITY: dict[str, Optional[int]] = {"choice": None, "uniform": 2, "quniform": 3, "loguniform": 2}
SEARCHES = ("random", "grid", "optuna")
SAMPLERS = ("nsga2", "tpe")
SCHEDULERS = ("fifo", "asha")
OBJECTIVES = {  # name -> natural mode
    "accuracy": "max", "sparsity": "max", "flops_ratio": "min",
    # measured on the compacted model after the last epoch (raysweep.latency), CPU
    "latency_ms_b1": "min", "latency_ms_b64": "min", "speedup": "max",
}  # fmt: skip
LATENCY_OBJECTIVES = frozenset({"latency_ms_b1", "latency_ms_b64", "speedup"})
MODES = ("max", "min")
# Methods whose skip depends on the target (an M:N spec the layer cannot divide): leaving
# such a layer dense would silently change the sparsity the trial asked for, so it is an error.
STRICT_SKIP = frozenset({"nm"})
MAX_SCHEDULE_COMBOS = 256  # corner combinations of schedule parameters checked


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
    """Ray resources of one trial: ``workers_per_trial`` DDP workers of this size each."""

    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass
class Asha:
    """ASHA's knobs; it stops trials on accuracy with ``time_attr="epoch"``."""

    grace_period: int = 1
    reduction_factor: float = 2.0


class Problems:
    """Collects ``where: what`` lines."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, msg: str) -> None:
        line = f"{where}: {msg}" if where else msg
        if line not in self.items:
            self.items.append(line)


def suggest(word: object, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"


def check_keys(mapping: Mapping, known: Sequence[str], where: str, problems: Problems) -> None:
    for key in mapping:
        if key not in known:
            problems.add(where, f"unknown key {key!r}{suggest(key, known)}")


def join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


# ------------------------------------------------------------------------- value checks
def _is_number(v: Any) -> bool:
    """Python and numpy numbers (Tune samples numpy scalars); bools are not numbers here."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def int_at_least(minimum: int) -> Check:
    def check(v: Any) -> Optional[str]:
        integral = _is_number(v) and float(v).is_integer()
        return None if integral and v >= minimum else f"must be an int >= {minimum}, got {v!r}"

    return check


def number_above(minimum: float, inclusive: bool = False) -> Check:
    def check(v: Any) -> Optional[str]:
        ok = _is_number(v) and (v >= minimum if inclusive else v > minimum)
        return None if ok else f"must be a number {'>=' if inclusive else '>'} {minimum}, got {v!r}"

    return check


def any_int(v: Any) -> Optional[str]:
    return None if isinstance(v, int) and not isinstance(v, bool) else f"must be an int, got {v!r}"


def a_bool(v: Any) -> Optional[str]:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def a_string(v: Any) -> Optional[str]:
    return None if isinstance(v, str) and v else f"must be a non-empty string, got {v!r}"


def optional_string(v: Any) -> Optional[str]:
    return None if v is None else a_string(v)


def one_of(what: str, known: Sequence[str]) -> Check:
    def check(v: Any) -> Optional[str]:
        return None if v in known else f"unknown {what} {v!r}{suggest(v, known)}"

    return check


def target_check(method: str) -> Check:
    """A ratio in [0, 1] or mXnY, of the kind ``method`` takes (pruners' own rules and messages)."""

    def check(v: Any) -> Optional[str]:
        try:
            t = pruners.validate_target(v)
            pruners.skip_reason(method, (8, 8), t)  # raises when the kind is wrong for the method
        except ValueError as err:
            return str(err)
        return None

    return check


# ------------------------------------------------------------------------- distributions
def parse_dist(raw: Mapping, where: str, problems: Problems) -> Optional[Dist]:
    if len(raw) != 1:
        problems.add(where, f"a distribution is one of {', '.join(DIST_ARITY)} with its arguments, got keys {list(raw)}")
        return None
    kind, args = next(iter(raw.items()))
    if kind not in DIST_ARITY:
        problems.add(where, f"unknown distribution {kind!r}{suggest(kind, list(DIST_ARITY))}")
        return None
    if not isinstance(args, (list, tuple)) or not args:
        problems.add(where, f"{kind} needs a non-empty list, got {args!r}")
        return None
    arity = DIST_ARITY[kind]
    if arity is None:
        return Dist(kind, tuple(args))
    if len(args) != arity or not all(_is_number(a) for a in args):
        shape = "[lo, hi, q]" if arity == 3 else "[lo, hi]"
        problems.add(where, f"{kind} takes {shape} numbers, got {list(args)!r}")
        return None
    lo, hi = args[0], args[1]
    if lo >= hi:
        problems.add(where, f"{kind} needs lo < hi, got [{lo}, {hi}]")
    elif kind == "loguniform" and lo <= 0:
        problems.add(where, f"loguniform needs lo > 0, got {lo}")
    elif kind == "quniform" and args[2] <= 0:
        problems.add(where, f"quniform needs q > 0, got {args[2]}")
    else:
        return Dist(kind, tuple(args))
    return None


def parse_param(raw: Any, where: str, check: Check, problems: Problems, *, fixed: bool = False) -> Param:
    """A constant or a distribution; ``check`` runs on the constant or on every candidate."""
    if isinstance(raw, Mapping):
        if fixed:
            problems.add(where, f"must be a fixed value here, got the distribution {dict(raw)!r}")
            return None
        dist = parse_dist(raw, where, problems)
        if dist is None:
            return None
        bad = [msg for msg in map(check, dist.candidates()) if msg]
        for msg in bad:
            problems.add(where, msg)
        return None if bad else dist
    msg = check(raw)
    if msg:
        problems.add(where, msg)
        return None
    return raw


def candidates(value: Param) -> list:
    return value.candidates() if isinstance(value, Dist) else [value]


def representative(value: Param) -> Any:
    return value.representative() if isinstance(value, Dist) else value


# ------------------------------------------------------------------------- schedules
@functools.lru_cache(maxsize=None)
def schedule_fields(name: str) -> dict[str, type]:
    """Parameter name -> its type (int params are cast to int when a trial is built)."""
    cls = pruners.SCHEDULES[name]
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, float) for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}


def cast_schedule_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled floats (quniform) become ints where the schedule wants ints."""
    types = schedule_fields(name)
    return {k: cast_like(types.get(k, float), v) for k, v in params.items()}


def cast_like(kind: type, value: Any) -> Any:
    if kind is bool and value is not None:
        return bool(value)
    if kind is int and _is_number(value):
        return int(round(float(value)))
    if kind is float and _is_number(value):
        return float(value)
    return value


def schedule_param_check(kind: type) -> Check:
    return int_at_least(0) if kind is int else number_above(0.0, inclusive=True)


def parse_schedule_params(name: str, raw: Any, where: str, problems: Problems, *, fixed: bool = False) -> dict[str, Param]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.add(where, f"schedule parameters must be a mapping, got {raw!r}")
        return {}
    types = schedule_fields(name)
    check_keys(raw, list(types), where, problems)
    return {
        key: parse_param(value, join(where, key), schedule_param_check(types[key]), problems, fixed=fixed)
        for key, value in raw.items()
        if key in types
    }


def schedule_final_epoch(name: str, params: Mapping[str, Param], where: str, problems: Problems) -> Optional[int]:
    """Build the schedule at every corner of its parameters; the latest final epoch, or None."""
    if any(v is None for v in params.values()):
        return None  # already reported
    keys = list(params)
    latest: Optional[int] = None
    combos = itertools.product(*(candidates(params[k]) for k in keys))
    for combo in itertools.islice(combos, MAX_SCHEDULE_COMBOS):
        try:
            sched = pruners.get_schedule(name, **cast_schedule_params(name, dict(zip(keys, combo))))
        except ValueError as err:
            problems.add(where, str(err))
            return None
        latest = max(latest or 0, sched.final_epoch)
    return latest


# ------------------------------------------------------------------------- targets vs model
@functools.lru_cache(maxsize=8)
def build_model(model: str, dataset: str) -> Any:
    """The model with default weights on the meta device (only names and shapes are read)."""
    import torch

    from raysweep.models import create_model

    try:
        with torch.device("meta"):
            return create_model(model, dataset=dataset)
    except (RuntimeError, NotImplementedError):  # a constructor that needs real tensors
        return create_model(model, dataset=dataset)


def _resolve_one(model: Any, key: str) -> tuple[list[str], Optional[str]]:
    try:
        return list(pruners.resolve_targets(model, {key: 0.0})), None
    except ValueError as err:
        return [], str(err).split("\n", 1)[-1].strip()


def governing_keys(model: Any, keys: Sequence[str]) -> dict[str, str]:
    """Parameter name -> the key whose value it takes (exact names win; later globs win)."""
    marks = {key: i / (len(keys) + 1) for i, key in enumerate(keys)}
    by_mark = {mark: key for key, mark in marks.items()}
    return {name: by_mark[mark] for name, mark in pruners.resolve_targets(model, marks).items()}


def check_targets(model: Any, method: str, targets: Mapping[str, Param], where: str, problems: Problems) -> None:
    """Every key matches a prunable parameter; every layer can take every candidate value."""
    good = []
    for key in targets:
        _, err = _resolve_one(model, key)
        if err:
            problems.add(where, err)
        else:
            good.append(key)
    if not good:
        return
    shapes = {n: tuple(model.get_parameter(n).shape) for n in pruners.prunable_parameters(model)}
    skipped: dict[str, list[str]] = {}
    governed = governing_keys(model, good)
    for key in sorted(set(good) - set(governed.values())):
        log.warning("%s: every layer it matches is set by another key, so it has no effect", join(where, key))
    for name, key in governed.items():
        value = targets[key]
        for cand in candidates(value) if value is not None else []:
            if cand == 0:
                continue  # a dense layer needs nothing from the method
            try:
                reason = pruners.skip_reason(method, shapes[name], cand)
            except ValueError:
                continue  # a wrong kind of target: reported by the value check
            if reason is None:
                continue
            is_glob = any(c in key for c in "*?[")
            if method in STRICT_SKIP or not is_glob:
                problems.add(join(where, key), f"{cand!r} cannot prune {name} {shapes[name]}: {reason}; set {name!r} to 0.0")
            else:
                skipped.setdefault(key, []).append(name)
    for key, names in skipped.items():
        log.info("%s: method %s leaves %s dense (it cannot prune them)", join(where, key), method, ", ".join(sorted(set(names))))
