"""Checking the values of a search space: every problem is collected, then raised once.

A user who typo'd three things wants three lines, not three runs, and wants them before Ray
starts. Each check returns what is wrong with a value (or None); ``parse_param`` runs one on a
constant or on every candidate of a distribution and records what it finds in ``Problems``.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import math
import numbers
import typing
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

import pruners
from raysweep.space.schema import Dist, Param, candidates

Check = Callable[[Any], Optional[str]]  # value -> what is wrong with it, or None

DIST_ARITY: dict[str, Optional[int]] = {"choice": None, "uniform": 2, "quniform": 3, "loguniform": 2}
MAX_SCHEDULE_COMBOS = 256  # corner combinations of schedule parameters checked


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
# ------------------------------------------------------------------------- value checks
def _is_number(v: Any) -> bool:
    """Finite Python and numpy numbers (Tune samples numpy scalars); bools, inf and nan are not
    numbers here (``lr: .inf`` would only fail inside every trial)."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)


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


def name_or_callable(v: Any) -> Optional[str]:
    """A model or dataset: a name, an import path, or (from Python) the callable itself."""
    return None if callable(v) else a_string(v)


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
            pruners.check_target(method, v)
        except ValueError as err:
            return str(err)
        return None

    return check


# ------------------------------------------------------------------------- distributions
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


# ------------------------------------------------------------------------- schedules
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
